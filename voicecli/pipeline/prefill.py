"""Think while the user speaks: transcribe the audio so far now and then, and prefill the LLM's KV cache with
the prompt up to those words (system + history + the user's words so far; LlamaLLM.prefill leaves their last
token to the request). At the pause only the tail of the transcript and the template's closing tokens are left
to evaluate (llama-cpp-python reuses the longest common token prefix): the real-size 0.5B model evaluated ~30
prompt tokens after every pause, ~0.3 s of its first token.

Every word of the partial, the last one too: a last word cut mid-way ("weath") only costs its own tokens,
which the request evaluates again as it would have anyway. With a partial every quarter second of speech
instead of every half, and the last word kept, the target set (whisper base, real-size 0.5B, 2-core Xeon,
2 runs each alternated) evaluated 10.0-10.5 prompt tokens after the pause instead of 13-15.5, first token
202-211 ms instead of 246-259, TTFA p50 676-685 ms instead of 730-807; the pause's own transcription was no
slower (178-193 against 193-202 ms).

The tail partial: once the user has been silent `vad.tail_ms` (TurnDetector.just_quiet), the words so far may be
the whole turn, and they are transcribed at once on this worker (`tail`). The pause signal comes pause_ms - tail_ms
later and takes that transcript (`covering`) instead of starting its own on the main worker: the same model on the
same words, the pause adds only silence. Its transcript is in ~80 ms sooner.

Cheap on the loop: one partial transcription in flight at most, started on a voiced frame (a pause is not
about to begin) every `every_s` of speech. The partials run on a whisper worker of their own at the lowest
priority (pipeline.wiring): on the one worker the pause's own transcription waited behind a partial one. At
the pause no new one starts, and one in flight is frozen (`hold`, WhisperSTT.freeze) until the user speaks
again with no turn in flight (`release`; never during a reply, where it would slow the barge-in): the cores go
to the pause's transcription and the reply (a niceness-19 partial next to the reply's two llama.cpp threads
still made a 150 ms prefill take 2 s: they wait for each other at every op). Its
words are prefilled only while nothing else uses the LLM (`may_prefill`: no turn, no reply prepared): a prefill
after a reply would overwrite the cached reply. The LLM evaluates a few tokens at a time on the decode threads
and yields to any request (engines.llm.LlamaLLM.prefill). An LLM without `prefill` (a remote server) gets
nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from voicecli.audio.format import SAMPLE_RATE, Float32Array
from voicecli.engines.base import ChatMessage, Transcript
from voicecli.pipeline.history import History
from voicecli.pipeline.reply import Emit

EVERY_S = 0.25  # seconds of speech between partial transcriptions (back to back: whisper base takes ~0.2 s)
# A partial whose audio ends this close before the end of the last voiced frame heard the utterance: whisper base,
# target set (~40 runs, complete questions, the true text): partials started 0-40 ms before the VAD's end of speech
# had a WER of 0.086 against 0.078 for the pause's own transcript of the same turns, 40-80 ms before 0.173.
COVER_SLACK_S = 0.04
MIN_WORDS = 2  # words worth a prefill
# A transcription handed to the pause is overdue after this many times the worker's usual compute time (the median
# of its last PACE_SAMPLES) from its start: then the pause transcribes on its own as well (pipeline.speculation).
# Whisper's pace differs 2x between hosts (base, one thread: ~130 ms on a Xeon with MKL, ~250 ms on an AMD EPYC
# without it): a fixed wait had the pause start a second transcription of the same words in most turns there, and
# the reply's prompt then ran on one thread beside it.
OVERDUE_PACE = 1.75
PACE_SAMPLES = 9


class Prefills(Protocol):
    def prefill(self, messages: list[ChatMessage]) -> asyncio.Future[int] | None: ...


class JudgePrefills(Protocol):
    def prefill(self, words: str) -> asyncio.Future[int] | None: ...


class Prefiller:
    def __init__(
        self,
        *,
        transcribe: Callable[[Float32Array], Awaitable[Transcript]],
        llm: Any,
        history: History,
        emit: Emit,
        may_prefill: Callable[[], bool],
        every_s: float = EVERY_S,
        freeze: Callable[[bool], None] | None = None,
        judge: JudgePrefills | None = None,
        main: tuple[Callable[[Float32Array], Awaitable[Transcript]], Callable[[], bool]] | None = None,
        keeps_up: Callable[[], bool] = lambda: True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`freeze(True/False)`: stop / continue whatever runs `transcribe` (a worker of the partials' own).
        `judge`: the semantic end of turn's judge, prefilled with the same words (Judge.prefill). `main`: the
        pause's own transcription and whether its worker is idle: a tail partial goes there when the partials'
        worker is busy. `keeps_up`: a partial still running finishes at its usual pace (not starved next to a busy
        program): only then is one that heard all the words waited for as the tail (`_heard_all`)."""
        self._transcribe = transcribe
        self._clock = clock
        # Compute times of the last transcriptions on each worker (True: the partials' one), for `due`.
        self._paces: dict[bool, deque[float]] = {True: deque(maxlen=PACE_SAMPLES), False: deque(maxlen=PACE_SAMPLES)}
        self._started: dict[asyncio.Future[Transcript], tuple[float, bool]] = {}  # job -> (start, on partials)
        self.handed_due: float | None = None  # when what `covering` handed the pause is overdue (None: unknown)
        self._keeps_up = keeps_up
        self._main = main
        self._partial_jobs = 0  # transcriptions running (or queued) on the partials' worker
        self._judge = judge
        self._freeze = freeze
        self._held = False  # the partials' worker is frozen
        self._paused = False  # the user paused since the last frame of speech
        self._llm: Prefills | None = llm if callable(getattr(llm, "prefill", None)) else None
        self._history = history
        self._emit = emit
        self._may_prefill = may_prefill
        self._every_s = every_s
        self._next_s = every_s
        self._task: asyncio.Task[None] | None = None
        # The tail partial of the current silence, and how many samples of the utterance it heard.
        self._tail: asyncio.Future[Transcript] | None = None
        self._tail_samples = 0
        self._tail_on_partials = False  # it runs on the partials' worker (not the main one)
        self._tail_wanted: Callable[[], Float32Array] | None = None  # to start once a worker is free
        # The latest partial transcription and how many samples it heard: started on the utterance's last voiced
        # frame, it heard all of it, as a tail partial would (`covering`).
        self._last: asyncio.Future[Transcript] | None = None
        self._last_samples = 0
        self._handed: asyncio.Future[Transcript] | None = None  # what `covering` gave the pause (never cancelled)
        self.prefilled = 0  # tokens evaluated ahead of the request (running total)

    @property
    def enabled(self) -> bool:
        return self._llm is not None

    def hearing(self, speech_s: float, voiced: bool, audio: Callable[[], Float32Array]) -> None:
        """A frame of the user's utterance: `speech_s` of speech so far, `voiced` this frame."""
        if self._llm is None:
            return
        self.release()  # the worker frozen at the last pause; never during a reply (a barge-in is not heard here)
        self._tail, self._tail_wanted = None, None  # the user speaks: a tail partial no longer holds all the words
        if not voiced or speech_s < self._next_s:
            return
        if self._task is not None and not self._task.done():
            return
        self._next_s = speech_s + self._every_s
        pcm = audio()
        self._last, self._last_samples = asyncio.ensure_future(self._partial(pcm)), len(pcm)
        self._track(self._last, on_partials=True)
        self._last.add_done_callback(lambda f: f.cancelled() or f.exception())  # `_run` may be gone: retrieved
        self._task = asyncio.create_task(self._run(self._last))

    def tail(self, audio: Callable[[], Float32Array], voiced_samples: int | None = None) -> None:
        """The user has been silent `vad.tail_ms`: transcribe their words so far now (see the module docstring), on
        the partials' worker, or on the main one when it is idle and a partial runs or a busy program starves the
        partials' worker (`keeps_up`); with both busy, as soon as one is free, unless the user paused or spoke by
        then. A partial that heard the utterance's `voiced_samples` (`_heard_all`) is the tail already: it runs on,
        and nothing starts or is frozen."""
        if self._llm is None:
            return
        last = self._last
        if voiced_samples is not None and last is not None and self._heard_all(voiced_samples):
            self._tail, self._tail_samples, self._tail_on_partials = last, self._last_samples, True
            self._tail_wanted = None
            self._make_way(True)
            return
        self._tail_wanted = audio
        self._start_tail()

    def _start_tail(self) -> None:
        audio = self._tail_wanted
        if audio is None or self._paused:
            return
        transcribe: Callable[[Float32Array], Awaitable[Transcript]]
        main = self._main if self._main is not None and self._main[1]() else None
        # Next to a busy program the partials' worker (niceness 19) crawls even when idle: the tail goes to the
        # main worker (target set, loaded: whisper base 355 ms there against ~180, and the pause waited for it).
        if self._partial_jobs == 0 and (main is None or self._keeps_up()):
            transcribe, on_partials = self._partial, True
        elif main is not None:
            transcribe, on_partials = main[0], False
        else:
            return  # `_job_done` tries again
        self._tail_wanted = None
        pcm = audio()
        self._tail_samples, self._tail_on_partials = len(pcm), on_partials
        self._tail = asyncio.ensure_future(transcribe(pcm))
        self._track(self._tail, on_partials)
        self._tail.add_done_callback(self._job_done)
        self._emit("tail", worker="partials" if on_partials else "main")
        self._make_way(on_partials)

    def _make_way(self, tail_on_partials: bool) -> None:
        """The tail runs: the cores are its own. A prefill of older partial words stops at its next chunk, and a
        partial still running (its audio is part of the tail's) is frozen, as at the pause (`hold`). Beside
        both, whisper base took the tail 170 ms instead of ~130 (2-core Xeon), and the reply waited for it."""
        stop = getattr(self._llm, "stop_prefill", None)
        if callable(stop):
            stop()
        if not tail_on_partials and self._freeze is not None and not self._held:
            self._freeze(True)
            self._held = True

    def _track(self, job: asyncio.Future[Transcript], on_partials: bool) -> None:
        """Note when `job` started and, once it is in, how long its worker took (`due`)."""
        self._started[job] = (self._clock(), on_partials)

        def done(f: asyncio.Future[Transcript]) -> None:
            self._started.pop(f, None)
            if not f.cancelled() and f.exception() is None and f.result().compute_s > 0:
                self._paces[on_partials].append(f.result().compute_s)

        job.add_done_callback(done)

    def due(self, job: asyncio.Future[Transcript]) -> float | None:
        """When `job`, still running, is overdue: OVERDUE_PACE times its worker's usual compute time after it
        started (the other worker's pace where its own has none yet; None where neither has one)."""
        started = self._started.get(job)
        if started is None:
            return None
        t0, on_partials = started
        paces = self._paces[on_partials] or self._paces[not on_partials]
        return t0 + OVERDUE_PACE * statistics.median(paces) if paces else None

    def _job_done(self, job: asyncio.Future[Transcript]) -> None:
        if not job.cancelled():
            job.exception()  # nobody may ask for a tail partial's words: its error is not "never retrieved"
        self._start_tail()

    async def _partial(self, audio: Float32Array) -> Transcript:
        """A transcription on the partials' worker, counted (the worker is busy while it runs or queues)."""
        self._partial_jobs += 1
        try:
            return await self._transcribe(audio)
        finally:
            self._partial_jobs -= 1

    def covering(self, voiced_samples: int) -> asyncio.Future[Transcript] | None:
        """The transcript of the words of the utterance so far (`voiced_samples` of its audio), if one is on its
        way: the tail partial's, or the latest partial's if it heard them all (`_heard_all`), whichever is in
        first: the pause's transcript, or nearly (pipeline.speculation). A partial can start on the last voiced
        frames, when no tail does (a noisy room keeps the VAD on speech until the pause): the pause then waited
        ~150 ms for its own transcription of the same words."""
        jobs = []
        tail, last = self._tail, self._last
        if tail is not None and not tail.cancelled() and self._tail_samples >= voiced_samples:
            jobs.append(tail)
        if last is not None and last not in jobs and self._heard_all(voiced_samples):
            jobs.append(last)  # (the tail itself when `tail` adopted it)
        if last is not None and last in jobs:
            self._handed = last
        dues = [self.due(job) for job in jobs]
        known = [d for d in dues if d is not None]
        self.handed_due = max(known) if known and len(known) == len(dues) else None  # overdue once all are
        if len(jobs) < 2:
            return jobs[0] if jobs else None
        return asyncio.ensure_future(_first_heard(jobs))

    def _heard_all(self, voiced_samples: int) -> bool:
        """The latest partial heard the utterance's words: its audio ends at most COVER_SLACK_S before the end of
        the last voiced frame. Not cancelled; it may still run."""
        last = self._last
        if last is None or last.cancelled() or self._last_samples < voiced_samples - round(COVER_SLACK_S * SAMPLE_RATE):
            return False
        # Next to a busy program the partials' worker (niceness 19) crawls: the tail on the main worker is sooner
        # (target set, 2 loaded runs: TTFA p95 921-925 ms against 788-844 when it was waited for).
        return last.done() or self._keeps_up()

    def hold(self, voiced_samples: int | None = None) -> None:
        """The user paused: a partial transcription still running (even one whose words nobody waits for any
        more) stops where it is until they speak again (see the module docstring), and so does a prefill of
        earlier partial words: it ran on beside the pause's transcription and the verdict waited for its chunk
        (a prefill of 15 tokens on one thread: ~300 ms). A partial that heard all `voiced_samples` of the
        utterance runs on, like a tail partial: the pause takes its words (`covering`)."""
        self._paused = True
        self._tail_wanted = None  # too late: the pause transcribes
        stop = getattr(self._llm, "stop_prefill", None)
        if callable(stop):
            stop()
        if self._tail is not None and not self._tail.done() and self._tail_on_partials:
            return  # the tail partial runs on: the pause waits for it
        running = self._last is not None and not self._last.done()
        if running and voiced_samples is not None and self._heard_all(voiced_samples):
            return  # the pause takes its words (`covering`)
        if self._freeze is not None and not self._held:
            self._freeze(True)
            self._held = True

    def release(self) -> None:
        """The user speaks again with no turn in flight (or the session ends): a frozen partial continues."""
        self._paused = False
        if self._held and self._freeze is not None:
            self._held = False
            self._freeze(False)

    def stop(self) -> None:
        """The utterance ended (or was discarded): no more partials for it; one in flight is cancelled."""
        self._next_s = self._every_s
        self._tail, self._tail_wanted = None, None
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
        last, self._last = self._last, None
        if last is not None and last is not self._handed:
            last.cancel()  # `_run` only shields it

    async def _run(self, partial: asyncio.Future[Transcript]) -> None:
        assert self._llm is not None
        tr = await asyncio.shield(partial)  # the pause may wait for these words (`covering`): `stop` decides
        self._start_tail()  # the user went silent while this one ran
        words = " ".join(tr.text.split()) if tr.is_speech else ""
        if len(words.split()) < MIN_WORDS or self._paused or partial is self._tail:
            # Paused since it started, or the tail (`tail`): the pause's transcript supersedes these words, or is
            # them, and the verdict on it must not queue behind their prefill on the LLM's worker (a 30 ms verdict
            # took 119 ms; next to a busy program an 8-token prefill on one thread held the verdict past the
            # hangover).
            return
        judged = self._judge.prefill(words) if self._judge is not None else None
        if judged is not None:  # its own model, ahead of the reply's prefill on the same worker: nothing waits for it
            judged.add_done_callback(lambda f: f.cancelled() or f.exception())
        if not self._may_prefill():
            return
        prompt = self._history.preview_user(words)
        if prompt is None:
            return
        job = self._llm.prefill(prompt)
        if job is None:
            return
        tokens = 0
        with contextlib.suppress(Exception):  # a failed prefill costs nothing: the request evaluates it all
            tokens = await asyncio.shield(job)
        self.prefilled += tokens
        self._emit("prefill", text=words, tokens=tokens, stt_s=tr.compute_s)


async def _first_heard(jobs: list[asyncio.Future[Transcript]]) -> Transcript:
    """The first of `jobs` to come in with a transcript; the last one's error if none does."""
    pending = set(jobs)
    error: BaseException | None = None
    while pending:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        for job in done:
            if job.cancelled():
                error = asyncio.CancelledError()
            elif job.exception() is not None:
                error = job.exception()
            else:
                return job.result()
    assert error is not None
    raise error
