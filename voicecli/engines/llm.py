"""llama.cpp language model behind the `LanguageModel` protocol.

Threading: one dedicated worker thread owns the `llama_cpp.Llama` object (load, warm-up, every
generation), so there is exactly one generation at a time and nothing heavy on the event loop.
`_submit` is the single executor call site.

Streaming: the worker iterates `create_chat_completion(stream=True)` and hands each text delta to
the loop through a bounded asyncio.Queue; when the queue is full the worker waits (backpressure).
Cancellation: a stop flag forces <|im_end|> at the very next sampled token (logits processor) and
the worker also stops forwarding deltas; queued deltas are dropped. A prompt still being evaluated is
stopped between two of llama.cpp's ops (engines.llm_abort). The model stays usable.

KV-cache reuse: llama-cpp-python keeps the evaluated tokens and only decodes the prompt suffix
that differs from the previous call, so a stable history prefix makes each turn cheap. The number
actually decoded is read from llama.cpp's own perf counters (`prompt_tokens_evaluated`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import numpy as np
import numpy.typing as npt

from voicecli import gguf_header
from voicecli.engines.base import QUEUE_DELTAS, ChatMessage, DeltaStream, Sampling
from voicecli.engines.llm_abort import AbortSwitch, is_abort
from voicecli.engines.priority import lower_this_thread
from voicecli.engines.threads import StallWatch, ThreadPlan, current_plan
from voicecli.errors import EngineError, ModelError
from voicecli.openers import is_standalone_opener

if TYPE_CHECKING:
    from llama_cpp.llama_types import ChatCompletionRequestMessage

T = TypeVar("T")

_SHIFT_PROBE = 8  # tokens of the new prompt that must match the cache after a trimmed range
BURST_TOKENS = 16  # tokens decoded on batch_threads before dropping to threads (about the first clause)
# Prefill while the user speaks (`prefill`): evaluated a few tokens at a time, so a reply requested meanwhile
# waits for one chunk at most (4 tokens of a 0.5B model on one thread: ~40 ms).
PREFILL_CHUNK = 4
PREFILL_MAX_DROP = 256  # cached tokens a prefill may replace (the tail of the last reply, an older partial)
PUT_SLICE_S = 0.25  # how often a worker blocked on a full delta queue checks that a reader is still there
_END = object()  # end-of-stream marker (always fits: the queue holds QUEUE_DELTAS + 2 items)
_WARMUP_SYSTEM = "You are a helpful assistant."
# A reply's lane jobs run at its first clause's end (its punctuation, or a standalone opener: voicecli.openers),
# or after this many tokens.
LANE_AFTER_TOKENS = 6
_CLAUSE_END = ",.;:!?"
_NEXT_USER = "\u2047next"  # stands for the next user message while its opening is prefilled (never sent)


class _Preempt:
    """The generation of the requests on one llama worker thread (see LlamaLLM.__init__)."""

    def __init__(self) -> None:
        self.gen = 0


class _Lane:
    """Short jobs for a llama worker thread that must not wait for a whole reply on it: run between two of the
    reply's tokens, once its first clause is out (while Piper synthesises it), or when it ends. The end-of-turn
    judge's verdict (~20-60 ms) is asked after the reply started, so that it no longer delays the reply."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.replies = 0  # replies asked for (chat) and not yet ended on the worker
        self.jobs: deque[Callable[[], None]] = deque()
        # Threads the jobs being run may use (0: outside `run`, their own). The reply's prompt and first clause ran
        # on the free cores and it waits for the jobs; Piper is idle when that clause is a standalone opener (spoken
        # from memory, engines.tts), else it synthesises the clause beside them on one core.
        self.threads = 0

    def offer(self, job: Callable[[], None]) -> bool:
        """Queue `job` if a reply is under way (True); else the caller submits it as usual."""
        with self.lock:
            if self.replies == 0:
                return False
            self.jobs.append(job)
            return True

    def run(self, threads: int = 0) -> None:
        """On the worker: the jobs queued so far, each on `threads` threads (0: as it would outside the lane)."""
        self.threads = threads
        try:
            while True:
                with self.lock:
                    if not self.jobs:
                        return
                    job = self.jobs.popleft()
                job()
        finally:
            self.threads = 0


