"""Callback cost and a microphone that disappears mid-stream."""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path

import pytest

from tests.audio.signals import noise_clip
from tests.vsound import VSound
from voicecli.audio.capture import Capture
from voicecli.audio.playback import Playback
from voicecli.errors import DeviceError

pytestmark = pytest.mark.audio


def test_time_inside_the_callbacks(vsound: VSound) -> None:
    """Full duplex for 4 s: capture at 16 kHz and playback at 44.1 kHz, both callbacks timed."""
    clip = noise_clip(VSound.SPEAKER_RATE, 3.0)

    async def run() -> tuple[Capture, Playback, int]:
        cap = Capture(VSound.MIC)
        pb = Playback(VSound.SPEAKER)
        await cap.start()
        await pb.start()
        frames = 0
        try:

            async def speak() -> None:
                pb.begin_reply(1)
                await pb.write(clip)
                pb.end_reply()

            writer = asyncio.create_task(speak())
            t_end = time.monotonic() + 4.0
            async for _ in cap.frames():
                frames += 1
                if time.monotonic() > t_end:
                    break
            await writer
        finally:
            await cap.stop()
            await pb.stop()
        return cap, pb, frames

    cap, pb, frames = asyncio.run(run())
    cs, ps = cap.stats, pb.stats
    print(f"\ncapture  ({cs.callbacks} callbacks of 20 ms @ {cs.rate} Hz): {cs.callback_ms}")
    print(f"playback ({ps.callbacks} callbacks of 10 ms @ {ps.rate} Hz): {ps.callback_ms}")
    assert frames >= 190 and cs.callbacks >= 190 and ps.callbacks >= 380
    # generous bounds: the measured p99 is ~0.1-0.5 ms on a busy 2-core machine
    assert cs.callback_ms["p99_ms"] < 2.0 and ps.callback_ms["p99_ms"] < 2.0
    assert ps.underruns == 0


def test_microphone_vanishing_mid_stream_raises_device_error(vsound: VSound) -> None:
    """A second rig stands in for a USB mic that gets unplugged: its sound server goes away."""
    other = VSound(Path(tempfile.mkdtemp(prefix="voicecli-vsound-lost-")))
    saved = dict(os.environ)
    other.start()  # exports its env: the stream below connects to this server
    try:

        async def run() -> None:
            cap = Capture(VSound.MIC)
            await cap.start()
            os.environ.clear()
            os.environ.update(saved)
            got = 0
            try:
                async for _ in cap.frames():
                    got += 1
                    if got == 25:  # half a second of audio, then the server is killed
                        other.stop()
            finally:
                await cap.stop()

        t0 = time.monotonic()
        with pytest.raises(DeviceError) as info:
            asyncio.run(asyncio.wait_for(run(), 15))  # a hang would be a TimeoutError instead
        print(f"\ndevice loss reported after {time.monotonic() - t0:.2f} s: {info.value.message}")
        assert "voicecli devices" in info.value.hint
    finally:
        os.environ.clear()
        os.environ.update(saved)
        if other.dir.exists():
            other.stop()
