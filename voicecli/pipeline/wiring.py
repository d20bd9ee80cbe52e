"""Wiring: config -> models -> engines + audio streams -> Session. Shared by `talk` and `bench`, so the
benchmark measures exactly the code the user runs."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from voicecli.config import Config, TalkConfig
from voicecli.engines.base import LanguageModel, SpeechToText, TextToSpeech
from voicecli.events import Event
from voicecli.pipeline.history import History
from voicecli.pipeline.ports import FrameLike
from voicecli.pipeline.session import Session
from voicecli.pipeline.transcript import TranscriptLog

if TYPE_CHECKING:
    from voicecli.pipeline.bargein import EchoPath
    from voicecli.pipeline.turn_end import Judge


@dataclass
class Engines:
    stt: SpeechToText
    llm: LanguageModel
    tts: TextToSpeech
    paths: dict[str, Path]
    judge: Judge | None = None  # the semantic end of turn, when its model passed the start-up check
    judge_llm: LanguageModel | None = None  # the judge's own small model (vad.turn_model), if any
    judge_note: str = ""  # which model judges the end of turn, or why none does
    partial_stt: SpeechToText | None = None  # transcribes while the user speaks (talk.prefill_while_speaking)

    async def close(self, timeout: float = 2.0) -> None:
        """Close all three at once, each bounded by `timeout`; never raises, so a stuck STT worker can neither
        hide the session's own outcome nor keep the LLM and the voice from being released."""

        async def one(engine: SpeechToText | LanguageModel | TextToSpeech) -> None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(engine.close(), timeout)

        if self.judge_llm is not None:  # first: it may run on the reply LLM's worker, which closing the LLM ends
            await one(self.judge_llm)
        extra = [one(self.partial_stt)] if self.partial_stt is not None else []
        await asyncio.gather(one(self.stt), one(self.llm), one(self.tts), *extra)


def resolve_models(cfg: Config) -> dict[str, Path]:
    """Manifest names or local paths -> local files; a missing one is a ModelError naming the pull command.
    With `llm.url` (a remote LLM server) no local LLM file is needed, and none is resolved."""
    from voicecli import models

    root = models.models_dir(cfg.models.dir)
    paths = {"stt": models.resolve("stt", cfg.models.stt, root)}
    if not cfg.llm.url:
        paths["llm"] = models.resolve("llm", cfg.models.llm, root)
    paths["tts"] = models.resolve("tts", cfg.models.tts, root)
    if cfg.vad.turn_model == "auto":
        judge = auto_judge(root)
        if judge is not None:
            paths["turn"] = judge
    elif cfg.vad.turn_model not in ("", "off"):
        paths["turn"] = models.resolve("llm", cfg.vad.turn_model, root)
    return paths


def auto_judge(root: Path) -> Path | None:
    """`vad.turn_model = "auto"`: the manifest's end-of-turn judge if it was pulled (None: the VAD alone)."""
    from voicecli import models

    spec = models.load_manifest().judge()
    if spec is None or not spec.entry_path(root).is_file():
        return None
    return models.resolve("llm", spec.name, root)


async def start_engines(cfg: Config, output_rate: int, paths: dict[str, Path] | None = None) -> Engines:
    """Load and warm up all three engines concurrently (each in its own executor). With `llm.url` the LLM is a
    server's (engines/remote_llm.py): no local GGUF is loaded and the llama.cpp crash check is skipped."""
    from voicecli.engines import llm_probe
    from voicecli.engines.llm import LlamaLLM, Sampling
    from voicecli.engines.priority import COMPUTE_NICE, PARTIAL_NICE
    from voicecli.engines.stt import WhisperSTT
    from voicecli.engines.threads import stt_threads
    from voicecli.engines.tts import PiperTTS

    paths = paths or resolve_models(cfg)

    def whisper(nice: int = COMPUTE_NICE) -> WhisperSTT:
        return WhisperSTT(
            paths["stt"],
            compute_type=cfg.stt.compute_type,
            threads=stt_threads(cfg.stt.threads),
            beam_size=cfg.stt.beam_size,
            language=cfg.stt.language,
            initial_prompt=cfg.stt.initial_prompt,
            window_floor_s=cfg.stt.window_floor_s,
            nice=nice,
        )

    stt = whisper()
    sampling = Sampling(cfg.llm.temperature, cfg.llm.top_p, cfg.llm.min_p, cfg.llm.repeat_penalty)
    llm: LanguageModel
    if cfg.llm.url:
        from voicecli.engines.remote_llm import RemoteLLM

        llm = RemoteLLM(
            cfg.llm.url,
            model=cfg.llm.model,
            api_key=cfg.llm.api_key,
            timeout_s=cfg.llm.timeout_s,
            sampling=sampling,
            system_prompt=cfg.llm.system_prompt,
        )
    else:
        llm = LlamaLLM(
            paths["llm"],
            n_ctx=cfg.llm.n_ctx,
            threads=cfg.llm.threads,
            batch_threads=cfg.llm.batch_threads,
            sampling=sampling,
            system_prompt=cfg.llm.system_prompt,
        )
    tts = PiperTTS(paths["tts"], output_rate=output_rate, speaker=cfg.tts.speaker, speed=cfg.tts.speed)
    engines = Engines(stt, llm, tts, paths)
    # The user's words so far are transcribed by a worker of their own at the lowest priority: it uses the idle
    # cores while they speak and gives way at once to the pause's transcription and the reply (on one worker
    # the pause's transcription waited behind a partial one).
    partial = whisper(PARTIAL_NICE) if cfg.talk.prefill_while_speaking and not cfg.llm.url else None
    engines.partial_stt = partial
    try:
        if not cfg.llm.url:
            # A llama.cpp that crashes on this CPU must say so, not kill the session with a bare segfault.
            await llm_probe.check_async(paths["llm"], cfg.llm.batch_threads)
        await asyncio.gather(stt.start(), llm.start(), tts.start(), *([partial.start()] if partial else []))
        await _start_judge(cfg, engines)
    except BaseException:
        await engines.close()
        raise
    return engines


