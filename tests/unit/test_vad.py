"""Turn detector on synthetic frames: scripted voiced/unvoiced frames, real webrtcvad, and fuzzing."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voicecli.audio.format import FRAME_SAMPLES, SAMPLE_RATE, float32_to_int16
from voicecli.config import VadConfig
from voicecli.errors import ConfigError
from voicecli.pipeline.vad import (
    Discarded,
    Event,
    Paused,
    Resumed,
    SpeechStarted,
    State,
    TurnDetector,
    Utterance,
)

CFG = VadConfig(pause_ms=200)  # start 100 ms, pause 200 ms, hangover 500 ms, pre-roll 300 ms, min 250 ms, max 30 s
F = 0.02  # seconds per frame


def tagged_frame(index: int, voiced: bool) -> np.ndarray:
    """A frame whose samples encode its index (sign = voiced), so utterance audio can be traced back."""
    return np.full(FRAME_SAMPLES, index + 1 if voiced else -(index + 1), dtype=np.int16)


def by_sign(frame: np.ndarray) -> bool:
    return bool(frame[0] > 0)


def frame_indices(audio: np.ndarray) -> list[int]:
    """The frame indices an utterance's audio is made of."""
    pcm = float32_to_int16(audio).reshape(-1, FRAME_SAMPLES)
    return [abs(int(f[0])) - 1 for f in pcm]


def pattern(*runs: tuple[bool, float]) -> list[bool]:
    """(voiced, seconds) runs -> one flag per 20 ms frame."""
    out: list[bool] = []
    for voiced, seconds in runs:
        out += [voiced] * round(seconds / F)
    return out


def run(flags: list[bool], cfg: VadConfig = CFG, t0: float = 10.0) -> list[tuple[int, Event]]:
    """Feed tagged frames; return (frame index, event) pairs. Frame i starts at t0 + i * 20 ms."""
    det = TurnDetector(cfg, classifier=by_sign)
    out: list[tuple[int, Event]] = []
    for i, voiced in enumerate(flags):
        out += [(i, e) for e in det.process(tagged_frame(i, voiced), t0 + i * F)]
    return out


def kinds(events: list[tuple[int, Event]]) -> list[str]:
    return [type(e).__name__ for _, e in events]


def utterances(events: list[tuple[int, Event]]) -> list[Utterance]:
    return [e for _, e in events if isinstance(e, Utterance)]


# -- scripted frames ----------------------------------------------------------------------------


def test_a_40ms_click_is_ignored() -> None:
    events = run(pattern((False, 1.0), (True, 0.04), (False, 1.0), (True, 0.04), (False, 1.0)))
    assert events == []


def test_a_short_blip_is_discarded_with_its_duration() -> None:
    events = run(pattern((False, 0.5), (True, 0.16), (False, 1.0)))
    assert kinds(events) == ["SpeechStarted", "Discarded"]
    blip = events[1][1]
    assert isinstance(blip, Discarded)
    assert blip.duration_s == pytest.approx(0.16)
    assert blip.t == pytest.approx(10.0 + 0.5 + 0.16 + 0.5)  # decided after the hangover


def test_one_unvoiced_frame_inside_the_onset_is_forgiven() -> None:
    flags = pattern((False, 0.5), (True, 0.04), (False, 0.02), (True, 0.06), (False, 0.1))
    events = run(flags)
    assert kinds(events)[0] == "SpeechStarted"
    started = events[0][1]
    assert isinstance(started, SpeechStarted)
    assert started.t_onset == pytest.approx(10.5)  # the first voiced frame of the onset


def test_mid_sentence_pause_shorter_than_hangover_gives_one_turn() -> None:
    flags = pattern((False, 1.0), (True, 0.6), (False, 0.3), (True, 0.5), (False, 1.0))
    events = run(flags)
    assert kinds(events) == ["SpeechStarted", "Paused", "Resumed", "Paused", "Utterance"]
    started, paused, resumed, _, utt = (e for _, e in events)
    assert isinstance(started, SpeechStarted) and started.t_onset == pytest.approx(11.0)
    assert isinstance(paused, Paused) and paused.t == pytest.approx(11.6 + 0.2)
    assert isinstance(resumed, Resumed) and resumed.t == pytest.approx(11.9)
    assert isinstance(utt, Utterance) and not utt.forced
    assert utt.t_speech_end == pytest.approx(12.4)
    assert utt.t_confirmed == pytest.approx(12.4 + 0.5)


