"""Compute runs at a lower CPU priority than the audio.

On 2 cores, whisper, llama.cpp and Piper threads together can starve PortAudio's output callback for tens of
milliseconds: holes of silence inside a reply (issue 11). Rather than raising the audio's priority (which
needs privileges), each engine's worker thread lowers its own: Linux niceness is per thread and inherited
by the threads it creates afterwards, so calling this before a model is loaded covers the engine's own
thread pools (ggml's, onnxruntime's, CTranslate2's) too.

With the kernel's autogroup scheduling (the default on desktop distributions), niceness only weighs threads
of the same session against each other: a terminal's voicecli against its own audio threads, not against a
compile running in another terminal, so the assistant is not made slower than other programs.
"""

from __future__ import annotations

import contextlib
import os
import threading

# Niceness 5 gives a thread a third of the CPU share of niceness 0: enough for the audio callbacks, the event
# loop and Piper (which the speaker waits on) to win the cores when they need them, without starving the LLM
# when another program on the desktop competes (at 10 it got a tenth: 0.6 tokens/s next to a busy process).
COMPUTE_NICE = 5
# Work that may be thrown away and must never delay the turn (the user's partial words, pipeline.prefill): a
# 19 gets ~1/20 of a core next to a 5, so the pause's own transcription and the reply barely notice it.
PARTIAL_NICE = 19


def lower_this_thread(nice: int = COMPUTE_NICE) -> int:
    """Raise the calling thread's niceness to at least `nice` (never lowers it). Returns the value in effect."""
    tid = threading.get_native_id()
    with contextlib.suppress(OSError, AttributeError):
        current = os.getpriority(os.PRIO_PROCESS, tid)
        if current < nice:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
        return os.getpriority(os.PRIO_PROCESS, tid)
    return 0
