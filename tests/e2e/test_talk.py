"""`voicecli talk` end to end: a real subprocess, real PortAudio streams on the virtual sound card, the real
engines with the tiny generated models. Speech is espeak-ng fed into the virtual mic; the reply is
recorded from the virtual speaker's monitor."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.vsound import VSound, read_wav, speak, write_wav
from voicecli.pipeline.chunker import normalise
from voicecli.testmodels import generate_all
from voicecli.testmodels.llama import DEFAULT_REPLY

pytestmark = [pytest.mark.audio, pytest.mark.engines, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def tiny_models() -> dict[str, Path]:
    return generate_all(ROOT / ".models", "tiny", progress=lambda _: None)


class Talk:
    """A running `voicecli talk --plain` and its events / transcript files."""

    def __init__(self, proc: subprocess.Popen[str], events: Path, transcript: Path) -> None:
        self.proc = proc
        self.events_path = events
        self.transcript_path = transcript

    def events(self) -> list[dict[str, Any]]:
        if not self.events_path.exists():
            return []
        out = []
        for line in self.events_path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):  # a line being written
                out.append(json.loads(line))
        return out

    def wait_for(self, pred: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for ev in self.events():
                if pred(ev):
                    return ev
            if self.proc.poll() is not None:
                raise AssertionError(f"talk exited early ({self.proc.returncode}): {self.output()}")
            time.sleep(0.02)
        raise AssertionError(f"timed out waiting for an event; output: {self.output()}")

    def finish(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            self.proc.wait(5)
            raise AssertionError(f"talk did not exit; output: {self.output()}") from None

    def output(self) -> str:
        if self.proc.poll() is None:
            return "(still running)"
        out, err = self.proc.communicate()
        return f"stdout: {out[-2000:]}\nstderr: {err[-3000:]}"

    def transcript(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.transcript_path.read_text().splitlines()]


def launch_talk(
    vsound: VSound,
    tmp_path: Path,
    models: dict[str, Path],
    *extra: str,
    env: dict[str, str] | None = None,
    timeout: float = 90,
) -> Talk:
    """Start `voicecli talk --plain` on the virtual card with `models` (stt/llm/tts paths) and its own files."""
    n = len(list(tmp_path.glob("events*.jsonl")))
    suffix = "" if n == 0 else str(n)
    events, transcript = tmp_path / f"events{suffix}.jsonl", tmp_path / f"transcript{suffix}.jsonl"
    events.touch()
    cmd = [
        sys.executable, "-m", "voicecli", "talk", "--plain",
        "--input", "voicecli_mic", "--output", "voicecli_speaker",
        "--stt", str(models["stt"]), "--llm", str(models["llm"]), "--voice", str(models["tts"]),
        "--events", str(events), "--transcript", str(transcript), *extra,
    ]  # fmt: skip
    full_env = {
        **os.environ,
        **vsound.env,
        "VOICECLI_CONFIG": str(tmp_path / "config.toml"),
        "VOICECLI_DATA_DIR": str(tmp_path / "data"),
        **(env or {}),
    }
    proc = subprocess.Popen(cmd, env=full_env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t = Talk(proc, events, transcript)
    try:
        t.wait_for(lambda e: e["kind"] == "session_start", timeout=timeout)
    except BaseException:
        if proc.poll() is None:
            proc.kill()
        raise
    return t


@pytest.fixture
def talk(vsound: VSound, tiny_models: dict[str, Path], tmp_path: Path) -> Iterator[Callable[..., Talk]]:
    started: list[Talk] = []

    def start(*extra: str, env: dict[str, str] | None = None) -> Talk:
        started.append(launch_talk(vsound, tmp_path, tiny_models, *extra, env=env))
        return started[-1]

    yield start
    for t in started:
        if t.proc.poll() is None:
            t.proc.kill()
            t.proc.wait(5)


def speech_bounds(pcm: np.ndarray, rate: int, threshold: float = 0.02) -> tuple[float, float]:
    """First and last loud sample of a WAV, in seconds: the ground-truth onset and end of the speech."""
    loud = np.flatnonzero(np.abs(pcm.astype(np.float32) / 32768.0) > threshold)
    return loud[0] / rate, (loud[-1] + 1) / rate


def loud_mask(pcm: np.ndarray, rate: int, win_s: float = 0.01, floor_dbfs: float = -45.0) -> np.ndarray:
    win = int(rate * win_s)
    n = len(pcm) // win
    x = pcm[: n * win].astype(np.float32).reshape(n, win) / 32768.0
    rms = np.sqrt(np.mean(x * x, axis=1)) + 1e-9
    return 20 * np.log10(rms) > floor_dbfs


def by_kind(events: list[dict[str, Any]], kind: str, turn: int | None = None) -> list[dict[str, Any]]:
    return [e for e in events if e["kind"] == kind and (turn is None or e["turn"] == turn)]


def test_one_question_one_spoken_answer(talk: Callable[..., Talk], vsound: VSound, tmp_path: Path) -> None:
    wav = speak("What is the weather like today?", tmp_path / "q.wav")
    t = talk("--max-turns", "1")
    with vsound.record() as rec:
        vsound.feed(wav)
        t.wait_for(lambda e: e["kind"] == "turn_end", timeout=60)
        assert t.finish(timeout=20) == 0
    events = t.events()
    # exactly one turn, with the scripted transcription and the scripted reply
    assert len(by_kind(events, "eou")) == 1
    [record] = t.transcript()
    assert record["user"].lower().strip(" .?!") == "what is the weather like today"
    assert record["assistant"] == normalise(DEFAULT_REPLY)
    assert record["interrupted"] is False
    # every stage, in pipeline order, on one clock; the reply may be prepared during the hangover (up to its
    # first clause's audio), and nothing plays before the turn is confirmed
    reply = ["speech_end", "llm_first_token", "first_clause", "tts_first_audio"]
    turn = ["speech_end", "eou", "stt_done"]
    for stages in (reply, turn):
        times = [by_kind(events, k, 1)[0]["t"] for k in stages]
        assert times == sorted(times), dict(zip(stages, times, strict=True))
    play_start = by_kind(events, "play_start", 1)[0]["t"]
    assert play_start >= by_kind(events, "tts_first_audio", 1)[0]["t"] - 0.005
    assert play_start >= by_kind(events, "eou", 1)[0]["t"]
    ttfa = record["timings"]["ttfa"]
    assert 0.0 < ttfa < 5.0
    # the reply is in the speaker recording, as long as what TTS produced, after the question
    spoken_s = sum(e["audio_s"] for e in by_kind(events, "tts_clause", 1))
    mask = loud_mask(rec.pcm, rec.rate)
    assert abs(mask.sum() * 0.01 - spoken_s) < 0.25 * spoken_s + 0.1
    first_loud = rec.t0 + np.argmax(mask) * 0.01
    assert abs(first_loud - play_start) < 0.1  # the reported DAC time matches the recording


def test_barge_in_silences_the_reply_and_answers_the_new_question(
    talk: Callable[..., Talk], vsound: VSound, tmp_path: Path
) -> None:
    q1 = speak("What is the weather like today?", tmp_path / "q1.wav")
    q2pcm, q2rate = read_wav(speak("Stop, tell me something else instead.", tmp_path / "q2.wav", voice="en+f3"))
    onset_in_wav, _ = speech_bounds(q2pcm, q2rate)
    t = talk("--max-turns", "2")
    with vsound.record() as rec:
        vsound.feed(q1)
        t.wait_for(lambda e: e["kind"] == "state" and e["state"] == "speaking", timeout=60)
        time.sleep(0.6)  # well into the reply
        fed_at = vsound.feed(q2pcm, q2rate)
        t.wait_for(lambda e: e["kind"] == "turn_end" and e["turn"] == 2, timeout=60)
        assert t.finish(timeout=20) == 0
    onset = fed_at + onset_in_wav
    events = t.events()
    assert len(by_kind(events, "barge_in")) == 1
    first, second = t.transcript()
    assert first["interrupted"] is True
    assert normalise(DEFAULT_REPLY).startswith(first["assistant"].rstrip(".,!?"))
    assert len(first["assistant"]) < len(normalise(DEFAULT_REPLY))
    assert second["interrupted"] is False and second["assistant"] == normalise(DEFAULT_REPLY)
    # the speaker went silent (and stayed silent for 0.5 s) within 300 ms of the interruption's onset
    mask = loud_mask(rec.pcm, rec.rate)
    start = max(0, int((onset - rec.t0) / 0.01))
    hold = 50
    quiet_at = next(i for i in range(start, len(mask) - hold) if not mask[i : i + hold].any())
    stopped_after = rec.t0 + quiet_at * 0.01 - onset
    assert stopped_after < 0.3, f"reply went on for {stopped_after * 1000:.0f} ms after the user cut in"
    assert mask[max(0, start - 30) : start].any()  # it was really speaking when the user cut in


def test_silence_and_noise_give_no_turns(talk: Callable[..., Talk], vsound: VSound, tmp_path: Path) -> None:
    rate = 16000
    rng = np.random.default_rng(0)
    silence = np.zeros(20 * rate, np.float32)
    white = rng.normal(0, 0.01, 20 * rate).astype(np.float32)  # -40 dBFS hiss
    # a fan: low-frequency rumble with a hum, -30 dBFS
    n = 20 * rate
    brown = np.cumsum(rng.normal(0, 1, n)).astype(np.float32)
    brown -= np.convolve(brown, np.ones(801) / 801, mode="same")
    brown = brown / np.max(np.abs(brown)) * 0.03
    hum = 0.01 * np.sin(2 * np.pi * 100 * np.arange(n) / rate).astype(np.float32)
    noise = np.concatenate([silence, white, brown + hum])
    path = write_wav(tmp_path / "noise.wav", (noise * 32767).astype(np.int16), rate)
    t = talk("--max-turns", "1")
    vsound.feed(path)
    vsound.wait_feeds()
    time.sleep(1.0)
    t.proc.terminate()
    t.finish(timeout=10)
    events = t.events()
    # What the user would notice: no reply, nothing answered, nothing in the transcript. The hiss starting after
    # 20 s of digital silence can pass the VAD for about a second before its adaptive floor rises (seen once in
    # five clean-clone runs): such a stretch may become one turn, which whisper must then reject as no speech.
    eous = by_kind(events, "eou")
    assert len(eous) <= 1, eous
    assert all(not e["is_speech"] for e in by_kind(events, "stt_done")), by_kind(events, "stt_done")
    assert by_kind(events, "play_start") == [] and by_kind(events, "first_clause") == []
    assert t.transcript() == [] if t.transcript_path.exists() else True


def test_long_monologue_is_cut_answered_and_nothing_dropped(
    talk: Callable[..., Talk], vsound: VSound, tmp_path: Path
) -> None:
    sentence, rate = read_wav(
        speak("I want to tell you a long story about my garden and the birds.", tmp_path / "s.wav")
    )
    start, end = speech_bounds(sentence, rate)
    sentence = sentence[int(start * rate) : int(end * rate)]
    gap = np.zeros(int(0.15 * rate), np.int16)  # shorter than the pause signal: one continuous utterance
    reps = int(np.ceil(40 * rate / (len(sentence) + len(gap))))
    monologue = np.concatenate([np.concatenate([sentence, gap]) for _ in range(reps)])
    t = talk("--max-turns", "1", env={"VOICECLI_VAD_MAX_UTTERANCE_S": "20"})
    vsound.feed(monologue, rate)
    t.wait_for(lambda e: e["kind"] == "turn_end", timeout=120)
    assert t.finish(timeout=20) == 0
    events = t.events()
    cuts = [e for e in by_kind(events, "eou") if e.get("forced")]
    assert len(cuts) >= 1  # the 40 s were cut at the 20 s maximum ...
    [record] = t.transcript()  # ... and answered once, when the user stopped
    phrase = "what is the weather like today"
    assert record["user"].lower().count(phrase) == len(cuts) + 1  # every chunk was transcribed
    assert record["assistant"] == normalise(DEFAULT_REPLY)
    assert record["timings"]["overruns"] == 0