def test_a_pause_longer_than_the_hangover_gives_two_turns() -> None:
    flags = pattern((False, 1.0), (True, 0.6), (False, 0.6), (True, 0.5), (False, 1.0))
    assert kinds(run(flags)) == ["SpeechStarted", "Paused", "Utterance"] * 2


def test_utterance_includes_preroll_before_the_onset_and_pause_ms_after_the_speech() -> None:
    flags = pattern((False, 1.0), (True, 0.8), (False, 1.0))
    (utt,) = utterances(run(flags))
    onset = 50  # frame index of the first voiced frame
    assert frame_indices(utt.audio) == list(range(onset - 15, onset + 40 + 10))  # 300 ms + speech + 200 ms
    assert utt.t_start == pytest.approx(11.0 - 0.3)
    assert utt.t_speech_end == pytest.approx(11.8)
    assert utt.audio.dtype == np.float32 and utt.duration_s == pytest.approx(0.3 + 0.8 + 0.2)


def test_preroll_is_shorter_when_speech_starts_right_away() -> None:
    (utt,) = utterances(run(pattern((False, 0.1), (True, 0.5), (False, 1.0))))
    assert frame_indices(utt.audio)[0] == 0
    assert utt.t_start == pytest.approx(10.0)


def test_paused_audio_is_exactly_the_final_utterance_when_the_user_does_not_resume() -> None:
    events = run(pattern((False, 1.0), (True, 0.7), (False, 1.0)))
    paused = next(e for _, e in events if isinstance(e, Paused))
    (utt,) = utterances(events)
    np.testing.assert_array_equal(paused.audio, utt.audio)


def test_max_length_cuts_and_the_continuation_is_the_next_utterance() -> None:
    cfg = dataclasses.replace(CFG, max_utterance_s=2.0)
    flags = pattern((False, 1.0), (True, 5.0), (False, 1.0))
    events = run(flags, cfg)
    assert kinds(events) == ["SpeechStarted", "Utterance"] * 2 + ["SpeechStarted", "Paused", "Utterance"]
    utts = utterances(events)
    assert [u.forced for u in utts] == [True, True, False]
    # Nothing dropped, nothing twice: the frames run on from one utterance to the next.
    frames = [i for u in utts for i in frame_indices(u.audio)]
    assert frames == list(range(50 - 15, 50 + 250 + 10))
    assert len(utts[0].audio) == (15 + 100) * FRAME_SAMPLES  # pre-roll + 2 s
    assert len(utts[1].audio) == 100 * FRAME_SAMPLES
    assert utts[0].t_confirmed == pytest.approx(13.0)
    next_start = events[2][1]
    assert isinstance(next_start, SpeechStarted) and next_start.t_onset == pytest.approx(13.0)


def test_a_70s_monologue_with_short_pauses_becomes_consecutive_utterances() -> None:
    flags = pattern((False, 1.0), *[(True, 2.9), (False, 0.1)] * 23, (True, 1.0), (False, 1.0))
    utts = utterances(run(flags))
    assert [u.forced for u in utts] == [True, True, False]
    assert all(u.duration_s <= 30.0 + 0.3 for u in utts)
    frames = [i for u in utts for i in frame_indices(u.audio)]
    assert len(frames) == len(set(frames))  # no frame twice
    assert {i for i, voiced in enumerate(flags) if voiced} <= set(frames)  # no speech dropped


def test_state_and_speech_s_follow_the_turn() -> None:
    det = TurnDetector(CFG, classifier=by_sign)
    seen: list[tuple[State, float]] = []
    for i, voiced in enumerate(pattern((False, 0.2), (True, 0.4), (False, 0.1), (True, 0.1), (False, 0.6))):
        det.process(tagged_frame(i, voiced), i * F)
        seen.append((det.state, det.speech_s))
    assert seen[9] == (State.SILENCE, 0.0)  # the 4th voiced frame: onset not reached yet
    assert seen[14] == (State.SPEECH, pytest.approx(0.1))  # 5th voiced frame: onset, 100 ms of speech
    assert seen[29] == (State.SPEECH, pytest.approx(0.4))
    assert seen[31] == (State.HANGOVER, pytest.approx(0.4))
    assert seen[39] == (State.SPEECH, pytest.approx(0.6))
    assert seen[-1] == (State.SILENCE, 0.0)


