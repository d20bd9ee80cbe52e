"""Turn detection: a pure state machine over 20 ms frames (16 kHz mono int16, 320 samples).

    SILENCE --(start_ms of mostly voiced frames)--> SPEECH      emits SpeechStarted
    SPEECH  --(an unvoiced frame)-----------------> HANGOVER
    HANGOVER --(a voiced frame)-------------------> SPEECH      emits Resumed if Paused was sent
    HANGOVER --(tail_ms of silence)---------------> HANGOVER    `just_quiet` (a tail partial transcription)
    SPEECH  --(tail_ms of frames like the room)---> SPEECH      `just_quiet` too (webrtcvad's overhang in a hiss)
    HANGOVER --(pause_ms of silence)--------------> HANGOVER    emits Paused (start speculative STT)
    HANGOVER --(hangover_ms of silence)-----------> SILENCE     emits Utterance, or Discarded if a blip
    any utterance reaching max_utterance_s ---------------------> emits Utterance(forced=True)

Times are seconds on the caller's clock; the `t` passed with a frame is the time of its first sample.
The caller feeds frames in order; nothing here blocks, allocates per frame beyond a copy, or uses asyncio.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from voicecli.audio.format import (
    FRAME_MS,
    FRAME_SAMPLES,
    SAMPLE_RATE,
    Float32Array,
    int16_to_float32,
    rms_dbfs,
)
from voicecli.config import VadConfig
from voicecli.errors import ConfigError

FRAME_S = FRAME_MS / 1000.0
# webrtcvad says "speech" after a voice stops (its own ~100 ms overhang, and at times over a hiss itself): the
# voiced frames that end an utterance and sound like the room (within ROOM_DB of its level either way; a word's
# own decay falls through that band in a frame) count as silence, ROOM_MIN_FRAMES to ROOM_FRAMES of them, when
# the room is known (ROOM_BELOW_SPEECH_DB under the speech's median level).
ROOM_FRAMES = 15
ROOM_MIN_FRAMES = 4  # 80 ms: fewer are a word's own last frames (webrtcvad's overhang is ~100 ms)
ROOM_DB = 3.0
ROOM_BELOW_SPEECH_DB = 15.0
DIGITAL_SILENCE_DBFS = -90.0
ROOM_EVERY = 10  # frames between fresh estimates of the room's level while the user speaks (0.2-1.2 ms each)
# Fraction of the onset window that must be voiced (one unvoiced frame in five is forgiven).
ONSET_VOICED_FRACTION = 0.8

Classifier = Callable[[np.ndarray], bool]


class State(enum.Enum):
    SILENCE = "silence"
    SPEECH = "speech"
    HANGOVER = "hangover"


@dataclass(frozen=True)
class SpeechStarted:
    """The user started speaking. t_onset: seconds, first sample of the first voiced frame of the onset."""

    t_onset: float


@dataclass(frozen=True, eq=False)
class Paused:
    """Silence reached pause_ms after at least min_utterance_ms of speech: start speculative STT.

    t: seconds, the moment the silence reached pause_ms. audio: float32 16 kHz, the utterance so far
    (pre-roll included); if the turn then ends with no new speech, Utterance.audio is exactly this.
    """

    t: float
    audio: Float32Array


@dataclass(frozen=True)
class Resumed:
    """Speech came back after a Paused, before the end of the turn. t: seconds, first voiced sample."""

    t: float


@dataclass(frozen=True, eq=False)
class Utterance:
    """End of a user turn.

    audio: float32 in [-1, 1], 16 kHz mono; starts preroll_ms before the onset (when that much audio
    was seen) and ends min(pause_ms, hangover_ms) after the speech (or at the cut when forced).
    t_start: seconds, first sample of `audio`. t_speech_end: seconds, end of the last voiced frame.
    t_confirmed: seconds, when the end of turn was decided (t_speech_end + hangover_ms, or the cut).
    forced: True when max_utterance_s cut the speech; the rest follows as the next utterance.
    """

    audio: Float32Array
    t_start: float
    t_speech_end: float
    t_confirmed: float
    forced: bool

    @property
    def duration_s(self) -> float:
        return len(self.audio) / SAMPLE_RATE


@dataclass(frozen=True)
class Discarded:
    """Speech shorter than min_utterance_ms ended (a cough, a click): no turn.

    t: seconds, when it was dropped. duration_s: seconds from onset to the end of the last voiced frame.
    """

    t: float
    duration_s: float


Event = SpeechStarted | Paused | Resumed | Utterance | Discarded


def _frames(ms: float) -> int:
    return max(1, math.ceil(ms / FRAME_MS - 1e-9))


STATIONARY_SPREAD_DB = 8.0


def is_stationary(pcm: np.ndarray) -> bool:
    """True for a steady sound: the spread (90th - 10th percentile) of its 20 ms frame levels is small.
    Speech rises and falls by 20-70 dB between syllables and pauses; a fan spreads ~5 dB, hiss ~1 dB."""
    n = len(pcm) // FRAME_SAMPLES
    if n < 10:
        return False
    frames = pcm[: n * FRAME_SAMPLES].reshape(n, FRAME_SAMPLES).astype(np.float64) / 32768.0
    levels = np.maximum(20 * np.log10(np.sqrt(np.mean(frames * frames, axis=1)) + 1e-9), -90.0)
    spread = float(np.percentile(levels, 90) - np.percentile(levels, 10))
    return spread < STATIONARY_SPREAD_DB


class NoiseFloor:
    """The background level, tracked as a low percentile of recent frame levels (minimum statistics).

    A steady fan, hum or hiss sits at its own floor, so it never stands `margin_db` above it; speech does
    (its peaks are 15-30 dB above the pauses between words). Memory is a fixed ring of frame levels."""

    def __init__(self, window_frames: int = 250, percentile: float = 10.0, margin_db: float = 9.0) -> None:
        self._levels = np.full(window_frames, -120.0)
        self._n = 0
        self._percentile = percentile
        self.margin_db = margin_db
        self.floor_dbfs = -120.0

    def update(self, level_dbfs: float) -> float:
        """Record one frame's level; returns the current floor. Re-estimated every 10 frames (cheap)."""
        self._levels[self._n % len(self._levels)] = level_dbfs
        self._n += 1
        if self._n % 10 == 0 or self._n < 10:  # adapt at once at start-up
            filled = self._levels[: min(self._n, len(self._levels))]
            k = int(self._percentile / 100.0 * (filled.size - 1))  # nearest rank: np.percentile costs 10x more
            self.floor_dbfs = float(np.partition(filled, k)[k])
        return self.floor_dbfs