async def _start_judge(cfg: Config, engines: Engines) -> None:
    """The semantic end of turn's judge (pipeline.turn_end): the reply LLM, or a small model of its own on one
    thread; used only if it tells whole questions from open phrases (a generated test model cannot)."""
    from voicecli.engines.llm import LlamaLLM
    from voicecli.engines.threads import spare_cores
    from voicecli.pipeline.turn_end import Judge, Thresholds

    th = Thresholds(cfg.vad.complete_p, cfg.vad.incomplete_p)
    if cfg.vad.turn_model == "off":
        engines.judge_note = "off (vad.turn_model)"
        return
    if cfg.vad.turn_model == "auto" and "turn" not in engines.paths:
        engines.judge_note = "none: the judge is not pulled (`voicecli models pull`)"
        return
    if "turn" in engines.paths:
        # On the reply LLM's worker thread: one OpenMP team in the process (LlamaLLM's `worker_of`). On one thread:
        # its 1-8 tokens take ~7 ms more than on two, but two threads spinning at every op next to the user's
        # partial transcriptions once took 1.9 s for a verdict (SmolLM2, 3 tokens next to a niceness-19 busy
        # loop: 23 ms p50 on two threads, max 147).
        reply = engines.llm if isinstance(engines.llm, LlamaLLM) else None
        own = LlamaLLM(engines.paths["turn"], n_ctx=512, threads=1, batch_threads=1,
                       system_prompt=cfg.llm.system_prompt, pull_name=cfg.vad.turn_model, worker_of=reply)  # fmt: skip
        engines.judge_llm = own
        await own.start()
        # Asked once the reply's first clause is out, beside Piper, when two cores are free (pipeline.speculation);
        # next to a busy program, before the reply: on one thread its prompt and first clause take ~250 ms, and
        # the verdict would come too late to end the turn before the hangover does.
        judge = Judge(own.end_of_turn, cfg.llm.system_prompt, shares_prompt=False, name=own.model_path.name, th=th,
                      prefill=own.prefill, beside_reply=lambda: spare_cores() >= 2)  # fmt: skip
    elif isinstance(engines.llm, LlamaLLM):
        llm = engines.llm
        judge = Judge(llm.end_of_turn, cfg.llm.system_prompt, shares_prompt=True, name=llm.model_path.name, th=th)
    else:
        engines.judge_note = "none: the LLM is a server's (set vad.turn_model to a small local GGUF)"
        return
    if await judge.check():
        engines.judge, engines.judge_note = judge, judge.name
    else:
        engines.judge_note = f"none: {judge.name} does not tell whole questions from open phrases"


