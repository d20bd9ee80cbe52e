"""What only real weights show, through the virtual sound card: real transcripts, real replies, real speech.

Models: whisper tiny.en (CTranslate2, int8), SmolLM2-135M-Instruct Q4_1, Piper en_US-joe-medium; whisper base
transcribes the recorded replies back. Bounds were measured on 2-core hosts (see each test) and leave a margin.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import soxr

from tests.e2e.test_talk import Talk, by_kind
from tests.vsound import VSound, read_wav, speak, write_wav
from voicecli.bench.wer import corpus_wer, normalize_words, wer

pytestmark = [pytest.mark.audio, pytest.mark.engines, pytest.mark.slow, pytest.mark.real]

QUESTIONS = [
    ("What is the capital of France?", "en-us"),
    ("How many days are there in a week?", "en-gb"),
    ("Can you tell me a short joke?", "en-us+f3"),
    ("What is the weather like today?", "joe"),
    ("Why is the sky blue?", "joe"),
    ("How far away is the moon?", "en-us+m3"),
]


def piper_say(text: str, voice: Path, path: Path) -> Path:
    from voicecli.engines.tts import PiperTTS

    async def run() -> npt.NDArray[np.int16]:
        tts = PiperTTS(voice, output_rate=22050)
        await tts.start()
        try:
            return (await tts.synthesize(text)).pcm
        finally:
            await tts.close()

    pcm = asyncio.run(run())
    pad = np.zeros(2205, np.int16)
    return write_wav(path, np.concatenate([pad, pcm, pad]), 22050)


def question_wav(text: str, voice: str, real: dict[str, Path], tmp: Path, i: int) -> Path:
    path = tmp / f"q{i}.wav"
    if voice == "joe":
        return piper_say(text, real["piper-en_US-joe-medium"], path)
    return speak(text, path, voice=voice)


def ask(t: Talk, vsound: VSound, wav: Path, turn: int, timeout: float = 120) -> dict[str, Any]:
    vsound.feed(wav)
    return t.wait_for(lambda e: e["kind"] == "turn_end" and e["turn"] >= turn, timeout=timeout)


def transcribe(pcm: npt.NDArray[np.int16], rate: int, model: Path) -> str:
    from faster_whisper import WhisperModel

    audio = soxr.resample(pcm.astype(np.float32) / 32768.0, rate, 16000)
    whisper = WhisperModel(str(model), device="cpu", compute_type="int8", cpu_threads=2)
    segments, _ = whisper.transcribe(audio, language="en", beam_size=1, condition_on_previous_text=False)
    return " ".join(s.text.strip() for s in segments)


def holes(pcm: npt.NDArray[np.int16], rate: int, min_ms: float = 20.0) -> list[float]:
    """Runs of digital silence (exact zeros: the output callback ran dry) inside the speech, in ms."""
    nz = np.flatnonzero(pcm)
    if len(nz) == 0:
        return []
    inside = pcm[nz[0] : nz[-1] + 1] == 0
    edges = np.diff(np.concatenate([[0], inside.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    lengths = (ends - starts) * 1000.0 / rate
    return [float(x) for x in lengths if x >= min_ms]


NON_LATIN = re.compile(r"[^\x00-\u024f\u2000-\u206f]")


def test_real_tiny_en_transcribes_spoken_questions(
    talk_with: Any, real_models: dict[str, Path], tiny_models: dict[str, Path], vsound: VSound, tmp_path: Path
) -> None:
    """Real tiny.en through the virtual mic, espeak-ng voices and the Piper voice asking. The LLM and voice are
    the tiny generated ones: this is about what the user said becoming the right words."""
    wavs = [question_wav(q, v, real_models, tmp_path, i) for i, (q, v) in enumerate(QUESTIONS)]
    t = talk_with(real_models["whisper-tiny.en"], tiny_models["llm"], tiny_models["tts"], "--echo", "off")
    heard: list[str] = []
    for turn, wav in enumerate(wavs, start=1):
        end = ask(t, vsound, wav, turn)
        heard.append(end["user"])
        time.sleep(0.3)
    t.proc.terminate()
    t.finish(timeout=30)
    rates = [wer(q, h) for (q, _), h in zip(QUESTIONS, heard, strict=True)]
    total = sum(rates) / len(rates)
    # Measured: 0-17% per question, mean ~8%, on AMD EPYC and Intel Xeon hosts (espeak voices are the hardest).
    assert total <= 0.25, list(zip(heard, rates, strict=True))
    assert max(rates) <= 0.5, list(zip(heard, rates, strict=True))


def test_real_reply_spoken_by_real_voice_is_heard_back_whole_with_no_holes(
    talk_with: Any, real_models: dict[str, Path], vsound: VSound, tmp_path: Path
) -> None:
    """SmolLM2's reply spoken by the joe voice, recorded at the virtual speaker while STT, LLM and TTS all run,
    transcribed back by whisper base: the words arrive whole (no clause lost at a boundary, nothing clipped),
    no hole of digital silence inside speech, no script the voice cannot speak, a voice-sized reply."""
    t = talk_with(
        real_models["whisper-tiny.en"],
        real_models["smollm2-135m-instruct-q4_1"],
        real_models["piper-en_US-joe-medium"],
        "--echo",
        "off",
    )
    replies: list[tuple[dict[str, Any], float]] = []
    recordings = []
    # Questions SmolLM2 answers in English (asked about France it drifts into French, which the English voice
    # mangles: a model limit, not what this test is about).
    for turn, (q, v) in enumerate([QUESTIONS[1], QUESTIONS[4], QUESTIONS[3]], start=1):
        wav = question_wav(q, v, real_models, tmp_path, turn)
        with vsound.record() as rec:
            end = ask(t, vsound, wav, turn, timeout=180)
            time.sleep(0.5)
        recordings.append(rec)
        replies.append((end, rec.t0))
    t.proc.terminate()
    t.finish(timeout=30)
    events = t.events()
    pairs: list[tuple[str, str]] = []
    for (end, _), rec in zip(replies, recordings, strict=True):
        text = end["assistant"]
        assert text, end
        assert not NON_LATIN.search(text), text
        assert len(text.split()) <= 90, text
        starts = by_kind(events, "play_start", end["turn"])
        stops = by_kind(events, "play_end", end["turn"])
        assert starts and stops, end
        a = max(0, int((starts[0]["t"] - rec.t0) * rec.rate))
        b = min(len(rec.pcm), int((stops[0]["t"] - rec.t0 + 0.2) * rec.rate))
        reply = rec.pcm[a:b]
        # No hole from the pipeline: the playback ring never ran dry inside the reply (on the audio clock) ...
        assert end["timings"]["underruns"] == 0 and end["timings"]["max_clause_gap"] == 0, end["timings"]
        # ... and none at the speaker. A device-level stall of one or two ALSA periods (20-30 ms, PortAudio does
        # not report it) was seen once with the whole suite loading the 2 cores; a starved reply leaves 100s of ms.
        assert holes(reply, rec.rate, min_ms=50.0) == [], f"holes: {holes(reply, rec.rate)}; {end['timings']}"
        back = transcribe(reply, rec.rate, real_models["whisper-base"])
        pairs.append((text, back))
        heard = set(normalize_words(back))
        for clause in by_kind(events, "clause", end["turn"]):
            words = normalize_words(clause["text"])
            if len(words) >= 3:  # every clause reached the speaker whole: most of its words are heard back
                assert sum(w in heard for w in words) / len(words) >= 0.5, (clause["text"], back)
    # Measured: 5-15% over the replies (whisper hears "France is" as "Francis", spells numbers its own way);
    # a clause lost at a boundary or a clipped start costs far more.
    assert corpus_wer(pairs) <= 0.25, pairs


@pytest.mark.timeout(600)
def test_barge_in_over_the_echo_of_the_real_voice(
    talk_with: Any, real_models: dict[str, Path], vsound: VSound, tmp_path: Path
) -> None:
    """Desktop speakers: the joe voice's reply comes back into the mic (60 ms, -10 dB) while SmolLM2 keeps
    generating; the user talking over it still stops it, and the echo alone never does."""
    from tests.e2e.test_echo import ECHO, ended, silent_after, speaking, wait_quiet

    # SmolLM2 samples (temperature 0.6): now and then a "long story" is two sentences, over before the user speaks.
    # Trials go on until 4 replies were still playing when the user spoke, or the topics run out.
    topics = ["the sea", "a dragon and a knight", "the history of Rome", "a trip to the mountains", "a lost robot",
              "a small village in winter", "a ship in a storm", "an old clock maker"]  # fmt: skip
    questions = [question_wav(f"Tell me a long story about {x}.", "en-us", real_models, tmp_path, i)
                 for i, x in enumerate(topics)]  # fmt: skip
    stop_pcm, stop_rate = read_wav(speak("Stop, tell me something else instead.", tmp_path / "s.wav", voice="en+f3"))
    onset_in_wav = float(np.flatnonzero(np.abs(stop_pcm) > 655)[0]) / stop_rate
    stops: list[float] = []
    chances = 0  # trials in which the reply was still playing when the user spoke
    with vsound.echo(**ECHO):  # type: ignore[arg-type]
        t = talk_with(
            real_models["whisper-tiny.en"],
            real_models["smollm2-135m-instruct-q4_1"],
            real_models["piper-en_US-joe-medium"],
            "--echo",
            "aec",
            # Each story is asked afresh: with the cut-off replies in its history SmolLM2 copies their shape
            # ("The ship." as a whole story), so most replies end before the user can cut in (seen in CI).
            env={"VOICECLI_LLM_HISTORY_TOKENS": "64"},
        )
        last = 0
        for question in questions:  # a new topic each time: SmolLM2 repeats its cut-off answer to a repeat
            if chances >= 4:
                break
            vsound.feed(question)
            turn = t.wait_for(speaking(last), timeout=120)["turn"]
            with vsound.record() as rec:
                time.sleep(1.0)  # well into the reply: the echo is in the mic
                onset = vsound.feed(stop_pcm, stop_rate) + onset_in_wav
                cut = t.wait_for(ended(turn), timeout=120)
                time.sleep(0.8)
            # A reply that ended by itself before the user spoke (SmolLM2 answers a repeated question
            # briefly) gave no chance to interrupt; a reply still playing 0.6 s after the onset was missed.
            if cut["interrupted"] or cut["t"] > onset + 0.6:
                chances += 1
            if cut["interrupted"]:
                stops.append(silent_after(rec, onset))
            vsound.wait_feeds()
            wait_quiet(t, 1.0, timeout=120)  # the answer to "stop" is over before the next question
            last = max(e["turn"] for e in t.events())
        t.proc.terminate()
        t.finish(timeout=30)
    # Issue 6's bar on the tiny voice is 19 of 20 within 400 ms; the real voice is speech-like echo.
    assert chances >= 3, f"only {chances} replies were still playing when the user spoke"
    assert len(stops) >= chances - 1, f"{len(stops)} of {chances} barge-ins detected: {stops}"
    assert sorted(stops)[len(stops) // 2] < 0.5, stops
    assert len(by_kind(t.events(), "barge_in")) == len(stops)  # every barge-in was the user's, none the echo's