def webrtc_classifier(aggressiveness: int, floor_dbfs: float, *, adaptive: bool = True) -> Classifier:
    """webrtcvad at `aggressiveness` AND a level above floor_dbfs (webrtcvad alone fires on faint hiss)
    AND, with `adaptive`, clearly above the background noise floor (webrtcvad fires on fan noise too)."""
    import webrtcvad  # local: keeps this module importable for tests that inject a classifier

    vad = webrtcvad.Vad(aggressiveness)
    noise = NoiseFloor()

    def classify(frame: np.ndarray) -> bool:
        level = rms_dbfs(frame)
        background = noise.update(level) if adaptive else -120.0
        if level <= floor_dbfs or level <= background + noise.margin_db:
            return False
        return bool(vad.is_speech(frame.tobytes(), SAMPLE_RATE))

    return classify


def _check_config(cfg: VadConfig) -> None:
    problems = {
        "vad.start_ms": cfg.start_ms <= 0,
        "vad.pause_ms": cfg.pause_ms <= 0,
        "vad.hangover_ms": cfg.hangover_ms <= 0,
        "vad.complete_min_ms": cfg.complete_min_ms < 0,
        "vad.tail_ms": cfg.tail_ms < 0,
        "vad.preroll_ms": cfg.preroll_ms < 0,
        "vad.min_utterance_ms": cfg.min_utterance_ms < 0,
        "vad.max_utterance_s": cfg.max_utterance_s * 1000 < max(cfg.start_ms, cfg.min_utterance_ms),
    }
    for key, bad in problems.items():
        if bad:
            raise ConfigError(
                f"config key '{key}' has an unusable value in {cfg}",
                hint=f"set '{key}' to a positive value (max_utterance_s above start_ms and min_utterance_ms)",
            )