@dataclass(frozen=True)
class GGUFInfo:
    path: Path
    architecture: str
    chat_template: str | None
    n_tensors: int
    data_bytes: int  # bytes the header says the file must have


def inspect_gguf(path: Path, pull_name: str = "") -> GGUFInfo:
    """Check that `path` is a complete GGUF before llama.cpp sees it (it may abort on bad files).

    The same header walk as `voicecli models` (voicecli.gguf_header), so both give one verdict.
    """
    pull = f"run `voicecli models pull {pull_name or path.stem}`"
    again = f"{pull} again to replace it (or `voicecli models verify`)"
    if not path.exists():
        raise ModelError(f"LLM model not found: {path}", hint=f"{pull}, or pass the path of a local .gguf file")
    if not path.is_file():
        raise ModelError(f"LLM model path is not a file: {path}", hint="pass the path of a .gguf file")
    try:
        header = gguf_header.read(path)
    except gguf_header.NotGGUF as e:
        raise ModelError(f"{path} is not a GGUF model file (it starts with {e.head!r})", hint=again) from e
    except gguf_header.Truncated as e:
        raise ModelError(f"{path} is truncated: {e}", hint=again) from e
    except gguf_header.HeaderError as e:
        raise ModelError(f"{path} is corrupt: {e}", hint=again) from e
    return GGUFInfo(path, header.architecture, header.chat_template, header.n_tensors, header.data_bytes)


