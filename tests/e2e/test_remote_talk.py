"""`voicecli talk --llm-url` end to end: the LLM is a real `python -m llama_cpp.server` on 127.0.0.1 serving the
tiny scripted GGUF; whisper and Piper are the tiny local models; speech goes through the virtual sound card.
The server is killed and restarted under a running session: the session apologises out loud and carries on."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_talk import ROOT, Talk, by_kind, loud_mask
from tests.integration.test_remote_llm import LlamaServer, free_port
from tests.vsound import VSound, speak
from voicecli.pipeline.chunker import normalise
from voicecli.pipeline.session import APOLOGY
from voicecli.testmodels.llama import DEFAULT_REPLY

pytestmark = [pytest.mark.audio, pytest.mark.engines, pytest.mark.slow]

SECRET = "sk-e2e-never-shown"


def wait_turns(t: Talk, n: int, timeout: float) -> list[dict[str, Any]]:
    """Wait for the n-th turn_end; return the turn_end events."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ends = by_kind(t.events(), "turn_end")
        if len(ends) >= n:
            return ends
        if t.proc.poll() is not None:
            raise AssertionError(f"talk exited early ({t.proc.returncode}): {t.output()}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for turn {n}; output: {t.output()}")


def test_remote_llm_answers_apologises_while_the_server_is_down_and_recovers(
    talk: Callable[..., Talk], vsound: VSound, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    question = speak("What is the weather like today?", tmp_path / "q.wav")
    server = LlamaServer(tiny_models["llm"], tmp_path / "server.log").start()
    try:
        # --llm names a file that does not exist: with --llm-url no local LLM is resolved or loaded
        t = talk("--llm-url", server.url, "--llm", str(tmp_path / "absent.gguf"), "--max-turns", "3",
                 env={"VOICECLI_LLM_API_KEY": SECRET})  # fmt: skip
        vsound.feed(question)
        wait_turns(t, 1, timeout=60)

        server.kill()  # the server dies between two turns: the next question gets a spoken apology
        vsound.wait_feeds()
        with vsound.record() as rec:
            vsound.feed(question)
            wait_turns(t, 2, timeout=60)
            time.sleep(0.3)
        assert t.proc.poll() is None, "the session must stay up when the LLM server goes away"

        server.start()  # back: the question after that is answered again
        vsound.wait_feeds()
        vsound.feed(question)
        wait_turns(t, 3, timeout=60)
        assert t.finish(timeout=20) == 0
    finally:
        server.stop()

    first, second, third = t.transcript()
    assert first["assistant"] == normalise(DEFAULT_REPLY)
    assert third["assistant"] == normalise(DEFAULT_REPLY)
    assert normalise(APOLOGY) in second["assistant"]
    assert not second["interrupted"]
    events = t.events()
    turn2 = by_kind(events, "turn_end")[1]["turn"]
    errors = by_kind(events, "error", turn2)
    assert errors and "cannot reach the LLM server" in errors[0]["message"] and server.url in errors[0]["message"]
    # the apology was really spoken: the speaker played about as long as the voice synthesised for turn 2
    spoken_s = sum(e["audio_s"] for e in by_kind(events, "tts_clause", turn2))
    assert spoken_s > 1.0
    mask = loud_mask(rec.pcm, rec.rate)
    assert abs(mask.sum() * 0.01 - spoken_s) < 0.25 * spoken_s + 0.1
    # the API key is sent, never written anywhere
    out, err = t.proc.communicate()
    for text in (t.events_path.read_text(), t.transcript_path.read_text(), out, err, server.log_text()):
        assert SECRET not in text


def test_unreachable_server_at_start_exits_with_the_message_and_no_traceback(
    vsound: VSound, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    cmd = [
        sys.executable, "-m", "voicecli", "talk", "--plain",
        "--input", "voicecli_mic", "--output", "voicecli_speaker",
        "--stt", str(tiny_models["stt"]), "--voice", str(tiny_models["tts"]),
        "--llm", str(tmp_path / "absent.gguf"), "--llm-url", url, "--max-turns", "1",
        "--transcript", str(tmp_path / "transcript.jsonl"),
    ]  # fmt: skip
    env = {
        **os.environ,
        **vsound.env,
        "VOICECLI_CONFIG": str(tmp_path / "config.toml"),
        "VOICECLI_DATA_DIR": str(tmp_path / "data"),
    }
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 5, done.stderr  # EngineError
    assert f"cannot reach the LLM server at {url}" in done.stderr
    assert "hint:" in done.stderr and "running" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