class TurnDetector:
    """Frames in, turn events out. See the module docstring for the states."""

    def __init__(self, cfg: VadConfig, classifier: Classifier | None = None) -> None:
        _check_config(cfg)
        self.cfg = cfg
        self._classify = classifier or webrtc_classifier(cfg.aggressiveness, cfg.floor_dbfs)
        # Steady-sound rejection and the overhang trim belong to the real-audio path; injected classifiers judge
        # frames themselves.
        self.reject_stationary = classifier is None
        self._start_n = _frames(cfg.start_ms)
        self._onset_need = max(1, math.ceil(ONSET_VOICED_FRACTION * self._start_n - 1e-9))
        self._pause_n = _frames(cfg.pause_ms)
        self._hang_n = _frames(cfg.hangover_ms)
        self._tail_n = min(self._pause_n, self._hang_n)
        self._quiet_n = _frames(cfg.tail_ms) if 0 < cfg.tail_ms < cfg.pause_ms else 0
        self._preroll_n = math.ceil(cfg.preroll_ms / FRAME_MS - 1e-9)
        self._max_n = max(self._start_n, round(cfg.max_utterance_s * 1000 / FRAME_MS))
        # Recent frames (audio, t, voiced): pre-roll and the onset window. Bounded.
        self._recent: deque[tuple[np.ndarray, float, bool]] = deque(maxlen=self._preroll_n + self._start_n)
        # The utterance being recorded: preallocated, so memory is bounded by max_utterance_s.
        self._buf = np.zeros((self._preroll_n + self._max_n) * FRAME_SAMPLES, dtype=np.int16)
        self.reset()

    # -- public --------------------------------------------------------------------------------
    @property
    def state(self) -> State:
        return self._state

    @property
    def speech_s(self) -> float:
        """Seconds from the onset to the end of the last voiced frame of the current utterance (0 if none)."""
        if self._state is State.SILENCE or self._continue:
            return 0.0
        return max(0.0, self._t_voiced_end - self._t_onset)

    @property
    def last_voiced(self) -> bool:
        """Whether the latest frame was voiced."""
        return bool(self._recent) and self._recent[-1][2]

    @property
    def just_quiet(self) -> bool:
        """The latest frame made the silence after enough speech reach `tail_ms` (before the pause signal): the
        words so far may be the whole turn (pipeline.prefill transcribes them at once). Never when tail_ms is 0."""
        return self._quiet_now

    @property
    def room_like(self) -> bool:
        """The latest frame was voiced, but as quiet as the room (see `_overhang`): probably not the user's voice.
        A tail partial started on such frames is not invalidated by them."""
        return self._room_run > 0

    @property
    def voiced_samples(self) -> int:
        """Samples of the current utterance's audio (`audio_so_far`) up to the end of its last voiced frame."""
        return self._voiced_end_n

    def audio_so_far(self) -> Float32Array:
        """The current utterance's audio up to now (pre-roll included), as the Utterance will carry it."""
        return int16_to_float32(self._buf[: self._n])

    def reset(self) -> None:
        """Forget any partial utterance and the recent audio (e.g. while the mic is ignored)."""
        self._state = State.SILENCE
        self._recent.clear()
        self._n = 0  # samples used in _buf
        self._onset_frames = 0  # frames since the onset, onset included
        self._t_start = self._t_onset = self._t_voiced_end = 0.0
        self._voiced_end_n = 0  # samples in _buf up to the end of the last voiced frame
        self._silent = 0
        self._paused = False
        self._onset_n = 0  # samples in _buf before the onset (the pre-roll)
        self._quiet_now = self._quiet_done = False  # just_quiet on this frame; once per stretch of silence
        self._room_run = 0  # voiced frames in a row, up to the latest, that sound like the room
        self._room_at = 0
        self._room: float | None = None  # the room's level (dBFS), estimated every ROOM_EVERY frames of speech
        self._continue = False  # a forced cut happened mid-speech: the next frame starts a new utterance
        self._extra_n = 0  # hangover frames added (or, < 0, taken off) for this pause: wait_longer, end_sooner

    def wait_longer(self, extra_ms: float) -> None:
        """Hold the current pause open `extra_ms` longer before ending the turn (what was said so far sounds
        unfinished: "and ...", "um"). Cleared when the user speaks again or a new utterance starts."""
        if self._state is State.HANGOVER:
            self._extra_n = _frames(extra_ms)

    def end_sooner(self, hangover_ms: float, t: float | None = None) -> list[Event]:
        """End the current pause once its silence reaches `hangover_ms` (at least pause_ms), instead of the
        configured hangover: the words say the user is done (pipeline.turn_end). Cleared like `wait_longer`.
        A pause already that long ends now, confirmed at `t`, if given (the events are returned, as `process`
        returns them: the verdict comes between frames, and the next one is up to 20 ms away), else on the next
        frame."""
        if self._state is not State.HANGOVER:
            return []
        self._extra_n = max(self._pause_n, _frames(hangover_ms)) - self._hang_n
        events: list[Event] = []
        if t is not None and self._silent >= self._hang_n + self._extra_n:
            self._end_turn(t, events)
        return events

    def process(self, frame: np.ndarray, t: float) -> list[Event]:
        """Feed one 20 ms frame whose first sample is at `t` seconds; return the events it caused."""
        if not isinstance(frame, np.ndarray) or frame.dtype != np.int16 or frame.shape != (FRAME_SAMPLES,):
            got = f"{frame.dtype} {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
            raise ValueError(
                f"VAD frames must be int16 arrays of shape ({FRAME_SAMPLES},) "
                f"({FRAME_MS} ms at {SAMPLE_RATE} Hz mono); got {got}"
            )
        voiced = bool(self._classify(frame))
        self._recent.append((frame.copy(), t, voiced))
        self._quiet_now = False
        events: list[Event] = []
        if self._continue:  # the previous utterance was cut mid-speech: this frame starts the next
            self._continue = False
            self._start_utterance([(frame, t, voiced)], 0, t, events)
            self._on_frame(voiced, t, events)
        elif self._state is State.SILENCE:
            self._maybe_start(events)
        else:
            self._buf[self._n : self._n + FRAME_SAMPLES] = frame
            self._n += FRAME_SAMPLES
            self._onset_frames += 1
            self._on_frame(voiced, t, events)
        return events

    # -- internals -------------------------------------------------------------------------------
    def _maybe_start(self, events: list[Event]) -> None:
        window = list(self._recent)[-self._start_n :]
        if not window[-1][2] or sum(v for _, _, v in window) < self._onset_need:
            return
        onset = len(self._recent) - len(window) + next(i for i, (_, _, v) in enumerate(window) if v)
        first = max(0, onset - self._preroll_n)
        frames = list(self._recent)[first:]
        self._start_utterance(frames, onset - first, self._recent[onset][1], events)
        self._t_voiced_end = frames[-1][1] + FRAME_S
        self._voiced_end_n = self._n
        self._check_max(frames[-1][1], voiced=True, events=events)

    def _start_utterance(
        self, frames: list[tuple[np.ndarray, float, bool]], onset: int, t_onset: float, events: list[Event]
    ) -> None:
        self._state = State.SPEECH
        self._n = 0
        for audio, _, _ in frames:
            self._buf[self._n : self._n + FRAME_SAMPLES] = audio
            self._n += FRAME_SAMPLES
        self._t_start = frames[0][1]
        self._t_onset = self._t_voiced_end = t_onset
        self._voiced_end_n = 0
        self._onset_n = onset * FRAME_SAMPLES
        self._quiet_done = False
        self._room_run = 0
        self._room_at = -ROOM_EVERY  # frame count of the last room estimate
        self._room = None
        self._onset_frames = len(frames) - onset
        self._silent = 0
        self._paused = False
        self._extra_n = 0
        events.append(SpeechStarted(t_onset))

    def _overhang(self) -> int:
        """At the first unvoiced frame after speech: how many of the voiced frames just before it were the room,
        not speech. webrtcvad goes on saying "voiced" for ~100 ms after a voice stops (its built-in overhang), and
        at times for a whole hiss tail, over any sound the level gates let through: under a -48 dBFS hiss after
        digital silence (a noise gate, the benchmark's feed) every end of speech came 100-200 ms late, and with it
        the pause, the transcription and the reply. Such frames are as quiet as the room; the speech's own last
        frames, even a final "s", stand well above it, and a word's own decay passes the room's level in a frame.
        Under a steady noise the level gates already pass only frames 9 dB above it, so nothing changes there.
        Costs 0.2-1.2 ms (3-30 s of utterance) once per stretch of speech."""
        if not self.reject_stationary:
            return 0  # a test's classifier: the frames are what it says
        room = self._room_dbfs()
        if room is None:
            return 0
        k = 0
        for audio, _, voiced in reversed(list(self._recent)[-1 - ROOM_FRAMES : -1]):
            if not voiced or abs(rms_dbfs(audio) - room) > ROOM_DB:
                break
            k += 1
        if k < ROOM_MIN_FRAMES:
            return 0  # a word's last few frames near the room: speech
        # Never back past the onset: an utterance keeps at least one voiced frame.
        return min(k, max(0, (self._voiced_end_n - self._onset_n) // FRAME_SAMPLES - 1))

    def _sounds_like_room(self) -> bool:
        """The latest (voiced) frame is within ROOM_DB of the room's level (re-estimated every ROOM_EVERY frames)."""
        if not self.reject_stationary or self._n < ROOM_EVERY * FRAME_SAMPLES:
            return False
        frames = self._n // FRAME_SAMPLES
        if frames - self._room_at >= ROOM_EVERY:
            self._room, self._room_at = self._room_dbfs(), frames
        room = self._room
        return room is not None and abs(rms_dbfs(self._buf[self._n - FRAME_SAMPLES : self._n]) - room) <= ROOM_DB

    def _room_dbfs(self) -> float | None:
        """What a silence sounds like here: the 10th percentile of the utterance's frame levels (pre-roll
        included), digital silence left out (a feed or a noise gate between sounds, not the room); None when that
        is not clearly below the speech (an utterance with no room in it)."""
        pcm = self._buf[: self._n].reshape(-1, FRAME_SAMPLES).astype(np.float32) / 32768.0
        levels = 10.0 * np.log10(np.mean(pcm * pcm, axis=1) + 1e-12)
        levels = levels[levels > DIGITAL_SILENCE_DBFS]
        if not levels.size:
            return None
        room, speech = np.percentile(levels, [10, 50])
        return float(room) if speech - room >= ROOM_BELOW_SPEECH_DB else None

    def _on_frame(self, voiced: bool, t: float, events: list[Event]) -> None:
        """Update the turn with the frame at `t`, already appended to the buffer."""
        if voiced and self._state is State.HANGOVER and self._paused and self._sounds_like_room():
            # The pause was signalled, and this "voiced" frame is as quiet as the room: webrtcvad's overhang over a
            # hiss, not the user going on (it resumed the pause and moved the end of speech 120 ms later). Before
            # the pause such frames still count: inside a sentence they are a word's quiet part.
            voiced = False
        if voiced:
            self._t_voiced_end = t + FRAME_S
            self._voiced_end_n = self._n
            self._silent = 0
            if self._state is State.HANGOVER and self._paused:
                events.append(Resumed(t))
            self._state = State.SPEECH
            self._paused = False
            self._extra_n = 0
            self._room_run = self._room_run + 1 if self._sounds_like_room() else 0
            if self._room_run == 0:
                self._quiet_done = False
            elif self._quiet_n and not self._quiet_done and self._room_run >= ROOM_MIN_FRAMES and self._long_enough():
                # webrtcvad still says "voiced" (its overhang, a hiss), but 80 ms sound like the room, as many as
                # `_overhang` takes for silence: the voice has most likely stopped, and a tail partial need not wait
                # the ~100-200 ms until webrtcvad says so. Speech after it voids it. Offline, the 12 corpus clips
                # (digital silence and a -48 dBFS hiss after them): it fired 50-90 ms after the end of the 3 that
                # end in a hiss, and once inside speech (three times with 40 ms instead of 80).
                self._quiet_now = self._quiet_done = True
        else:
            self._room_run = 0  # "in a row": a gap ends the run
            if self._state is State.SPEECH and (k := self._overhang()):
                self._silent += k
                self._t_voiced_end -= k * FRAME_S
                self._voiced_end_n -= k * FRAME_SAMPLES
            self._state = State.HANGOVER
            self._silent += 1
            if (
                not self._paused
                and self._silent >= self._pause_n
                and self._pause_n < self._hang_n
                and self._long_enough()
            ):
                self._paused = True
                events.append(Paused(t + FRAME_S, int16_to_float32(self._buf[: self._n])))
            if (
                self._quiet_n
                and not self._quiet_done
                and not self._paused
                and self._silent >= self._quiet_n
                and self._long_enough()
            ):
                self._quiet_now = self._quiet_done = True
            if self._silent >= self._hang_n + self._extra_n:
                self._end_turn(t + FRAME_S, events)
                return
        self._check_max(t, voiced, events)

    def _long_enough(self) -> bool:
        span = self._t_voiced_end - self._t_onset
        return span > 0 and span * 1000 >= self.cfg.min_utterance_ms - 1e-6

    def _end_turn(self, t_confirmed: float, events: list[Event]) -> None:
        end = min(self._n, self._voiced_end_n + self._tail_n * FRAME_SAMPLES)
        if not self._long_enough() or (self.reject_stationary and is_stationary(self._buf[:end])):
            # A blip, a continuation with no speech in it, or a steady sound (fan, hiss, hum) that crossed
            # the detector before the noise floor caught up with it.
            events.append(Discarded(t_confirmed, self._t_voiced_end - self._t_onset))
        else:
            audio = int16_to_float32(self._buf[:end])
            events.append(Utterance(audio, self._t_start, self._t_voiced_end, t_confirmed, forced=False))
        self._state = State.SILENCE
        self._n = 0
        # Only the trailing silence may serve as the next pre-roll: speech belongs to one turn only.
        while len(self._recent) > self._silent:
            self._recent.popleft()

    def _check_max(self, t: float, voiced: bool, events: list[Event]) -> None:
        if self._onset_frames < self._max_n:
            return
        audio = int16_to_float32(self._buf[: self._n])
        events.append(Utterance(audio, self._t_start, self._t_voiced_end, t + FRAME_S, forced=True))
        self._n = 0
        # Mid-speech, the next frame begins the next utterance at once (nothing is dropped); in a
        # pause, wait for a fresh onset, whose pre-roll holds the frames in between.
        self._continue = voiced
        self._state = State.SPEECH if voiced else State.SILENCE
        # Recent frames belong to the utterance just sent: they must not be its successor's pre-roll.
        self._recent.clear()