async def converse(
    cfg: Config,
    *,
    max_turns: int | None = None,
    emit: Callable[[Event], None] | None = None,
    transcript: TranscriptLog | None = None,
    paths: dict[str, Path] | None = None,
    on_ready: Callable[[Session], None] | None = None,
    install_signal_handlers: bool = True,
    engines: Engines | None = None,
    streaming: bool = True,
    tap: Callable[[FrameLike], None] | None = None,
) -> Session:
    """Open the devices, load the engines, hold the conversation; always closes everything it opened.

    SIGINT / SIGTERM stop the session; shutdown is bounded so Ctrl-C exits within about a second.
    """
    from voicecli.audio.devices import resolve_input, resolve_output
    from voicecli.audio.resilient import Rescanner, ResilientSink, ResilientSource

    own_engines = engines is None
    if engines is None:
        paths = paths or resolve_models(cfg)  # fail fast on missing models, before opening any device

    def warn(message: str) -> None:
        if emit is not None:
            emit(Event("warning", time.monotonic(), 0, {"message": message}))

    # Validate the device choice now (a clear error before loading models); the streams keep the user's
    # spec, not the index, so a device that comes back after being unplugged is found by its name again.
    resolve_input(cfg.audio.input or None)
    resolve_output(cfg.audio.output or None)
    rescanner = Rescanner()
    # Silence fed to the turn detector when the mic goes away: longer than the hangover, so an utterance
    # cut off by the loss ends instead of leaving the detector mid-speech.
    flush_s = cfg.vad.hangover_ms / 1000.0 + 0.3
    capture = ResilientSource(cfg.audio.input or None, warn=warn, flush_s=flush_s, rescanner=rescanner)
    playback = ResilientSink(cfg.audio.output or None, warn=warn, rescanner=rescanner)
    loop = asyncio.get_running_loop()
    session: Session | None = None
    stop_requested = asyncio.Event()

    def request_stop() -> None:
        stop_requested.set()
        if session is not None:
            session.stop()

    if install_signal_handlers:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, request_stop)
    try:
        await playback.start()
        if engines is None:
            # Ctrl-C while the models load (the first-run llama.cpp check may take a while) ends it at once.
            starting = asyncio.ensure_future(start_engines(cfg, playback.rate, paths))
            stopping = asyncio.ensure_future(stop_requested.wait())
            try:
                await asyncio.wait([starting, stopping], return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopping.cancel()
            if not starting.done():
                starting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await starting
                raise asyncio.CancelledError
            engines = starting.result()
        if stop_requested.is_set():
            raise asyncio.CancelledError
        history = History(cfg.llm.system_prompt, cfg.llm.history_tokens, engines.llm.count_tokens)
        echo, talk_cfg = _echo_setup(cfg, capture, playback, emit)

        def on_event(ev: Event) -> None:
            if ev.kind == "state":  # nothing said, nothing playing: fewer wake-ups (idle CPU)
                capture.relax(ev.data.get("state") == "listening")
            if emit is not None:
                emit(ev)

        session = Session(
            source=capture if echo is None else echo.source,
            sink=playback if echo is None else echo.sink,
            stt=engines.stt,
            llm=engines.llm,
            tts=engines.tts,
            history=history,
            vad_cfg=cfg.vad,
            talk_cfg=talk_cfg,
            max_tokens=cfg.llm.max_tokens,
            emit=on_event,
            transcript=transcript,
            capture_overruns=lambda: capture.overrun_samples,
            playback_underruns=lambda: playback.underruns,
            streaming=streaming,
            tap=tap,
            barge_confirm=None if echo is None else echo.confirm,
            echo_stats=None if echo is None else echo.turn_stats,
            judge=engines.judge,
            partial_stt=engines.partial_stt,
        )
        await capture.start()
        if on_ready is not None:
            on_ready(session)
        run = asyncio.create_task(session.run(max_turns=max_turns))
        stopper = asyncio.create_task(stop_requested.wait())
        await asyncio.wait([run, stopper], return_when=asyncio.FIRST_COMPLETED)
        if not run.done():
            # Give the session a moment to close the turn in flight, then cut it off.
            done, _ = await asyncio.wait([run], timeout=0.5)
            if not done:
                run.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await run
        stopper.cancel()
        if run.done() and not run.cancelled() and run.exception() is not None:
            raise run.exception()  # type: ignore[misc]
        return session
    finally:
        if install_signal_handlers:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        if emit is not None:  # what the devices said of the run (the benchmark reports it)
            emit(Event("audio_status", time.monotonic(), 0,
                       {"output_underflows": playback.xruns, "input_overflows": capture.xruns}))  # fmt: skip
        with contextlib.suppress(Exception):
            await capture.stop()
        with contextlib.suppress(Exception):
            await playback.stop()
        if engines is not None and own_engines:
            await engines.close()


def _echo_setup(
    cfg: Config, capture: Any, playback: Any, emit: Callable[[Event], None] | None
) -> tuple[EchoPath | None, TalkConfig]:
    """`--echo`: aec cleans the mic with the played audio as reference and confirms barge-ins;
    half-duplex ignores the mic while the assistant is busy; off leaves the mic as it is."""
    from voicecli.audio.echo import aec_unavailable, resolve_mode

    mode = resolve_mode(cfg.audio.echo)
    if cfg.audio.echo == "auto" and mode != "aec" and emit is not None:
        problem = aec_unavailable()
        why = problem.message if problem is not None else "echo cancellation is unavailable"
        message = f"{why}: half duplex, no barge-in ({problem.hint if problem else 'see voicecli devices --test'})"
        emit(Event("warning", time.monotonic(), 0, {"message": message}))
    if mode == "half-duplex":
        return None, dataclasses.replace(cfg.talk, barge_in=False)
    if mode == "aec":
        from voicecli.pipeline.bargein import open_echo_path

        return open_echo_path(capture, playback, cfg.vad.floor_dbfs), cfg.talk
    return None, cfg.talk
