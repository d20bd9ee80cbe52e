"""The loop-lag monitor samples only while a turn runs (issue 17, defect 11).

It used to sleep 20 ms in a loop for the whole session: 50 wake-ups a second while the session
listened to silence, undoing part of Capture.wake_every's idle saving.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from voicecli.pipeline.metrics import LoopLagMonitor


class CountingClock:
    """time.monotonic, counting the monitor's reads: two per 20 ms sample, one loop wake-up each."""

    def __init__(self) -> None:
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return time.monotonic()


async def run_for(monitor: LoopLagMonitor, seconds: float, *, active: bool | None = None) -> None:
    task = asyncio.create_task(monitor.run())
    try:
        if active is not None:
            monitor.active(active)
        await asyncio.sleep(seconds)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def test_an_idle_monitor_sets_no_timer() -> None:
    clock = CountingClock()
    monitor = LoopLagMonitor(clock=clock)
    asyncio.run(run_for(monitor, 0.3))  # nobody has said it is active: the session is listening
    assert clock.reads == 0
    assert monitor.take() == 0.0


def test_an_active_monitor_measures_a_stall_and_stops_when_told() -> None:
    clock = CountingClock()
    monitor = LoopLagMonitor(clock=clock)

    async def scenario() -> tuple[float, int, int]:
        task = asyncio.create_task(monitor.run())
        monitor.active(True)  # a turn starts
        await asyncio.sleep(0.05)
        time.sleep(0.15)  # something blocks the loop
        await asyncio.sleep(0.05)
        stall = monitor.take()
        monitor.active(False)  # back to listening
        await asyncio.sleep(monitor.interval_s * 2)  # a sample under way ends
        reads_when_idle = clock.reads
        await asyncio.sleep(0.3)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return stall, reads_when_idle, clock.reads

    stall, reads_when_idle, reads_at_end = asyncio.run(scenario())
    assert 0.1 < stall < 0.5
    assert monitor.worst_ever >= stall and monitor.take() < 0.1
    assert reads_when_idle > 0 and reads_at_end == reads_when_idle  # no timer once inactive
    assert not monitor.is_active


def test_the_monitor_can_be_made_outside_a_loop_and_started_active() -> None:
    monitor = LoopLagMonitor()
    monitor.active(True)  # e.g. the session's constructor, before asyncio.run
    asyncio.run(run_for(monitor, 0.1))
    assert monitor.is_active and monitor.take() < 0.1
