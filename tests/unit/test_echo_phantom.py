"""The assistant must never take its own voice for the user, however long the reply and however the echo path
wanders (issue: a real-voice reply's echo passed as a barge-in 14 s into the reply, 6 dB over the predicted echo).

A long reply is played through a simulated desktop echo path (speaker -> room -> mic) whose delay drifts while it
plays, as PulseAudio's loopback (and a real sound server under CPU load) does; the canceller and the barge-in
confirmer see exactly what the session would feed them, and every stretch of the reply is asked whether it is
the user. None may be. A user talking over the same reply must still be confirmed.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from tests.audio.signals import resample
from tests.vsound import read_wav, speak
from voicecli.audio.echo import EchoCanceller
from voicecli.pipeline.bargein import BargeInConfirmer

pytest.importorskip("livekit")

R = 16000
OUT_RATE = 48000
T0 = 7000.0
REPLY = (
    "Rainbows form when sunlight enters raindrops, bends, reflects off the back of each drop, and bends again "
    "on the way out. Each colour bends by a slightly different amount, so white light fans out into a band of "
    "colours. You see the bow when the sun is behind you and the rain is in front of you, and the lower the "
    "sun, the higher the arc. Sometimes a second, fainter bow appears outside the first, with its colours in "
    "reverse order, because the light reflected twice inside the drops."
)
USER = "Wait, stop, that is enough."


@dataclass
class Played:
    mic: npt.NDArray[np.int16]
    clean: npt.NDArray[np.int16]
    echo_db: list[float | None]
    lags: list[npt.NDArray[np.float64] | None]
    known: list[bool]  # the echo delay was measured (else the lags span the whole echo path)
    t: list[float]


@pytest.fixture(scope="module")
def voices(tmp_path_factory: pytest.TempPathFactory) -> dict[str, npt.NDArray[np.float32]]:
    tmp: Path = tmp_path_factory.mktemp("phantom")
    out = {}
    for name, text, voice, speed in (("reply", REPLY, "en-us", 175), ("user", USER, "en+f3", 175)):
        pcm, rate = read_wav(speak(text, tmp / f"{name}.wav", voice=voice, speed=speed))
        out[name] = resample(pcm, rate, R).astype(np.float32) / 32768.0
    return out


def drifting_echo(far: npt.NDArray[np.float32], delays_ms: list[tuple[float, float]], gain_db: float) -> np.ndarray:
    """The far signal delayed by a delay that changes at the given times (seconds -> ms), with room reflections."""
    rng = np.random.default_rng(3)
    h = rng.normal(0, 0.25, int(0.08 * R)) * np.exp(-np.arange(int(0.08 * R)) / (0.015 * R))
    h[0] = 1.0
    out = np.zeros(far.size, np.float64)
    bounds = [*delays_ms, (far.size / R, 0.0)]
    for (t_a, d_ms), (t_b, _) in itertools.pairwise(bounds):
        d = int(d_ms * R / 1000)
        a, b = int(t_a * R), int(t_b * R)
        shifted = np.concatenate([np.zeros(d), far])[: far.size]
        out[a:b] = shifted[a:b]
    out = np.convolve(out, h)[: far.size]
    out *= np.sqrt(np.mean(far**2) / max(np.mean(out**2), 1e-12)) * 10 ** (gain_db / 20)
    return out


def play(
    voices: dict[str, npt.NDArray[np.float32]],
    delays_ms: list[tuple[float, float]],
    gain_db: float = -10.0,
    user_at: float | None = None,
    user_gain: float = 0.5,
) -> Played:
    rng = np.random.default_rng(11)
    far = voices["reply"] * 0.7
    mic = drifting_echo(far, delays_ms, gain_db) + rng.normal(0, 10 ** (-65 / 20), far.size)
    if user_at is not None:
        user = voices["user"] * user_gain
        at = int(user_at * R)
        mic[at : at + user.size] += user[: far.size - at]
    played = resample(np.clip(far * 32767, -32768, 32767).astype(np.int16), R, OUT_RATE)
    mic16 = np.clip(np.rint(mic * 32767), -32768, 32767).astype(np.int16)
    ec = EchoCanceller(OUT_RATE)
    clean = np.zeros_like(mic16)
    echo_db: list[float | None] = []
    lags: list[npt.NDArray[np.float64] | None] = []
    known: list[bool] = []
    times: list[float] = []
    block, sent = OUT_RATE // 100, 0
    for j in range(mic16.size // 320):
        t = T0 + j * 0.02
        while sent < played.size and T0 + sent / OUT_RATE < t + 0.04:
            ec.add_reference(played[sent : sent + block], T0 + sent / OUT_RATE)
            sent += block
        clean[j * 320 : (j + 1) * 320] = ec.process(mic16[j * 320 : (j + 1) * 320], t)
        echo_db.append(ec.echo_db)
        lags.append(ec.echo_lags_db)
        known.append(ec.delay_known)
        times.append(t)
    return Played(mic16, clean, echo_db, lags, known, times)


def confirmed_stretches(p: Played, start_s: float = 3.0, stretch_s: float = 0.3) -> list[float]:
    """Onsets (s into the reply, every 100 ms) whose stretch the confirmer calls the user."""
    conf = BargeInConfirmer()
    hits: list[float] = []
    onsets = iter(np.arange(start_s, len(p.t) * 0.02 - stretch_s, 0.1))
    onset = next(onsets)
    for j, t in enumerate(p.t):
        span = slice(j * 320, (j + 1) * 320)
        conf.observe(p.clean[span], t, p.mic[span], p.echo_db[j], True, p.lags[j], p.known[j])
        while t + 0.02 >= T0 + onset + stretch_s:
            if conf.confirm(T0 + onset, T0 + onset + stretch_s).confirmed:
                hits.append(round(float(onset), 1))
            onset = next(onsets, None)
            if onset is None:
                return hits
    return hits


def test_reply_is_long_enough(voices: dict[str, npt.NDArray[np.float32]]) -> None:
    assert voices["reply"].size / R > 20.0


@pytest.mark.parametrize(
    "delays",
    [
        [(0.0, 60.0)],  # a steady echo path
        [(0.0, 60.0), (9.0, 110.0)],  # the loopback's latency grows by 50 ms mid-reply
        [(0.0, 120.0), (7.0, 70.0), (14.0, 140.0)],  # and wanders both ways
    ],
    ids=["steady", "grows", "wanders"],  # the default confirmer passed 4 and 10 stretches of the last two before
    # min_lag_excess_db (2 dB); every one stood at most 0.4 dB over the echo at its loudest lag near the delay
)
def test_no_stretch_of_a_long_reply_is_taken_for_the_user(
    voices: dict[str, npt.NDArray[np.float32]], delays: list[tuple[float, float]]
) -> None:
    p = play(voices, delays)
    assert confirmed_stretches(p) == []


def test_the_user_over_a_drifting_echo_is_still_heard(voices: dict[str, npt.NDArray[np.float32]]) -> None:
    at = 16.0
    p = play(voices, [(0.0, 60.0), (9.0, 110.0)], user_at=at)
    onset = at + float(np.argmax(np.abs(voices["user"]) > 0.02)) / R
    hits = confirmed_stretches(p, start_s=onset - 0.05, stretch_s=0.3)
    assert hits and hits[0] <= onset + 0.2, hits


@pytest.mark.parametrize("delay_ms", [30.0, 60.0, 120.0, 200.0, 300.0])
def test_the_first_reply_before_its_echo_delay_is_measured(
    voices: dict[str, npt.NDArray[np.float32]], delay_ms: float
) -> None:
    """The session's first ~2 s of playing: the delay is not measured yet, so the echo is bounded over every lag
    up to the longest echo path. Its own echo never passes for the user, and a user talking over it at a normal
    level (their voice ~10 dB over the echo, as on the rig) is still heard. Each frame counted at its own loudest
    lag over-predicted the echo so much that a CI run lost such a user's whole request (excess 4.35 dB < 5)."""
    p = play(voices, [(0.0, delay_ms)])
    assert not any(p.known[: int(1.8 / 0.02)])  # the case under test: no delay yet
    assert [h for h in confirmed_stretches(p, start_s=0.4, stretch_s=0.3) if h < 1.8] == []
    for at in (0.5, 0.8):
        p = play(voices, [(0.0, delay_ms)], user_at=at, user_gain=0.9)  # ~13 dB over the echo
        onset = at + float(np.argmax(np.abs(voices["user"]) > 0.02)) / R
        hits = confirmed_stretches(p, start_s=onset - 0.05, stretch_s=0.3)
        # heard while the delay is still open, within the first two words ("Wait, stop")
        assert hits and hits[0] <= onset + 0.8 and not p.known[int((hits[0] + 0.3) / 0.02)], (at, hits)
