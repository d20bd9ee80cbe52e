"""Echo cancellation and barge-in confirmation on synthetic desktop-speaker echo.

The reply is espeak-ng speech played at 44.1 kHz in 10 ms output blocks, each reported with its DAC time
(with jitter), exactly as Playback's block log reports it; the mic hears it 30-150 ms later through a
short decaying room response, at -10 dB, plus a faint noise floor, in 20 ms frames stamped with their ADC
time. Nothing here knows the delay except the generator.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from tests.audio.signals import resample
from tests.vsound import read_wav, speak
from voicecli.audio.echo import EchoCanceller, ReferenceSink, ReferenceTimeline, resolve_mode
from voicecli.errors import ConfigError
from voicecli.pipeline.bargein import BargeInConfirmer, Verdict

pytest.importorskip("livekit")

R = 16000
OUT_RATE = 44100
REPLY = (
    "The weather today is mild and pleasant, with a light breeze from the west. Later this afternoon "
    "some clouds will gather, and there may be a short shower in the evening. Tomorrow looks brighter."
)
USER = "Stop, tell me something else instead please."
T0 = 5000.0  # an arbitrary monotonic time for the first played sample


@dataclass
class Run:
    mic: npt.NDArray[np.float32]  # what the mic heard, 16 kHz
    out: npt.NDArray[np.float32]  # after the canceller
    echo: npt.NDArray[np.float32]
    near: npt.NDArray[np.float32]
    canceller: EchoCanceller
    frame_t: list[float]


@pytest.fixture(scope="module")
def voices(tmp_path_factory: pytest.TempPathFactory) -> dict[str, npt.NDArray[np.float32]]:
    tmp: Path = tmp_path_factory.mktemp("echo")
    out = {}
    for name, text, voice in (("reply", REPLY, "en-us"), ("user", USER, "en+f3")):
        pcm, rate = read_wav(speak(text, tmp / f"{name}.wav", voice=voice))
        out[name] = resample(pcm, rate, R).astype(np.float32) / 32768.0
    return out


def room_tail(rng: np.random.Generator) -> npt.NDArray[np.float32]:
    """Direct path plus 80 ms of decaying reflections."""
    h = rng.normal(0, 0.25, int(0.08 * R)) * np.exp(-np.arange(int(0.08 * R)) / (0.015 * R))
    h[0] = 1.0
    return h.astype(np.float32)


def simulate(
    voices: dict[str, npt.NDArray[np.float32]],
    delay_ms: float,
    gain_db: float = -10.0,
    seconds: float = 10.0,
    near_at: float | None = None,
    near_db: float = -6.0,
    lead_s: float = 0.0,
) -> Run:
    """`lead_s`: seconds of the room alone (nothing played) before the reply starts."""
    rng = np.random.default_rng(7)
    far = np.resize(voices["reply"], int(seconds * R)) * 0.7
    far[: int(lead_s * R)] = 0.0
    d = int(delay_ms * R / 1000)
    echo = np.convolve(np.concatenate([np.zeros(d, np.float32), far]), room_tail(rng))[: far.size]
    echo *= np.sqrt(np.mean(far**2) / np.mean(echo**2)) * 10 ** (gain_db / 20)
    near = np.zeros_like(far)
    if near_at is not None:
        user = voices["user"] * 10 ** (near_db / 20) * 0.7
        at = int(near_at * R)
        near[at : at + user.size] = user[: far.size - at]
    mic = echo + near + rng.normal(0, 10 ** (-70 / 20), far.size).astype(np.float32)
    played = resample(np.clip(far * 32767, -32768, 32767).astype(np.int16), R, OUT_RATE)
    mic16 = np.clip(np.rint(mic * 32767), -32768, 32767).astype(np.int16)
    ec = EchoCanceller(OUT_RATE)
    out = np.zeros_like(mic16)
    block, sent, times = OUT_RATE // 100, 0, []
    for j in range(mic16.size // 320):
        t = T0 + j * 0.02 + rng.normal(0, 0.0003)  # ADC stamps jitter a little
        # playback reports its blocks ahead of the DAC (they are queued ~40 ms early)
        while sent < played.size and T0 + sent / OUT_RATE < t + 0.04:
            ec.add_reference(played[sent : sent + block], T0 + sent / OUT_RATE + rng.normal(0, 0.0003))
            sent += block
        out[j * 320 : (j + 1) * 320] = ec.process(mic16[j * 320 : (j + 1) * 320], t)
        times.append(t)
    return Run(mic, out.astype(np.float32) / 32768.0, echo, near, ec, times)


def envelope(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """Log energy per 10 ms: what an ear (or a VAD) follows."""
    n = x.size // 160
    e = np.mean(x[: n * 160].astype(np.float64).reshape(n, 160) ** 2, axis=1)
    return np.log10(e + 1e-9)


def corr(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float(np.dot(a, b) / np.sqrt(np.dot(a, a) * np.dot(b, b)))


def test_removes_at_least_25_db_of_a_10_s_reply(voices: dict[str, npt.NDArray[np.float32]]) -> None:
    run = simulate(voices, delay_ms=60)
    stats = run.canceller.take_stats()
    skip = R  # the first second is convergence
    measured = 10 * np.log10(np.mean(run.mic[skip:] ** 2) / np.mean(run.out[skip:] ** 2))
    assert measured >= 25.0, f"only {measured:.1f} dB of echo removed"
    assert stats.erle_db is not None and stats.erle_db >= 25.0  # the per-turn figure agrees
    assert stats.residual_dbfs is not None and stats.residual_dbfs < -55.0
    assert stats.frames > 400  # it counted the frames the speaker was playing
    # the figures are per turn: the next turn starts from zero
    assert run.canceller.take_stats().frames == 0


def test_a_mic_that_does_not_hear_the_speaker_passes_through_untouched(
    voices: dict[str, npt.NDArray[np.float32]],
) -> None:
    """Headphones: the speaker never reaches the mic, so after the first second of playing the canceller
    knows there is nothing to remove and hands the user's voice on as it was (its double-talk suppression
    would only clip the first syllables of a barge-in)."""
    run = simulate(voices, delay_ms=60, gain_db=-90.0, seconds=12.0, near_at=8.0, near_db=-6.0, lead_s=1.5)
    assert run.canceller.echo_absent
    span = slice(8 * R, 8 * R + voices["user"].size)
    assert np.array_equal(run.out[span], np.clip(np.rint(run.mic[span] * 32767), -32768, 32767) / 32768.0)
    echo = simulate(voices, delay_ms=60, gain_db=-10.0, seconds=4.0, lead_s=1.5)  # with an echo it does not
    assert not echo.canceller.echo_absent
    assert echo.canceller.echo_gain_db == pytest.approx(-10.0, abs=1.5)


@pytest.mark.parametrize("delay_ms", [30, 60, 150])
def test_estimates_the_echo_delay_within_10_ms(voices: dict[str, npt.NDArray[np.float32]], delay_ms: int) -> None:
    run = simulate(voices, delay_ms=delay_ms, seconds=5.0)
    assert run.canceller.delay_ms is not None
    assert abs(run.canceller.delay_ms - delay_ms) <= 10.0, run.canceller.delay_ms


def test_user_speech_over_the_echo_survives(voices: dict[str, npt.NDArray[np.float32]]) -> None:
    run = simulate(voices, delay_ms=60, gain_db=-6.0, near_at=5.0, near_db=-12.0)
    span = slice(5 * R, 5 * R + voices["user"].size)
    target = envelope(run.near[span])
    before = corr(envelope(run.mic[span]), target)
    after = corr(envelope(run.out[span]), target)
    assert after > before + 0.2, (before, after)
    # and its level is kept (within 6 dB), while the echo around it is gone
    kept = 10 * np.log10(np.mean(run.out[span] ** 2) / np.mean(run.near[span] ** 2))
    assert kept > -6.0


def test_timeline_reads_silence_where_nothing_played_and_snaps_jitter() -> None:
    tl = ReferenceTimeline(seconds=1.0)
    a = np.arange(1, 161, dtype=np.int16)
    tl.add(a, 1000)
    used = tl.add(a, 1160 + 20)  # 20 samples of stamp jitter: continues the first block
    assert used == 1160
    assert np.array_equal(tl.read(1000, 320), np.concatenate([a, a]))
    tl.add(a, 5000)  # a real gap: silence in between
    assert not tl.read(1400, 3000).any()
    assert np.array_equal(tl.read(990, 20)[:10], np.zeros(10, np.int16))
    tl.add(a, 5000 + 2 * R)  # older than the ring holds now: forgotten, not wrapped around
    assert not tl.read(5000, 160).any()


# ---- barge-in confirmation --------------------------------------------------------------------------------


def i16(x: npt.NDArray[np.float32]) -> npt.NDArray[np.int16]:
    return np.clip(np.rint(x * 32767), -32768, 32767).astype(np.int16)


def confirm_over(run: Run, conf: BargeInConfirmer, start_s: float, dur_s: float = 0.3) -> Verdict:
    for j, t in enumerate(run.frame_t):
        span = slice(j * 320, (j + 1) * 320)
        conf.observe(i16(run.out[span]), t, i16(run.mic[span]))
        if t >= T0 + start_s + dur_s:
            break
    return conf.confirm(T0 + start_s, T0 + start_s + dur_s)


def test_confirms_the_user_but_not_the_cancelled_echo(voices: dict[str, npt.NDArray[np.float32]]) -> None:
    run = simulate(voices, delay_ms=60, near_at=5.0, near_db=-6.0)
    onset = 5.0 + float(np.argmax(np.abs(voices["user"]) > 0.02)) / R
    user = confirm_over(run, BargeInConfirmer(), onset, 0.3)
    assert user.confirmed, user
    echo_only = confirm_over(run, BargeInConfirmer(), 2.0, 0.3)
    assert not echo_only.confirmed, echo_only


def test_uncancelled_echo_is_not_louder_than_what_came_before(voices: dict[str, npt.NDArray[np.float32]]) -> None:
    """If the canceller were bypassed, the reply's echo is speech to a neural VAD; the level cue still
    refuses it, because it is no louder than what the mic carried throughout the reply."""
    run = simulate(voices, delay_ms=60)
    run.out = run.mic  # the canceller bypassed
    v = confirm_over(run, BargeInConfirmer(), 6.0, 0.3)
    assert v.speech_ratio > 0.5  # Silero does hear a voice ...
    assert not v.confirmed, v  # ... but not one standing out of the echo


def test_loud_noise_is_not_speech() -> None:
    conf = BargeInConfirmer()
    rng = np.random.default_rng(3)
    t = T0
    for _ in range(50):  # quiet room
        conf.observe(rng.normal(0, 30, 320).astype(np.int16), t)
        t += 0.02
    onset = t
    for _ in range(15):  # a keyboard / a door: loud, broadband, not a voice
        conf.observe(rng.normal(0, 6000, 320).astype(np.int16), t)
        t += 0.02
    v = conf.confirm(onset, t)
    assert v.level_dbfs > v.background_dbfs + 20
    assert not v.confirmed, v


def test_rule_with_a_scripted_classifier() -> None:
    """The rule itself, independent of Silero: enough voiced frames, the level margin and most of the mic's
    power kept through the canceller are all needed."""
    conf = BargeInConfirmer(lambda x: 0.9 if x.mean() > 0 else 0.1, margin_db=10.0)  # "voice" = positive DC
    quiet, voice, noise = (np.full(320, v, np.int16) for v in (60, 3000, -3000))
    leak_mic = np.full(320, 30000, np.int16)  # the mic was 20 dB louder: the canceller removed most of it
    k = 0

    def feed(clean: npt.NDArray[np.int16], n: int, raw: npt.NDArray[np.int16] | None = None) -> tuple[float, float]:
        nonlocal k
        start = T0 + 0.02 * k
        for _ in range(n):
            conf.observe(clean, T0 + 0.02 * k, clean if raw is None else raw)
            k += 1
        return start, T0 + 0.02 * k

    feed(quiet, 50)
    v = conf.confirm(*feed(voice, 15))
    assert v.confirmed and v.level_dbfs > v.background_dbfs + 20 and v.retained_db == 0.0, v  # loud, voiced
    feed(quiet, 50)
    assert not conf.confirm(*feed(noise, 15)).confirmed  # loud, not voiced
    feed(quiet, 50)
    assert not conf.confirm(*feed(voice, 2)).confirmed  # voiced but too short to be sure
    feed(quiet, 50)
    leak = conf.confirm(*feed(voice, 15, leak_mic))
    assert leak.retained_db == pytest.approx(-20.0, abs=0.1)
    assert not leak.confirmed, leak  # loud and voiced, but what is left of a much louder echo
    assert not conf.confirm(T0 + 100, T0 + 101).confirmed  # nothing recorded there


class _Recorder:
    """Stands in for the canceller: what it was handed as reference."""

    def __init__(self) -> None:
        self.got: list[tuple[npt.NDArray[np.int16], float]] = []
        self.cut_at: float | None = None

    def add_reference(self, pcm: npt.NDArray[np.int16], t_dac: float) -> None:
        self.got.append((pcm.copy(), t_dac))

    def cut_reference(self, t: float) -> None:
        self.cut_at = t

    def hold(self) -> None:
        self.held = True

    def release(self, t: float) -> None:
        self.held = False


class _Sink:
    """A playback queue whose reply started at DAC time 100.0 and has played `heard` samples."""

    rate = 1000

    def __init__(self) -> None:
        self.started: float | None = None
        self.heard = 0
        self.calls: list[str] = []

    def begin_reply(self, reply_id: int) -> None:
        self.calls.append("begin")

    async def write(self, pcm: npt.NDArray[np.int16]) -> None:
        self.calls.append(f"write {pcm.size}")

    def end_reply(self) -> None:
        self.calls.append("end")

    def flush(self) -> None:
        self.calls.append("flush")

    def played_samples(self, reply_id: int) -> int:
        return self.heard

    def play_start(self, reply_id: int) -> float | None:
        return self.started

    async def wait_reply_done(self, reply_id: int) -> None:
        self.calls.append("wait")


def test_reference_sink_hands_over_each_reply_from_its_dac_start() -> None:
    import asyncio

    rec, sink = _Recorder(), _Sink()
    ref = ReferenceSink(sink, rec)  # type: ignore[arg-type]

    async def speak() -> None:
        ref.begin_reply(1)
        await ref.write(np.arange(500, dtype=np.int16))
        await ref.write(np.arange(500, 1000, dtype=np.int16))
        ref.end_reply()

    asyncio.run(speak())
    assert sink.calls == ["begin", "write 500", "write 500", "end"]  # everything reaches the real sink
    ref.pump(99.0)
    assert rec.got == []  # not playing yet: no DAC time known
    sink.started = 100.0
    ref.pump(100.0)  # due: LEAD_S (0.2 s = 200 samples) ahead of the present
    ref.pump(100.5)  # 700 samples due, across the two writes
    assert [(p.size, t) for p, t in rec.got] == [(200, 100.0), (300, 100.2), (200, 100.5)]
    assert np.array_equal(np.concatenate([p for p, _ in rec.got]), np.arange(700))
    # barge-in: 550 samples were heard; with the grace, the reference ends at 650, not 700 or 1000
    sink.heard = 550
    ref.flush()
    assert sink.calls[-1] == "flush"
    assert rec.cut_at == pytest.approx(100.0 + 650 / 1000)
    ref.pump(102.0)
    assert sum(p.size for p, _ in rec.got) == 700


def test_cut_reference_silences_what_will_not_play() -> None:
    tl = ReferenceTimeline(seconds=1.0)
    tl.add(np.ones(1000, np.int16), 0)
    tl.cut(600)
    assert tl.read(0, 1000).sum() == 600
    assert tl.add(np.full(10, 2, np.int16), 600) == 600  # the next reply continues where the cut left off
    assert tl.read(600, 10).tolist() == [2] * 10


def test_echo_modes() -> None:
    assert resolve_mode("auto") == "aec"  # the canceller is installed here
    assert resolve_mode("half-duplex") == "half-duplex"
    assert resolve_mode("off") == "off"
    with pytest.raises(ConfigError) as exc:
        resolve_mode("loud")
    assert "auto, aec, half-duplex, off" in (exc.value.hint or "")


def test_rule_against_the_predicted_echo() -> None:
    """Once the canceller predicts the echo level, the raw mic standing >= 5 dB above it is what tells the
    user from a leak of the echo; the neural VAD only makes the decision faster, and the cues are judged on
    200 ms windows, so a leak that started the stretch does not hide the user who follows it."""
    conf = BargeInConfirmer(lambda x: 0.9 if x.mean() > 0 else 0.1)  # "voice" = positive DC
    quiet = np.full(320, 30, np.int16)
    voice, rough = np.full(320, 3000, np.int16), np.full(320, -3000, np.int16)  # -21 dBFS, with/without "voice"
    echo_db = -20.0  # the reply's echo the reference predicts, as loud as the mic's raw level in a leak
    raw_echo = np.full(320, 3300, np.int16)  # -20 dBFS
    raw_user = np.full(320, 9000, np.int16)  # -11 dBFS: the user ~9 dB over the echo
    k = 0

    def feed(clean: npt.NDArray[np.int16], raw: npt.NDArray[np.int16], n: int) -> tuple[float, float]:
        nonlocal k
        start = T0 + 0.02 * k
        for _ in range(n):
            conf.observe(clean, T0 + 0.02 * k, raw, echo_db)
            k += 1
        return start, T0 + 0.02 * k

    feed(quiet, raw_echo, 50)
    leak = conf.confirm(*feed(voice, raw_echo, 15))  # loud and voiced after the canceller, but only echo
    assert leak.excess_db == pytest.approx(0.0, abs=0.5) and not leak.confirmed, leak
    feed(quiet, raw_echo, 50)
    user = conf.confirm(*feed(voice, raw_user, 5))
    assert user.confirmed and user.excess_db == pytest.approx(9.0, abs=1.0), user  # voiced: 100 ms is enough
    feed(quiet, raw_echo, 50)
    assert not conf.confirm(*feed(rough, raw_user, 5)).confirmed  # not voiced (yet): wait ...
    feed(quiet, raw_echo, 50)
    assert conf.confirm(*feed(rough, raw_user, conf.sustain_frames)).confirmed  # ... 140 ms above the echo is enough
    feed(quiet, raw_echo, 50)
    start, _ = feed(voice, raw_echo, 20)  # a leak starts the VAD's stretch, the user follows 400 ms later
    _, end = feed(voice, raw_user, 6)
    late = conf.confirm(start, end)
    assert late.confirmed and late.excess_db is not None and late.excess_db >= conf.min_excess_db, late


def test_aec3_runs_only_from_a_reply_until_its_echo_tail_has_passed() -> None:
    """Idle listening costs no AEC3: the mic passes through bit for bit until a reply's reference is laid,
    AEC3 runs while it plays, and the mic passes through again once ACTIVE_TAIL_S has passed after it."""
    from voicecli.audio.echo import ACTIVE_TAIL_S

    rng = np.random.default_rng(3)
    ec = EchoCanceller(OUT_RATE)
    room = [rng.normal(0, 30, 320).astype(np.int16) for _ in range(100)]
    for k, frame in enumerate(room):  # 2 s with nothing played
        assert np.array_equal(ec.process(frame, T0 + 0.02 * k), frame)
    assert ec.apm_frames == 0
    reply = (rng.normal(0, 3000, OUT_RATE)).astype(np.int16)  # 1 s played from T0 + 2 s
    ec.add_reference(reply, T0 + 2.0)
    for k in range(100, 150):
        ec.process(room[k % 100], T0 + 0.02 * k)
    assert ec.apm_frames == 50
    assert ec.playing_near(T0 + 3.0 + ACTIVE_TAIL_S - 0.05)
    # Past the tail of the reply (it ended at T0 + 3 s) nothing is cancelled or even run through AEC3.
    t = T0 + 3.0 + ACTIVE_TAIL_S + 0.05
    assert not ec.playing_near(t)
    assert np.array_equal(ec.process(room[0], t), room[0])
    assert ec.apm_frames == 50
    # A flush cuts the tail short from where playback stopped.
    ec.add_reference(reply, t + 1.0)
    assert ec.playing_near(t + 1.0 + ACTIVE_TAIL_S)
    ec.cut_reference(t + 1.2)
    assert not ec.playing_near(t + 1.2 + ACTIVE_TAIL_S + 0.05)
    # While a reply is under way AEC3 runs even where no reference lies (a late clause stalled playback and
    # the rest of the reply is laid earlier than it plays); it stops ACTIVE_TAIL_S after the reply is over.
    ec.hold()
    assert ec.playing_near(t + 100.0)
    ec.release(t + 100.0)
    assert ec.playing_near(t + 100.0 + ACTIVE_TAIL_S - 0.05)
    assert not ec.playing_near(t + 100.0 + ACTIVE_TAIL_S + 0.05)


def test_the_neural_vad_rests_in_a_quiet_room_and_wakes_for_sound() -> None:
    """Silero scores nothing while nothing plays and the mic is far below the speech floor; sound at a voice's
    level (or a reply playing) wakes it, starting from a fresh state."""
    scored: list[float] = []
    resets = 0

    class Scripted:
        def __call__(self, x: npt.NDArray[np.float32]) -> float:
            scored.append(float(np.abs(x).mean()))
            return 0.9

        def reset(self) -> None:
            nonlocal resets
            resets += 1

    conf = BargeInConfirmer(Scripted(), floor_dbfs=-50.0)
    room, voice = np.full(320, 3, np.int16), np.full(320, 3000, np.int16)  # -80 dBFS and -21 dBFS
    for k in range(50):
        conf.observe(room, T0 + 0.02 * k, room, None, playing=False)
    assert scored == [] and resets == 1
    for k in range(50, 60):
        conf.observe(voice, T0 + 0.02 * k, voice, None, playing=False)
    assert len(scored) == 6  # 200 ms of 20 ms frames in 32 ms windows
    for k in range(60, 70):
        conf.observe(room, T0 + 0.02 * k, room, None, playing=True)  # a reply plays: always scored
    assert len(scored) > 6 and resets == 1
    assert conf.classifies(-80.0, playing=True) and not conf.classifies(-80.0, playing=False)


def test_a_reply_after_a_rest_starts_on_a_fresh_aec3_and_one_right_after_another_does_not() -> None:
    """Resumed after a rest in the state the reply before left it, AEC3's removal drifted down reply by reply (to
    16 dB on the test rig); a fresh one starts each such reply. A reply that follows another within its tail keeps
    the AEC3 that is still running (the room may still ring with the reply before)."""
    rng = np.random.default_rng(11)
    ec = EchoCanceller(OUT_RATE)
    past = time.monotonic() - 10.0  # a reply that ended 9 s ago, far beyond ACTIVE_TAIL_S
    ec.add_reference(rng.normal(0, 3000, OUT_RATE).astype(np.int16), past)
    frame = rng.normal(0, 300, 320).astype(np.int16)
    for k in range(50):
        ec.process(frame, past + 0.02 * k)
    rested = ec._apm
    ec.hold()  # the next reply begins after the rest
    ec.process(frame, time.monotonic())
    assert ec._apm is not rested
    fresh = ec._apm
    ec.release(time.monotonic())
    ec.hold()  # another reply right after it
    ec.process(frame, time.monotonic())
    assert ec._apm is fresh
    assert ec.apm_frames == 52
