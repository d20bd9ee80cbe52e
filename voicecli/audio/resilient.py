"""Audio devices that may vanish mid-conversation (a USB headset unplugged, a sound server restarted).

`ResilientSource` and `ResilientSink` stand between the Session and the PortAudio streams. When a stream
ends on its own they say so ("microphone lost: ..." / "speaker lost: ..."), keep the session as it is,
try to open the same device again (by the name or index the user gave) every `RETRY_SECONDS`, and carry
on when it is back ("... back: ..."). The session never sees an exception:

* mic lost: a short stretch of silence is fed to the turn detector, so speech cut off by the loss ends
  as an utterance instead of leaving the detector stuck mid-speech; then frames simply pause.
* speaker lost: the reply in flight is dropped (its `wait_reply_done` returns at once, like a flush), and
  replies written while the speaker is away go nowhere, so no turn hangs waiting for a dead device.

PortAudio only lists devices that existed when it was initialised. If the device's name has left the
list, a `Rescanner` re-initialises PortAudio; that invalidates every open stream, so it closes and
reopens the other side around it, and only while no reply is playing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import numpy as np
import numpy.typing as npt

from voicecli.audio import devices
from voicecli.audio.capture import Capture, Frame
from voicecli.audio.format import FRAME_SAMPLES
from voicecli.audio.playback import Playback
from voicecli.errors import DeviceError

RETRY_SECONDS = 1.0
FRAME_S = 0.02

Warn = Callable[[str], None]


async def _listed(spec: int | str | None, kind: str, rescanner: Rescanner | None) -> bool:
    """Whether the device is back, asked off the event loop (PortAudio queries block for milliseconds to
    seconds while a sound server restarts); with a rescanner, PortAudio's list is refreshed first."""
    if await asyncio.to_thread(devices.is_listed, spec, kind):
        return True
    if rescanner is None or not await rescanner.rescan():
        return False
    return await asyncio.to_thread(devices.is_listed, spec, kind)


class Rescanner:
    """Re-initialises PortAudio with every stream closed around it (see the module docstring)."""

    def __init__(self) -> None:
        self.source: ResilientSource | None = None
        self.sink: ResilientSink | None = None
        self._lock = asyncio.Lock()

    async def rescan(self) -> bool:
        """False when it had to be skipped (a reply is playing); the caller retries later."""
        if self.sink is not None and not self.sink.idle:
            return False
        async with self._lock:
            sides = [s for s in (self.source, self.sink) if s is not None and s.is_open]
            for side in sides:
                await side.suspend()
            try:
                await asyncio.to_thread(devices.rescan)
            finally:
                for side in sides:
                    await side.resume()
        return True


