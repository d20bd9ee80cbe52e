"""`voicecli talk` survives its microphone or speaker being unplugged mid-conversation: it says so, keeps the
session, reopens the same device by name once it is back, and answers the next question.

The virtual card's `unplug` kills the device's streams and removes it, as unplugged USB hardware does under
ALSA (PulseAudio on its own would silently move the streams to another device)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.e2e import test_talk as talk_helpers
from tests.e2e.test_talk import Talk, by_kind, loud_mask
from tests.vsound import VSound, speak
from voicecli.pipeline.chunker import normalise
from voicecli.testmodels.llama import DEFAULT_REPLY

pytestmark = [pytest.mark.audio, pytest.mark.engines, pytest.mark.slow]

# the `talk` fixture (a running `voicecli talk --plain` subprocess) and the generated tiny models
tiny_models = talk_helpers.tiny_models
talk = talk_helpers.talk


def warnings_about(t: Talk, text: str) -> list[str]:
    return [e["message"] for e in by_kind(t.events(), "warning") if text in e["message"]]


def test_microphone_unplugged_and_back(talk: Callable[..., Talk], vsound: VSound, tmp_path: Path) -> None:
    q1 = speak("What is the weather like today?", tmp_path / "q1.wav")
    q2 = speak("And what about tomorrow?", tmp_path / "q2.wav", voice="en+f3")
    t = talk("--max-turns", "2")
    try:
        vsound.feed(q1)
        t.wait_for(lambda e: e["kind"] == "turn_end" and e["turn"] == 1, timeout=60)
        vsound.wait_feeds()
        vsound.unplug("mic")
        t.wait_for(lambda e: e["kind"] == "warning" and "microphone lost" in e["message"], timeout=10)
        time.sleep(2.5)  # a few reopen attempts against a missing device
        assert t.proc.poll() is None, t.output()
        [lost] = warnings_about(t, "microphone lost")  # said once, not once per retry
        assert VSound.MIC in lost
        assert warnings_about(t, "microphone back") == []
    finally:
        vsound.plug("mic")
    t.wait_for(lambda e: e["kind"] == "warning" and "microphone back" in e["message"], timeout=10)
    vsound.feed(q2)
    t.wait_for(lambda e: e["kind"] == "turn_end" and e["turn"] >= 2, timeout=60)
    assert t.finish(timeout=20) == 0
    # the session went on: both questions answered, in one transcript
    first, second = t.transcript()
    assert first["user"].lower().strip(" .?!") == "what is the weather like today"
    assert second["user"].lower().strip(" .?!") == "what is the weather like today"  # the scripted STT
    assert first["assistant"] == second["assistant"] == normalise(DEFAULT_REPLY)
    assert by_kind(t.events(), "session_end")[0]["answered"] == 2


def test_speaker_unplugged_mid_reply_and_back(talk: Callable[..., Talk], vsound: VSound, tmp_path: Path) -> None:
    q1 = speak("What is the weather like today?", tmp_path / "q1.wav")
    q2 = speak("And what about tomorrow?", tmp_path / "q2.wav", voice="en+f3")
    t = talk("--max-turns", "2")
    try:
        vsound.feed(q1)
        t.wait_for(lambda e: e["kind"] == "state" and e["state"] == "speaking", timeout=60)
        time.sleep(0.3)  # into the reply
        vsound.unplug("speaker")
        lost_at = time.monotonic()
        t.wait_for(lambda e: e["kind"] == "warning" and "speaker lost" in e["message"], timeout=10)
        # the reply ends instead of waiting for a device that is gone
        t.wait_for(lambda e: e["kind"] == "turn_end" and e["turn"] == 1, timeout=10)
        assert time.monotonic() - lost_at < 8.0
        time.sleep(2.0)
        assert t.proc.poll() is None, t.output()
        [lost] = warnings_about(t, "speaker lost")
        assert VSound.SPEAKER in lost
    finally:
        vsound.plug("speaker")
    t.wait_for(lambda e: e["kind"] == "warning" and "speaker back" in e["message"], timeout=10)
    with vsound.record() as rec:
        vsound.feed(q2)
        end = t.wait_for(lambda e: e["kind"] == "turn_end" and e["turn"] >= 2, timeout=60)
        assert t.finish(timeout=20) == 0
    events = t.events()
    # the second reply was heard in full on the reopened speaker
    spoken_s = sum(e["audio_s"] for e in by_kind(events, "tts_clause", end["turn"]))
    mask = loud_mask(rec.pcm, rec.rate)
    assert abs(mask.sum() * 0.01 - spoken_s) < 0.25 * spoken_s + 0.1
    first, second = t.transcript()
    assert second["assistant"] == normalise(DEFAULT_REPLY) and second["interrupted"] is False
    assert first["user"] and second["user"]
    # the first reply lost its speaker: the transcript keeps only what was heard, and says why
    assert first["speaker_lost"] is True and second["speaker_lost"] is False
    assert len(first["assistant"]) < len(normalise(DEFAULT_REPLY))
    assert np.isfinite(second["timings"]["ttfa"])
