"""Engines.close: bounded per engine, never raises, and a stuck one does not keep the others open."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from voicecli.pipeline.wiring import Engines


class Engine:
    def __init__(self, hang_s: float = 0.0, fail: bool = False) -> None:
        self.hang_s = hang_s
        self.fail = fail
        self.closed = False

    async def close(self) -> None:
        await asyncio.sleep(self.hang_s)
        if self.fail:
            raise RuntimeError("pool already broken")
        self.closed = True


def test_a_stuck_stt_worker_neither_raises_nor_keeps_llm_and_voice_open() -> None:
    stt, llm, tts = Engine(hang_s=30.0), Engine(fail=True), Engine()
    engines: Any = Engines(stt, llm, tts, {"stt": Path("x")})  # type: ignore[arg-type]

    async def run() -> float:
        t0 = time.monotonic()
        await engines.close(timeout=0.3)  # before: wait_for(...) raised TimeoutError and skipped llm/tts
        return time.monotonic() - t0

    took = asyncio.run(run())
    assert took < 1.0
    assert tts.closed and not stt.closed