class LlamaLLM:
    """A local GGUF chat model. Call `await start()` once, then `chat()` per turn."""

    def __init__(
        self,
        model_path: str | Path,
        *,
        n_ctx: int = 2048,
        threads: int = 0,
        batch_threads: int = 0,
        seed: int = 0,
        sampling: Sampling | None = None,
        system_prompt: str = "",
        pull_name: str = "",
        worker_of: LlamaLLM | None = None,
    ) -> None:
        """`threads` / `batch_threads`: ceilings for the decode and prefill threads (0 = no ceiling); each request
        uses what engines.threads plans from the cores that are free at that moment. `system_prompt` is
        prefilled at warm-up so the first turn reuses it from the KV cache; `pull_name` is the manifest name
        used in "model missing" hints.

        `worker_of`: run on that model's worker thread instead of one of its own (the end-of-turn judge beside
        the reply LLM). llama.cpp's threads are an OpenMP team per calling thread; with two teams in the process
        libgomp counts more threads than cores and stops spinning at its barriers, so every op of either model
        sleeps and wakes: the 0.5B model's 10-token prompt took 151-168 ms instead of 85 (2-core Xeon)."""
        self.model_path = Path(model_path)
        self._n_ctx = n_ctx
        self._max_decode = threads
        self._max_batch = batch_threads
        self._stall = StallWatch()
        self.abort = AbortSwitch()  # stops a cancelled reply's evaluation mid-decode
        self.last_plan: ThreadPlan | None = None
        self._seed = seed
        self._sampling = sampling or Sampling()
        self.extra_buffers = True  # llama.cpp weight repacking (off on AMX hosts, see _model_params)
        self.shifted_tokens = 0  # KV-cache tokens dropped in place by history trims (see _shift_cache)
        self._warmup_system = system_prompt or _WARMUP_SYSTEM
        self._pull_name = pull_name
        self._owns_executor = worker_of is None
        self._executor: ThreadPoolExecutor = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama") if worker_of is None else worker_of._executor
        )
        self._llm: Any = None  # llama_cpp.Llama, owned by the worker thread
        self._format: Callable[[list[ChatCompletionRequestMessage]], tuple[str, bool]] | None = None
        self._current: LlamaStream | None = None
        # Bumped by every chat() and end_of_turn() of any model on this worker: a prefill in progress (of either
        # model) stops at its next chunk. Shared, because the judge's verdict queued behind the reply LLM's prefill
        # of the user's partial words (1 thread, ~14 ms a token): a 30 ms verdict took 119 ms.
        self._preempt: _Preempt = worker_of._preempt if worker_of is not None else _Preempt()
        self._lane: _Lane = worker_of._lane if worker_of is not None else _Lane()
        self.prefilled_tokens = 0  # evaluated ahead of a request by `prefill` (the benchmark reports it)
        self.history_prefilled_tokens = 0  # evaluated after a turn by `prefill_next`
        self.load_s = 0.0
        self.warmup_s = 0.0

    async def start(self) -> None:
        if self._llm is None:
            await self._submit(self._load)

    def chat(
        self, messages: Sequence[ChatMessage], max_tokens: int = 256, sampling: Sampling | None = None
    ) -> LlamaStream:
        """Start streaming a reply. A previous stream still running is cancelled first."""
        if self._llm is None:
            raise EngineError("the language model is not loaded", hint="await LlamaLLM.start() first")
        if self._current is not None:
            self._current.cancel()
        self._preempt.gen += 1
        stream = LlamaStream(asyncio.get_running_loop(), on_cancel=lambda: self.abort.fire(stream))
        with self._lane.lock:
            self._lane.replies += 1  # from now on a verdict waits in the lane, not behind the whole reply
        try:
            stream.job = self._submit(self._generate, stream, _dicts(messages), max_tokens, sampling or self._sampling)
        except BaseException:  # the worker is gone: nothing will run there
            with self._lane.lock:
                self._lane.replies -= 1
            raise
        self._current = stream
        return stream

    def prefill(self, messages: Sequence[ChatMessage]) -> asyncio.Future[int] | None:
        """Evaluate the prompt of `messages` into the KV cache up to the end of the last message's text, without
        the template's closing tokens: the user's words so far, while they are still speaking. The request
        that follows (its words go on from these) then evaluates only what differs (llama-cpp-python reuses
        the longest common token prefix). Never while a reply is generating; stopped at its next chunk by a
        request; never discards the cached history (then the request does the work). Resolves to the tokens
        evaluated."""
        if self._llm is None or self._format is None or not messages or not messages[-1].content.strip():
            return None
        current = self._current
        if current is not None and current.stats.finished_at is None and not current.stopped:
            return None  # a reply is being generated: it comes first
        return self._submit(self._prefill, _dicts(messages), self._preempt.gen)

    def prefill_next(self, messages: Sequence[ChatMessage]) -> asyncio.Future[int] | None:
        """After a turn, while the user has not started the next: evaluate the conversation so far and the
        template's opening of the next user message into the KV cache. The reply just generated is cached as
        sampled, which is not always how its text tokenizes back in the history (10-25 tokens were evaluated
        again after every pause); at the pause only the user's words and the closing tokens are then left.
        Gives way to any request like `prefill`; resolves to the tokens evaluated."""
        if self._llm is None or self._format is None or not messages:
            return None
        current = self._current
        if current is not None and current.stats.finished_at is None and not current.stopped:
            return None
        nxt = _dicts([*messages, ChatMessage("user", _NEXT_USER)])
        return self._submit(self._prefill, nxt, self._preempt.gen, True)

    def stop_prefill(self) -> None:
        """A prefill in progress on this worker (of either model sharing it) stops at its next chunk: the user
        paused, and the cores go to the pause's transcription and the verdict (pipeline.prefill)."""
        self._preempt.gen += 1

    def end_of_turn(self, messages: Sequence[ChatMessage]) -> asyncio.Future[float | None] | None:
        """The probability that the user's turn ends after the last message's text: the model's own end-of-turn
        token (the template's, e.g. <|im_end|>) right after those words (LiveKit's turn detector does this with
        a distilled Qwen). The prompt is left in the KV cache up to the user's words, so a request that follows
        with the same messages evaluates only the template's closing tokens. None while a reply is generating
        (it comes first), or if the template has no token after the user's text."""
        if self._llm is None or self._format is None or not messages or not messages[-1].content.strip():
            return None
        current = self._current
        if current is not None and current.stats.finished_at is None and not current.stopped:
            return None
        self._preempt.gen += 1  # the turn waits for the verdict; a prefill of partial words does not
        return self._beside_reply(self._end_of_turn, _dicts(messages))

    def _beside_reply(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """`fn` on the worker: between two tokens of a reply under way on it (`_Lane`), else as soon as it is free."""
        done: concurrent.futures.Future[T] = concurrent.futures.Future()

        def job() -> None:
            if done.set_running_or_notify_cancel():
                try:
                    done.set_result(fn(*args))
                except BaseException as e:  # handed to the caller
                    done.set_exception(e)

        if self._lane.offer(job):
            return asyncio.wrap_future(done)
        return self._submit(fn, *args)

    def _reply_ended(self) -> None:
        """A reply ended on the worker (or was never started): the jobs that waited for it run now."""
        with self._lane.lock:
            self._lane.replies -= 1
        self._lane.run()

    def count_tokens(self, messages: Sequence[ChatMessage]) -> int:
        """Prompt tokens exactly as `chat()` would send them (template + generation prompt)."""
        if self._llm is None or self._format is None:
            raise EngineError("the language model is not loaded", hint="await LlamaLLM.start() first")
        prompt, added_special = self._format(_dicts(messages))
        return len(self._llm.tokenize(prompt.encode("utf-8"), add_bos=not added_special, special=True))

    async def close(self) -> None:
        if self._current is not None:
            self._current.cancel()
        if self._llm is not None:
            await self._submit(self._free)
        if self._owns_executor:
            self._executor.shutdown(wait=False)

    # --- the one executor call site -------------------------------------------------------

    def _submit(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        return asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # --- worker thread ----------------------------------------------------------------------

    def _load(self) -> None:
        lower_this_thread()  # before llama.cpp creates its threads: they inherit it
        info = inspect_gguf(self.model_path, self._pull_name)
        if not info.chat_template:
            raise ModelError(
                f"{self.model_path} has no chat template (tokenizer.chat_template)",
                hint="use an instruct/chat GGUF, e.g. the default from `voicecli models list`",
            )
        import llama_cpp
        from llama_cpp import llama_chat_format

        t0 = time.monotonic()
        plan = current_plan(self._max_batch, self._max_decode)
        try:
            with _model_params(extra_buffers=not amx_enabled()) as self.extra_buffers:
                llm = llama_cpp.Llama(
                    model_path=str(self.model_path),
                    n_ctx=self._n_ctx,
                    n_threads=plan.batch,
                    n_threads_batch=plan.batch,
                    seed=self._seed,
                    verbose=False,
                    chat_format="chat_template.default",  # the GGUF's own template, never a guess
                )
        except (ValueError, RuntimeError) as e:
            raise ModelError(
                f"llama.cpp could not load {self.model_path}: {e}",
                hint="check that it is a chat model GGUF llama.cpp supports (arch "
                f"{info.architecture}); `voicecli models verify` re-checks downloaded files",
            ) from e
        self.load_s = time.monotonic() - t0
        formatter = llama_chat_format.Jinja2ChatFormatter(
            template=info.chat_template,
            eos_token=_token_text(llm, llm.token_eos()),
            bos_token=_token_text(llm, llm.token_bos()),
        )

        def fmt(messages: list[ChatCompletionRequestMessage]) -> tuple[str, bool]:
            r = formatter(messages=messages)
            return r.prompt, r.added_special

        self._llm, self._format = llm, fmt
        self.abort.install(llm.ctx)
        # Warm up: page the weights in and leave the system prompt in the KV cache.
        t0 = time.monotonic()
        llm.create_chat_completion(
            messages=[{"role": "system", "content": self._warmup_system}, {"role": "user", "content": "Hi"}],
            max_tokens=1,
            seed=self._seed,
        )
        self.warmup_s = time.monotonic() - t0

    def _shift_cache(self, messages: list[ChatCompletionRequestMessage]) -> None:
        """Keep the KV cache when the history dropped old turns from the middle of the prompt.

        llama-cpp-python only reuses the longest common *prefix*; a history trim removes turns right after
        the system prompt, so everything after it would be prefilled again (2.5-3 s at 600 tokens on 2 cores).
        Like llama.cpp server's context shift: find where the new prompt continues inside the cached tokens,
        remove the dropped range from the KV cache, shift the rest back (RoPE positions are rotated by
        llama.cpp), and leave the cached token list matching, so only the new user message is prefilled.
        """
        llm = self._llm
        assert self._format is not None
        prompt, added_special = self._format(messages)
        new = llm.tokenize(prompt.encode("utf-8"), add_bos=not added_special, special=True)
        n_cached = int(llm.n_tokens)
        old = np.array(llm.input_ids[:n_cached], copy=True)
        p = 0
        limit = min(n_cached, len(new))
        while p < limit and old[p] == new[p]:
            p += 1
        probe = np.array(new[p : p + _SHIFT_PROBE], dtype=old.dtype)
        if p == 0 or n_cached - p - 1 < _SHIFT_PROBE or len(probe) < _SHIFT_PROBE:
            return  # nothing cached to keep, a plain prefix hit, or too little left to match safely
        windows = np.lib.stride_tricks.sliding_window_view(old[p + 1 :], _SHIFT_PROBE)
        hits = np.flatnonzero((windows == probe).all(axis=1))
        if not len(hits):
            return
        j = p + 1 + int(hits[0])  # old[j:] continues the new prompt at p
        import llama_cpp

        mem = llama_cpp.llama_get_memory(llm.ctx)
        if mem is None or not llama_cpp.llama_memory_can_shift(mem):
            return
        if not llama_cpp.llama_memory_seq_rm(mem, 0, p, j):
            return
        d = j - p
        llama_cpp.llama_memory_seq_add(mem, 0, j, n_cached, -d)
        llm.input_ids[p : n_cached - d] = old[j:n_cached]
        llm.n_tokens = n_cached - d
        self.shifted_tokens += d

    def _prefill(self, messages: list[ChatCompletionRequestMessage], gen: int, opening_only: bool = False) -> int:
        """`opening_only`: up to where the last message's text begins (`prefill_next`), all of it; else up to
        where it ends, but its last token."""
        import llama_cpp

        llm, fmt = self._llm, self._format
        assert fmt is not None
        text = str(messages[-1]["content"])
        prompt, added_special = fmt(messages)
        at = prompt.rfind(text)
        if gen != self._preempt.gen or at < 0:
            return 0
        cut = at if opening_only else at + len(text)
        tokens = llm.tokenize(prompt[:cut].encode("utf-8"), add_bos=not added_special, special=True)
        n_cached = int(llm.n_tokens)
        p = self._cached_prefix(tokens)
        # The user's last word may still change ("weath" -> "weather"): its tokens are left to the request.
        end = len(tokens) if opening_only else len(tokens) - 1
        # What the cache holds past `p` (the end of the last reply, an older partial) the request would drop too:
        # its prompt shares these tokens up to the user's words. Far more means the history changed (a trim the
        # request shifts the cache for): left alone.
        if n_cached - p > PREFILL_MAX_DROP or end - p < 1:
            return 0
        plan = current_plan(self._max_batch, self._max_decode)
        llama_cpp.llama_set_n_threads(llm.ctx, plan.decode, plan.decode)  # leave a core to the audio and STT
        llm.n_tokens = p
        done = 0
        while p < end and gen == self._preempt.gen:
            chunk = tokens[p : min(end, p + PREFILL_CHUNK)]
            llm.eval(chunk)
            p += len(chunk)
            done += len(chunk)
        # llama.cpp counts evaluated tokens when the context synchronises (reading logits): without this the
        # request that follows would count these as its own (`prompt_tokens_evaluated`).
        llama_cpp.llama_synchronize(llm.ctx)
        if opening_only:
            self.history_prefilled_tokens += done
        else:
            self.prefilled_tokens += done
        return done

    def _end_of_turn(self, messages: list[ChatCompletionRequestMessage]) -> float | None:
        import llama_cpp

        llm, fmt = self._llm, self._format
        assert fmt is not None
        text = str(messages[-1]["content"]).rstrip()
        messages = [*messages[:-1], {**messages[-1], "content": text}]  # type: ignore[list-item]
        prompt, added_special = fmt(messages)
        at = prompt.rfind(text)
        if at < 0:
            return None
        cut = at + len(text)
        closing = llm.tokenize(prompt[cut:].encode("utf-8"), add_bos=False, special=True)
        tokens = llm.tokenize(prompt[:cut].encode("utf-8"), add_bos=not added_special, special=True)
        if not closing or not tokens:
            return None
        # The last token is evaluated again if cached: its logits are needed.
        p = min(self._cached_prefix(tokens), len(tokens) - 1)
        # However few tokens are left, on the prefill threads: the turn waits for the verdict (SmolLM2 alone, the
        # 2-8 tokens left after the words were prefilled while the user spoke: ~19 ms on one thread, ~12 on two).
        # A judge of its own on one thread takes the free cores in the reply's lane (`_Lane.threads`): after a
        # misheard word its 6-9 tokens took 39-65 ms on one thread, 30-32 on two, while the speaker waited.
        threads = self._lane.threads or current_plan(self._max_batch, self._max_decode).batch
        llama_cpp.llama_set_n_threads(llm.ctx, threads, threads)
        llm.n_tokens = p
        llm.eval(tokens[p:])
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))
        z = logits.astype(np.float64) - float(logits.max())
        probs = np.exp(z)
        return float(probs[closing[0]] / probs.sum())

    def _cached_prefix(self, tokens: Sequence[int]) -> int:
        """How many leading `tokens` the KV cache already holds (llama-cpp-python keeps them in input_ids)."""
        llm = self._llm
        n = min(int(llm.n_tokens), len(tokens))
        p = 0
        while p < n and llm.input_ids[p] == tokens[p]:
            p += 1
        return p

    def _free(self) -> None:
        llm, self._llm = self._llm, None
        if llm is not None:
            llm.close()

    def _decoded(self) -> int:
        """Tokens llama.cpp has decoded so far in this context (prompt batches + single tokens)."""
        import llama_cpp

        perf = llama_cpp.llama_perf_context(self._llm.ctx)
        return int(perf.n_p_eval) + int(perf.n_eval)

    def _generate(
        self, stream: LlamaStream, messages: list[ChatCompletionRequestMessage], max_tokens: int, sp: Sampling
    ) -> None:
        try:
            self._reply(stream, messages, max_tokens, sp)
        finally:
            self._reply_ended()

    def _reply(
        self, stream: LlamaStream, messages: list[ChatCompletionRequestMessage], max_tokens: int, sp: Sampling
    ) -> None:
        import llama_cpp
        from llama_cpp import LogitsProcessorList

        llm, stats = self._llm, stream.stats
        eos = llm.token_eos()
        decoded_before = self._decoded()
        sampled = 0
        forced_end = False
        plan = self.last_plan = current_plan(self._max_batch, self._max_decode)
        stats.threads_batch, stats.threads_decode, stats.cpu_busy = plan.batch, plan.decode, plan.busy
        threads = plan.batch

        def set_threads(n: int) -> None:
            nonlocal threads
            if n != threads:
                threads = n
                llama_cpp.llama_set_n_threads(llm.ctx, n, n)
                self._stall.start(time.monotonic())

        def on_logits(_ids: npt.NDArray[np.intc], scores: npt.NDArray[np.single]) -> Any:
            nonlocal sampled, forced_end
            now = time.monotonic()
            if sampled == 0:  # the prompt has just been decoded
                stats.prompt_tokens = int(llm.n_tokens)
                stats.prompt_tokens_evaluated = self._decoded() - decoded_before
                self._stall.start(now)
            elif self._stall.token(now, threads):
                # Another program took a core mid-reply: threads that wait for each other at every op
                # collapse, one thread does not (engines.threads).
                stats.stalls += 1
                set_threads(1)
            sampled += 1
            if sampled == BURST_TOKENS:
                set_threads(min(threads, plan.decode))
            stats.completion_tokens = sampled  # live count; corrected for the final <|im_end|> below
            if stream.stopped:  # end the reply at this very token
                forced_end = True
                scores[:] = -np.inf
                scores[eos] = 0.0
            return scores

        finish: str | None = None
        chunks: Any = None
        error: EngineError | None = None
        clause_out = False  # the reply's text so far holds a clause's end
        opening = ""  # the reply's text until then: a standalone opener ("Sure") is a clause of its own
        opener = False  # that first clause is a standalone opener, and the lane has not run since
        self.abort.arm(stream)  # from now on stream.cancel() stops the decode in progress too
        try:
            if stream.stopped:
                return
            self._shift_cache(messages)
            # The prompt and the first clause on the free cores (the speaker waits for them), the rest on
            # plan.decode once Piper is synthesising next to it (see on_logits).
            llama_cpp.llama_set_n_threads(llm.ctx, plan.batch, plan.batch)
            chunks = llm.create_chat_completion(
                messages=messages,
                max_tokens=max_tokens,
                stream=True,
                temperature=sp.temperature,
                top_p=sp.top_p,
                min_p=sp.min_p,
                repeat_penalty=sp.repeat_penalty,
                seed=self._seed,
                logits_processor=LogitsProcessorList([on_logits]),
            )
            for chunk in chunks:
                choice = chunk["choices"][0]
                finish = choice.get("finish_reason") or finish
                delta = choice["delta"].get("content")
                if stream.stopped:
                    break
                if delta:
                    if stats.first_token_at is None:
                        stats.first_token_at = time.monotonic()
                    if not stream.put(delta):
                        break
                    if not clause_out and sampled < LANE_AFTER_TOKENS:  # after that the lane runs anyway
                        opening += delta
                        opener = is_standalone_opener(opening)
                        clause_out = opener or any(c in delta for c in _CLAUSE_END)
                if clause_out or sampled >= LANE_AFTER_TOKENS:
                    # Before the next token: the first clause is with Piper, or spoken from memory when it is a
                    # standalone opener ("Sure"; engines.tts), and then the jobs may take the reply's cores (its
                    # plan of ~0.1 s ago: sampling the run queue again costs ~4 ms the speaker would wait for).
                    # Later, Piper may be synthesising the next clause.
                    self._lane.run(plan.batch if opener else 1)
                    opener = False
        except Exception as e:
            if not (stream.stopped and is_abort(e)):  # an abort we asked for is a cancellation, not an error
                stats.error = f"{type(e).__name__}: {e}"
                error = EngineError(
                    f"the language model failed mid-reply: {stats.error}",
                    hint="the turn is abandoned; the model stays loaded for the next one",
                )
        finally:
            self.abort.disarm()
            if chunks is not None:
                with contextlib.suppress(Exception):
                    chunks.close()
            # A reply that ended on <|im_end|> (its own or forced) sampled one token that is not text.
            stats.completion_tokens = max(0, sampled - (1 if forced_end or finish == "stop" else 0))
            stats.cancelled = stats.cancelled or stream.stopped
            stats.finished_at = time.monotonic()
            stream.put(error or _END)


