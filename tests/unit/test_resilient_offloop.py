"""While a device is away, the reconnect loop asks PortAudio off the event loop (no audio devices needed)."""

from __future__ import annotations

import asyncio
import time

import pytest

from voicecli.audio import devices
from voicecli.audio.resilient import ResilientSource
from voicecli.errors import DeviceError


def slow_missing_device(spec: object, kind: str) -> bool:
    time.sleep(0.3)  # a PortAudio query while the sound server restarts
    return False


async def worst_lag(seconds: float) -> float:
    worst = 0.0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t = time.monotonic()
        await asyncio.sleep(0.01)
        worst = max(worst, time.monotonic() - t - 0.01)
    return worst


def test_an_outage_never_blocks_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devices, "is_listed", slow_missing_device)

    async def blocking_open(*_: object) -> None:
        time.sleep(0.3)  # PortAudio's query + open of a device that is not there, on the loop
        raise DeviceError("no input device matches 'gone-mic'")

    async def run() -> float:
        source = ResilientSource("gone-mic", warn=lambda _: None, retry_s=0.05)
        monkeypatch.setattr(source, "_open_stream", blocking_open)
        task = asyncio.create_task(source._reconnect())
        lag = await worst_lag(1.5)
        source._stopped = True
        task.cancel()
        return lag

    lag = asyncio.run(run())
    assert lag < 0.1, f"the loop stalled {lag * 1000:.0f} ms"  # before: 300 ms every retry
