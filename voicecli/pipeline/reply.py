"""One spoken reply: LLM deltas -> clause chunker -> reply guard -> TTS -> audio sink, with one cancel.

Queues and their overflow policy (DESIGN.md stage table):
  LLM deltas -> chunker: the LLM adapter's bounded queue, producer waits.
  chunker -> TTS: `CLAUSE_QUEUE` clauses, producer waits.
  TTS -> playback ring: the sink's bounded ring, producer waits; dropped whole on cancel (a barge-in).

The pipeline knows nothing of turn-taking: the session decides when a reply starts and when it is cut off,
and asks afterwards what the user heard (`heard`).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from voicecli.engines.base import ChatMessage, LanguageModel, LLMStream, Sampling, TextToSpeech
from voicecli.errors import EngineError
from voicecli.pipeline import reply_copy
from voicecli.pipeline.chunker import ClauseChunker, normalise
from voicecli.pipeline.history import INTERRUPTED_SUFFIX
from voicecli.pipeline.metrics import TurnMetrics
from voicecli.pipeline.ports import AudioSink
from voicecli.pipeline.reply_guard import ReplyGuard
from voicecli.pipeline.turn import TurnLifecycle

CLAUSE_QUEUE = 3
# The speaker must not run dry inside a reply. When the audio queued ahead would end sooner than the words
# waiting in the chunker can be synthesised (their measured TTS time) plus this margin, they are cut as a
# clause there and then rather than wait for a comma: a slow LLM (the real-size Qwen decodes 13-15 tokens/s
# inside a reply) after a one-word first clause ("Sure,") otherwise leaves a hole.
DRY_MARGIN_S = 0.15
# Until a clause of this reply has been synthesised. Piper's time follows the characters better than the words
# (joe medium, 2 cores: 9 ms a character for "here is", 8.7 for "a quick answer: the weather today", whose
# 6 words cost 48 ms each against 32 for the 2 words).
TTS_S_PER_CHAR = 0.01
APOLOGY = "Sorry, something went wrong while I was answering."
CONFUSED = "Sorry, I got confused. Could you ask that again?"  # the model's reply was all garbage

_REPLY_TIMINGS = (  # the TurnMetrics fields a reply fills in
    "llm_request", "llm_first_token", "first_clause", "tts_first_audio", "llm_prompt_tokens",
    "llm_prompt_tokens_evaluated", "llm_completion_tokens", "llm_tokens_per_s", "tts_audio_s", "tts_compute_s",
    "max_clause_gap_s", "play_end",
)  # fmt: skip
_BLANK = TurnMetrics(0)
_WORD = re.compile(r"\w+")
# A mark that opens a clause after a standalone opener ("Sure" | ", here is"): glued back on when clauses are
# joined into what the user heard ("Sure, here is").
_LONE_MARK = re.compile(r" (?=[,;:!?.]+(?: |$))")

Emit = Callable[..., None]  # (kind, t=None, turn_id=0, **data), the session's event emitter


def played_text(clauses: list[tuple[int, int, str]], played: int) -> str:
    """The words the user actually heard: whole clauses before `played` samples, and the share of the
    words of the clause that was cut, by its fraction of samples played."""
    words: list[str] = []
    for start, end, text in clauses:
        if played >= end:
            words.extend(text.split())
        elif played > start:
            part = text.split()
            n = int(len(part) * (played - start) / max(1, end - start))
            words.extend(part[:n])
            break
        else:
            break
    return _LONE_MARK.sub("", " ".join(words))


# One fresh answer when a reply opens by copying an earlier one (issue 18: measured with real SmolLM2-135M over
# 5 conversations of 22 turns, copies per conversation 2.6 -> 1.0): livelier sampling on a history it cannot copy.
REGEN_SAMPLING = Sampling(temperature=0.8, top_p=0.9, min_p=0.1, repeat_penalty=1.2)
REGEN_KEEP_EXCHANGES = 2


@dataclass(frozen=True)
class Regeneration:
    """What a reply needs to answer afresh: the prompt it was asked with, and how to ask the LLM again."""

    prompt: Sequence[ChatMessage]
    ask: Callable[[list[ChatMessage], Sampling], LLMStream]


def regeneration(llm: LanguageModel, prompt: Sequence[ChatMessage], max_tokens: int) -> Regeneration:
    """How a reply to `prompt` is asked again of `llm` when its first answer copies an earlier one."""
    return Regeneration(prompt, lambda p, sampling: llm.chat(p, max_tokens=max_tokens, sampling=sampling))


class ReplyPipeline:
    """Speaks one reply of turn `turn_id`; `run(stream)` for an LLM reply, `say(text)` for a fixed sentence.

    `streaming=False` is the benchmark's naive baseline: the whole reply is generated, then synthesised in
    one piece, then played. `on_speaking` is called once, when the first audio is queued."""

    def __init__(
        self,
        *,
        turn_id: int,
        metrics: TurnMetrics,
        lifecycle: TurnLifecycle,
        sink: AudioSink,
        tts: TextToSpeech,
        emit: Emit,
        clock: Callable[[], float],
        max_reply_words: int,
        first_soft_words: int = 0,
        streaming: bool = True,
        on_speaking: Callable[[int], None] | None = None,
    ) -> None:
        self.turn_id = turn_id
        self.metrics = metrics
        self.lifecycle = lifecycle
        self.sink = sink
        self.tts = tts
        self._emit_cb = emit
        self.clock = clock
        self.max_reply_words = max_reply_words
        self.first_soft_words = first_soft_words
        self.streaming = streaming
        self._on_speaking = on_speaking
        self.stream: LLMStream | None = None
        # (first sample, end sample, text) of each clause queued for playback in this reply
        self.clauses: list[tuple[int, int, str]] = []
        self.started = False  # the sink was told a reply begins (so a cancel flushes it)
        self.spoken_any = False  # audio of this reply was queued for the speaker
        self._generated: list[str] = []  # the LLM's text as it came
        self.regenerated = False  # the first answer copied an earlier reply and was asked again
        self.regen_prompt: list[ChatMessage] | None = None  # ... on this prompt (the history adopts it)
        self._speaker: asyncio.Task[None] | None = None  # synthesises and queues the clauses of `run`
        self._audio_s = 0.0  # seconds of this reply's audio written to the sink
        self._synthesising = False  # the speaker task holds a clause it has not written yet
        self._tts_s_per_char = TTS_S_PER_CHAR
        # The clauses say exactly what the LLM wrote (nothing dropped, cut, stripped or added): the history
        # may then keep its own words, token for token, and the next prompt reuses them from the KV cache.
        self.verbatim = True
        # A reply prepared during the hangover runs (LLM, chunker, TTS of its first clause) before its turn
        # is confirmed; its audio waits here and its events are held until `adopt` gives it the turn.
        self._go = asyncio.Event()
        self._held: list[tuple[str, float, dict[str, Any]]] | None = None
        if lifecycle.may_play:
            self._go.set()
        else:
            self._held = []

    def adopt(self, turn_id: int, metrics: TurnMetrics) -> None:
        """The turn this reply was prepared for is confirmed and asks what it was prepared with: the reply
        becomes that turn's (its timings and held events too) and its audio may now play."""
        if not self.lifecycle.may_play:
            raise RuntimeError(f"turn {turn_id} is {self.lifecycle.phase.value}: its reply may not play")
        self.turn_id = turn_id
        for name in _REPLY_TIMINGS:
            value = getattr(self.metrics, name)
            if value != getattr(_BLANK, name):
                setattr(metrics, name, value)
        self.metrics = metrics
        held, self._held = self._held or [], None
        for kind, t, data in held:
            self._emit_cb(kind, t=t, turn_id=turn_id, **data)
        self._go.set()

    def _emit(self, kind: str, t: float | None = None, **data: Any) -> None:
        t = self.clock() if t is None else t
        if self._held is not None:
            self._held.append((kind, t, data))
        else:
            self._emit_cb(kind, t=t, turn_id=self.turn_id, **data)

    # ---- control ------------------------------------------------------------------------------------------
    def cancel(self) -> None:
        """STOP the LLM and DRAIN the speaker now; the task running `run` is cancelled by its owner."""
        if self.stream is not None:
            self.stream.cancel()
        if self.started:
            self.sink.flush()

    def heard(self, cut_short: bool) -> str:
        """What the user heard of this reply: all of it, or (cut short) up to where playback stopped."""
        if cut_short and self.started:
            return played_text(self.clauses, self.sink.played_samples(self.turn_id))
        return _LONE_MARK.sub("", " ".join(text for _, _, text in self.clauses))

    def history_text(self, cut_short: bool) -> str:
        """What the history keeps of this reply: the clauses that were played, in the LLM's own text when
        that says exactly their words (markdown and spacing as it wrote them). The chunker's normalised
        text tokenises differently, so keeping it would make llama.cpp prefill the whole previous reply
        again with the next question (measured: 20-40 prompt tokens a turn, ~10 ms each for a 0.5B model).
        A link's URL or a code block are words the user never heard: then the played clauses are kept."""
        heard = self.heard(cut_short)
        if cut_short or not self.verbatim or self.stream is None:
            return heard
        generated = "".join(self._generated).strip()
        return generated if _WORD.findall(generated) == _WORD.findall(heard) else heard

    def play_start(self) -> float | None:
        return self.sink.play_start(self.turn_id) if self.started else None

    def device_lost(self) -> bool:
        """Whether the speaker device was lost under this reply (a sink that can lose its device says so)."""
        reply_cut = getattr(self.sink, "reply_cut", None)
        return bool(self.started and reply_cut is not None and reply_cut(self.turn_id))

    # ---- replies ------------------------------------------------------------------------------------------
    async def say(self, text: str) -> bool:
        """Speak one fixed sentence (an apology); True once it has been played."""
        q: asyncio.Queue[str | None] = asyncio.Queue(maxsize=2)
        await q.put(text)
        await q.put(None)
        await self._speak(q)
        await self._begin()
        self.sink.end_reply()
        await self.sink.wait_reply_done(self.turn_id)
        return True

    async def run(self, stream: LLMStream, regen: Regeneration | None = None) -> bool:
        """Speak the LLM's reply as it streams; True once it has been played to the end. With `regen`, a reply
        whose opening copies an earlier reply to another question is thrown away before a word of it is
        spoken and asked once more (`_fresh_deltas`)."""
        self.stream = stream
        self.metrics.llm_request = self.clock()
        clauses: asyncio.Queue[str | None] = asyncio.Queue(maxsize=CLAUSE_QUEUE)
        speaker = self._speaker = asyncio.create_task(self._speak(clauses))
        # The first clause may be a single word ("Sure,"): it starts the speaker ~5 tokens sooner; and it ends on
        # its own punctuation, not on the token after it (first_eager): one token sooner still. A standalone
        # opener ("Sure", voicecli.openers) is a clause before its punctuation (first_opener): one more token.
        chunker = ClauseChunker(
            first_min_words=1, first_soft_words=self.first_soft_words or None, first_eager=True, first_opener=True
        )
        guard = ReplyGuard(max_words=self.max_reply_words)
        whole: list[str] = []  # sequential mode: the reply is spoken only once it is complete
        try:
            try:
                async for delta in self._fresh_deltas(stream, regen):
                    if self.metrics.llm_first_token is None:
                        self.metrics.llm_first_token = self.clock()
                        self._emit("llm_first_token")
                    self._emit("llm_delta", text=delta)
                    self._generated.append(delta)
                    if not self.streaming:
                        whole.append(delta)
                        continue
                    ready = chunker.push(delta)
                    if not ready and self._runs_dry(clauses, chunker):
                        ready = chunker.cut()
                        if ready:
                            self._emit("clause_early", text=ready[0], words=len(ready[0].split()))
                    for clause in ready:
                        if not await self._queue_guarded(clauses, guard, clause):
                            break
                    if guard.stop_reason is not None:
                        self.stream.cancel()  # a runaway reply: stop generating too
                        break
                if whole:
                    await self._queue_guarded(clauses, guard, normalise("".join(whole)))
                if guard.stop_reason is None:
                    for clause in chunker.finish():
                        if not await self._queue_guarded(clauses, guard, clause):
                            break
                if guard.stop_reason is not None:
                    self._emit("reply_cut", reason=guard.stop_reason,
                               words=guard.words, degenerate=guard.degenerate)  # fmt: skip
                if guard.degenerate and not guard.history_text():
                    await self._queue_clause(clauses, CONFUSED)  # never a silent turn
                if guard.stop_reason is not None:
                    self.verbatim = False
            except EngineError as exc:
                # The LLM failed mid-stream: say what was ready, then a short apology; the next turn works.
                self.verbatim = False
                self._emit("error", message=exc.message)
                for clause in [*chunker.finish(), APOLOGY]:
                    await self._queue_clause(clauses, clause)
            self._record_llm_stats(self.stream)
            await self._put(clauses, None)
            await speaker
            await self._begin()  # a reply with nothing to say still begins and ends at the sink
            self.sink.end_reply()
            await self.sink.wait_reply_done(self.turn_id)
            self.metrics.play_end = self.clock()
            self._emit("play_end", t=self.metrics.play_end)
            return True
        finally:
            self._speaker = None
            if not speaker.done():
                speaker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await speaker
            elif not speaker.cancelled():
                speaker.exception()  # raised above or superseded by the reply's own end: seen, not lost

    def _runs_dry(self, clauses: asyncio.Queue[str | None], chunker: ClauseChunker) -> bool:
        """Whether the speaker will run out of audio before the words waiting in `chunker` could be heard, if
        they waited any longer (see DRY_MARGIN_S). Nothing is due before playback starts."""
        if self._synthesising or not clauses.empty() or not self.started:
            return False
        start = self.sink.play_start(self.turn_id)
        if start is None:
            return False
        waiting = chunker.waiting_chars()
        if not waiting:
            return False
        left = start + self._audio_s - self.clock()
        return left <= waiting * self._tts_s_per_char + DRY_MARGIN_S

    # ---- stages -------------------------------------------------------------------------------------------
    async def _fresh_deltas(self, stream: LLMStream, regen: Regeneration | None) -> AsyncIterator[str]:
        """The reply's deltas; with `regen`, held back until its opening is judged (pipeline.reply_copy: at the
        latest when its first clause is complete, so a copy is never heard), and replaced once by a fresh
        answer when it copies an earlier reply. The copy never reaches the chunker, nor the history."""
        if regen is None or not self.streaming or not regen.prompt or regen.prompt[-1].role != "user":
            async for delta in stream:
                yield delta
            return
        question, earlier = regen.prompt[-1].content, reply_copy.exchanges(regen.prompt[:-1])
        judge = ClauseChunker(first_min_words=1, first_eager=True, first_opener=True)
        held: list[str] = []
        check = reply_copy.CopyCheck(reply_copy.Verdict.UNDECIDED)
        async for delta in stream:
            if check.verdict is not reply_copy.Verdict.UNDECIDED:
                yield delta
                continue
            held.append(delta)
            text = "".join(held)
            check = reply_copy.check_opening(text, question, earlier)
            first = judge.push(delta)
            if check.verdict is reply_copy.Verdict.UNDECIDED and first:
                check = reply_copy.check_opening(first[0], question, earlier, clause_end=True)
            if check.copy:
                break
            if check.verdict is reply_copy.Verdict.FRESH:
                for d in held:
                    yield d
                held = []
        else:
            if check.verdict is reply_copy.Verdict.UNDECIDED:  # the whole reply was shorter than its opening
                check = reply_copy.check_opening("".join(held), question, earlier, final=True)
            if not check.copy:
                for d in held:
                    yield d
                return
        attempt = "".join(held)
        stream.cancel()
        self._generated = []
        self.regenerated = True
        self._emit("reply_regenerated", copied=earlier[check.copied].reply if check.copied is not None else "",
                   attempt=attempt)  # fmt: skip
        prompt = reply_copy.uncopyable(
            regen.prompt, attempt, keep_exchanges=REGEN_KEEP_EXCHANGES, interrupted_as=INTERRUPTED_SUFFIX
        )
        self.regen_prompt = prompt
        self.stream = fresh = regen.ask(prompt, REGEN_SAMPLING)
        async for delta in fresh:
            yield delta

    async def _begin(self) -> None:
        """Before the first audio reaches the sink: a prepared reply waits here until it is adopted."""
        if self.started:
            return
        await self._go.wait()
        if not self.lifecycle.may_play:  # never audio for a turn that is not (or no longer) confirmed
            raise asyncio.CancelledError
        self.sink.begin_reply(self.turn_id)
        self.started = True

    async def _queue_guarded(self, q: asyncio.Queue[str | None], guard: ReplyGuard, clause: str) -> bool:
        """Queue what the reply guard lets through of `clause`; False once the guard has ended the reply."""
        # A small model copies the history's own markers back ("... [interrupted by the user]"): never say them.
        cleaned = clause.replace(INTERRUPTED_SUFFIX.strip(), "").strip()
        if cleaned != clause:
            self.verbatim = False
        clause = cleaned
        if not clause:
            return True
        verdict = guard.check(clause)
        for piece in verdict.speak:
            await self._queue_clause(q, piece)
        if verdict.dropped:
            self.verbatim = False
            self._emit("clause_dropped", text=clause, reason=verdict.reason)
        return not verdict.stop

    async def _queue_clause(self, q: asyncio.Queue[str | None], clause: str) -> None:
        m = self.metrics
        index = len(self.clauses) + q.qsize()
        if m.first_clause is None:
            m.first_clause = self.clock()
            self._emit("first_clause", text=clause)
        self._emit("clause", text=clause, index=index)
        await self._put(q, clause)

    async def _put(self, q: asyncio.Queue[str | None], item: str | None) -> None:
        """Queue for the speaker task, watching it: one that died (a bug in the TTS or the sink) would leave
        the reply blocked on a full queue for ever. Its exception ends the reply instead."""
        speaker = self._speaker
        if speaker is None:
            await q.put(item)
            return
        put = None if speaker.done() else asyncio.ensure_future(q.put(item))
        if put is not None:
            try:
                await asyncio.wait([put, speaker], return_when=asyncio.FIRST_COMPLETED)
            finally:
                put.cancel()
            if put.done() and not put.cancelled():
                return
        speaker.result()  # raises what killed it
        raise RuntimeError("the speaker task ended before the reply")

    def _record_llm_stats(self, stream: LLMStream) -> None:
        m, st = self.metrics, stream.stats
        m.llm_prompt_tokens = st.prompt_tokens
        m.llm_prompt_tokens_evaluated = st.prompt_tokens_evaluated
        m.llm_completion_tokens = st.completion_tokens
        if st.first_token_at is not None and st.finished_at is not None and st.completion_tokens > 1:
            span = st.finished_at - st.first_token_at
            m.llm_tokens_per_s = (st.completion_tokens - 1) / span if span > 0 else None
        self._emit(
            "llm_done",
            prompt_tokens=st.prompt_tokens,
            prompt_tokens_evaluated=st.prompt_tokens_evaluated,
            completion_tokens=st.completion_tokens,
            tokens_per_s=m.llm_tokens_per_s,
            threads=[st.threads_batch, st.threads_decode],
            cpu_busy=st.cpu_busy,
            stalls=st.stalls,
        )

    async def _speak(self, q: asyncio.Queue[str | None]) -> None:
        """Synthesise clauses in order and queue their audio; runs ahead of the speaker by the ring's size."""
        rate = self.sink.rate
        pos = self.clauses[-1][1] if self.clauses else 0  # an apology after a failed reply follows its audio
        index = 0
        while (clause := await q.get()) is not None:
            self._synthesising = True
            try:
                speech = await self.tts.synthesize(clause)
            except EngineError as exc:
                # One bad clause is skipped; the rest of the reply is still spoken.
                self._synthesising = False
                self._emit("warning", message=f"TTS skipped a clause: {exc.message}")
                continue
            now = self.clock()
            self._tts_s_per_char = speech.compute_s / max(1, len(clause))
            if self.metrics.tts_first_audio is None:
                self.metrics.tts_first_audio = now
                self._emit("tts_first_audio", t=now)
            self._emit(
                "tts_clause",
                index=index,
                audio_s=speech.duration_s,
                compute_s=speech.compute_s,
            )
            index += 1
            if speech.pcm.size == 0:
                self._synthesising = False
                continue
            await self._begin()
            start = self.sink.play_start(self.turn_id)
            if start is not None:
                # When playback would have run dry waiting for this clause: a hole in the speech.
                dry_at = start + pos / rate
                self.metrics.max_clause_gap_s = max(self.metrics.max_clause_gap_s, now - dry_at)
            self.clauses.append((pos, pos + len(speech.pcm), clause))
            pos += len(speech.pcm)
            self.metrics.tts_audio_s += speech.duration_s
            self.metrics.tts_compute_s += speech.compute_s
            self._audio_s = pos / rate
            self._synthesising = False
            await self.sink.write(speech.pcm)
            if not self.spoken_any:
                self.spoken_any = True
                if not self.lifecycle.ended:
                    self.lifecycle.speak(self.clock())
                if self._on_speaking is not None:
                    self._on_speaking(self.turn_id)