def system_info() -> str:
    """llama.cpp's own report of the CPU features it was built with and found (e.g. "AMX_INT8 = 1")."""
    import llama_cpp

    return bytes(llama_cpp.llama_print_system_info()).decode("utf-8", errors="replace")


def amx_enabled() -> bool:
    """Whether this llama.cpp build runs its AMX path on this CPU.

    That path segfaults on Q4_1/Q4_K models (seen on Intel Xeon hosts with AMX): scripts/setup.sh builds
    without it, and a native build installed some other way gets weight repacking (the AMX buffers) off."""
    return "AMX_INT8 = 1" in system_info()


@contextlib.contextmanager
def _model_params(*, extra_buffers: bool) -> Iterator[bool]:
    """Make `llama_cpp.Llama` create its model with `use_extra_bufts` as given (it has no argument for it).

    Only the LLM worker thread loads models, so swapping the default-params function for the duration of
    one constructor call is safe."""
    import llama_cpp.llama as llama_module

    lib = llama_module.llama_cpp
    original = lib.llama_model_default_params

    def params() -> Any:
        p = original()
        p.use_extra_bufts = extra_buffers
        return p

    lib.llama_model_default_params = params
    try:
        yield extra_buffers
    finally:
        lib.llama_model_default_params = original


def _dicts(messages: Sequence[ChatMessage]) -> list[ChatCompletionRequestMessage]:
    return [cast("ChatCompletionRequestMessage", {"role": m.role, "content": m.content}) for m in messages]


