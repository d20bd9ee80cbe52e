"""Capture through PortAudio from the virtual microphone (no mocks)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from tests.audio.signals import aligned_corr, resample, speech
from tests.vsound import VSound
from voicecli.audio.capture import Capture, Frame
from voicecli.audio.format import FRAME_SAMPLES, SAMPLE_RATE

pytestmark = pytest.mark.audio


async def _capture_while_feeding(
    vsound: VSound,
    pcm: np.ndarray,
    rate: int,
    *,
    force_rate: int | None = None,
    wake_every: int = 1,
    arrivals: list[float] | None = None,
) -> tuple[list[Frame], float, Capture]:
    """Open the mic, feed `pcm`, collect frames until the feed is over (+0.5 s)."""
    cap = Capture(VSound.MIC, force_rate=force_rate)
    cap.wake_every = wake_every
    await cap.start()
    frames: list[Frame] = []
    t_feed = 0.0
    try:
        async for frame in cap.frames():
            if arrivals is not None:
                arrivals.append(time.monotonic())
            frames.append(frame)
            if len(frames) == 10:  # stream is running: start the speech
                t_feed = vsound.feed(pcm, rate)
            if t_feed and frame.t > t_feed + pcm.size / rate + 0.5:
                break
    finally:
        await cap.stop()
    vsound.wait_feeds()
    return frames, t_feed, cap


def _check_frames(frames: list[Frame]) -> np.ndarray:
    assert all(f.pcm.dtype == np.int16 and f.pcm.shape == (FRAME_SAMPLES,) for f in frames)
    dt = np.diff([f.t for f in frames])
    # frames follow each other 20 ms apart on the ADC clock, even when the machine is busy
    assert (dt > 0).all()
    assert abs(float(np.median(dt)) - FRAME_SAMPLES / SAMPLE_RATE) < 1e-4
    return np.concatenate([f.pcm for f in frames])


def test_capture_16k_speech_matches_source(vsound: VSound, tmp_path: Path) -> None:
    src = speech(tmp_path, SAMPLE_RATE, 3.0)
    frames, t_feed, cap = asyncio.run(_capture_while_feeding(vsound, src, SAMPLE_RATE))
    got = _check_frames(frames)
    corr, lag = aligned_corr(src, got)
    assert corr >= 0.99
    stats = cap.stats
    assert stats.rate == SAMPLE_RATE and not stats.resampled
    assert stats.overrun_samples == 0
    # the first source sample reached the mic shortly after it was fed (ADC time on the monotonic clock)
    heard_at = frames[lag // FRAME_SAMPLES].t + (lag % FRAME_SAMPLES) / SAMPLE_RATE
    assert -0.02 < heard_at - t_feed < 0.3


def test_idle_listening_wakes_the_loop_every_other_block_and_loses_nothing(vsound: VSound, tmp_path: Path) -> None:
    src = speech(tmp_path, SAMPLE_RATE, 2.0)
    arrivals: list[float] = []
    frames, _, cap = asyncio.run(_capture_while_feeding(vsound, src, SAMPLE_RATE, wake_every=2, arrivals=arrivals))
    got = _check_frames(frames)  # every frame, 20 ms apart on the ADC clock
    corr, _ = aligned_corr(src, got)
    assert corr >= 0.99 and cap.stats.overrun_samples == 0
    # frames reach the loop in twos: about half as many wake-ups as frames
    wakeups = 1 + int(np.sum(np.diff(arrivals) > 0.005))
    assert wakeups <= 0.65 * len(frames), (wakeups, len(frames))


def test_capture_from_48k_mic_is_resampled_to_16k(vsound: VSound, tmp_path: Path) -> None:
    src16 = speech(tmp_path, SAMPLE_RATE, 3.0)
    src48 = resample(src16, SAMPLE_RATE, 48_000)
    with vsound.mic_rate(48_000):
        frames, _, cap = asyncio.run(_capture_while_feeding(vsound, src48, 48_000, force_rate=48_000))
    got = _check_frames(frames)
    stats = cap.stats
    assert stats.rate == 48_000 and stats.resampled
    assert stats.overrun_samples == 0
    corr, _ = aligned_corr(src16, got)
    assert corr >= 0.95


def test_digital_silence_warns_once(vsound: VSound) -> None:
    warnings: list[str] = []

    async def run() -> Capture:
        cap = Capture(VSound.MIC, on_warning=warnings.append)
        await cap.start()
        t_end = time.monotonic() + 3.6
        try:
            async for _ in cap.frames():
                if time.monotonic() > t_end:
                    break
        finally:
            await cap.stop()
        return cap

    cap = asyncio.run(run())
    assert len(warnings) == 1
    assert cap.silence_warning == warnings[0]
    assert "silence" in warnings[0] and "voicecli devices --test" in warnings[0]
    assert cap.level_dbfs <= -100


def test_unknown_input_device_lists_candidates(vsound: VSound) -> None:
    from voicecli.errors import DeviceError

    with pytest.raises(DeviceError) as info:
        asyncio.run(Capture("no such microphone").start())
    assert "voicecli_mic" in info.value.hint
