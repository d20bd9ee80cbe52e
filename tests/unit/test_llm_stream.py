"""LlamaStream's hand-over from the LLM worker thread to the loop (no model needed)."""

from __future__ import annotations

import asyncio
import threading
import time

from voicecli.engines.llm import LlamaStream


def test_a_worker_whose_reader_loop_stopped_is_released_instead_of_hanging() -> None:
    loop = asyncio.new_event_loop()  # never run: nobody will ever take the delta
    stream = LlamaStream(loop)
    result: list[bool] = []
    worker = threading.Thread(target=lambda: result.append(stream.put("Hello")), daemon=True)
    t0 = time.monotonic()
    worker.start()
    worker.join(3.0)
    try:
        assert not worker.is_alive(), "the LLM worker thread hangs forever on a reader that is gone"
        assert result == [False] and stream.stopped
        assert time.monotonic() - t0 < 1.5
    finally:
        loop.close()