def test_reset_drops_the_partial_utterance() -> None:
    det = TurnDetector(CFG, classifier=by_sign)
    flags = pattern((True, 0.5), (False, 1.0))
    events = [e for i, v in enumerate(flags[:25]) for e in det.process(tagged_frame(i, v), i * F)]
    assert [type(e) for e in events] == [SpeechStarted]
    det.reset()
    assert det.state is State.SILENCE and det.speech_s == 0.0
    later = [e for i, v in enumerate(flags[25:], 25) for e in det.process(tagged_frame(i, v), i * F)]
    assert later == []


@pytest.mark.parametrize(
    "frame",
    [
        np.zeros(160, np.int16),
        np.zeros(FRAME_SAMPLES, np.float32),
        np.zeros((FRAME_SAMPLES, 2), np.int16),
    ],
)
def test_frames_of_the_wrong_size_or_type_raise_value_error(frame: np.ndarray) -> None:
    det = TurnDetector(CFG, classifier=by_sign)
    with pytest.raises(ValueError, match="320"):
        det.process(frame, 0.0)


def test_unusable_config_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"vad\.hangover_ms"):
        TurnDetector(dataclasses.replace(CFG, hangover_ms=0), classifier=by_sign)


# -- real webrtcvad -------------------------------------------------------------------------------


def voiced_signal(seconds: float, f0: float = 150.0, level: float = 0.3) -> np.ndarray:
    """A harmonic-rich pulse train (a crude vowel): what webrtcvad calls speech."""
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    x = sum(np.sin(2 * np.pi * h * f0 * t) / h for h in range(1, 26))
    x = x * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))
    return float32_to_int16(level * x / np.max(np.abs(x)))


def noise(seconds: float, dbfs: float, seed: int = 0) -> np.ndarray:
    rms = 10 ** (dbfs / 20)
    return float32_to_int16(np.random.default_rng(seed).normal(0, rms, round(seconds * SAMPLE_RATE)))


