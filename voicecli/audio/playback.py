"""Speaker output: loop writes int16 into an SPSC ring; the PortAudio callback pulls from it.

The callback copies (zero-filling when the ring runs dry), applies a pending flush, logs each block's
(ring span, DAC time) in preallocated arrays and wakes the loop. Everything else - which reply a
sample belonged to, when a reply started and finished playing - is worked out on the loop from that
block log, so the callback stays allocation-free and lock-free.

Policy: `write()` waits for room (producer backpressure); `flush()` drops everything queued and the
output is silent from the very next callback. An underrun is counted only inside a reply (after its
first sample played and before its last one was written); idle silence is not an underrun.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from voicecli.audio.devices import device_name, monotonic_offset, resolve_output, sd
from voicecli.audio.ring import CallbackTimes, RingBuffer
from voicecli.errors import DeviceError

BLOCK_SECONDS = 0.010  # output block: a flush takes effect within one block
LOG_BLOCKS = 1024  # block log entries (~10 s at 10 ms blocks) the loop may lag behind
OPEN = 1 << 62  # "end not known yet" for a reply still being written
DEVICE_HINT = "check that the speaker/headphones are connected; run `voicecli devices`"


@dataclass
class PlaybackStats:
    device: str = ""
    rate: int = 0
    channels: int = 0
    underruns: int = 0  # callbacks that ran dry inside a reply
    underrun_samples: int = 0
    flushes: int = 0
    status_counts: dict[str, int] = field(default_factory=dict)
    callbacks: int = 0
    callback_ms: dict[str, float] = field(default_factory=dict)
    log_overflows: int = 0  # loop fell > LOG_BLOCKS behind; reply timing may be incomplete
    dac_time_source: str = ""


@dataclass
class _Reply:
    start: int  # ring index of the first sample
    end: int = OPEN  # ring index after the last sample (OPEN while writing)
    heard: int = 0  # samples whose DAC time has passed (credited from fully played blocks)
    play_start: float | None = None
    finishing: bool = False  # a done time has been scheduled
    done: asyncio.Event = field(default_factory=asyncio.Event)


class Playback:
    """An output stream playing replies; see the module docstring for the timing model."""

    def __init__(
        self,
        device: int | str | None = None,
        *,
        samplerate: int | None = None,
        ring_seconds: float = 10.0,
        on_warning: Callable[[str], None] | None = None,
    ) -> None:
        self._spec = device
        self._ring_seconds = ring_seconds
        self._on_warning = on_warning
        self._index = resolve_output(device)
        mod = sd()
        info = mod.query_devices(self._index, kind="output")
        self._info_name = str(info["name"])
        self.rate: int = int(samplerate or info["default_samplerate"])
        self._notes: list[str] = []  # format fallbacks, reported once the stream is open
        default_rate = int(info["default_samplerate"])
        refused = samplerate and default_rate != samplerate and not _accepts(mod, self._index, self.rate, 2)
        if refused and _accepts(mod, self._index, default_rate, 2):  # the device's own rate
            self.rate = default_rate
            self._notes.append(f"the speaker {self._info_name!r} refuses {samplerate} Hz; playing at {self.rate} Hz")
        self._stream: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ring = RingBuffer(int(ring_seconds * self.rate), 1)
        self._block = max(1, int(self.rate * BLOCK_SECONDS))
        self._mono = np.zeros((8192, 1), dtype=np.int16)
        # block log written by the callback: ring span [b_start, b_end) reached the DAC at b_dac
        self._b_start = np.zeros(LOG_BLOCKS, dtype=np.int64)
        self._b_end = np.zeros(LOG_BLOCKS, dtype=np.int64)
        self._b_dac = np.zeros(LOG_BLOCKS, dtype=np.float64)
        self._b_count = 0
        self._seen = 0  # loop: block log entries processed
        self._inflight: deque[tuple[int, int, float]] = deque()  # handed to PortAudio, not yet heard
        # loop -> callback
        self._flush_to = 0  # ring index below which everything is dropped
        self._cur_start = 0  # first ring index of the newest reply
        self._expect_until = 0  # ring index up to which audio is still expected (underrun = ran dry before)
        # callback -> loop
        self._signalled = False
        self._underruns = 0
        self._underrun_samples = 0
        self._status = {"output_underflow": 0, "output_overflow": 0, "priming_output": 0, "other": 0}
        self._times = CallbackTimes()
        self._dac_zero = False
        self._finished = False
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._replies: dict[int, _Reply] = {}
        self._current: int | None = None
        self._flushes = 0
        self._dropped_writes = 0  # writes cut short by a flush or a newer reply (see write)
        self._log_overflows = 0
        self._device_name = ""
        self._pump: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()  # the stream ended without stop(): the device went away

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        mod = sd()
        self._loop = asyncio.get_running_loop()
        channels = 1
        if not _accepts(mod, self._index, self.rate, 1) and _accepts(mod, self._index, self.rate, 2):
            channels = 2  # some hardware only takes stereo: duplicate the mono signal
            self._notes.append(f"the speaker {self._info_name!r} refuses mono; playing the voice on 2 channels")
        self._channels = channels
        try:
            self._stream = mod.OutputStream(
                device=self._index,
                samplerate=self.rate,
                channels=channels,
                dtype="int16",
                blocksize=self._block,
                latency="low",
                callback=self._callback,
                finished_callback=self._finished_cb,
            )
            self._offset = monotonic_offset(lambda: self._stream.time)
            self._latency = float(self._stream.latency)
            self._stream.start()
        except mod.PortAudioError as exc:
            raise DeviceError(f"cannot open the output device: {exc}", hint=DEVICE_HINT) from None
        self._device_name = device_name(self._index, "output")
        for note in self._notes:
            self._warn(note)
        self._pump = asyncio.create_task(self._pump_loop(), name="playback-pump")

    async def stop(self) -> None:
        stream, self._stream = self._stream, None
        if self._pump is not None:
            self._pump.cancel()
            self._pump = None
        if stream is not None:
            mod = sd()
            with contextlib.suppress(mod.PortAudioError):  # the device may already be gone
                await asyncio.to_thread(lambda: (stream.abort(), stream.close()))
        for reply in self._replies.values():
            reply.done.set()

    async def __aenter__(self) -> Playback:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- audio thread ------------------------------------------------------------------------------

    def _callback(self, outdata: Any, frames: int, time_info: Any, status: Any) -> None:
        t0 = time.perf_counter_ns()
        if status:
            if status.output_underflow:
                self._status["output_underflow"] += 1
            elif status.priming_output:
                self._status["priming_output"] += 1
            elif status.output_overflow:
                self._status["output_overflow"] += 1
            else:
                self._status["other"] += 1
        ring = self._ring
        ring.skip_to(self._flush_to)
        start = ring.read_index
        buf = self._mono[:frames] if frames <= self._mono.shape[0] else np.zeros((frames, 1), np.int16)
        got = ring.read_into(buf)
        buf[got:] = 0
        outdata[:] = buf  # broadcasts mono to every channel
        end = start + got
        if got < frames and self._cur_start < end < self._expect_until:
            self._underruns += 1
            self._underrun_samples += frames - got
        dac = time_info.outputBufferDacTime
        if dac > 0:
            dac += self._offset
        else:  # host API without timestamps: callback time + output latency
            self._dac_zero = True
            dac = time.monotonic() + self._latency
        i = self._b_count % LOG_BLOCKS
        self._b_start[i] = start
        self._b_end[i] = end
        self._b_dac[i] = dac
        self._b_count += 1
        if got and not self._signalled:  # idle callbacks leave the loop alone
            self._signalled = True
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._wake.set)
        self._times.add(t0)

    def _finished_cb(self) -> None:
        if self._stream is not None:
            self._finished = True
            loop = self._loop
            if loop is not None and not loop.is_closed():
                loop.call_soon_threadsafe(self._wake.set)

    # -- loop side ---------------------------------------------------------------------------------

    async def _pump_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            self._signalled = False
            self._digest(time.monotonic())
            if self._ring.free() > 0:
                self._room.set()
            if self._finished:
                self._room.set()
                for reply in self._replies.values():
                    reply.done.set()
                self._lost.set()
                return

    def _digest(self, now: float) -> None:
        """Turn new block-log entries into reply start times, heard counts and done events."""
        count = self._b_count
        if count - self._seen > LOG_BLOCKS:
            self._log_overflows += 1
            self._seen = count - LOG_BLOCKS
        for k in range(self._seen, count):
            i = k % LOG_BLOCKS
            s, e, dac = int(self._b_start[i]), int(self._b_end[i]), float(self._b_dac[i])
            if e > s:
                self._inflight.append((s, e, dac))
                for reply in self._replies.values():
                    if reply.play_start is None and s <= reply.start < e:
                        reply.play_start = dac + (reply.start - s) / self.rate
        self._seen = count
        while self._inflight:
            s, e, dac = self._inflight[0]
            if dac + (e - s) / self.rate > now:
                break
            self._inflight.popleft()
            for reply in self._replies.values():
                # only samples handed to the DAC appear in blocks; flushed ones never do
                reply.heard += _overlap(s, e, reply.start, reply.end)
        for reply in self._replies.values():
            if reply.done.is_set() or reply.finishing or reply.end == OPEN:
                continue
            if reply.end <= reply.start or self._ring.read_index >= reply.end:
                reply.finishing = True
                self._finish_at(reply, reply.end)

    def _finish_at(self, reply: _Reply, last: int) -> None:
        """Set `done` when the sample before ring index `last` has left the DAC."""
        t_done = self._dac_of(last)
        loop = self._loop
        if t_done is None or loop is None or t_done <= time.monotonic():
            reply.done.set()
        else:
            loop.call_at(loop.time() + (t_done - time.monotonic()), reply.done.set)

    def _dac_of(self, index: int) -> float | None:
        for s, e, dac in self._inflight:
            if s <= index <= e:
                return dac + (index - s) / self.rate
        return None

    @property
    def device_name(self) -> str:
        return self._device_name or self._info_name

    @property
    def lost(self) -> bool:
        """True once the stream has ended on its own (device unplugged or the sound server gone)."""
        return self._finished or self._lost.is_set()

    @property
    def idle(self) -> bool:
        """No reply is being written or still playing."""
        return self._current is None and all(r.done.is_set() for r in self._replies.values())

    async def wait_lost(self) -> None:
        """Return when the stream ends on its own; replies in flight are marked done at that moment."""
        await self._lost.wait()

    def _warn(self, message: str) -> None:
        if self._on_warning is not None:
            self._on_warning(message)

    def begin_reply(self, reply_id: int) -> None:
        """Audio written from now on belongs to `reply_id` (ends the previous reply if still open)."""
        if self._current is not None:
            self.end_reply()
        start = self._ring.write_index
        self._replies[reply_id] = _Reply(start=start)
        self._current = reply_id
        self._cur_start = start
        self._expect_until = OPEN
        self._prune()

    async def write(self, pcm: npt.NDArray[np.int16]) -> None:
        """Queue int16 mono samples at `rate` for the current reply; waits while the ring is full.

        A write belongs to the reply that was current when it began: if a flush (barge-in) or a new reply
        comes while it waits for room, the rest of it is dropped, never played after the flush point."""
        data = np.asarray(pcm, dtype=np.int16).reshape(-1)
        chunk = max(1, self._ring.capacity // 2)
        pos = 0
        flushes, reply = self._flushes, self._current
        while pos < data.size:
            if self._flushes != flushes or self._current != reply:
                self._dropped_writes += 1
                return
            if self._finished:
                raise DeviceError(f"the output device {self._device_name!r} stopped", hint=DEVICE_HINT)
            n = min(chunk, data.size - pos, self._ring.free())
            if n == 0:  # full: the callback consumes (and wakes the pump) at least every block
                self._room.clear()
                if self._ring.free() == 0:
                    await self._room.wait()
                continue
            self._ring.write(data[pos : pos + n])
            pos += n

    def end_reply(self) -> None:
        """No more audio for the current reply."""
        if self._current is None:
            return
        reply = self._replies[self._current]
        reply.end = self._ring.write_index
        self._expect_until = reply.end
        self._current = None
        if reply.end == reply.start:
            reply.done.set()
        else:
            self._digest(time.monotonic())

    def flush(self) -> None:
        """Drop everything queued; the output is silent from the very next callback."""
        w = self._ring.write_index
        self._flush_to = w
        self._expect_until = w
        self._flushes += 1
        for reply in self._replies.values():
            if not reply.done.is_set():
                if reply.end == OPEN:
                    reply.end = w
                reply.done.set()
        self._current = None
        self._room.set()

    def played_samples(self, reply_id: int) -> int:
        """Samples of `reply_id` whose DAC time has passed (what the user actually heard)."""
        reply = self._replies.get(reply_id)
        if reply is None:
            return 0
        now = time.monotonic()
        self._digest(now)
        heard = reply.heard
        for s, e, dac in self._inflight:  # partly played blocks
            n = int(max(0.0, min(e - s, (now - dac) * self.rate)))
            heard += _overlap(s, s + n, reply.start, reply.end)
        return heard

    def play_start(self, reply_id: int) -> float | None:
        """DAC time (time.monotonic() clock) of the reply's first sample, once it has been handed over."""
        self._digest(time.monotonic())
        reply = self._replies.get(reply_id)
        return None if reply is None else reply.play_start

    async def wait_reply_done(self, reply_id: int) -> None:
        """Return once all of the reply's audio has played, or the reply was flushed."""
        reply = self._replies.get(reply_id)
        if reply is not None:
            await reply.done.wait()

    def _prune(self) -> None:
        if len(self._replies) > 64:  # keep recent replies only; old ones are long finished
            for key in list(self._replies)[:-32]:
                if self._replies[key].done.is_set():
                    del self._replies[key]

    @property
    def stats(self) -> PlaybackStats:
        return PlaybackStats(
            device=self._device_name,
            rate=self.rate,
            channels=getattr(self, "_channels", 0),
            underruns=self._underruns,
            underrun_samples=self._underrun_samples,
            flushes=self._flushes,
            status_counts=dict(self._status),
            callbacks=self._times.count,
            callback_ms=self._times.summary_ms(),
            log_overflows=self._log_overflows,
            dac_time_source="callback-clock" if self._dac_zero else "portaudio",
        )


def _accepts(mod: Any, index: int | None, rate: int, max_channels: int) -> bool:
    """Whether the output takes int16 at `rate` with 1 (or up to `max_channels`) channels."""
    for channels in range(1, max_channels + 1):
        try:
            mod.check_output_settings(device=index, samplerate=rate, channels=channels, dtype="int16")
        except Exception:  # PortAudioError or ValueError: refused
            continue
        return True
    return False


def _overlap(a0: int, a1: int, b0: int, b1: int) -> int:
    return max(0, min(a1, b1) - max(a0, b0))