def _token_text(llm: Any, token: int) -> str:
    if token < 0:
        return ""
    return bytes(llm.detokenize([token], special=True)).decode("utf-8", errors="replace")


class LlamaStream(DeltaStream):
    """One reply's text deltas (an `LLMStream`). Iterate it on the loop; cancel() from anywhere."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_cancel: Callable[[], None] | None = None) -> None:
        """`on_cancel`: also called (from any thread) by the first `cancel()`: stops the decode in progress."""
        super().__init__(loop, QUEUE_DELTAS + 2)
        self.job: asyncio.Future[None] | None = None
        self._on_cancel = on_cancel

    def cancel(self) -> None:
        if self._stop:
            return
        self._stop = True
        if self._on_cancel is not None:
            self._on_cancel()
        if not self._ended:
            self.stats.cancelled = True  # even if generation had finished: the reader was cut off
        with contextlib.suppress(RuntimeError):  # loop already closed: nobody is listening
            self._loop.call_soon_threadsafe(self._drop_queued_text)

    # worker thread side
    def put(self, item: object) -> bool:
        """Hand `item` to the loop, waiting while the queue is full. False once the stream is stopped."""
        if self._stop and isinstance(item, str):
            return False
        try:
            future = asyncio.run_coroutine_threadsafe(self._queue.put(item), self._loop)
        except RuntimeError:  # the loop is closed
            self._stop = True
            return False
        # Wait in slices: a reader that went away (a stopped stream, a loop that stopped running) must not
        # hold the LLM worker thread, and with it every later turn, forever.
        while True:
            try:
                future.result(timeout=PUT_SLICE_S)
                break
            except concurrent.futures.TimeoutError:
                if (self._stop and isinstance(item, str)) or self._loop.is_closed() or not self._loop.is_running():
                    future.cancel()
                    self._stop = True
                    return False
            except concurrent.futures.CancelledError:
                self._stop = True
                return False
        return not self._stop

    # loop side
    def _drop_queued_text(self) -> None:
        # Emptying the queue also releases a worker blocked on a full queue, so it sees the flag.
        kept = []
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if not isinstance(item, str):
                kept.append(item)
        for item in kept:
            self._queue.put_nowait(item)
