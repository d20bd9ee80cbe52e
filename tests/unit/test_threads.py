"""The LLM thread policy (engines.threads): never more threads than free cores, scale up on big machines,
drop to one thread when a core is taken away mid-reply."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from voicecli.engines import threads
from voicecli.engines.threads import StallWatch, plan


def test_two_quiet_cores_prefill_on_both_and_decode_on_one() -> None:
    p = plan(cores=2, busy=0)
    assert (p.batch, p.decode) == (2, 1)


def test_one_busy_program_on_two_cores_leaves_one_thread() -> None:
    # Two ggml threads next to one busy process collapse ~140x: one thread is the only safe choice.
    p = plan(cores=2, busy=1)
    assert (p.batch, p.decode) == (1, 1)
    assert plan(cores=2, busy=5).batch == 1


def test_a_big_desktop_uses_its_cores_but_never_all_of_them() -> None:
    p = plan(cores=16, busy=0)
    assert p.batch == 15 and p.decode == threads.DECODE_CAP
    loaded = plan(cores=16, busy=6)
    assert loaded.batch == 9 and loaded.decode == 8
    assert plan(cores=4, busy=0).batch == 3


def test_user_ceilings_apply_but_never_exceed_free_cores() -> None:
    assert plan(cores=16, busy=0, max_batch=4, max_decode=2) == threads.ThreadPlan(4, 2, 16, 0)
    assert plan(cores=2, busy=1, max_batch=8, max_decode=8).batch == 1
    assert plan(cores=1, busy=0).batch == 1


def test_decode_never_exceeds_batch() -> None:
    for cores in range(1, 33):
        for busy in range(0, 40):
            p = plan(cores, busy)
            assert 1 <= p.decode <= p.batch <= max(1, cores)


def test_stall_watch_flags_a_token_far_slower_than_the_best() -> None:
    w = StallWatch()
    w.start(0.0)
    t = 0.0
    for _ in range(10):
        t += 0.01
        assert not w.token(t, 2)
    t += 0.5  # a core was taken away: 50x the best interval
    assert w.token(t, 2)


def test_stall_watch_ignores_jitter_and_single_threads() -> None:
    w = StallWatch()
    w.start(0.0)
    t = 0.0
    for dt in (0.004, 0.005, 0.006, 0.012, 0.02):  # jitter below the absolute floor is not a stall
        t += dt
        assert not w.token(t, 2)
    w.start(t)
    for dt in (0.01, 0.9):  # one thread has nothing to drop to
        t += dt
        assert not w.token(t, 1)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_busy_program_in_another_session_is_seen() -> None:
    busy = subprocess.Popen(
        [sys.executable, "-c", "while True: pass"], start_new_session=True, stdout=subprocess.DEVNULL
    )
    try:
        time.sleep(0.3)
        assert threads.runnable_elsewhere() >= 1
        assert threads.current_plan().busy >= 1
    finally:
        busy.kill()
        busy.wait()


def test_the_cpu_meter_sees_a_busy_program_the_run_queue_missed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The run queue is read at one instant and raced our own threads once (13 requests next to a busy program:
    one planned 2 threads, first token after 7.4 s). The CPU time of the last second does not miss it."""
    meter = threads.CpuMeter()
    monkeypatch.setattr(threads, "METER", meter)
    monkeypatch.setattr(threads, "runnable_elsewhere", lambda *a, **k: 0)
    meter.start()
    time.sleep(1.1)
    quiet = meter.others_cores()
    busy = subprocess.Popen(
        [sys.executable, "-c", "while True: pass"], start_new_session=True, stdout=subprocess.DEVNULL
    )
    try:
        time.sleep(1.2)
        loaded = meter.others_cores()
        assert loaded is not None and loaded >= 0.6, loaded
        if threads.usable_cores() <= 2:
            assert threads.current_plan().batch == 1
        assert threads.busy_elsewhere() >= 1
    finally:
        busy.kill()
        busy.wait()
    assert quiet is not None and quiet < loaded


def test_our_own_whisper_worker_is_not_someone_else(monkeypatch: pytest.MonkeyPatch) -> None:
    """A child in our session (the STT worker) is our own work: it never costs the LLM a thread."""
    meter = threads.CpuMeter()
    monkeypatch.setattr(threads, "METER", meter)
    meter.start()
    worker = subprocess.Popen([sys.executable, "-c", "import time\nt=time.time()\nwhile time.time()-t<1.5: pass"])
    try:
        time.sleep(1.2)
        cores = meter.others_cores()
        assert cores is not None and cores < 0.5, cores
    finally:
        worker.kill()
        worker.wait()


def test_a_child_of_ours_that_ends_is_not_someone_else(monkeypatch: pytest.MonkeyPatch) -> None:
    """A short-lived child in our session (the benchmark's pacat feeding a clip) that ends inside the window: its
    CPU time must not be taken for another program's (it once made a quiet machine look 2 cores busy)."""
    meter = threads.CpuMeter()
    monkeypatch.setattr(threads, "METER", meter)
    meter.start()
    for _ in range(3):
        subprocess.run([sys.executable, "-c", "import time\nt=time.time()\nwhile time.time()-t<0.3: pass"], check=True)
    cores = meter.others_cores()
    assert cores is not None and cores < 0.5, cores
    assert threads.busy_elsewhere() == 0 or threads.runnable_elsewhere() > 0


def test_usable_cores_follows_the_affinity_mask() -> None:
    import os

    assert 1 <= threads.usable_cores() <= len(os.sched_getaffinity(0))


def test_whisper_takes_one_thread_on_two_cores_and_two_on_more(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    assert threads.stt_threads() == 1
    assert threads.stt_threads(3) == 3  # the user's stt.threads wins
    monkeypatch.setattr(threads, "usable_cores", lambda: 16)
    assert threads.stt_threads() == 2


def test_a_niceness_19_whisper_worker_does_not_keep_up_next_to_a_busy_program(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from voicecli.engines.priority import COMPUTE_NICE, PARTIAL_NICE
    from voicecli.engines.stt import WhisperSTT

    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    partials, main = WhisperSTT("/nowhere", nice=PARTIAL_NICE), WhisperSTT("/nowhere", nice=COMPUTE_NICE)
    monkeypatch.setattr(threads, "spare_cores", lambda: 2)
    assert partials.keeps_up and main.keeps_up
    monkeypatch.setattr(threads, "spare_cores", lambda: 1)  # one busy program
    assert not partials.keeps_up and main.keeps_up