class ResilientSource:
    """A `FrameSource` over `Capture` that survives the microphone going away."""

    def __init__(
        self,
        device: int | str | None,
        *,
        warn: Warn,
        flush_s: float = 1.0,
        retry_s: float = RETRY_SECONDS,
        rescanner: Rescanner | None = None,
    ) -> None:
        self._spec = device
        self._warn = warn
        self._flush_frames = max(1, round(flush_s / FRAME_S))
        self._retry_s = retry_s
        self._rescanner = rescanner
        if rescanner is not None:
            rescanner.source = self
        self._cap: Capture | None = None
        self._open = asyncio.Event()  # a stream is open (cleared while suspended for a rescan)
        self._stopped = False
        self._outage = False  # "lost" was said and "back" not yet
        self._overruns_before = 0  # from streams that are closed
        self._xruns_before = 0
        self.name = str(device or "default")
        self._wake_every = 1

    @property
    def is_open(self) -> bool:
        return self._cap is not None

    def relax(self, idle: bool) -> None:
        """Idle listening: the capture wakes the loop every other block (see Capture.wake_every)."""
        self._wake_every = 2 if idle else 1
        if self._cap is not None:
            self._cap.wake_every = self._wake_every

    @property
    def overrun_samples(self) -> int:
        current = self._cap.stats.overrun_samples if self._cap is not None else 0
        return self._overruns_before + current

    @property
    def xruns(self) -> int:
        """Input overflows the device reported (samples it dropped before our callback took them)."""
        current = self._cap.stats.status_counts.get("input_overflow", 0) if self._cap is not None else 0
        return self._xruns_before + current

    async def start(self) -> None:
        """Open the microphone; a device that is missing at start is an error for the caller."""
        await self._open_stream()
        assert self._cap is not None
        self.name = self._cap.stats.device or self.name

    async def _open_stream(self) -> None:
        cap = Capture(self._spec, on_warning=self._warn)
        cap.wake_every = self._wake_every
        try:
            await cap.start()
        except BaseException:
            await cap.stop()
            raise
        self._cap = cap
        self._open.set()

    async def _close_stream(self) -> None:
        cap, self._cap = self._cap, None
        self._open.clear()
        if cap is not None:
            self._overruns_before += cap.stats.overrun_samples
            self._xruns_before += cap.stats.status_counts.get("input_overflow", 0)
            await cap.stop()

    async def frames(self) -> AsyncIterator[Frame]:
        last_t: float | None = None
        while not self._stopped:
            await self._open.wait()
            cap = self._cap
            if cap is None:
                continue
            try:
                async for frame in cap.frames():
                    if self._outage:
                        self._outage = False
                        self._warn(f"microphone back: {self.name}; listening again")
                    last_t = frame.t
                    yield frame
            except DeviceError as exc:
                if self._stopped:
                    return
                if self._cap is cap:
                    await self._close_stream()
                if not self._outage:
                    self._outage = True
                    self._warn(
                        f"microphone lost: {self.name} ({exc.message}); the conversation is kept, "
                        f"trying to reopen it every {self._retry_s:g} s"
                    )
                    if last_t is not None:
                        # Close whatever the turn detector was hearing when the mic went away.
                        for k in range(1, self._flush_frames + 1):
                            yield Frame(np.zeros(FRAME_SAMPLES, np.int16), last_t + k * FRAME_S)
                await self._reconnect()
            # A normal end means stop() or a suspend for a rescan: the loop waits for the reopened stream.

    async def _reconnect(self) -> None:
        while not self._stopped:
            await asyncio.sleep(self._retry_s)
            if self._stopped or self._cap is not None:
                return
            if not await _listed(self._spec, "input", self._rescanner):
                continue  # still gone: no stream open is tried (it would block the loop every second)
            if self._cap is not None:  # the rescan reopened it
                return
            with contextlib.suppress(DeviceError):
                await self._open_stream()
                return

    async def suspend(self) -> None:
        await self._close_stream()

    async def resume(self) -> None:
        with contextlib.suppress(DeviceError):  # still missing: frames() keeps retrying
            await self._open_stream()

    async def stop(self) -> None:
        self._stopped = True
        await self._close_stream()
        self._open.set()  # wake frames() so it ends


