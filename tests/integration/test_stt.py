"""WhisperSTT against a generated scripted model, through real faster-whisper / ctranslate2 workers."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import shutil
import signal
import subprocess
import sys
import time
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import soxr

from voicecli.audio.format import SAMPLE_RATE
from voicecli.engines.base import Transcript
from voicecli.engines.stt import FULL_WINDOW_S, WhisperSTT
from voicecli.errors import EngineError, ModelError
from voicecli.testmodels import whisper as whisper_gen

pytestmark = pytest.mark.engines

PHRASE = "What is the weather like today"  # as heard: transcripts start like a sentence (stt.sentence_case)


def _alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return whisper_gen.generate(tmp_path_factory.mktemp("whisper") / "tiny", "tiny", phrase=PHRASE.lower())


@pytest.fixture(scope="session")
def speech(tmp_path_factory: pytest.TempPathFactory) -> npt.NDArray[np.float32]:
    """An espeak-ng sentence as the pipeline hands it over: mono float32 at 16 kHz."""
    wav = tmp_path_factory.mktemp("speech") / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), "please tell me the weather"], check=True)
    with wave.open(str(wav)) as w:
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    return np.asarray(soxr.resample(pcm.astype(np.float32) / 32768.0, rate, SAMPLE_RATE), dtype=np.float32)


@pytest.fixture(scope="module")
def runner() -> Iterator[asyncio.Runner]:
    with asyncio.Runner() as r:
        yield r


@pytest.fixture(scope="module")
def stt(tiny_model: Path, runner: asyncio.Runner) -> Iterator[WhisperSTT]:
    engine = WhisperSTT(tiny_model, threads=1)
    runner.run(engine.start())
    yield engine
    runner.run(engine.close())


def test_transcribes_speech_with_timings(
    stt: WhisperSTT, runner: asyncio.Runner, speech: npt.NDArray[np.float32]
) -> None:
    t = runner.run(stt.transcribe(speech))
    assert t.text == PHRASE
    assert t.is_speech
    assert t.language == "en"
    assert t.no_speech_prob < 0.1
    assert t.avg_logprob > -0.5
    assert t.audio_s == pytest.approx(len(speech) / SAMPLE_RATE)
    assert t.compute_s > 0.0
    assert 0.0 <= t.queue_wait_s < 30.0
    assert not t.retried
    assert (t.window_s, t.window_retry) == (7.0, "")  # the short window (default floor 7 s)


@pytest.mark.parametrize("level", [0.0, 0.001])  # digital silence, white noise at -60 dBFS
def test_silence_and_faint_noise_are_not_speech(stt: WhisperSTT, runner: asyncio.Runner, level: float) -> None:
    audio = (np.random.default_rng(7).standard_normal(SAMPLE_RATE) * level).astype(np.float32)
    t = runner.run(stt.transcribe(audio))
    # The model "hears" its silence hallucination with a high no_speech_prob: the filter drops it.
    assert t.no_speech_prob > 0.6
    assert t.text != PHRASE
    assert not t.is_speech
    assert t.window_s == 7.0


def test_empty_audio_is_not_speech(stt: WhisperSTT, runner: asyncio.Runner) -> None:
    t = runner.run(stt.transcribe(np.zeros(0, dtype=np.float32)))
    assert (t.text, t.is_speech) == ("", False)


def test_a_second_request_waits_in_the_queue(
    stt: WhisperSTT, runner: asyncio.Runner, speech: npt.NDArray[np.float32]
) -> None:
    async def both() -> list[float]:
        results = await asyncio.gather(stt.transcribe(speech), stt.transcribe(speech))
        assert [r.text for r in results] == [PHRASE, PHRASE]
        return sorted(r.queue_wait_s for r in results)

    first, second = runner.run(both())
    # One worker: the later request waited at least for most of the earlier one's compute.
    assert second > first


def test_audio_that_does_not_fit_a_short_window_gets_whisper_s_30_s(
    stt: WhisperSTT, runner: asyncio.Runner, speech: npt.NDArray[np.float32]
) -> None:
    long_audio = np.concatenate([speech, np.zeros(35 * SAMPLE_RATE - len(speech), np.float32)])
    t = runner.run(stt.transcribe(long_audio))
    # faster-whisper's own 30 s windows (the second, silent one adds the script's silence word)
    assert t.text.startswith(PHRASE)
    assert (t.window_s, t.window_retry) == (FULL_WINDOW_S, "")
    longest_short = np.concatenate([speech, np.zeros(int(28.5 * SAMPLE_RATE) - len(speech), np.float32)])
    t = runner.run(stt.transcribe(longest_short))
    assert (t.text, t.window_s) == (PHRASE, 29.5)


def test_window_floor_zero_always_uses_30_s(
    tiny_model: Path, runner: asyncio.Runner, speech: npt.NDArray[np.float32]
) -> None:
    with pytest.raises(ValueError, match="window_floor_s"):
        WhisperSTT(tiny_model, window_floor_s=-1.0)
    engine = WhisperSTT(tiny_model, threads=1, window_floor_s=0.0)
    runner.run(engine.start())
    try:
        t = runner.run(engine.transcribe(speech))
        assert (t.text, t.window_s, t.window_retry) == (PHRASE, FULL_WINDOW_S, "")
    finally:
        runner.run(engine.close())


def test_a_cancelled_request_that_has_not_started_never_runs(
    stt: WhisperSTT, runner: asyncio.Runner, speech: npt.NDArray[np.float32], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 14 item 8: a speculative transcription dropped while it waits must not delay the final one."""
    pool = stt._pool
    assert pool is not None
    submitted: list[int] = []
    real_submit = pool.submit

    def spy(fn: object, audio: npt.NDArray[np.float32], *args: object) -> concurrent.futures.Future[object]:
        submitted.append(len(audio))
        return real_submit(fn, audio, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(pool, "submit", spy)
    busy = np.concatenate([speech] * 8)  # keeps the one worker busy for a while
    stale = np.concatenate([speech] * 6)
    final = speech

    async def scenario() -> tuple[float, float, float]:
        running = asyncio.create_task(stt.transcribe(busy))
        speculative = asyncio.create_task(stt.transcribe(stale))
        await asyncio.sleep(0)  # `running` is in the worker, `speculative` waits for it
        speculative.cancel()  # the user resumed talking
        final_task = asyncio.create_task(stt.transcribe(final))
        first, last = await asyncio.gather(running, final_task)
        with pytest.raises(asyncio.CancelledError):
            await speculative
        assert (first.text, last.text) == (PHRASE, PHRASE)
        return first.compute_s, last.queue_wait_s, last.compute_s

    busy_compute, final_wait, final_compute = runner.run(scenario())
    assert submitted == [len(busy), len(final)]  # the stale request never reached the worker
    # The final request waited for the running one only (reported, not lost).
    assert 0.0 < final_wait < busy_compute + 2.0
    assert final_compute > 0.0


def test_an_abandoned_request_still_times_out(
    tiny_model: Path, runner: asyncio.Runner, speech: npt.NDArray[np.float32]
) -> None:
    """A running request whose caller gave up keeps its worker; a stuck one must not keep it forever."""
    engine = WhisperSTT(tiny_model, threads=1, timeout_s=0.05)
    runner.run(engine.start())
    try:
        (stuck,) = engine.worker_pids()

        async def abandon() -> None:
            task = asyncio.create_task(engine.transcribe(np.tile(speech, 24)))  # ~40 s: two 30 s windows
            await asyncio.sleep(0.01)  # submitted and running
            task.cancel()
            for _ in range(100):  # the watchdog replaces the pool at the request's deadline
                await asyncio.sleep(0.05)
                if not _alive(stuck):
                    return

        runner.run(abandon())
        assert not _alive(stuck)
        engine.timeout_s = 60.0
        assert runner.run(engine.transcribe(speech)).text == PHRASE
    finally:
        runner.run(engine.close())


def test_a_request_waiting_for_a_worker_fails_cleanly_on_close(
    tiny_model: Path, runner: asyncio.Runner, speech: npt.NDArray[np.float32]
) -> None:
    engine = WhisperSTT(tiny_model, threads=1)
    runner.run(engine.start())

    async def scenario() -> list[object]:
        first = asyncio.create_task(engine.transcribe(np.concatenate([speech] * 8)))
        waiting = asyncio.create_task(engine.transcribe(speech))
        await asyncio.sleep(0)
        await engine.close()
        return list(await asyncio.wait_for(asyncio.gather(first, waiting, return_exceptions=True), 30))

    running, waiting = runner.run(scenario())
    # The running request may finish before its worker stops; it never looks like a cancellation.
    assert isinstance(running, EngineError | Transcript), running
    assert isinstance(waiting, EngineError), waiting  # failed, not left waiting for a slot forever


def test_killed_worker_is_replaced_and_the_request_retried(
    stt: WhisperSTT, runner: asyncio.Runner, speech: npt.NDArray[np.float32]
) -> None:
    # Two minutes of audio: the 30 s path over four windows keeps the worker busy (well over the 20 ms below,
    # even for the tiny model) while it is killed.
    long_audio = np.concatenate([speech] * int(np.ceil(120 * 16000 / len(speech))))
    (victim,) = stt.worker_pids()

    async def kill_mid_request() -> tuple[str, bool]:
        task = asyncio.ensure_future(stt.transcribe(long_audio))
        await asyncio.sleep(0.02)  # the request is submitted and being worked on
        os.kill(victim, signal.SIGKILL)
        t = await asyncio.wait_for(task, 120)
        return t.text, t.retried

    text, retried = runner.run(kill_mid_request())
    assert retried and text.startswith(PHRASE)  # the scripted model says its phrase once per 30 s window
    assert not _alive(victim)
    after = runner.run(stt.transcribe(speech))
    assert (after.text, after.retried) == (PHRASE, False)
    assert stt.worker_pids() and victim not in stt.worker_pids()


def test_timeout_raises_and_the_next_request_works(
    tiny_model: Path, runner: asyncio.Runner, speech: npt.NDArray[np.float32]
) -> None:
    engine = WhisperSTT(tiny_model, threads=1, timeout_s=0.001)
    runner.run(engine.start())
    try:
        (stuck,) = engine.worker_pids()
        with pytest.raises(EngineError, match="did not answer"):
            runner.run(engine.transcribe(speech))
        assert not _alive(stuck)  # the presumably stuck worker was killed, not left behind
        engine.timeout_s = 60.0
        assert runner.run(engine.transcribe(speech)).text == PHRASE
    finally:
        runner.run(engine.close())


def test_truncated_model_is_a_model_error_naming_the_file(
    tiny_model: Path, tmp_path: Path, runner: asyncio.Runner
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    model_bin = broken / "model.bin"
    os.truncate(model_bin, model_bin.stat().st_size // 2)
    engine = WhisperSTT(broken, threads=1, pull_name="whisper-base.en")
    with pytest.raises(ModelError) as err:
        runner.run(engine.start())
    assert str(model_bin) in err.value.message
    assert "voicecli models pull whisper-base.en" in err.value.hint
    assert engine.worker_pids() == []
    runner.run(engine.close())


def test_missing_model_dir_names_the_pull_command(tmp_path: Path, runner: asyncio.Runner) -> None:
    engine = WhisperSTT(tmp_path / "nowhere")
    with pytest.raises(ModelError) as err:
        runner.run(engine.start())
    assert str(tmp_path / "nowhere") in err.value.message
    assert "voicecli models pull whisper-base.en" in err.value.hint


def test_missing_tokenizer_is_an_error_not_a_download(tiny_model: Path, tmp_path: Path, runner: asyncio.Runner) -> None:
    partial = tmp_path / "partial"
    shutil.copytree(tiny_model, partial)
    (partial / "tokenizer.json").unlink()
    with pytest.raises(ModelError, match=r"tokenizer\.json"):
        runner.run(WhisperSTT(partial).start())


def test_close_leaves_no_worker_processes(tiny_model: Path, runner: asyncio.Runner) -> None:
    engine = WhisperSTT(tiny_model, threads=1, workers=2)
    runner.run(engine.start())
    pids = engine.worker_pids()
    assert len(pids) == 2 and all(_alive(p) for p in pids)
    runner.run(engine.close())
    assert not any(_alive(p) for p in pids)
    assert engine.worker_pids() == []
    runner.run(engine.close())  # idempotent
    engine.close_now()
    with pytest.raises(EngineError):
        runner.run(engine.transcribe(np.zeros(SAMPLE_RATE, dtype=np.float32)))


def test_close_from_a_signal_handler(tiny_model: Path, runner: asyncio.Runner) -> None:
    engine = WhisperSTT(tiny_model, threads=1)
    runner.run(engine.start())
    pids = engine.worker_pids()
    previous = signal.signal(signal.SIGUSR1, lambda *_: engine.close_now())
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert pids and not any(_alive(p) for p in pids)
    runner.run(engine.close())  # and once more from the normal path


def _state(pid: int, stopped: bool) -> str:
    """The process state once it is (or is no longer) stopped; signals are delivered asynchronously."""
    deadline = time.monotonic() + 2.0
    while True:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().split(")")[-1].split()[0]
        if (state == "T") == stopped or time.monotonic() > deadline:
            return state
        time.sleep(0.01)


def test_a_frozen_worker_takes_no_cpu_keeps_its_request_and_closes(
    tiny_model: Path, speech: npt.NDArray[np.float32], runner: asyncio.Runner
) -> None:
    """The partial words' worker is frozen at the user's pause (pipeline.prefill): a request it holds waits, it
    answers once continued, frozen time does not count against its timeout, and close() never hangs on it."""
    engine = WhisperSTT(tiny_model, threads=1, timeout_s=1.0, nice=19)
    runner.run(engine.start())
    try:
        (pid,) = engine.worker_pids()
        assert os.getpriority(os.PRIO_PROCESS, pid) == 19

        async def frozen_request() -> Transcript:
            engine.freeze(True)
            assert _state(pid, stopped=True) == "T"  # stopped: it takes no CPU at all
            job = asyncio.ensure_future(engine.transcribe(speech))
            await asyncio.sleep(1.5)  # longer than the timeout: a stopped worker is not a stuck one
            assert not job.done()
            engine.freeze(False)
            assert _state(pid, stopped=False) != "T"
            return await job

        assert runner.run(frozen_request()).text == PHRASE
        engine.freeze(True)
    finally:
        runner.run(asyncio.wait_for(engine.close(), 10))  # frozen: close() continues it first
    assert not _alive(pid)


FROZEN_PARENT = """
import asyncio, sys
from voicecli.engines.stt import WhisperSTT

async def main() -> None:
    engine = WhisperSTT(sys.argv[1], threads=1, nice=19)
    await engine.start()
    engine.freeze(True)
    print(*engine.worker_pids(), flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


def test_a_frozen_worker_dies_with_its_killed_parent(tiny_model: Path) -> None:
    """kill -9 of `voicecli talk` while the partial words' worker is frozen: a stopped worker runs no watcher
    thread, and the kernel's parent-death signal must take it down (it once outlived the parent)."""
    parent = subprocess.Popen([sys.executable, "-c", FROZEN_PARENT, str(tiny_model)], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        (pid,) = map(int, parent.stdout.readline().split())
        assert _state(pid, stopped=True) == "T"
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 5.0
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)


def _stat_cpu_s(path: str) -> float:
    """User + system CPU seconds in a /proc stat file (a process's: all its threads)."""
    with open(path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_one_thread_worker_keeps_to_one_core(
    tiny_model: Path, speech: npt.NDArray[np.float32], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A one-thread whisper worker uses one core's worth of CPU while it transcribes: numpy's OpenBLAS used to leave
    a thread spinning on the other core after every mel product (230 ms of CPU for 136 ms of work with whisper base),
    taking the core llama.cpp and the audio need. `voicecli` sets OPENBLAS_NUM_THREADS=1 for itself and its
    workers; with 2 BLAS threads (what numpy does on a 2-core machine by itself) the same work costs more than twice
    the CPU, and next to a busy program the spinning thread also slows the work down five-fold (Intel Xeon)."""
    audio = np.tile(speech, 8)  # ~12 s: long enough products for OpenBLAS to start its threads

    async def run() -> tuple[float, float]:
        engine = WhisperSTT(tiny_model, threads=1)
        await engine.start()
        try:
            (pid,) = engine.worker_pids()
            await engine.transcribe(audio)
            cpu0, wall0 = _stat_cpu_s(f"/proc/{pid}/stat"), time.monotonic()
            for _ in range(40):  # CPU time is counted in 10 ms ticks: ~0.5 s of work
                await engine.transcribe(audio)
            return _stat_cpu_s(f"/proc/{pid}/stat") - cpu0, time.monotonic() - wall0
        finally:
            await engine.close()

    with asyncio.Runner() as r:
        cpu, wall = r.run(run())
    assert cpu <= 1.2 * wall + 0.05, f"the worker used {cpu:.2f} s of CPU in {wall:.2f} s"
    if (os.cpu_count() or 1) < 2:
        return  # one core: nothing to spin on
    # The proof that the measure sees a spinning thread, against the same work's CPU in the same run, not against the
    # wall clock: next to a busy program (a desktop is never idle) the spinner got no second core to show on
    # (3.39 s of CPU in 3.4 s, against 0.55 s with one thread; quiet: 1.27 s in 0.67 s, against 0.56 s).
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")
    with asyncio.Runner() as r:
        spun, _ = r.run(run())
    assert spun > 1.6 * cpu, f"expected a spinning BLAS thread: {spun:.2f} s of CPU against {cpu:.2f} s with one"