def feed(det: TurnDetector, pcm: np.ndarray, t0: float = 0.0) -> list[Event]:
    out: list[Event] = []
    for k in range(len(pcm) // FRAME_SAMPLES):
        out += det.process(pcm[k * FRAME_SAMPLES : (k + 1) * FRAME_SAMPLES], t0 + k * F)
    return out


def test_webrtcvad_finds_the_turn_in_a_voiced_signal() -> None:
    pcm = noise(3.0, -65)
    pcm[SAMPLE_RATE : 2 * SAMPLE_RATE] += voiced_signal(1.0)
    events = feed(TurnDetector(CFG), pcm)
    assert [type(e) for e in events] == [SpeechStarted, Paused, Utterance]
    started, _, utt = events
    assert isinstance(started, SpeechStarted) and isinstance(utt, Utterance)
    assert started.t_onset == pytest.approx(1.0, abs=0.04)
    assert utt.t_speech_end == pytest.approx(2.0, abs=0.04)
    assert utt.t_start == pytest.approx(started.t_onset - 0.3)


def test_webrtcvad_ignores_silence_faint_noise_and_a_click() -> None:
    pcm = noise(4.0, -60)
    pcm[SAMPLE_RATE : SAMPLE_RATE + 640] = voiced_signal(0.04, level=0.8)  # a 40 ms loud click
    assert feed(TurnDetector(CFG), pcm) == []
    assert feed(TurnDetector(CFG), np.zeros(2 * SAMPLE_RATE, np.int16)) == []


def test_voiced_signal_below_the_dbfs_floor_is_not_speech() -> None:
    quiet = voiced_signal(1.0, level=0.001)  # about -63 dBFS: webrtcvad alone may say voiced
    assert feed(TurnDetector(CFG), np.concatenate([quiet, np.zeros(SAMPLE_RATE, np.int16)])) == []


# -- fuzzing --------------------------------------------------------------------------------------

configs = st.builds(
    VadConfig,
    start_ms=st.integers(20, 200),
    pause_ms=st.integers(20, 600),
    hangover_ms=st.integers(20, 800),
    preroll_ms=st.integers(0, 400),
    min_utterance_ms=st.integers(0, 400),
    max_utterance_s=st.floats(0.5, 3.0),
)
runs = st.lists(st.tuples(st.booleans(), st.integers(1, 60)), max_size=40)


@settings(max_examples=300, deadline=None)
@given(cfg=configs, runs=runs)
def test_fuzz_random_voiced_sequences_keep_the_invariants(cfg: VadConfig, runs: list[tuple[bool, int]]) -> None:
    flags = [v for v, n in runs for _ in range(n)] + [False] * 60
    det = TurnDetector(cfg, classifier=by_sign)
    open_turn = False
    paused = False
    last_speech_end = -1.0
    # the detector's own arithmetic: 1.15 s is 57.5 frames -> 58 (round(1.15 * 50) gives 57, a float artefact)
    max_frames = round(cfg.max_utterance_s * 1000 / 20) + -(-cfg.preroll_ms // 20)
    for i, voiced in enumerate(flags):
        t = i * F
        for e in det.process(tagged_frame(i, voiced), t):
            if isinstance(e, SpeechStarted):
                assert not open_turn, "SpeechStarted twice without an end"
                assert last_speech_end - 1e-9 <= e.t_onset <= t + 1e-9
                open_turn, paused = True, False
            elif isinstance(e, Paused):
                assert open_turn and not paused
                assert e.t == pytest.approx(t + F)
                paused = True
            elif isinstance(e, Resumed):
                assert open_turn and paused and e.t == pytest.approx(t)
                paused = False
            elif isinstance(e, Discarded):
                assert open_turn and e.t == pytest.approx(t + F)
                assert 0 <= e.duration_s * 1000 < cfg.min_utterance_ms + 1e-6
                open_turn = False
            else:
                assert isinstance(e, Utterance) and open_turn
                assert e.t_start <= e.t_speech_end <= e.t_confirmed == pytest.approx(t + F)
                assert 0 < len(e.audio) <= max_frames * FRAME_SAMPLES
                idx = frame_indices(e.audio)
                assert idx == list(range(idx[0], idx[0] + len(idx)))  # contiguous audio
                assert e.t_start == pytest.approx(idx[0] * F)
                last_speech_end = e.t_speech_end
                open_turn = False
        assert det.speech_s >= 0.0
        if open_turn:
            assert det.state is not State.SILENCE
    assert not open_turn, "a turn was left open after a long silence"
    assert det.state is State.SILENCE


def test_the_words_are_flagged_as_maybe_whole_once_the_silence_reaches_tail_ms() -> None:
    """`just_quiet` (what starts the tail partial transcription, pipeline.prefill): on the one frame whose silence
    reaches tail_ms after enough speech, before the pause signal; again after each new stretch of speech; never
    after a blip too short to be a turn, and never with tail_ms 0."""
    cfg = VadConfig(pause_ms=200, tail_ms=40)
    flags = pattern((False, 1.0), (True, 0.6), (False, 0.3), (True, 0.5), (False, 1.0), (True, 0.1), (False, 0.6))

    def quiet_frames(cfg: VadConfig) -> list[int]:
        det = TurnDetector(cfg, classifier=by_sign)
        out = []
        for i, voiced in enumerate(flags):
            det.process(tagged_frame(i, voiced), 10.0 + i * F)
            if det.just_quiet:
                assert frame_indices(det.audio_so_far())[-1] == i  # every word heard so far, and 40 ms of silence
                assert det.voiced_samples == len(det.audio_so_far()) - 2 * FRAME_SAMPLES
                out.append(i)
        return out

    # The 2nd silent frame after each stretch of speech (frames 80 and 120 are the 1st); the 0.1 s blip gets none.
    assert quiet_frames(cfg) == [81, 121]
    assert quiet_frames(dataclasses.replace(cfg, tail_ms=0)) == []
    assert quiet_frames(dataclasses.replace(cfg, tail_ms=200)) == []  # not before the pause signal: no use
