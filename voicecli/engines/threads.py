"""How many threads the LLM may use, decided per request from the cores that are really free.

ggml's threads meet at a barrier after every op. Two llama.cpp threads on two cores next to ONE other busy
process collapse ~140x (SmolLM2: 101 -> 0.7 tokens/s, first token 0.12 -> 5.0 s), because one of them is always
waiting for a core; niceness does not help. One thread is unaffected. So the thread count is never a constant:

* `usable_cores()`: the CPUs this process may run on (affinity mask, cgroup CPU quota).
* `runnable_elsewhere()`: threads of other processes that want a CPU right now (the kernel's run queue,
  /proc/loadavg, minus this process's own runnable threads), sampled a few times: a busy program is runnable
  in every sample, a short blip of a desktop daemon is not.
* `plan()`: prefill (and the first clause) on every free core up to a cap; the rest of the reply on fewer,
  leaving a core to Piper, whisper and the audio. On 2 quiet cores: 2 then 1; next to one busy process: 1 and 1;
  on 16 quiet cores: 15 then 8 (decode is memory-bound; llama-server also stops at the physical cores).
* `StallWatch`: while a reply decodes on more than one thread, a token that takes many times the best
  interval seen so far means a core was taken away mid-reply: drop to one thread at once.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

DECODE_CAP = 8  # decode threads beyond this gain nothing on desktop memory bandwidth
SAMPLES = 3  # run-queue samples per decision
SAMPLE_GAP_S = 0.001
STALL_FACTOR = 6.0  # a token this many times slower than the best seen on these threads is a stall
STALL_FLOOR_S = 0.03  # ... and at least this long (small models decode in a few ms; jitter is not a stall)


@dataclass(frozen=True)
class ThreadPlan:
    """batch: threads for the prompt prefill and the first clause's tokens; decode: for the rest of the reply.
    cores / busy: what the plan was made from (usable cores, runnable threads of other processes)."""

    batch: int
    decode: int
    cores: int
    busy: int


def plan(cores: int, busy: int, max_batch: int = 0, max_decode: int = 0) -> ThreadPlan:
    """Threads for one request. `max_batch` / `max_decode` > 0 are the user's ceilings (llm.batch_threads,
    llm.threads); the plan never exceeds the free cores whatever they say."""
    cores = max(1, cores)
    free = max(1, cores - max(0, busy))
    # On 2 cores nothing else runs during the prefill (the transcript is in, Piper waits for text): all free
    # cores. On bigger machines leave one core to the audio and the desktop.
    batch = free if cores <= 2 else max(1, free - 1)
    decode = 1 if cores <= 2 else max(1, min(DECODE_CAP, free - 1))
    if max_batch > 0:
        batch = min(batch, max_batch)
    if max_decode > 0:
        decode = min(decode, max_decode)
    return ThreadPlan(batch=batch, decode=min(decode, batch), cores=cores, busy=busy)


def usable_cores() -> int:
    """CPUs this process may use: the affinity mask, capped by a cgroup CPU quota (containers)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        n = min(n, max(1, math.ceil(quota)))
    return max(1, n)


def _cgroup_quota() -> float | None:
    """The CPU quota in cores, from cgroup v2 (cpu.max) or v1 (cfs_quota_us / cfs_period_us); None = none."""
    try:
        text = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if text and text[0] != "max":
            return int(text[0]) / int(text[1])
    except (OSError, ValueError, IndexError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        if quota > 0 and period > 0:
            return quota / period
    except (OSError, ValueError):
        pass
    return None


def _running_total() -> int:
    """Runnable tasks on the whole machine, the reader included (/proc/loadavg's 4th field: running/total)."""
    return int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])


def _running_own() -> int:
    """Runnable threads of this process (state R in /proc/self/task/*/stat), the reader included."""
    n = 0
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return 1
    for tid in tasks:
        try:
            stat = Path(f"/proc/self/task/{tid}/stat").read_text()
        except OSError:
            continue  # the thread ended meanwhile
        if stat[stat.rfind(")") + 2 : stat.rfind(")") + 3] == "R":
            n += 1
    return max(1, n)


def runnable_elsewhere(samples: int = SAMPLES, gap_s: float = SAMPLE_GAP_S) -> int:
    """Threads of other processes that want a CPU now: the least over a few samples, so that a blip (a daemon
    waking, our own whisper process finishing) does not count while a busy program, runnable in every
    sample, does. 0 where /proc cannot tell (not Linux)."""
    best: int | None = None
    for i in range(samples):
        if i:
            time.sleep(gap_s)
        try:
            n = max(0, _running_total() - _running_own())
        except (OSError, ValueError, IndexError):
            return 0
        best = n if best is None else min(best, n)
    return best or 0


def current_plan(max_batch: int = 0, max_decode: int = 0) -> ThreadPlan:
    return plan(usable_cores(), runnable_elsewhere(), max_batch, max_decode)


class StallWatch:
    """Notices a token that took far longer than this thread count's best: a core was taken away."""

    def __init__(self) -> None:
        self._best: dict[int, float] = {}  # thread count -> shortest token interval seen (kept across replies)
        self._last: float | None = None

    def start(self, now: float) -> None:
        """A new run of tokens begins (after the prompt is decoded, or after the thread count changed)."""
        self._last = now

    def token(self, now: float, threads: int) -> bool:
        """One token was sampled at `now` on `threads` threads. True when it was a stall."""
        last, self._last = self._last, now
        if last is None:
            return False
        dt = now - last
        best = self._best.get(threads)
        if best is None or dt < best:
            self._best[threads] = dt
            return False
        return threads > 1 and dt >= max(STALL_FLOOR_S, STALL_FACTOR * best)
