"""`voicecli devices --test` echo check: play a probe on the output, record the input meanwhile, and report
how the speaker comes back into the microphone (delay, level) and how much of it the canceller removes.

It runs the same parts as `talk --echo aec` (Capture, Playback, ReferenceSink, EchoCanceller), so the
figures are the ones a conversation will see on this pair of devices.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from voicecli.audio.format import FRAME_SAMPLES, SILENCE_DBFS, float32_to_int16, rms_dbfs

PROBE_SECONDS = 4.0  # the delay estimate needs ~2 s of playing, the echo gain ~1 s more
PROBE_DBFS = -20.0  # RMS of the probe: a voice at a comfortable level
SETTLE_SECONDS = 0.3  # skipped at the start: whatever was still on its way (a previous sound's echo)
QUIET_SECONDS = 0.5  # recorded before the probe: the room's own level
TAIL_SECONDS = 0.4  # recorded after the probe: the echo's tail
HEARD_MARGIN_DB = 10.0  # the mic must rise this far above the quiet room for an echo to count as heard


@dataclass(frozen=True)
class EchoCheck:
    """heard: the speaker came back into the mic. delay_ms: speaker -> mic delay on the audio clocks
    (None when no clear estimate). level_db: the echo's level relative to what was played (e.g. -10 dB).
    room_dbfs / mic_dbfs: the mic before and during the probe. erle_db / residual_dbfs: what the canceller
    removed and what it left (None if nothing was heard)."""

    heard: bool
    delay_ms: float | None
    level_db: float | None
    room_dbfs: float
    mic_dbfs: float
    erle_db: float | None
    residual_dbfs: float | None
    probe_seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 1) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def probe(rate: int, seconds: float = PROBE_SECONDS, seed: int = 1) -> npt.NDArray[np.int16]:
    """Pink-ish noise whose loudness moves like speech (3-5 Hz syllables) but never drops to silence: the
    delay estimate and the canceller both need the reference playing throughout."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    spec = np.fft.rfft(rng.normal(0.0, 1.0, n))
    f = np.fft.rfftfreq(n, 1.0 / rate)
    spec *= 1.0 / np.sqrt(np.maximum(f, 50.0))  # pink: equal energy per octave
    spec[(f < 100.0) | (f > 7000.0)] = 0.0  # within what any speaker and the 16 kHz mic path carry
    x = np.fft.irfft(spec, n)
    t = np.arange(n) / rate
    x *= 0.6 + 0.4 * np.sin(2 * np.pi * 4.0 * t + 1.5 * np.sin(2 * np.pi * 0.7 * t))
    x *= 10 ** (PROBE_DBFS / 20) / np.sqrt(np.mean(x * x))
    ramp = np.minimum(1.0, np.minimum(t, seconds - t) / 0.05)  # 50 ms fades: no clicks
    return float32_to_int16((x * ramp).astype(np.float32))


async def measure(in_idx: int | None, out_idx: int | None, seconds: float = PROBE_SECONDS) -> EchoCheck:
    """Play the probe on `out_idx` while recording `in_idx`, through the echo canceller.
    Raises ConfigError when the canceller is not installed, DeviceError when a device fails."""
    from voicecli.audio.capture import Capture
    from voicecli.audio.echo import EchoCancelledSource, EchoCanceller, ReferenceSink
    from voicecli.audio.playback import Playback

    cap = Capture(in_idx)
    pb = Playback(out_idx)
    await cap.start()
    try:
        await pb.start()
        try:
            canceller = EchoCanceller(pb.rate)
            sink = ReferenceSink(pb, canceller)
            source = EchoCancelledSource(cap, canceller, before=sink.pump)
            return await _run(source, sink, canceller, probe(pb.rate, seconds), seconds)
        finally:
            await pb.stop()
    finally:
        await cap.stop()


async def _run(source: Any, sink: Any, canceller: Any, sound: npt.NDArray[np.int16], seconds: float) -> EchoCheck:
    loop = asyncio.get_running_loop()
    quiet: list[npt.NDArray[np.int16]] = []
    during: list[npt.NDArray[np.int16]] = []
    writer: asyncio.Task[None] | None = None
    done_at: float | None = None
    frames = source.frames()
    settle = int(SETTLE_SECONDS * 16000 / FRAME_SAMPLES)
    try:
        async for frame in frames:
            if settle > 0:
                settle -= 1
                continue
            if writer is None:
                quiet.append(frame.raw)
                if len(quiet) * FRAME_SAMPLES >= QUIET_SECONDS * 16000:
                    canceller.take_stats()  # the figures count from the probe on
                    writer = asyncio.create_task(_play(sink, sound))
                continue
            during.append(frame.raw)
            if writer.done():
                writer.result()  # a device error surfaces here
                done_at = done_at if done_at is not None else loop.time()
                if loop.time() - done_at >= TAIL_SECONDS:
                    break
    finally:
        if writer is not None and not writer.done():
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        await frames.aclose()
    stats = canceller.take_stats()
    # the median frame: the room's steady level, not a click or a tail in it
    room = float(np.median([rms_dbfs(q) for q in quiet])) if quiet else SILENCE_DBFS
    mic = float(rms_dbfs(np.concatenate(during))) if during else SILENCE_DBFS
    heard = bool(mic >= room + HEARD_MARGIN_DB and stats.delay_ms is not None)
    return EchoCheck(
        heard=heard,
        delay_ms=stats.delay_ms if heard else None,
        level_db=canceller.echo_gain_db if heard else None,
        room_dbfs=room,
        mic_dbfs=mic,
        erle_db=stats.erle_db if heard else None,
        residual_dbfs=stats.residual_dbfs if heard else None,
        probe_seconds=seconds,
    )


async def _play(sink: Any, sound: npt.NDArray[np.int16]) -> None:
    sink.begin_reply(1)
    await sink.write(sound)
    sink.end_reply()
    await sink.wait_reply_done(1)
