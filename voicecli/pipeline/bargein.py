"""A second opinion before a barge-in stops the reply: is it really the user, not the echo of the reply?

The turn detector (webrtcvad) runs on the echo-cancelled mic and proposes a barge-in; before the session
flushes the reply, `BargeInConfirmer.confirm(onset, now)` checks the stretch on 200 ms windows:

* the cleaned level must stand well above what the cleaned mic carried just before the onset (residual
  echo and noise while the assistant talks);
* the raw mic must stand >= 5 dB above the echo the reference predicts (EchoCanceller.echo_db: what
  played one echo delay earlier, times the measured echo path gain). Until the delay is measured (the
  session's first ~2 s of playing), the echo of a window is bounded by its loudest lag up to the longest
  echo path. This is the cue that tells the user from an echo leak, and it does not depend on how much of
  the user the canceller's double-talk suppression kept (that varies by 10 dB from one barge-in to the next
  on the rig). The mic must also stand 2 dB over the echo at every lag within +-80 ms of the delay
  (EchoCanceller.echo_lags_db, `min_lag_excess_db`): the echo path's delay wanders while a reply plays;
* a neural VAD (Silero v6: the ONNX model faster-whisper bundles, on onnxruntime) hearing a voice lets
  the decision through at 100 ms; without it the stretch must have lasted 140 ms (against clicks).

Until the echo path gain is measured (the first ~0.5 s of the first reply) the second cue is replaced by the
share of the mic's power kept through the canceller, and the voice is required.

If the rule says no, the reply goes on: nothing has been flushed yet. `observe` runs per frame in the
echo worker thread (Silero costs ~70 us per 32 ms window); `confirm` runs on the loop and only reads
what was recorded (numpy over at most HISTORY_FRAMES rows: well under a millisecond).
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from voicecli.audio.echo import EchoCancelledSource, EchoCanceller, ReferenceSink
from voicecli.audio.format import SILENCE_DBFS, rms_dbfs
from voicecli.audio.silero import SILERO_SAMPLES, SileroVad

REPLY_SETTLE_S = 0.4  # audio this early in a reply is no evidence of a barge-in (see EchoPath.confirm)
HISTORY_FRAMES = 500  # 10 s of per-frame records
CEILING_MIN_WINDOWS = 50  # windows of echo (1 s) needed before the echo's own loudest level is a cue
CEILING_PERCENTILE = 50.0  # the echo's typical level: a user talking over it now and then does not move it
AUDIBLE_ECHO_DBFS = -75.0  # a predicted echo above this: the speaker was audibly playing into the mic
WINDOW_FRAMES = 10  # the cues are judged over sliding windows of this many frames (200 ms)
QUIET_BELOW_FLOOR_DB = 15.0  # a mic frame this far below the speech floor holds no voice worth scoring
BACKGROUND_S = 1.5  # the background is the median level over this long before the onset

Classifier = Callable[[npt.NDArray[np.float32]], float]  # 512 float32 samples -> speech probability


@dataclass(frozen=True)
class Verdict:
    """confirmed: the stretch is the user. speech_ratio: share of its frames the neural VAD calls speech.
    The figures are those of the deciding window (the first that passed, else the last): level_dbfs its
    mean cleaned power; background_dbfs the median frame level over BACKGROUND_S before the onset;
    retained_db cleaned power over mic power; excess_db mic power over the predicted echo (None while no
    echo level is predicted)."""

    confirmed: bool
    speech_ratio: float
    level_dbfs: float
    background_dbfs: float
    frames: int
    retained_db: float = 0.0
    excess_db: float | None = None
    over_echo_ceiling_db: float | None = None  # mic power over the loudest the echo alone recently reached
    lag_excess_db: float | None = None  # mic power over the echo at the loudest lag within +-80 ms of the delay


class BargeInConfirmer:
    """Per-frame records of the cleaned mic (level, speech probability) and the confirmation rule."""

    def __init__(
        self,
        classifier: Classifier | None = None,
        *,
        floor_dbfs: float = -50.0,
        margin_db: float = 10.0,
        min_speech_frames: int = 4,
        threshold: float = 0.15,
        min_retained_db: float = -6.0,
        min_excess_db: float = 5.0,
        sustain_frames: int = 7,
        min_over_ceiling_db: float = -math.inf,
        min_lag_excess_db: float = 2.0,
    ) -> None:
        """floor_dbfs: nothing quieter is speech (the VAD's floor). margin_db: how far above the background
        the stretch must be. min_speech_frames / threshold: 20 ms frames Silero must score at least
        `threshold`; low, because the canceller's double-talk suppression roughens the user's voice (it
        scored 0.15-0.75 there on the echo rig, where clean speech scores 0.9+), while noise scores
        0.01-0.06: this cue is against clicks and hums, the two level cues are against echo.
        min_retained_db: how much of the mic's power the stretch must keep through the canceller, while no
        echo level is predicted; on the rig the user kept -1..-10 dB, echo leaks lost 8-40 dB.
        min_excess_db: how far the raw mic must stand above the predicted echo (energy over a window); on
        the rig echo alone stays within +-3 dB, a user at a normal level over a -10 dB echo reached 5-13.
        sustain_frames: without Silero's voice, the stretch must have lasted this many frames.
        min_over_ceiling_db: with the echo predicted, the raw mic must also stand this far above the echo's
        typical level (the median 200 ms window over the last seconds of playing): the echo path may move
        or stretch beyond what the prediction models (a phantom barge-in 14 s into a real-voice reply stood
        6 dB over the prediction), but the echo alone stays within a few dB of its own typical level (loudest
        window +5.5 dB on the simulated path), while a user talking over it adds their voice (+12 dB).
        min_lag_excess_db: with the delay measured, the raw mic must also stand this far above the echo at the
        loudest lag within +-80 ms of it: just after the echo path's delay jumps, the echo compared at the stale
        delay stood 5-15 dB over its prediction but never over 0.4 dB above its loudest nearby lag (simulated
        path), while true barge-ins on the rig stood 3.7-8.2 dB above it (tiny and real voices). Asking the full
        min_excess_db there cost true barge-ins in CI."""
        self._classify = classifier if classifier is not None else SileroVad()
        self.floor_dbfs = floor_dbfs
        self.margin_db = margin_db
        self.min_speech_frames = min_speech_frames
        self.threshold = threshold
        self.min_retained_db = min_retained_db
        self.min_excess_db = min_excess_db
        self.sustain_frames = sustain_frames
        self.min_over_ceiling_db = min_over_ceiling_db
        self.min_lag_excess_db = min_lag_excess_db
        self._pending = np.zeros(0, dtype=np.float32)
        self._prob = 0.0
        self._resting = False  # Silero is idle (a quiet room, nothing playing)
        # (t, cleaned dBFS, speech probability, mic dBFS before cancellation, echo dBFS the reference predicts)
        self._records: deque[tuple[float, float, float, float, float]] = deque(maxlen=HISTORY_FRAMES)
        # aligned with _records: the predicted echo per lag, and whether those lags centre on a measured delay
        self._lags: deque[tuple[npt.NDArray[np.float64] | None, bool]] = deque(maxlen=HISTORY_FRAMES)
        self._lock = threading.Lock()

    def observe(
        self,
        pcm: npt.NDArray[np.int16],
        t: float,
        raw: npt.NDArray[np.int16] | None = None,
        echo_db: float | None = None,
        playing: bool = True,
        echo_lags_db: npt.NDArray[np.float64] | None = None,
        delay_known: bool = True,
    ) -> None:
        """One cleaned 20 ms frame with the ADC time of its first sample, and the mic frame it came from
        (worker thread, or the loop for a frame `classifies` says is light). `delay_known`: echo_lags_db
        centres on the measured echo delay; else it holds every lag up to the longest echo path."""
        x = np.asarray(pcm, dtype=np.float32).reshape(-1) / 32768.0
        level = _dbfs(x)
        raw_level = level if raw is None else _dbfs(np.asarray(raw, dtype=np.float32).reshape(-1) / 32768.0)
        if self.classifies(raw_level, playing):
            # Silero runs on every window while a reply plays (its state is warm when the user cuts in) and
            # whenever the mic is loud enough to hold a voice (a barge-in while the reply is being prepared).
            buf = np.concatenate([self._pending, x])
            while buf.size >= SILERO_SAMPLES:
                self._prob = self._classify(buf[:SILERO_SAMPLES])
                buf = buf[SILERO_SAMPLES:]
            self._pending = buf
            self._resting = False
        elif not self._resting:
            # A quiet room with nothing playing: no voice to score (~0.8 ms of CPU per frame, cold caches).
            # Silero starts afresh when sound comes back, as it does for each new stream.
            self._resting = True
            self._pending = np.zeros(0, dtype=np.float32)
            self._prob = 0.0
            reset = getattr(self._classify, "reset", None)
            if reset is not None:
                reset()
        prob = self._prob
        with self._lock:
            self._records.append((t, level, prob, raw_level, math.nan if echo_db is None else echo_db))
            self._lags.append((echo_lags_db, delay_known))

    def classifies(self, raw_level_dbfs: float, playing: bool) -> bool:
        """Whether the neural VAD scores a frame: while a reply plays, or with sound above the quiet floor."""
        return playing or raw_level_dbfs > self.floor_dbfs - QUIET_BELOW_FLOOR_DB

    def confirm(self, onset: float, now: float) -> Verdict:
        """Was the user speaking at some moment from `onset` to `now` (seconds, ADC clock)? (loop side)

        Judged on sliding windows of up to WINDOW_FRAMES ending at each frame of the stretch, not on the
        whole stretch: an echo leak often starts the VAD's speech a few hundred ms before the user does,
        and a user barely louder than the echo would drown in its average (measured on the rig)."""
        with self._lock:
            records = list(self._records)
            lags = list(self._lags)
        inside = [i for i, r in enumerate(records) if onset - 1e-3 <= r[0] < now]
        rows = np.array([records[i] for i in inside], dtype=np.float64).reshape(-1, 5)
        before = [r[1] for r in records if onset - BACKGROUND_S <= r[0] < onset - 1e-3]
        background = float(np.median(before)) if before else SILENCE_DBFS
        n = rows.shape[0]
        if n == 0:
            return Verdict(False, 0.0, SILENCE_DBFS, background, 0)
        clean, raw, echo = (10.0 ** (rows[:, k] / 10.0) for k in (1, 3, 4))
        known = ~np.isnan(rows[:, 4])
        echo = np.where(known, echo, 0.0)
        voiced = (rows[:, 2] >= self.threshold).astype(np.float64)

        def sums(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
            c = np.concatenate([[0.0], np.cumsum(x)])
            ends = np.arange(1, n + 1)
            return c[ends] - c[np.maximum(0, ends - WINDOW_FRAMES)]  # the window ending at each frame

        width = np.minimum(np.arange(1, n + 1), WINDOW_FRAMES).astype(np.float64)
        level = _db(sums(clean) / width)  # mean power, not mean dB: a few loud syllables carry it
        retained = level - _db(sums(raw) / width)
        n_known = sums(known.astype(np.float64))
        raw_sum = _db(sums(np.where(known, raw, 0.0)))
        excess = raw_sum - _db(sums(echo))
        ceiling = _echo_ceiling(records, onset)
        over_ceiling = _db(sums(raw) / width) - (ceiling if ceiling is not None else SILENCE_DBFS)
        measured = np.array([lags[i][1] for i in inside], dtype=bool)
        lagged = _lag_powers([lags[i][0] if lags[i][1] else None for i in inside], known)
        echo_level = _db(sums(echo) / width)  # the loudest echo predicted in the window, at any lag
        lag_excess = np.full(n, np.inf)
        if lagged is not None:
            lag_sums = np.apply_along_axis(sums, 0, lagged)
            echo_level = np.maximum(echo_level, _db(lag_sums.max(axis=1) / width))
            # The echo at any lag near the delay may be what the mic hears: the smallest excess.
            lag_excess = np.where(sums(measured.astype(np.float64)) > 0, raw_sum - _db(lag_sums.max(axis=1)), np.inf)
        # While the echo delay is not yet measured, each frame's echo_db is the loudest frame of the longest echo
        # path; summed over a window, that counts every frame at its own worst lag. The echo of one stretch comes
        # back at one delay: the loudest lag's energy over the window bounds it, 4-8 dB tighter on speech.
        open_lagged = _lag_powers([None if lags[i][1] else lags[i][0] for i in inside], known)
        if open_lagged is not None:
            bound = _db(np.apply_along_axis(sums, 0, open_lagged).max(axis=1))
            excess = np.where(sums((known & ~measured).astype(np.float64)) >= width, raw_sum - bound, excess)
        by_echo = n_known * 2 >= width  # enough of the window has an echo level predicted
        loud = level >= max(self.floor_dbfs, background + self.margin_db)
        speech = sums(voiced) >= self.min_speech_frames
        # With the echo predicted: the mic against that echo, energy over energy. The canceller's
        # double-talk suppression can cut the user's voice by 10 dB and roughen it past the neural VAD, so
        # that VAD only speeds the decision up: a stretch that stands clearly above the echo and has lasted
        # sustain_frames is a barge-in without it, as it is without echo mode. Without (the session's
        # first seconds of playing): most of the mic's power kept through the canceller, and a voice.
        sustained = np.arange(1, n + 1) >= self.sustain_frames
        ok_echo = by_echo & (excess >= self.min_excess_db) & (lag_excess >= self.min_lag_excess_db)
        ok_echo &= speech | sustained
        # Where an audible echo is predicted, the mic must also stand out of what the echo alone usually gives.
        ok_echo &= (over_ceiling >= self.min_over_ceiling_db) | (echo_level <= AUDIBLE_ECHO_DBFS)
        ok_kept = ~by_echo & (retained >= self.min_retained_db) & speech
        ok = loud & (ok_echo | ok_kept)
        i = int(np.argmax(ok)) if ok.any() else n - 1  # the first window that passed, else the last
        return Verdict(
            bool(ok[i]),
            float(sums(voiced)[i] / width[i]),
            float(level[i]),
            background,
            int(width[i]),
            float(retained[i]),
            float(excess[i]) if by_echo[i] else None,
            float(over_ceiling[i]) if ceiling is not None else None,
            float(lag_excess[i]) if by_echo[i] and np.isfinite(lag_excess[i]) else None,
        )


def _echo_ceiling(records: list[tuple[float, float, float, float, float]], onset: float) -> float | None:
    """The typical level the echo alone gave the raw mic (a percentile of 200 ms windows, dBFS) over the recorded
    frames before `onset` in which an audible echo was predicted; None with less than a second of them."""
    raw = np.array([r[3] for r in records if r[0] < onset - 0.1 and r[4] > AUDIBLE_ECHO_DBFS], dtype=np.float64)
    if raw.size < CEILING_MIN_WINDOWS + WINDOW_FRAMES:
        return None
    windows = np.convolve(10.0 ** (raw / 10.0), np.ones(WINDOW_FRAMES) / WINDOW_FRAMES, mode="valid")
    return float(_db(np.array([np.percentile(windows, CEILING_PERCENTILE)]))[0])


def _lag_powers(
    lags: list[npt.NDArray[np.float64] | None], known: npt.NDArray[np.bool_]
) -> npt.NDArray[np.float64] | None:
    """Predicted echo power per frame (rows) and lag (columns), 0 where no echo is predicted; None when no
    frame of the stretch has lags."""
    width = max((a.size for a in lags if a is not None), default=0)
    if width == 0:
        return None
    out = np.zeros((len(lags), width), dtype=np.float64)
    for i, a in enumerate(lags):
        if a is not None and known[i] and a.size == width:
            out[i] = 10.0 ** (a / 10.0)
    return out


def _db(power: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return np.asarray(10.0 * np.log10(power + 1e-30), dtype=np.float64)


def _dbfs(x: npt.NDArray[np.float32]) -> float:
    if x.size == 0:
        return SILENCE_DBFS
    ms = float(np.dot(x, x)) / x.size
    return max(SILENCE_DBFS, 10.0 * math.log10(ms)) if ms > 0 else SILENCE_DBFS


@dataclass
class EchoPath:
    """What `converse` wires in for `--echo aec`: the cleaned frame source, the sink that records the
    reference, the barge-in confirmation and the per-turn echo figures (see EchoStats.as_dict)."""

    source: EchoCancelledSource
    sink: ReferenceSink
    confirmer: BargeInConfirmer
    canceller: EchoCanceller

    def confirm(self, onset: float, now: float) -> Verdict:
        """The confirmer's verdict, not counting the first REPLY_SETTLE_S of the reply: when the echo path
        has moved since the last reply (the rig's loopback latency jumps by up to 70 ms between replies,
        measured), the canceller re-converges and leaks the reply's first few hundred ms."""
        t0 = self.sink.reply_start
        if t0 is not None and onset < t0 + REPLY_SETTLE_S:
            onset = t0 + REPLY_SETTLE_S
        return self.confirmer.confirm(onset, now)

    def turn_stats(self) -> dict[str, Any]:
        return self.canceller.take_stats().as_dict()


def open_echo_path(source: Any, sink: Any, floor_dbfs: float) -> EchoPath:
    """Cancel the echo of what `sink` (an AudioSink, started: its rate is known) plays from `source`'s
    frames (a FrameSource); use the returned `source` and `sink` in the session instead."""
    canceller = EchoCanceller(int(sink.rate))
    confirmer = BargeInConfirmer(floor_dbfs=floor_dbfs)
    ref = ReferenceSink(sink, canceller)
    cleaned = EchoCancelledSource(
        source,
        canceller,
        observe=lambda f: confirmer.observe(f.pcm, f.t, f.raw, f.echo_db, f.playing, f.echo_lags_db, f.delay_known),
        before=ref.pump,
        heavy=lambda frame, playing: confirmer.classifies(rms_dbfs(frame.pcm), playing),
    )
    return EchoPath(cleaned, ref, confirmer, canceller)