class ResilientSink:
    """An `AudioSink` over `Playback` that survives the speaker going away; the rate never changes, so
    audio synthesised for it stays valid across a reopen."""

    def __init__(
        self,
        device: int | str | None,
        *,
        warn: Warn,
        retry_s: float = RETRY_SECONDS,
        rescanner: Rescanner | None = None,
    ) -> None:
        self._spec = device
        self._warn = warn
        self._retry_s = retry_s
        self._rescanner = rescanner
        if rescanner is not None:
            rescanner.sink = self
        self._pb: Playback | None = None
        self._owner: dict[int, Playback] = {}  # reply id -> the stream it was written to
        self._current: int | None = None
        self._underruns_before = 0
        self._xruns_before = 0  # the device's own underflows (PortAudio status), from streams that are closed
        self._watch: asyncio.Task[None] | None = None
        self._stopped = False
        self.rate = 0
        self.name = str(device or "default")

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the speaker; a device that is missing at start is an error for the caller."""
        await self._open_stream(None)
        assert self._pb is not None
        self.rate = self._pb.rate
        self.name = self._pb.device_name or self.name

    async def _open_stream(self, rate: int | None) -> None:
        pb = Playback(self._spec, samplerate=rate, on_warning=self._warn)
        try:
            await pb.start()
        except BaseException:
            await pb.stop()
            raise
        self._pb = pb
        self._watch = asyncio.create_task(self._watchdog(pb), name="speaker-watchdog")

    async def _close_stream(self) -> None:
        pb, self._pb = self._pb, None
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if pb is not None:
            self._underruns_before += pb.stats.underruns
            self._xruns_before += pb.stats.status_counts.get("output_underflow", 0)
            await pb.stop()

    async def _watchdog(self, pb: Playback) -> None:
        await pb.wait_lost()
        if self._pb is pb:
            self._pb = None
            self._underruns_before += pb.stats.underruns
            self._xruns_before += pb.stats.status_counts.get("output_underflow", 0)
        self._warn(
            f"speaker lost: {self.name}; the reply in progress is dropped, the conversation is kept, "
            f"trying to reopen it every {self._retry_s:g} s"
        )
        with contextlib.suppress(DeviceError):
            await pb.stop()
        while not self._stopped:
            await asyncio.sleep(self._retry_s)
            if not await _listed(self._spec, "output", self._rescanner):
                continue
            if self._pb is not None:  # the rescan reopened it
                break
            try:
                await self._open_stream(self.rate)
            except DeviceError:
                continue
            break
        if not self._stopped:
            self._warn(f"speaker back: {self.name}; replies are spoken again")

    @property
    def is_open(self) -> bool:
        return self._pb is not None

    @property
    def idle(self) -> bool:
        """No reply is being written or played."""
        return self._pb is None or self._pb.idle

    @property
    def underruns(self) -> int:
        return self._underruns_before + (self._pb.stats.underruns if self._pb is not None else 0)

    @property
    def xruns(self) -> int:
        """Output underflows the device reported: its buffer ran empty because a callback came late (a busy
        CPU), whether or not a reply was playing; `underruns` counts our ring running dry inside a reply."""
        current = self._pb.stats.status_counts.get("output_underflow", 0) if self._pb is not None else 0
        return self._xruns_before + current

    async def suspend(self) -> None:
        await self._close_stream()

    async def resume(self) -> None:
        with contextlib.suppress(DeviceError):  # still missing: the next reply is dropped
            await self._open_stream(self.rate)

    async def stop(self) -> None:
        self._stopped = True
        await self._close_stream()

    # -- AudioSink ---------------------------------------------------------------------------------

    def _live(self, reply_id: int | None) -> Playback | None:
        pb = self._owner.get(reply_id) if reply_id is not None else None
        return None if pb is None or pb.lost else pb

    def begin_reply(self, reply_id: int) -> None:
        self._current = reply_id
        pb = self._pb
        if pb is None or pb.lost:
            return  # no speaker: this reply is dropped
        pb.begin_reply(reply_id)
        self._owner[reply_id] = pb
        if len(self._owner) > 64:
            for key in list(self._owner)[:-32]:
                del self._owner[key]

    async def write(self, pcm: npt.NDArray[np.int16]) -> None:
        pb = self._live(self._current)
        if pb is None:
            return
        with contextlib.suppress(DeviceError):  # lost mid-write: the watchdog says so
            await pb.write(pcm)

    def end_reply(self) -> None:
        pb = self._live(self._current)
        if pb is not None:
            pb.end_reply()
        self._current = None

    def flush(self) -> None:
        pb = self._live(self._current)
        if pb is not None:
            pb.flush()
        if self._pb is not None and self._pb is not pb:
            self._pb.flush()
        self._current = None

    def reply_cut(self, reply_id: int) -> bool:
        """The speaker was missing or went away during this reply: the user heard only part of it."""
        pb = self._owner.get(reply_id)
        return pb is None or pb.lost

    def played_samples(self, reply_id: int) -> int:
        pb = self._owner.get(reply_id)
        return pb.played_samples(reply_id) if pb is not None else 0

    def play_start(self, reply_id: int) -> float | None:
        pb = self._owner.get(reply_id)
        return pb.play_start(reply_id) if pb is not None else None

    async def wait_reply_done(self, reply_id: int) -> None:
        pb = self._live(reply_id)
        if pb is None:
            return
        done = asyncio.create_task(pb.wait_reply_done(reply_id))
        lost = asyncio.create_task(pb.wait_lost())
        try:
            await asyncio.wait([done, lost], return_when=asyncio.FIRST_COMPLETED)
        finally:
            done.cancel()
            lost.cancel()
