"""Playback through PortAudio to the virtual speaker, recorded back from its monitor (no mocks)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from tests.audio.signals import aligned_corr, noise_clip, speech
from tests.vsound import VSound
from voicecli.audio.playback import Playback

pytestmark = pytest.mark.audio


def test_two_second_clip_plays_back_intact(vsound: VSound, tmp_path: Path) -> None:
    rate = VSound.SPEAKER_RATE
    clip = speech(tmp_path, rate, 2.0)

    async def run() -> tuple[Playback, float, float]:
        pb = Playback(VSound.SPEAKER)
        await pb.start()
        try:
            t0 = time.monotonic()
            pb.begin_reply(7)
            await pb.write(clip)
            pb.end_reply()
            await pb.wait_reply_done(7)
            return pb, t0, time.monotonic()
        finally:
            await pb.stop()

    with vsound.record() as rec:
        pb, t_write, t_done = asyncio.run(run())
    assert pb.rate == rate
    corr, lag = aligned_corr(clip, rec.pcm)
    assert corr >= 0.99
    stats = pb.stats
    assert stats.underruns == 0
    assert pb.played_samples(7) == clip.size
    start = pb.play_start(7)
    assert start is not None and t_write - 0.01 <= start < t_write + 0.5  # PortAudio DAC times jitter a few ms
    # done means heard: not before the last sample's DAC time, and not long after it
    assert start + 2.0 - 0.01 <= t_done < start + 2.0 + 0.3
    # the recording's first clip sample was captured close to the reported DAC time
    assert abs((rec.t0 + lag / rate) - start) < 0.1


async def flush_after(pb: Playback, clip: np.ndarray, seconds: float) -> tuple[asyncio.Task[None], float]:
    """Start reply 1 with `clip` and flush it `seconds` after its first sample played; (writer, play start)."""
    pb.begin_reply(1)
    writer = asyncio.create_task(pb.write(clip))
    while pb.play_start(1) is None:
        await asyncio.sleep(0.005)
    start = pb.play_start(1)
    assert start is not None
    await asyncio.sleep(max(0.0, start + seconds - time.monotonic()))
    pb.flush()
    return writer, start


def test_flush_silences_the_rest_of_the_reply(vsound: VSound) -> None:
    rate = VSound.SPEAKER_RATE
    clip = noise_clip(rate, 5.0)  # never digitally silent, so its audible span is measurable

    async def run() -> tuple[Playback, int, float]:
        pb = Playback(VSound.SPEAKER)
        await pb.start()
        try:
            writer, start = await flush_after(pb, clip, 1.0)
            flushed_at = time.monotonic() - start
            await asyncio.wait_for(pb.wait_reply_done(1), 1.0)
            await writer
            await asyncio.sleep(0.5)  # let whatever was still queued reach the speaker
            return pb, pb.played_samples(1), flushed_at
        finally:
            await pb.stop()

    with vsound.record() as rec:
        pb, played, flushed_at = asyncio.run(run())
    audible = np.flatnonzero(rec.pcm)
    heard_s = (audible[-1] - audible[0] + 1) / rate
    assert 0.9 <= heard_s <= 1.1
    # the history is cut at what the user heard: played_samples agrees with the recording
    assert abs(played / rate - heard_s) < 0.05
    assert flushed_at < 1.05
    assert pb.stats.flushes == 1 and pb.stats.underruns == 0


def test_a_write_waiting_for_room_is_dropped_by_a_flush(vsound: VSound) -> None:
    """A clause longer than the ring waits for room; a barge-in flush must end that write, not let the rest of
    the clause play after the flush point."""
    rate = VSound.SPEAKER_RATE
    clip = noise_clip(rate, 5.0)

    async def run() -> tuple[Playback, float]:
        pb = Playback(VSound.SPEAKER, ring_seconds=1.0)
        await pb.start()
        try:
            writer, _ = await flush_after(pb, clip, 0.5)
            t_flush = time.monotonic()
            await asyncio.wait_for(writer, 1.0)
            writer_s = time.monotonic() - t_flush
            await asyncio.sleep(1.0)  # anything written after the flush would be heard now
            return pb, writer_s
        finally:
            await pb.stop()

    with vsound.record() as rec:
        _, writer_s = asyncio.run(run())
    audible = np.flatnonzero(rec.pcm)
    heard_s = (audible[-1] - audible[0] + 1) / rate
    assert writer_s < 0.2
    assert 0.4 <= heard_s <= 0.7, heard_s  # before the fix: ~4.5 s, the rest of the clip after the flush


def test_idle_silence_is_not_an_underrun_but_a_starved_reply_is(vsound: VSound) -> None:
    rate = VSound.SPEAKER_RATE
    part = noise_clip(rate, 0.3)

    async def run() -> Playback:
        pb = Playback(VSound.SPEAKER)
        await pb.start()
        try:
            await asyncio.sleep(0.3)  # idle: no reply yet
            pb.begin_reply(1)
            await asyncio.sleep(0.2)  # reply begun, audio not there yet (TTS latency): still idle
            await pb.write(part)
            await asyncio.sleep(0.6)  # ran dry in the middle of the reply: an underrun
            await pb.write(part)
            pb.end_reply()
            await pb.wait_reply_done(1)
            await asyncio.sleep(0.3)  # idle again after the reply
            return pb
        finally:
            await pb.stop()

    pb = asyncio.run(run())
    stats = pb.stats
    assert stats.underruns >= 1
    # only the hole between the two parts counts (0.3 s of it), not the idle time around the reply
    assert 0.2 * rate <= stats.underrun_samples <= 0.45 * rate
    assert pb.played_samples(1) == 2 * part.size
