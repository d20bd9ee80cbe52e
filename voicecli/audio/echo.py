"""Acoustic echo cancellation: remove the assistant's own voice from the microphone before VAD and STT.

The canceller is WebRTC's AEC3 (with noise suppression and a high-pass filter) through `livekit`'s
`rtc.AudioProcessingModule`. Chosen by measurement on a synthetic desktop echo (an espeak-ng reply at
-10 dB, 30-300 ms delay, a decaying room tail; 16 kHz): AEC3 removes ~43 dB at ~62 us per 10 ms frame;
speexdsp's canceller removes 8-16 dB (and needs swig plus libspeexdsp-dev to build).

Alignment uses the audio clocks, not a guess: playback reports the DAC time of each reply's first sample
(from its block log), capture stamps every frame with the ADC time of its first sample, both on
time.monotonic(). The played audio is laid on a 16 kHz timeline by DAC time (`ReferenceSink` ->
`ReferenceTimeline`), and each mic frame is paired with what the speaker was playing at its ADC time.
What remains is the acoustic path (speaker -> air/loopback -> mic), which AEC3 tracks itself and a
GCC-PHAT cross-correlation (`DelayEstimator`) measures for reporting and as AEC3's delay hint.

Cost: `EchoCanceller.process` is ~150-250 us per 20 ms frame (two AEC3 calls, plus a ~1 ms
correlation every half second of playback), so `EchoCancelledSource` runs it in one worker thread;
`add_reference` is cheap (a streaming resample of what is due) and runs on the loop.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.util
import math
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from voicecli.audio.format import FRAME_SAMPLES, SAMPLE_RATE, SILENCE_DBFS
from voicecli.errors import ConfigError

APM_SAMPLES = SAMPLE_RATE // 100  # AEC3 takes exactly 10 ms per call
SNAP_SAMPLES = 48  # DAC/ADC stamps jitter: a block within 3 ms of the previous end continues it
MAX_DELAY_S = 0.5  # longest echo path the estimator searches (speaker + air + any host buffering)
EST_WINDOW_S = 1.0  # mic audio correlated per estimate
EST_EVERY_S = 0.5  # of audible playback between estimates
EST_MIN_COUNT = 3  # clear estimates before a delay is reported
EST_MIN_PEAK = 6.0  # GCC-PHAT peak over the mean magnitude: below it the estimate is noise
ACTIVE_DBFS = -60.0  # reference level above which the speaker counts as playing
ACTIVE_POWER = (32768.0 * 10 ** (ACTIVE_DBFS / 20)) ** 2  # the same, as mean square of int16 samples
STATS_FRAMES = 3000  # 60 s of 20 ms frames
EST_MIN_ACTIVE = 0.6  # share of 20 ms blocks the speaker must be playing in an estimate's span
MIC_QUIET_DBFS = -80.0  # mic frames below this carry no echo worth measuring
GAIN_BLOCK_FRAMES = 50  # playing frames (1 s) per echo path gain measurement
FIRST_SKIP_FRAMES = 10  # the first 200 ms of playing are not measured: the echo may not be back yet
FIRST_BLOCK_FRAMES = 15  # the first measurement is short (300 ms), so that a mic that does not hear the
# speaker is known 0.5 s into the first reply, before a user on headphones cuts in
GAIN_BLOCKS = 10  # the gain is the median of the last this many measurements
# The echo level is also predicted at lags around the estimated delay, up to this many 20 ms frames either
# side: the echo path's delay wanders while a reply plays (PulseAudio's loopback moved it by 50-70 ms, more
# under CPU load) and the estimator needs ~1.5 s to follow, during which the echo, compared at the stale
# delay only, stood 6+ dB over its prediction and passed for the user (tests/unit/test_echo_phantom.py).
ECHO_LAG_FRAMES = 4
# While the delay is not yet known (the session's first ~2 s of playing), the echo is predicted at every lag the
# estimator searches: the confirmer bounds the echo in a stretch by its loudest lag (pipeline.bargein).
OPEN_LAG_FRAMES = round(MAX_DELAY_S / 0.02)
ECHO_ABSENT_MARGIN_DB = 6.0  # the mic rises less than this over its idle level while playing: no echo
IDLE_FRAMES = 500  # mic levels kept from frames while nothing plays (10 s): the room's own level
IDLE_AFTER_FRAMES = 25  # a frame counts as idle 500 ms after the last one in which the speaker played
# AEC3 runs from when a reply's reference is laid until this long after its last sample: the echo path, the
# room's reverberation and the suppressor's release. Outside it the mic passes through and AEC3 is not run
# (idle listening cost ~1 ms of CPU per 20 ms frame with it, cold caches: 5% of a core).
ACTIVE_TAIL_S = MAX_DELAY_S + 1.0
HINT = "install the echo canceller with `pip install livekit`, or run with `--echo half-duplex`"
SILERO_MODEL = "silero_vad_v6.onnx"  # the barge-in confirmer's neural VAD; in faster-whisper's assets since 1.2.1
SILERO_HINT = (
    "install faster-whisper 1.2.1 or newer (`pip install 'faster-whisper>=1.2.1'`), or run with `--echo half-duplex`"
)

Int16Array = npt.NDArray[np.int16]


def _dbfs(energy: float, n: int) -> float:
    """dBFS of a sum of squared int16 samples over n samples."""
    if n <= 0 or energy <= 0.0:
        return SILENCE_DBFS
    return max(SILENCE_DBFS, 10.0 * math.log10(energy / n / (32768.0 * 32768.0)))


def _energy(x: Int16Array) -> float:
    f = x.astype(np.float64)
    return float(np.dot(f, f))


class ReferenceTimeline:
    """The played audio at 16 kHz, indexed by DAC time (absolute sample = round(t * 16000)).

    A bounded ring: older audio is forgotten; anything never played reads as silence.
    """

    def __init__(self, seconds: float = 4.0) -> None:
        self._n = int(seconds * SAMPLE_RATE)
        self._buf = np.zeros(self._n, dtype=np.int16)
        self._head: int | None = None  # absolute sample after the newest one written

    @property
    def head(self) -> int | None:
        return self._head

    def add(self, pcm: Int16Array, pos: int) -> int:
        """Write `pcm` starting at absolute sample `pos` (snapped onto the previous end when within
        SNAP_SAMPLES of it); returns the position actually used."""
        n = int(pcm.shape[0])
        if n == 0:
            return pos
        head = self._head
        if head is not None and abs(pos - head) <= SNAP_SAMPLES:
            pos = head
        if head is None or pos > head:
            lo = pos - self._n if head is None else max(head, pos - self._n)
            self._zero(lo, pos)
        if n > self._n:
            pcm, pos, n = pcm[-self._n :], pos + n - self._n, self._n
        idx = (pos + np.arange(n)) % self._n
        self._buf[idx] = pcm
        self._head = pos + n if head is None else max(head, pos + n)
        return pos

    def _zero(self, lo: int, hi: int) -> None:
        if hi - lo >= self._n:
            self._buf[:] = 0
        elif hi > lo:
            self._buf[(lo + np.arange(hi - lo)) % self._n] = 0

    def cut(self, pos: int) -> None:
        """Silence from absolute sample `pos` on (audio laid ahead that will not play after all)."""
        head = self._head
        if head is not None and pos < head:
            self._zero(max(pos, head - self._n), head)
            self._head = max(pos, head - self._n)

    def read(self, pos: int, n: int) -> Int16Array:
        """n samples from absolute sample `pos`; zeros outside what is held."""
        out = np.zeros(n, dtype=np.int16)
        head = self._head
        if head is None:
            return out
        lo, hi = max(pos, head - self._n), min(pos + n, head)
        if hi > lo:
            out[lo - pos : hi - pos] = self._buf[(lo + np.arange(hi - lo)) % self._n]
        return out


class DelayEstimator:
    """Echo path delay by GCC-PHAT between the reference timeline and the mic, on the shared clock."""

    def __init__(self, max_delay_s: float = MAX_DELAY_S, window_s: float = EST_WINDOW_S) -> None:
        self.max_lag = int(max_delay_s * SAMPLE_RATE)
        self.window = int(window_s * SAMPLE_RATE)
        size = self.window + self.max_lag
        self._nfft = 1 << (2 * size - 1).bit_length()
        self._recent: deque[int] = deque(maxlen=5)
        self._taper = np.hanning(self.window).astype(np.float32)

    def estimate(self, mic: Int16Array, ref: Int16Array) -> int | None:
        """`mic` = the last `window` mic samples; `ref` = the reference from `max_lag` samples before the
        mic window's start to its end. Returns the lag (samples) when the correlation peak is clear."""
        # The mic window is tapered: its hard edges would otherwise correlate with the reference's
        # edges (both windows end together), a spurious peak at lag 0 (measured on the rig).
        m = mic.astype(np.float32) * self._taper
        r = ref.astype(np.float32)
        spec = np.fft.rfft(m, self._nfft) * np.conj(np.fft.rfft(r, self._nfft))
        spec /= np.abs(spec) + 1e-9
        cc = np.fft.irfft(spec, self._nfft)
        # mic[n] ~ ref[n + max_lag - D] puts the peak at circular index D - max_lag: the last max_lag
        # entries and entry 0, taken in that order, are delays 0 .. max_lag.
        mags = np.abs(np.concatenate([cc[-self.max_lag :], cc[:1]]))
        lag = int(np.argmax(mags))
        if mags[lag] < EST_MIN_PEAK * (float(np.mean(mags)) + 1e-12):
            return None
        self._recent.append(lag)
        return lag

    @property
    def delay(self) -> int | None:
        """Median of the recent clear estimates, in samples; None until there are EST_MIN_COUNT of them
        (one estimate alone can be a spurious peak: measured once on the rig, 409 ms for a 50 ms path)."""
        if len(self._recent) < EST_MIN_COUNT:
            return None
        return int(np.median(np.array(self._recent)))


