"""Stop llama.cpp in the middle of an evaluation when the reply it computes is no longer wanted.

A cancelled stream stops at its next sampled token, but one `llama_decode` is not interruptible from Python:
the prompt of a reply prepared at a pause (10-40 tokens) takes 0.1-0.3 s on 2 quiet cores, and 2.1 s was
measured for one that the user's own continued words made useless, its two threads waiting for each other at
every op next to the partial transcriptions that had started again. Meanwhile the continuation's
transcription and its own reply waited behind it.

llama.cpp checks an abort callback after every graph node (thread 0 of the compute, with no Python lock), so
the callback must not be Python: taking the GIL hundreds of times per token would cost more than it saves.
It is libc's `strlen`, called with a 2-byte buffer: "" (0, go on) or "x" (1, stop). x86-64 and AArch64 return
both `size_t` and `bool` in the same register, whose low byte is then 0 or 1. The decode returns 2, llama.cpp
removes the aborted batch from the KV cache, and llama-cpp-python raises without counting those tokens, so the
context stays consistent for the next request (tests/integration/test_llm.py).
"""

from __future__ import annotations

import ctypes
import logging
import sys
import threading
from typing import Any

ABORTED_MESSAGE = "llama_decode returned 2"  # llama-cpp-python's RuntimeError for an aborted decode
# What llama.cpp logs (at its error level) when it drops an aborted batch: expected here, never shown.
_ABORT_LOG = b"removing memory module entries"


class AbortSwitch:
    """One per llama.cpp context. The worker `arm`s it for a job, the loop `fire`s it for that job's owner
    (a cancelled stream), the worker `disarm`s it when the job ends: a late `fire` for a finished job cannot
    abort the next one."""

    def __init__(self) -> None:
        self._flag = ctypes.create_string_buffer(2)
        self._lock = threading.Lock()
        self._owner: object | None = None
        self._callback: Any = None  # kept alive as long as the context may call it
        self.fired = 0  # decodes asked to stop (the benchmark and tests read it)

    def install(self, ctx: Any) -> bool:
        """Attach to a llama.cpp context. False where libc's strlen cannot be found (then nothing aborts)."""
        import llama_cpp

        try:
            strlen = ctypes.CDLL(None).strlen
        except (OSError, AttributeError):
            return False
        self._callback = ctypes.cast(strlen, llama_cpp.ggml_abort_callback)
        llama_cpp.llama_set_abort_callback(ctx, self._callback, ctypes.cast(self._flag, ctypes.c_void_p))
        _quiet_abort_log()
        return True

    def arm(self, owner: object) -> None:
        with self._lock:
            self._owner = owner
            self._flag[0] = b"\0"

    def fire(self, owner: object) -> None:
        with self._lock:
            if self._owner is owner and owner is not None:
                self._flag[0] = b"x"
                self.fired += 1

    def disarm(self) -> None:
        with self._lock:
            self._owner = None
            self._flag[0] = b"\0"


def is_abort(error: BaseException) -> bool:
    return isinstance(error, RuntimeError) and ABORTED_MESSAGE in str(error)


_log_callback: Any = None  # ours, once installed (the C side holds only a pointer: kept alive here)


def _quiet_abort_log() -> None:
    """llama-cpp-python prints llama.cpp's errors to stderr; an abort we asked for logs one. The same printing
    rule as its own callback (its logger's level), without that line."""
    global _log_callback
    if _log_callback is not None:
        return
    import llama_cpp

    logger = logging.getLogger("llama-cpp-python")
    levels = {0: logging.CRITICAL, 1: logging.INFO, 2: logging.WARNING, 3: logging.ERROR, 4: logging.DEBUG}
    last = {"level": logging.CRITICAL}

    @llama_cpp.llama_log_callback
    def callback(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
        effective = last["level"] if level == 5 else levels.get(level, logging.DEBUG)  # 5: continues the last
        last["level"] = effective
        if _ABORT_LOG in text:
            return
        if logger.level <= effective:
            print(text.decode("utf-8", errors="replace"), end="", flush=True, file=sys.stderr)

    _log_callback = callback
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
