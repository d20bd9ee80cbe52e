"""How many threads the LLM may use, decided per request from the cores that are really free.

ggml's threads meet at a barrier after every op. Two llama.cpp threads on two cores next to ONE other busy
process collapse ~140x (SmolLM2: 101 -> 0.7 tokens/s, first token 0.12 -> 5.0 s), because one of them is always
waiting for a core; niceness does not help. One thread is unaffected. So the thread count is never a constant:

* `usable_cores()`: the CPUs this process may run on (affinity mask, cgroup CPU quota).
* `runnable_elsewhere()`: threads of other processes that want a CPU right now (the kernel's run queue,
  /proc/loadavg, minus this process's own runnable threads), sampled a few times: a busy program is runnable
  in every sample, a short blip of a desktop daemon is not. An instant reading races with our own threads
  (one counted runnable in our /proc but not in the run queue's snapshot makes a busy program vanish: one
  request of 13 next to it planned 2 threads and waited 7.4 s for its first token), so:
* `CpuMeter`: the CPU time the rest of the machine used over the last second (/proc/stat minus this process
  and its children, e.g. the whisper worker), sampled in the background every 200 ms. A busy program shows as
  ~1 core whatever the instant. The plan takes the larger of the two readings.
* `plan()`: prefill (and the first clause) on every free core up to a cap; the rest of the reply on fewer,
  leaving a core to Piper, whisper and the audio. On 2 quiet cores: 2 then 1; next to one busy process: 1 and 1;
  on 16 quiet cores: 15 then 8 (decode is memory-bound; llama-server also stops at the physical cores).
* `StallWatch`: while a reply decodes on more than one thread, a token that takes many times the best
  interval seen so far means a core was taken away mid-reply: drop to one thread at once.
"""

from __future__ import annotations

import itertools
import math
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

DECODE_CAP = 8  # decode threads beyond this gain nothing on desktop memory bandwidth
SAMPLES = 3  # run-queue samples per decision
SAMPLE_GAP_S = 0.001
STALL_FACTOR = 6.0  # a token this many times slower than the best seen on these threads is a stall
STALL_FLOOR_S = 0.03  # ... and at least this long (small models decode in a few ms; jitter is not a stall)
METER_EVERY_S = 0.2  # CpuMeter sampling period (a sample costs ~0.5 ms of CPU with 30 threads: 0.25% of a core)
METER_WINDOW_S = 1.0  # ... and the window it reports over
# Cores of CPU time others used over the window from which they count as a busy thread: a busy program shows as
# 0.7-1.0 (it shares the cores with us), a desktop's daemons and our own audio threads as a few hundredths.
BUSY_CORE_SHARE = 0.5


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


def stt_threads(requested: int = 0) -> int:
    """CTranslate2 threads per whisper worker; `requested` > 0 is the user's own (stt.threads). On 2 cores one:
    measured on a 2-core Xeon (KVM), whisper base transcribes the benchmark's questions in 127 ms p50 on one thread
    and 161 ms on two (numpy's BLAS threads off, see voicecli/__init__.py). Its encoder gains (79 -> 53 ms), but
    every decoder step is a few tiny GEMMs whose threads hand over at each op (~2.7 -> ~8 ms a token), and one
    thread leaves the other core to the LLM and the audio."""
    if requested > 0:
        return requested
    return 1 if usable_cores() <= 2 else 2


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


def _busy_ticks() -> int:
    """Clock ticks the whole machine spent busy (/proc/stat's first line minus idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields[:8]) - fields[3] - fields[4]


def _process_ticks(pid: int | str, reaped: bool = False) -> tuple[int, int]:
    """(utime + stime of a process, all its threads, in clock ticks; its session id). `reaped`: with the time of
    its children that have ended and been waited for (cutime + cstime), where an ended child's time goes."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rfind(")") + 2 :].split()
    ticks = int(fields[11]) + int(fields[12])
    if reaped:
        ticks += int(fields[13]) + int(fields[14])
    return ticks, int(fields[3])


def _own_ticks() -> dict[str, int]:
    """CPU ticks of this process and of those of its children in its session (the whisper worker), by pid: the
    CPU time that is ours. A child in a session of its own (the benchmark's busy processes) is someone else's."""
    ticks, session = _process_ticks("self", reaped=True)  # a child that ended moves its time here
    out = {"self": ticks}
    for task in os.listdir("/proc/self/task"):
        try:
            children = Path(f"/proc/self/task/{task}/children").read_text().split()
        except OSError:
            continue
        for child in children:
            try:
                child_ticks, child_session = _process_ticks(child)
            except (OSError, ValueError, IndexError):
                continue  # ended meanwhile
            if child_session == session:
                out[child] = child_ticks
    return out


def _own_delta(before: dict[str, int], after: dict[str, int]) -> int:
    """Our ticks between two readings. A child that ended and was waited for moves its time into our own
    (cutime); one that ended meanwhile and is gone is left out rather than have its lifetime total come off the
    window's (a `pacat` that fed one clip made a quiet machine look 2 cores busy). One that started counts whole."""
    return sum(t - before.get(pid, 0) for pid, t in after.items())


class CpuMeter:
    """The CPU time used by every other process over the last `METER_WINDOW_S`, in cores. A daemon thread reads
    two small /proc files every `METER_EVERY_S` (started on first use)."""

    def __init__(self, every_s: float = METER_EVERY_S, window_s: float = METER_WINDOW_S) -> None:
        self._every_s = every_s
        self._samples: deque[tuple[float, int, dict[str, int]]] = deque(maxlen=max(2, round(window_s / every_s) + 1))
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def _sample(self) -> None:
        try:
            reading = (time.monotonic(), _busy_ticks(), _own_ticks())
        except (OSError, ValueError, IndexError):
            return
        with self._lock:
            self._samples.append(reading)

    def _run(self) -> None:
        while True:
            self._sample()
            time.sleep(self._every_s)

    def start(self) -> None:
        if self._thread is None:
            self._sample()
            self._thread = threading.Thread(target=self._run, name="cpu-meter", daemon=True)
            self._thread.start()

    def others_cores(self) -> float | None:
        """Cores' worth of CPU time others used over the window; None before a window's worth of samples."""
        self.start()
        self._sample()
        with self._lock:
            samples = list(self._samples)
        if len(samples) < 2 or samples[-1][0] - samples[0][0] < 0.3:
            return None
        # Summed sample by sample, so that a child ending between two samples costs at most one gap's worth.
        others = sum((b1 - b0) - _own_delta(o0, o1) for (_, b0, o0), (_, b1, o1) in itertools.pairwise(samples))
        return max(0.0, others / self._hz / (samples[-1][0] - samples[0][0]))


METER = CpuMeter()


def busy_elsewhere() -> int:
    """Busy threads of other processes: the larger of the run-queue reading and the CPU time over the last
    second (see the module docstring)."""
    by_queue = runnable_elsewhere()
    cores = METER.others_cores()
    by_time = 0 if cores is None else math.floor(cores + (1.0 - BUSY_CORE_SHARE))
    return max(by_queue, by_time)


def spare_cores() -> int:
    """Cores other programs leave free by the CPU meter alone: cheap enough for the event loop (no run-queue
    sampling), for decisions that can afford to be a second late."""
    cores = METER.others_cores()
    busy = 0 if cores is None else math.floor(cores + (1.0 - BUSY_CORE_SHARE))
    return max(0, usable_cores() - busy)


def current_plan(max_batch: int = 0, max_decode: int = 0) -> ThreadPlan:
    return plan(usable_cores(), busy_elsewhere(), max_batch, max_decode)


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