@dataclass(frozen=True)
class EchoStats:
    """Echo figures over the frames since the last `take_stats()` in which the speaker was playing.

    erle_db: echo return loss enhancement, the median over those frames of mic level minus cleaned level
    (dB removed; None if nothing played). residual_dbfs: median level of the cleaned signal meanwhile.
    delay_ms: estimated echo path delay (None until a clear estimate). frames: 20 ms mic frames counted.
    """

    erle_db: float | None
    residual_dbfs: float | None
    delay_ms: float | None
    frames: int

    def as_dict(self) -> dict[str, Any]:
        r = lambda v: None if v is None else round(v, 1)  # noqa: E731
        return {
            "echo_erle_db": r(self.erle_db),
            "echo_residual_dbfs": r(self.residual_dbfs),
            "echo_delay_ms": r(self.delay_ms),
        }


def _apm() -> Any:
    try:
        from livekit import rtc
    except ImportError as exc:
        raise ConfigError(f"echo cancellation needs the livekit package ({exc})", hint=HINT) from None
    return rtc


class EchoCanceller:
    """Pairs played audio with mic frames by their clock times and removes the echo (AEC3).

    Thread-safe between one reference producer (`add_reference`, on the loop) and one consumer
    (`process`, in a worker thread): the shared timeline is guarded by a short lock.
    """

    def __init__(self, ref_rate: int, *, noise_suppression: bool = True) -> None:
        rtc = _apm()
        self._rtc = rtc
        self._noise_suppression = noise_suppression
        self._apm = self._new_apm()
        self._renew = False  # start the next reply on a fresh AEC3 (`hold`)
        self.ref_rate = int(ref_rate)
        self._resampler: Any = None
        self._seg: tuple[float, int, int] | None = None  # (DAC time of segment start, in samples, out samples)
        self._timeline = ReferenceTimeline()
        self._lock = threading.Lock()
        self._est = DelayEstimator()
        self._mic = np.zeros(self._est.window, dtype=np.int16)  # newest mic samples, oldest first
        self._mic_pos: int | None = None  # absolute sample after the newest mic sample
        self._since_est = 0
        self._stats_lock = threading.Lock()
        self._reset_acc()
        self.frames = 0
        # The echo path gain (speaker -> mic, dB), measured per second of playing; see _track_echo_level.
        self._gains: deque[float] = deque(maxlen=GAIN_BLOCKS)
        self._block: list[Any] = [0.0, 0.0, 0]  # the second being summed: mic power, reference power, frames
        self._gain: float | None = None
        # Set once a gain is measured: the mic does not hear the speaker, so the mic passes through untouched
        # (AEC3 and its noise suppression cannot help, and its double-talk suppression would only clip the
        # user's first syllables). The canceller keeps running, ready for when the echo comes back.
        self.echo_absent = False
        self._idle: deque[float] = deque(maxlen=IDLE_FRAMES)  # mic dBFS while nothing played
        self._quiet_frames = 0  # frames since the speaker last played
        self._played_frames = 0  # frames in which the speaker played, since the start
        self._block_mic: deque[float] = deque(maxlen=GAIN_BLOCKS)  # mic dBFS of each second of playing
        self.echo_db: float | None = None  # the last frame's expected echo level: see `_track_echo_level`
        # ... and at lags ECHO_LAG_FRAMES frames either side of the delay (dB per lag), None with echo_db
        self.echo_lags_db: npt.NDArray[np.float64] | None = None
        self.delay_known = False  # echo_lags_db is around the measured delay (else at every lag up to the longest)
        self._ref_end: int | None = None  # absolute sample after the last reference laid (16 kHz)
        self._busy = False  # a reply is under way (ReferenceSink): AEC3 runs, wherever its reference lies
        self.apm_frames = 0  # frames AEC3 processed (the rest passed through: nothing had played)

    def _new_apm(self) -> Any:
        return self._rtc.AudioProcessingModule(
            echo_cancellation=True, noise_suppression=self._noise_suppression, high_pass_filter=True
        )

    def _reset_acc(self) -> None:
        # per playing frame: (mic dBFS, cleaned dBFS); bounded, a turn's figures come from its last minute
        self._levels: deque[tuple[float, float]] = deque(maxlen=STATS_FRAMES)

    # -- reference (loop side) ----------------------------------------------------------------------

    def add_reference(self, pcm: Int16Array, t_dac: float) -> None:
        """Samples that reached (or will reach) the speaker, at `ref_rate`, first one at DAC time t_dac."""
        x = np.asarray(pcm, dtype=np.int16).reshape(-1)
        if x.size == 0:
            return
        seg = self._seg
        expected = None if seg is None else seg[0] + seg[1] / self.ref_rate
        if seg is None or expected is None or abs(t_dac - expected) * SAMPLE_RATE > SNAP_SAMPLES:
            seg = (t_dac, 0, 0)  # a gap or a jump: start a new contiguous segment
            self._resampler = self._new_resampler()
        out = self._resample(x)
        t0, n_in, n_out = seg
        pos = round(t0 * SAMPLE_RATE) + n_out
        self._seg = (t0, n_in + x.size, n_out + out.size)
        with self._lock:
            self._timeline.add(out, pos)
            self._ref_end = max(self._ref_end or 0, pos + out.size)

    def cut_reference(self, t: float) -> None:
        """Nothing plays after DAC time t (a flush): forget any reference laid beyond it."""
        self._seg = None
        cut = round(t * SAMPLE_RATE)
        with self._lock:
            self._timeline.cut(cut)
            if self._ref_end is not None:
                self._ref_end = min(self._ref_end, cut)

    def hold(self) -> None:
        """A reply begins: AEC3 runs until `release`. Its reference's positions alone cannot say when it
        ends: a clause that comes late stalls playback, and the rest of the reply is laid earlier than it
        plays (AEC3 re-aligns, but only while it runs).

        After a rest (AEC3 was not run since the last reply's tail), the reply starts on a fresh AEC3: resumed
        with the state of the reply before, its removal drifted down reply by reply on the test rig (45-51 dB at the
        first reply, 16-24 dB at some of the 13th-17th of 20), while every fresh one started at ~50 dB."""
        if not self._busy and not self.playing_near(time.monotonic()):
            self._renew = True
        self._busy = True

    def release(self, t: float) -> None:
        """The reply is over (played out, or flushed) at time t; AEC3 runs on for ACTIVE_TAIL_S after it."""
        self._busy = False
        with self._lock:
            self._ref_end = max(self._ref_end or 0, round(t * SAMPLE_RATE))

    def playing_near(self, t: float) -> bool:
        """Whether a mic frame at ADC time t may hold echo: a reply is under way, or ended (or its reference
        was laid) at most ACTIVE_TAIL_S before it. Only then does AEC3 have work."""
        if self._busy:
            return True
        end = self._ref_end
        return end is not None and round(t * SAMPLE_RATE) <= end + int(ACTIVE_TAIL_S * SAMPLE_RATE)

    def _new_resampler(self) -> Any:
        if self.ref_rate == SAMPLE_RATE:
            return None
        import soxr

        return soxr.ResampleStream(self.ref_rate, SAMPLE_RATE, 1, dtype="int16", quality="HQ")

    def _resample(self, x: Int16Array) -> Int16Array:
        if self._resampler is None:
            return x
        return np.asarray(self._resampler.resample_chunk(x), dtype=np.int16).reshape(-1)

    # -- mic (worker side) --------------------------------------------------------------------------

    def process(self, pcm: Int16Array, t: float) -> Int16Array:
        """One mic frame (16 kHz int16, any multiple of 10 ms) with ADC time t -> the cleaned frame."""
        mic = np.asarray(pcm, dtype=np.int16).reshape(-1)
        pos = round(t * SAMPLE_RATE)
        if self._mic_pos is not None and abs(pos - self._mic_pos) <= SNAP_SAMPLES:
            pos = self._mic_pos
        n = mic.size
        if not self.playing_near(t):
            # Nothing has played for a while: no echo to remove, and AEC3 is the costliest part of listening.
            out = mic.copy()
            self._track(mic, out, pos, n)
            self.frames += 1
            return out
        self.apm_frames += 1
        if self._renew:  # here, on the thread that runs AEC3 (`hold`)
            self._renew = False
            self._apm = self._new_apm()
        with self._lock:
            ref = self._timeline.read(pos, n)
        delay = self._est.delay
        hint_ms = 0 if delay is None else int(1000 * delay / SAMPLE_RATE)
        out = np.empty_like(mic)
        rtc = self._rtc
        for k in range(0, n - APM_SAMPLES + 1, APM_SAMPLES):
            far = rtc.AudioFrame(bytearray(ref[k : k + APM_SAMPLES].tobytes()), SAMPLE_RATE, 1, APM_SAMPLES)
            self._apm.process_reverse_stream(far)
            self._apm.set_stream_delay_ms(hint_ms)
            near = rtc.AudioFrame(bytearray(mic[k : k + APM_SAMPLES].tobytes()), SAMPLE_RATE, 1, APM_SAMPLES)
            self._apm.process_stream(near)
            out[k : k + APM_SAMPLES] = np.frombuffer(near.data, dtype=np.int16)
        self._track(mic, out, pos, n)
        self.frames += 1
        return mic.copy() if self.echo_absent else out

    def _track(self, mic: Int16Array, out: Int16Array, pos: int, n: int) -> None:
        self._mic = np.concatenate([self._mic[n:], mic]) if n < self._mic.size else mic[-self._mic.size :]
        self._mic_pos = pos + n
        # Echo at this frame comes from what played one echo delay earlier.
        d = self._est.delay
        with self._lock:
            lookback = self._timeline.read(pos - (d if d is not None else 0) - n, 3 * n)
        playing = _dbfs(_energy(lookback), lookback.size) > ACTIVE_DBFS
        e_in = _energy(mic)
        mic_db = _dbfs(e_in, n)
        if playing and mic_db > MIC_QUIET_DBFS:
            with self._stats_lock:
                self._levels.append((mic_db, _dbfs(_energy(out), n)))
        self._track_echo_level(mic_db, pos, n, d, playing)
        if playing:
            self._since_est += n
            if self._since_est >= EST_EVERY_S * SAMPLE_RATE:
                self._since_est = 0
                self._estimate()

    def _track_echo_level(self, mic_db: float, pos: int, n: int, d: int | None, playing: bool) -> None:
        """The level of echo the reference predicts in this mic frame (`echo_db`): what played one echo delay
        earlier, times the echo path gain. The raw mic standing above it over a stretch is double-talk
        evidence that does not depend on what the canceller's suppressor kept: ~0 dB for echo alone, the
        user's level over the echo when they talk over it (pipeline.bargein sums both over the stretch, so
        the room's tail and the speech's own dynamics average out).

        The gain is the median over the last GAIN_BLOCKS seconds of playing of each second's mic energy over
        its reference energy (a second in which the user talked over the reply does not move it; a second is
        long enough that the alignment hardly matters, so it is measured before the delay is known).
        `echo_absent`: the mic, over those seconds, rose less than ECHO_ABSENT_MARGIN_DB above its own level
        while nothing played (the 20th percentile, below the user's speech): it does not hear the speaker."""
        with self._lock:
            ref = self._timeline.read(pos - (d if d is not None else 0), n)
        e_ref = _energy(ref)
        ref_db = _dbfs(e_ref, n)
        self._quiet_frames = 0 if playing else self._quiet_frames + 1
        if self._quiet_frames >= IDLE_AFTER_FRAMES:  # nothing has played for a while: the room itself
            self._idle.append(mic_db)
        if playing:
            self._played_frames += 1
        if playing and self._played_frames > FIRST_SKIP_FRAMES:
            self._block[0] += 10.0 ** (mic_db / 10.0)
            self._block[1] += e_ref / n / (32768.0 * 32768.0)
            self._block[2] += 1
            if self._block[2] >= (GAIN_BLOCK_FRAMES if self._gains else FIRST_BLOCK_FRAMES):
                if self._block[1] > 0:
                    self._gains.append(10.0 * math.log10(self._block[0] / self._block[1]))
                    self._gain = float(np.median(np.array(self._gains)))
                    self._block_mic.append(10.0 * math.log10(self._block[0] / self._block[2] + 1e-30))
                    if self._idle:  # else: never heard the room alone, so no grounds to call the echo absent
                        idle = float(np.percentile(np.array(self._idle), 20))
                        loud = float(np.median(np.array(self._block_mic)))
                        self.echo_absent = loud < idle + ECHO_ABSENT_MARGIN_DB
                self._block = [0.0, 0.0, 0]
        self.echo_lags_db = None
        # The lags below centre on a delay: the measured one, or 0 for a mic that hears no echo.
        self.delay_known = d is not None or self.echo_absent
        if self._gain is None:
            self.echo_db = None
        elif d is None and not self.echo_absent:
            # The gain is known but not the delay (the first ~2 s of playing; replies cut short keep the
            # estimator from settling). echo_db: the loudest 20 ms of what played within the longest echo path,
            # an over-prediction, so that a real voice's echo (which a neural VAD hears as speech) can never
            # pass for the user. echo_lags_db: the echo at every lag from 0 to that path, newest first; over a
            # stretch the loudest lag bounds the echo without counting each frame at its own worst lag (that
            # over-predicted by 4-8 dB and hid a user talking over the first reply: tests/unit/test_echo_phantom.py).
            k = OPEN_LAG_FRAMES
            with self._lock:
                span = self._timeline.read(pos - k * n, (k + 1) * n)
            blocks = span.astype(np.float64).reshape(-1, n)
            power = np.sum(blocks * blocks, axis=1)
            self.echo_db = max(SILENCE_DBFS, _dbfs(float(np.max(power)), n) + self._gain)
            lag_db = 10.0 * np.log10(power[::-1] / n / (32768.0 * 32768.0) + 1e-30)
            self.echo_lags_db = np.maximum(SILENCE_DBFS, lag_db + self._gain)
        else:
            self.echo_db = max(SILENCE_DBFS, ref_db + self._gain)
            k = ECHO_LAG_FRAMES
            with self._lock:
                span = self._timeline.read(pos - (d or 0) - k * n, (2 * k + 1) * n)
            blocks = span.astype(np.float64).reshape(-1, n)
            power = np.sum(blocks * blocks, axis=1) / n / (32768.0 * 32768.0)
            self.echo_lags_db = np.maximum(SILENCE_DBFS, 10.0 * np.log10(power + 1e-30) + self._gain)

    def _estimate(self) -> None:
        assert self._mic_pos is not None
        est = self._est
        start = self._mic_pos - est.window
        with self._lock:
            ref = self._timeline.read(start - est.max_lag, est.window + est.max_lag)
        # Only while the speaker played through most of the span: a reply's onset inside the window
        # (silence, then speech) correlates with anything and gives spurious peaks.
        blocks = ref[: ref.size // FRAME_SAMPLES * FRAME_SAMPLES].astype(np.float64).reshape(-1, FRAME_SAMPLES)
        active = np.mean(np.mean(blocks * blocks, axis=1) > ACTIVE_POWER)
        if active >= EST_MIN_ACTIVE and _dbfs(_energy(self._mic), self._mic.size) > MIC_QUIET_DBFS:
            est.estimate(self._mic, ref)

    # -- figures --------------------------------------------------------------------------------------

    @property
    def echo_gain_db(self) -> float | None:
        """The echo path gain: the mic's level relative to what played (e.g. -10 dB), once measured."""
        return self._gain

    @property
    def delay_ms(self) -> float | None:
        d = self._est.delay
        return None if d is None else 1000.0 * d / SAMPLE_RATE

    def take_stats(self) -> EchoStats:
        """Figures since the previous call (one assistant turn), then start counting afresh."""
        with self._stats_lock:
            levels = np.array(self._levels).reshape(-1, 2)
            self._reset_acc()
        if levels.shape[0] == 0:
            return EchoStats(None, None, self.delay_ms, 0)
        # Medians over the playing frames: the user talking over a few of them (double talk, where the
        # canceller rightly keeps the mic) does not drag the figures down.
        erle = float(np.median(levels[:, 0] - levels[:, 1]))
        return EchoStats(erle, float(np.median(levels[:, 1])), self.delay_ms, int(levels.shape[0]))


class ReferenceSink:
    """An AudioSink (voicecli.pipeline.ports) that forwards everything to the real one and lays each
    reply's samples on the canceller's reference timeline, from the reply's DAC start time onwards.

    Only the sink's public timing is used (`play_start`: DAC time of a reply's first sample, from the
    playback block log; `played_samples` at a flush), so it works over any sink, including one that
    reopens its stream. `pump(now)` (on the loop, before each mic frame) hands over the samples due up
    to LEAD_S ahead; nothing runs in the audio callback. An underrun inside a reply would shift the rest
    of it later than the reference: AEC3 re-aligns by itself and the delay estimate shows the step.
    """

    LEAD_S = 0.2  # reference handed over this far ahead of the present
    FLUSH_GRACE_S = 0.1  # after a flush, audio already handed to the device still plays this long at most

    def __init__(self, sink: Any, canceller: EchoCanceller) -> None:
        self.sink = sink
        self.canceller = canceller
        self._reply: int | None = None
        self._pending: deque[Int16Array] = deque()  # written, not yet handed to the canceller
        self._pushed = 0  # samples of the current reply handed over
        self._limit: int | None = None  # after a flush: samples of the reply that can still play
        self._t0: float | None = None  # DAC time of the current reply's first sample

    @property
    def rate(self) -> int:
        return int(self.sink.rate)

    @property
    def reply_start(self) -> float | None:
        """DAC time of the first sample of the newest reply, once known."""
        return self._t0

    def begin_reply(self, reply_id: int) -> None:
        self.sink.begin_reply(reply_id)
        self._reply, self._t0, self._pushed, self._limit = reply_id, None, 0, None
        self._pending.clear()
        self.canceller.hold()

    async def write(self, pcm: Int16Array) -> None:
        self._pending.append(np.array(pcm, dtype=np.int16).reshape(-1))
        await self.sink.write(pcm)

    def end_reply(self) -> None:
        self.sink.end_reply()

    def flush(self) -> None:
        if self._reply is not None and self._t0 is not None:
            limit = int(self.sink.played_samples(self._reply)) + int(self.FLUSH_GRACE_S * self.rate)
            if self._pushed > limit:  # laid ahead, but will not play now
                self.canceller.cut_reference(self._t0 + limit / self.rate)
            self._limit = limit
        else:  # nothing has played yet: nothing to hand over
            self._reply = None
            self._pending.clear()
        self.sink.flush()
        self.canceller.release(time.monotonic() + self.FLUSH_GRACE_S)

    def played_samples(self, reply_id: int) -> int:
        return int(self.sink.played_samples(reply_id))

    def reply_cut(self, reply_id: int) -> bool:
        """Whether the device under it lost this reply (audio.resilient); False for a plain sink."""
        cut = getattr(self.sink, "reply_cut", None)
        return bool(cut is not None and cut(reply_id))

    def play_start(self, reply_id: int) -> float | None:
        t: float | None = self.sink.play_start(reply_id)
        return t

    async def wait_reply_done(self, reply_id: int) -> None:
        await self.sink.wait_reply_done(reply_id)
        if self._reply == reply_id:  # not a newer reply that began meanwhile
            self.canceller.release(time.monotonic())

    def pump(self, now: float) -> None:
        """Hand the canceller the current reply's samples due before now + LEAD_S."""
        if self._reply is None:
            return
        if self._t0 is None:
            self._t0 = self.sink.play_start(self._reply)
            if self._t0 is None:
                return
        due = int((now + self.LEAD_S - self._t0) * self.rate)
        if self._limit is not None:
            due = min(due, self._limit)
        while self._pending and self._pushed < due:
            head = self._pending[0]
            n = min(head.size, due - self._pushed)
            self.canceller.add_reference(head[:n], self._t0 + self._pushed / self.rate)
            self._pushed += n
            if n == head.size:
                self._pending.popleft()
            else:
                self._pending[0] = head[n:]


def _faster_whisper_assets() -> Path:
    from faster_whisper.vad import get_assets_path

    return Path(get_assets_path())


def silero_model_path() -> Path:
    """The Silero VAD v6 model faster-whisper ships (1.2.1 and later), which the barge-in confirmer runs
    with onnxruntime. Raises ConfigError naming what to install when either is missing."""
    try:
        assets = _faster_whisper_assets()
    except ImportError as exc:
        raise ConfigError(
            f"barge-in confirmation needs faster-whisper's Silero model ({exc})", hint=SILERO_HINT
        ) from None
    path = assets / SILERO_MODEL
    if not path.is_file():
        try:
            version = "faster-whisper " + importlib.metadata.version("faster-whisper")
        except importlib.metadata.PackageNotFoundError:
            version = "the installed faster-whisper"
        raise ConfigError(
            f"barge-in confirmation needs {SILERO_MODEL}, which {version} does not ship (no {path})",
            hint=SILERO_HINT,
        )
    if importlib.util.find_spec("onnxruntime") is None:
        raise ConfigError(
            "barge-in confirmation needs onnxruntime (a faster-whisper dependency) to run the Silero model",
            hint="reinstall faster-whisper (`pip install --force-reinstall 'faster-whisper>=1.2.1'`), "
            "or run with `--echo half-duplex`",
        )
    return path


def aec_unavailable() -> ConfigError | None:
    """Why `--echo aec` cannot run here (no canceller, or no Silero model for the barge-in confirmer),
    or None when it can."""
    try:
        _apm()
        silero_model_path()
    except ConfigError as exc:
        return exc
    return None


def resolve_mode(mode: str) -> str:
    """`auto` -> `aec` when the canceller and the barge-in confirmer's Silero model are installed (both
    devices are open in a conversation), else `half-duplex`; the other modes stand. Raises ConfigError
    naming what to install for `aec` when either is missing."""
    if mode not in ("auto", "aec", "half-duplex", "off"):
        raise ConfigError(f"unknown echo mode {mode!r}", hint="use one of: auto, aec, half-duplex, off")
    if mode in ("auto", "aec"):
        problem = aec_unavailable()
        if problem is None:
            return "aec"
        if mode == "aec":
            raise problem
        return "half-duplex"
    return mode


@dataclass(frozen=True)
class CleanFrame:
    """A mic frame after echo cancellation: 20 ms 16 kHz int16; t = ADC time of pcm[0]; raw = the mic
    frame before cancellation; echo_db = the echo level the reference predicts in it (EchoCanceller.echo_db);
    echo_lags_db = the same at lags around the echo delay (EchoCanceller.echo_lags_db)."""

    pcm: Int16Array
    t: float
    raw: Int16Array
    echo_db: float | None = None
    playing: bool = False  # a reply played within the echo tail of this frame (EchoCanceller.playing_near)
    echo_lags_db: npt.NDArray[np.float64] | None = None
    delay_known: bool = True  # echo_lags_db centres on the measured delay; else lags 0..OPEN_LAG_FRAMES


class EchoCancelledSource:
    """A frame source yielding the capture's frames with the echo removed, processed in one worker thread.

    `observe(clean)` (optional) also runs in the worker, for per-frame analysis such as the
    barge-in confirmer's neural VAD. `heavy(frame, playing)` (optional) says whether `observe` has real work
    for a frame; a frame with no echo to cancel and no heavy work is processed on the loop (tens of us):
    handing each 20 ms frame to a thread and back costs more than that while idle.
    """

    def __init__(
        self,
        source: Any,
        canceller: EchoCanceller,
        observe: Callable[[CleanFrame], None] | None = None,
        before: Callable[[float], None] | None = None,
        heavy: Callable[[Any, bool], bool] | None = None,
    ) -> None:
        self.source = source
        self.canceller = canceller
        self._observe = observe
        self._before = before  # on the loop, before each frame: e.g. ReferenceSink.pump
        self._heavy = heavy
        self.inline_frames = 0  # frames processed on the loop (nothing to cancel, nothing heavy)

    def _work(self, frame: Any, playing: bool) -> CleanFrame:
        out = self.canceller.process(frame.pcm, frame.t)
        ec = self.canceller
        clean = CleanFrame(out, frame.t, frame.pcm, ec.echo_db, playing, ec.echo_lags_db, ec.delay_known)
        if self._observe is not None:
            self._observe(clean)
        return clean

    async def frames(self) -> AsyncIterator[CleanFrame]:
        loop = asyncio.get_running_loop()
        pool = ThreadPoolExecutor(1, thread_name_prefix="voicecli-aec")
        try:
            async for frame in self.source.frames():
                if self._before is not None:
                    self._before(time.monotonic())
                playing = self.canceller.playing_near(frame.t)
                if playing or (self._heavy is not None and self._heavy(frame, playing)):
                    yield await loop.run_in_executor(pool, self._work, frame, playing)
                else:
                    self.inline_frames += 1
                    yield self._work(frame, playing)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
