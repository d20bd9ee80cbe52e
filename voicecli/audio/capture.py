"""Microphone capture: PortAudio callback -> SPSC ring -> async worker -> 20 ms 16 kHz int16 frames.

The callback only copies the block into the ring, notes the block's ADC time and wakes the loop
(`call_soon_threadsafe`, at most once per drain). The worker (on the loop; microseconds per block)
downmixes, resamples with soxr's streaming resampler when the device is not 16 kHz, and cuts exact
20 ms frames, each stamped with the ADC time of its first sample on the time.monotonic() clock.

Overflow policy: the ring holds `ring_seconds`; when the worker stalls the oldest audio is overwritten
and counted (`stats.overrun_samples`, at the device rate).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from voicecli.audio.devices import device_name, resolve_input, sd
from voicecli.audio.format import FRAME_SAMPLES, SAMPLE_RATE, SILENCE_DBFS, float32_to_int16, rms_dbfs
from voicecli.audio.ring import CallbackTimes, RingBuffer
from voicecli.errors import DeviceError

SILENCE_WARN_SECONDS = 3.0
# Clock mapping: the earliest (ADC time - index/rate) seen over this window. A late callback (busy
# machine, stalled server) only ever makes the estimate later, so the minimum is the best one.
CLOCK_WINDOW_SECONDS = 2.0
# No callback for this long (blocks arrive every 20 ms) means the device is gone or wedged.
STALL_SECONDS = 2.0
DEVICE_HINT = (
    "check that the microphone is plugged in and not used exclusively by another program; run `voicecli devices`"
)


@dataclass(frozen=True)
class Frame:
    """20 ms of 16 kHz mono int16 audio (320 samples); `t` = ADC time of pcm[0] on time.monotonic()."""

    pcm: npt.NDArray[np.int16]
    t: float


@dataclass
class CaptureStats:
    device: str = ""
    rate: int = 0  # device rate the stream was opened with
    channels: int = 0
    resampled: bool = False
    frames: int = 0
    overrun_samples: int = 0  # device-rate samples overwritten in the ring before the worker read them
    status_counts: dict[str, int] = field(default_factory=dict)  # PortAudio callback status flags
    callbacks: int = 0
    callback_ms: dict[str, float] = field(default_factory=dict)  # p50 / p99 / max time inside callback
    input_latency_ms: float = 0.0  # PortAudio's input latency, subtracted from callback times


class Capture:
    """An input stream delivering `Frame`s through `frames()`; `start()` first, `stop()` at the end."""

    def __init__(
        self,
        device: int | str | None = None,
        *,
        ring_seconds: float = 2.0,
        force_rate: int | None = None,
        on_warning: Callable[[str], None] | None = None,
    ) -> None:
        self._spec = device
        self._ring_seconds = ring_seconds
        self._force_rate = force_rate
        self._on_warning = on_warning
        self.level_dbfs: float = SILENCE_DBFS
        self.silence_warning: str | None = None
        self._stream: Any = None
        self._ring: RingBuffer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._signalled = False
        self._unsignalled = 0  # blocks written since the loop was last woken
        # Blocks per loop wake-up: 1 while a turn is under way; 2 while idly listening, where 20 ms later
        # hardly matters (the VAD needs 100 ms of voice to start anyway) and half the wake-ups are saved.
        self.wake_every = 1
        self._running = False
        self._finished = False  # the stream ended without stop(): device lost
        self._error: str | None = None
        self._times = CallbackTimes()
        self._status = {"input_overflow": 0, "input_underflow": 0, "other": 0}
        self._anchor: tuple[int, float] = (0, 0.0)  # (absolute ring index of block start, its ADC time)
        self._latency = 0.0
        self._stats = CaptureStats()

    # -- set-up ------------------------------------------------------------------------------------

    def _choose_format(self, mod: Any, index: int | None) -> tuple[int, int]:
        if self._force_rate:
            return int(self._force_rate), 1
        try:
            mod.check_input_settings(device=index, samplerate=SAMPLE_RATE, channels=1, dtype="int16")
            return SAMPLE_RATE, 1
        except Exception:  # the device refuses 16 kHz mono: use its own format
            pass
        info = mod.query_devices(index, kind="input")
        rate = int(info["default_samplerate"])
        for ch in (1, max(1, min(2, int(info["max_input_channels"])))):
            try:
                mod.check_input_settings(device=index, samplerate=rate, channels=ch, dtype="int16")
            except Exception:
                continue
            self._notes.append(
                f"the microphone {info['name']!r} refuses 16 kHz mono; recording at {rate} Hz, "
                f"{ch} channel{'s' if ch > 1 else ''}, converted to 16 kHz mono"
            )
            return rate, ch
        raise DeviceError(
            f"input device {info['name']!r} accepts neither 16 kHz mono nor {rate} Hz int16",
            hint="pick another input with `voicecli devices --input ...`",
        )

    async def start(self) -> None:
        mod = sd()
        self._loop = asyncio.get_running_loop()
        index = resolve_input(self._spec)
        self._notes: list[str] = []
        rate, channels = self._choose_format(mod, index)
        self._rate, self._channels = rate, channels
        self._ring = RingBuffer(max(int(self._ring_seconds * rate), rate // 10), channels)
        self._resampler: Any = None
        if rate != SAMPLE_RATE:
            import soxr

            self._resampler = soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
        self._pending = np.empty(0, dtype=np.int16)  # 16 kHz samples not yet cut into a frame
        self._segment = (0, 0)  # (ring index where the current resampler run began, 16 kHz samples out)
        self._next_in = 0  # ring index the worker expects next (a jump means an overrun)
        self._zero_run = 0
        self._bases: deque[tuple[float, float]] = deque()  # (anchor time, base), increasing base
        try:
            self._stream = mod.InputStream(
                device=index,
                samplerate=rate,
                channels=channels,
                dtype="int16",
                blocksize=rate // 50,  # 20 ms blocks line up with the frames
                latency="low",
                callback=self._callback,
                finished_callback=self._finished_cb,
            )
            self._latency = float(self._stream.latency)
            self._running = True
            self._stream.start()
        except mod.PortAudioError as exc:
            self._running = False
            raise DeviceError(f"cannot open the input device: {exc}", hint=DEVICE_HINT) from None
        self._stats = CaptureStats(
            device=device_name(index, "input"), rate=rate, channels=channels, resampled=rate != SAMPLE_RATE
        )
        for note in self._notes:  # format fallbacks, once the stream really runs with them
            self._warn(note)

    # -- audio thread ------------------------------------------------------------------------------

    def _callback(self, indata: Any, frames: int, time_info: Any, status: Any) -> None:
        t0 = time.perf_counter_ns()
        if status:
            if status.input_overflow:
                self._status["input_overflow"] += 1
            elif status.input_underflow:
                self._status["input_underflow"] += 1
            else:
                self._status["other"] += 1
        ring = self._ring
        assert ring is not None
        start = ring.write_index
        ring.write(indata)
        # ADC time of the block's first sample: arrival minus the stream's input latency (at least
        # one block). PortAudio's inputBufferAdcTime is not used: over ALSA->PulseAudio it drifts by
        # ~0.5% against the sample count (measured), while the callback clock does not.
        self._anchor = (start, time.monotonic() - max(self._latency, frames / self._rate))
        self._unsignalled += 1
        if not self._signalled and self._unsignalled >= self.wake_every:
            self._signalled = True
            self._unsignalled = 0
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._wake.set)
        self._times.add(t0)

    def _finished_cb(self) -> None:
        if self._running:
            self._finished = True
            loop = self._loop
            if loop is not None and not loop.is_closed():
                loop.call_soon_threadsafe(self._wake.set)

    # -- worker ------------------------------------------------------------------------------------

    async def frames(self) -> AsyncIterator[Frame]:
        """Yield frames as the callback delivers audio; raises DeviceError if the device goes away."""
        if self._ring is None:
            raise RuntimeError("Capture.start() must be awaited before frames()")
        ring = self._ring
        while self._running:
            try:
                async with asyncio.timeout(STALL_SECONDS):  # no task per frame, unlike wait_for
                    await self._wake.wait()
            except TimeoutError:
                self._raise_lost(f"delivered no audio for {STALL_SECONDS:.0f} s")
            self._wake.clear()
            self._signalled = False
            if not self._running:
                break
            if self._finished:
                self._raise_lost("stopped delivering audio")
            end = ring.read_index + ring.available()
            block = ring.read()
            if block.shape[0] == 0:
                continue
            start = ring.read_index - block.shape[0]
            for frame in self._process(block, start, end):
                yield frame

    def _raise_lost(self, what: str) -> None:
        self._running = False
        raise DeviceError(f"the input device {self._stats.device!r} {what}", hint=DEVICE_HINT)

    def _process(self, block: npt.NDArray[np.int16], start: int, end: int) -> list[Frame]:
        if start != self._next_in:  # overrun: samples were lost, restart the resampler's time base
            self._pending = self._pending[:0]
            self._segment = (start, 0)
            if self._resampler is not None:
                import soxr

                self._resampler = soxr.ResampleStream(self._rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
        self._next_in = start + block.shape[0]
        if self._channels > 1 or self._resampler is not None:
            x = block.astype(np.float32) / 32768.0
            mono = x.mean(axis=1) if x.ndim == 2 else x
            if self._resampler is not None:
                mono = self._resampler.resample_chunk(mono)
            pcm16 = float32_to_int16(mono)
        else:
            pcm16 = block
        pcm = np.concatenate([self._pending, pcm16]) if self._pending.size else pcm16
        seg_start, seg_out = self._segment
        base = self._clock_base()
        out: list[Frame] = []
        n_frames = pcm.shape[0] // FRAME_SAMPLES
        for k in range(n_frames):
            chunk = pcm[k * FRAME_SAMPLES : (k + 1) * FRAME_SAMPLES].copy()
            # first sample's input index -> time, via the latest callback's (index, ADC time) anchor
            in_idx = seg_start + (seg_out + k * FRAME_SAMPLES) * self._rate / SAMPLE_RATE
            out.append(Frame(pcm=chunk, t=base + in_idx / self._rate))
        used = n_frames * FRAME_SAMPLES
        self._pending = pcm[used:].copy()
        self._segment = (seg_start, seg_out + used)
        if out:
            self.level_dbfs = rms_dbfs(out[-1].pcm)
            self._stats.frames += len(out)
            self._watch_silence(pcm[:used])
        return out

    def _clock_base(self) -> float:
        """time.monotonic() of ring index 0, filtered over recent callback anchors."""
        idx, t = self._anchor
        base = t - idx / self._rate
        bases = self._bases
        while bases and bases[0][0] < t - CLOCK_WINDOW_SECONDS:
            bases.popleft()
        while bases and bases[-1][1] >= base:  # monotonic deque: front holds the window minimum
            bases.pop()
        bases.append((t, base))
        return bases[0][1]

    def _warn(self, message: str) -> None:
        if self._on_warning is not None:
            self._on_warning(message)

    def _watch_silence(self, pcm: npt.NDArray[np.int16]) -> None:
        if self.silence_warning is not None:
            return
        self._zero_run = self._zero_run + pcm.size if not pcm.any() else 0
        if self._zero_run >= SILENCE_WARN_SECONDS * SAMPLE_RATE:
            self.silence_warning = (
                f"the microphone {self._stats.device!r} has delivered only digital silence for "
                f"{SILENCE_WARN_SECONDS:.0f} s: is it muted, the wrong device, or blocked by permissions? "
                "Check with `voicecli devices --test`."
            )
            if self._on_warning is not None:
                self._on_warning(self.silence_warning)

    # -- reporting / shutdown ----------------------------------------------------------------------

    @property
    def rate(self) -> int:
        """Device rate the stream runs at (frames are always 16 kHz)."""
        return self._rate

    @property
    def stats(self) -> CaptureStats:
        s = self._stats
        if self._ring is not None:
            s.overrun_samples = self._ring.overrun_samples
        s.status_counts = dict(self._status)
        s.callbacks = self._times.count
        s.callback_ms = self._times.summary_ms()
        s.input_latency_ms = 1000.0 * self._latency
        return s

    async def stop(self) -> None:
        self._running = False
        self._wake.set()
        stream, self._stream = self._stream, None
        if stream is not None:
            mod = sd()
            # abort: no need to drain input; off the loop in case the device is wedged (or gone)
            with contextlib.suppress(mod.PortAudioError):
                await asyncio.to_thread(lambda: (stream.abort(), stream.close()))

    async def __aenter__(self) -> Capture:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
