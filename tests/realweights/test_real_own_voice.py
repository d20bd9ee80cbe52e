"""The echo of a long real-voice reply, heard through a desktop echo path and transcribed by real whisper, is
recognised as the assistant's own words wherever the reply is cut, and at its end: such a turn is dropped, never
answered (pipeline.own_voice; issue: "It's all being spilled.", the echo of an 81-word SmolLM2 reply, became a
turn and was answered). A user talking over the same echo is heard as the user.

Real Piper joe speaks the reply clause by clause, as the reply pipeline does; the mic gets it 60 ms late at
-10 dB with room reflections and a noise floor (the rig of the e2e echo tests); real whisper tiny.en transcribes
the stretch a phantom barge-in would have made a turn of: the echo from 1.3 s before the cut to 0.2 s after it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from tests.audio.signals import resample
from tests.vsound import read_wav, speak
from voicecli.engines.stt import WhisperSTT
from voicecli.engines.tts import PiperTTS
from voicecli.pipeline.chunker import split_clauses
from voicecli.pipeline.own_voice import EchoReference, is_own_voice, matched_words
from voicecli.pipeline.reply import played_text

R = 16000
REPLY = (
    "When a glass of water tips over on a table, it's all being spilled at once, and the water runs towards the "
    "lowest point it can find. That is why old floors collect puddles in their corners. A towel works best if "
    "you press it down instead of wiping, because wiping only spreads the water around. If the water reached a "
    "laptop, turn it off at once and let it dry for a full day before you try it again."
)
USER = "Hold on, what about the carpet?"
CUTS_S = (2.5, 4.0, 5.5, 7.0, 8.5, 10.0, 11.5, 13.0, 14.5)  # seconds into the reply where a phantom barge-in cuts it
# Whisper tiny makes what it can of an echo ("and their corners at how well." for "in their corners. A towel
# works"): the words check is a last line behind the acoustic rules, and catches most stretches, not all.
MIN_CAUGHT = 0.75


def echo_path(far: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    rng = np.random.default_rng(5)
    taps = int(0.08 * R)
    h = rng.normal(0, 0.25, taps) * np.exp(-np.arange(taps) / (0.015 * R))
    h[0] = 1.0
    delayed = np.concatenate([np.zeros(int(0.06 * R)), far])
    out = np.convolve(delayed, h)[: delayed.size]
    out *= np.sqrt(np.mean(far**2) / max(float(np.mean(out**2)), 1e-12)) * 10 ** (-10 / 20)
    return (out + rng.normal(0, 10 ** (-65 / 20), out.size)).astype(np.float32)


@pytest.fixture(scope="module")
def heard(real_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The reply's clauses and audio as queued for the speaker, the mic's echo of it, and what whisper makes of
    each stretch."""
    user_pcm, user_rate = read_wav(speak(USER, tmp_path_factory.mktemp("user") / "user.wav", voice="en+f3"))
    user = resample(user_pcm, user_rate, R).astype(np.float32) / 32768.0

    import onnxruntime

    onnxruntime.set_seed(19)  # Piper's VITS draws noise: the same reply audio, and the same transcripts, every run

    async def main() -> dict[str, object]:
        tts = PiperTTS(real_models["piper-en_US-joe-medium"], output_rate=R)
        stt = WhisperSTT(real_models["whisper-tiny.en"], threads=1)
        await tts.start()
        await stt.start()
        try:
            clauses: list[tuple[int, int, str]] = []
            pcm: list[npt.NDArray[np.int16]] = []
            pos = 0
            for clause in split_clauses(REPLY, first_min_words=1):
                speech = await tts.synthesize(clause)
                clauses.append((pos, pos + speech.pcm.size, clause))
                pcm.append(speech.pcm)
                pos += speech.pcm.size
            far = np.concatenate(pcm).astype(np.float32) / 32768.0
            mic = echo_path(far)
            out: dict[str, object] = {"clauses": clauses, "duration": far.size / R, "cuts": {}}
            for cut in (*CUTS_S, far.size / R):
                a, b = int((cut - 1.3) * R), min(mic.size, int((cut + 0.2) * R))
                out["cuts"][cut] = await stt.transcribe(mic[a:b])  # type: ignore[index]
            a = int(6.5 * R)
            over = mic[a : a + user.size + int(0.3 * R)].copy()
            over[: user.size] += 0.5 * user
            out["user"] = await stt.transcribe(over)
            return out
        finally:
            await stt.close()
            await tts.close()

    return asyncio.run(main())


def reference(heard: dict[str, object], cut_s: float) -> EchoReference:
    clauses = heard["clauses"]
    return EchoReference.around(REPLY, played_text(clauses, int(cut_s * R)), until=0.0)  # type: ignore[arg-type]


def test_the_reply_is_long(heard: dict[str, object]) -> None:
    assert heard["duration"] > 15.0  # type: ignore[operator]


def test_its_echo_is_its_own_voice_wherever_it_is_cut(heard: dict[str, object]) -> None:
    """Every stretch is either no speech to whisper (then no turn at all) or the reply's own words; whisper tiny
    garbles some beyond any words check, so at least MIN_CAUGHT of them, and always at the reply's end."""
    cuts: dict[float, object] = heard["cuts"]  # type: ignore[assignment]
    caught: list[object] = []
    missed: list[object] = []
    for at, tr in cuts.items():
        ok = not tr.is_speech or is_own_voice(tr.text, reference(heard, at))  # type: ignore[attr-defined]
        (caught if ok else missed).append((at, tr.text, matched_words(tr.text, reference(heard, at))))  # type: ignore[attr-defined]
    assert len(caught) >= MIN_CAUGHT * len(cuts), missed


def test_the_user_over_the_echo_is_the_user(heard: dict[str, object]) -> None:
    """Whatever whisper tiny makes of an espeak voice over the echo ("go along, want them out of the car, be
    they?" for "Hold on, what about the carpet?"), it is a turn of the user's."""
    tr = heard["user"]
    assert tr.is_speech, tr.text  # type: ignore[attr-defined]
    assert not is_own_voice(tr.text, reference(heard, 6.5 + 1.8)), tr.text  # type: ignore[attr-defined]
