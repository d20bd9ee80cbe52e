"""One confirmed turn, run as a task: its transcript -> the history -> the reply (the one prepared at the
pause, or a fresh one) -> RESET and bookkeeping. Any failure is said out loud (an apology) and reported as
an `error` event; a turn never ends silently. The session only starts turns and cuts them off."""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

from voicecli.engines.base import LanguageModel, Transcript
from voicecli.errors import EngineError
from voicecli.pipeline.ledger import TurnContext, TurnLedger
from voicecli.pipeline.own_voice import is_own_voice, matched_words
from voicecli.pipeline.reply import APOLOGY, Emit, regeneration
from voicecli.pipeline.speculation import TURN_FAILED, Speculator

STT_APOLOGY = "Sorry, I could not make out what you said. Please say it again."


class TurnRunner:
    """`turn_over(ctx, answered)`: the turn is finished and recorded (`answered`: it counts as an answer)."""

    def __init__(
        self,
        *,
        llm: LanguageModel,
        max_tokens: int,
        ledger: TurnLedger,
        speculator: Speculator,
        emit: Emit,
        clock: Callable[[], float],
        turn_over: Callable[[TurnContext, bool], None],
    ) -> None:
        self._llm = llm
        self._max_tokens = max_tokens
        self._ledger = ledger
        self._speculator = speculator
        self._emit = emit
        self._clock = clock
        self._turn_over = turn_over

    async def run(self, ctx: TurnContext, stt: Awaitable[Transcript], prev: asyncio.Task[None] | None) -> None:
        m = ctx.metrics
        answered = False
        try:
            if prev is not None and not prev.done():
                await asyncio.wait([prev])  # the previous turn's RESET lands in the history first
            tr = await stt
            m.stt_done = self._clock()
            m.stt_compute_s = tr.compute_s
            self._emit("stt_done", turn_id=ctx.turn_id, text=tr.text, is_speech=tr.is_speech, compute_s=tr.compute_s,
                       queue_wait_s=tr.queue_wait_s,  # waiting for the STT worker (behind another utterance)
                       window_s=tr.window_s, speculative=m.stt_speculative)  # fmt: skip
            if not tr.is_speech:
                self._emit("stt_rejected", turn_id=ctx.turn_id, text=tr.text)
                return
            if ctx.echo_ref is not None and is_own_voice(tr.text, ctx.echo_ref):
                found, total = matched_words(tr.text, ctx.echo_ref)  # the reply heard back: never answered
                self._emit("stt_rejected", turn_id=ctx.turn_id, text=tr.text, reason="own voice",
                           matched_words=found, words=total)  # fmt: skip
                return
            self._ledger.question(ctx, tr.text)
            answered = await self._reply(ctx)
        except asyncio.CancelledError:
            ctx.interrupted = True
        except Exception as exc:
            # STT failed (timeout, a worker that died twice), the LLM refused to start, or a bug: say so out
            # loud, record it, and keep listening.
            answered = await self._apologise(ctx, exc)
        finally:
            try:
                counted = self._finish(ctx, answered)
            except Exception as exc:  # e.g. the transcript's disk is full: the session must go on
                self._emit("error", turn_id=ctx.turn_id, message=f"could not record the turn: {exc}")
                counted = False
            self._turn_over(ctx, counted)

    async def _reply(self, ctx: TurnContext) -> bool:
        messages = self._ledger.history.messages()
        spec, ctx.spec = ctx.spec, None
        prepared = self._speculator.adopt(spec, ctx.turn_id, ctx.metrics, messages)
        if prepared is not None:
            ctx.reply, task = prepared
            return await task
        stream = self._llm.chat(messages, max_tokens=self._max_tokens)
        return await ctx.reply.run(stream, regeneration(self._llm, messages, self._max_tokens))

    async def _apologise(self, ctx: TurnContext, exc: Exception) -> bool:
        if isinstance(exc, EngineError):
            ctx.error, hint, trace = exc.message, exc.hint, ""
        else:
            ctx.error, hint = f"unexpected {type(exc).__name__}: {exc}", "this is a bug: please report it"
            trace = "".join(traceback.format_exception(exc))
        extra: dict[str, Any] = {"traceback": trace} if trace else {}
        self._emit("error", turn_id=ctx.turn_id, message=ctx.error, hint=hint, **extra)
        try:
            return await ctx.reply.say(APOLOGY if ctx.user_added else STT_APOLOGY)
        except asyncio.CancelledError:
            ctx.interrupted = True
        except Exception as again:  # the speaker itself is broken: the turn still ends, and says why
            self._emit("error", turn_id=ctx.turn_id, message=f"could not apologise: {again!r}")
        return False

    def _finish(self, ctx: TurnContext, answered: bool) -> bool:
        """RESET and bookkeeping; synchronous so it also runs fully inside a cancelled task."""
        if ctx.reply.stream is not None and not answered:
            ctx.reply.stream.cancel()
        self._speculator.release(ctx.spec, TURN_FAILED, ctx.turn_id)  # prepared, never asked for (STT failed)
        if ctx.interrupted:
            ctx.lifecycle.cancel("cancelled", self._clock())  # a no-op when the barge-in already did
        else:
            ctx.lifecycle.finish(self._clock())
        return self._ledger.finish(ctx, answered)
