"""LlamaLLM through the real llama.cpp with a generated, scripted tiny GGUF."""

from __future__ import annotations

import asyncio
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from voicecli.engines import llm as llm_mod
from voicecli.engines.base import ChatMessage, LLMStats
from voicecli.engines.llm import PREFILL_CHUNK, QUEUE_DELTAS, LlamaLLM, LlamaStream
from voicecli.engines.threads import ThreadPlan
from voicecli.errors import EngineError, ModelError
from voicecli.pipeline.history import History
from voicecli.testmodels import llama as gen

pytestmark = pytest.mark.engines

SYSTEM = (
    "You are a helpful voice assistant running on the user's desktop. Answer in one to three short "
    "spoken sentences. No markdown, no lists, no emoji. Be friendly and precise."
)
REPLY_PIECES = len(gen.chain_pieces(gen.DEFAULT_REPLY))


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return gen.generate(tmp_path_factory.mktemp("llm"))


@pytest.fixture(scope="module")
def llm(tiny_gguf: Path) -> Iterator[LlamaLLM]:
    model = LlamaLLM(tiny_gguf, n_ctx=2048, threads=1, system_prompt=SYSTEM)
    asyncio.run(model.start())
    yield model
    asyncio.run(model.close())


def ask(text: str) -> list[ChatMessage]:
    return [ChatMessage("system", SYSTEM), ChatMessage("user", text)]


async def collect(model: LlamaLLM, messages: list[ChatMessage]) -> tuple[list[str], LLMStats]:
    stream = model.chat(messages, max_tokens=128)
    deltas = [d async for d in stream]
    return deltas, stream.stats


def test_streams_the_scripted_reply_delta_by_delta(llm: LlamaLLM) -> None:
    deltas, stats = asyncio.run(asyncio.wait_for(collect(llm, ask("How is the weather?")), 30))
    assert "".join(deltas) == gen.DEFAULT_REPLY
    assert len(deltas) > 5
    assert stats.completion_tokens == REPLY_PIECES
    assert stats.first_token_at is not None and stats.finished_at is not None
    assert stats.first_token_at <= stats.finished_at
    assert not stats.cancelled and stats.error is None


def test_cancel_mid_stream_stops_fast_and_next_turn_is_whole(llm: LlamaLLM) -> None:
    async def run() -> tuple[list[str], list[str], LLMStats, str]:
        stream = llm.chat(ask("Tell me about the weather."), max_tokens=128)
        before: list[str] = []
        after: list[str] = []
        async for delta in stream:
            (after if stream.stats.cancelled or len(before) >= 3 else before).append(delta)
            if len(before) == 3 and not after:
                stream.cancel()
        cancelled_stats = stream.stats
        full = await llm.chat(ask("And tomorrow?"), max_tokens=128).text()
        return before, after, cancelled_stats, full

    before, after, stats, full = asyncio.run(asyncio.wait_for(run(), 30))
    assert len(before) == 3
    assert len(after) <= 2, f"got {len(after)} deltas after cancel()"
    assert stats.cancelled
    # Generation itself stopped early (the producer was held by the bounded queue, then stopped).
    assert stats.completion_tokens < REPLY_PIECES
    assert full == gen.DEFAULT_REPLY


def test_cancel_while_nobody_reads_does_not_wedge_the_model(llm: LlamaLLM) -> None:
    async def run() -> str:
        abandoned = llm.chat(ask("First question"), max_tokens=128)
        await asyncio.sleep(0.2)  # the worker fills the bounded queue and waits
        abandoned.cancel()
        return await llm.chat(ask("Second question"), max_tokens=128).text()

    assert asyncio.run(asyncio.wait_for(run(), 30)) == gen.DEFAULT_REPLY


def test_a_slow_reader_holds_the_generator_back_without_losing_text(llm: LlamaLLM) -> None:
    async def run() -> tuple[int, str]:
        stream = llm.chat(ask("Go slowly."), max_tokens=128)
        await asyncio.sleep(0.5)  # nobody reads: the bounded queue fills and the worker waits
        generated_while_blocked = stream.stats.completion_tokens
        return generated_while_blocked, await stream.text()

    generated, text = asyncio.run(asyncio.wait_for(run(), 30))
    assert generated <= QUEUE_DELTAS + 3 < REPLY_PIECES
    assert text == gen.DEFAULT_REPLY


def test_second_turn_evaluates_only_the_new_tokens(tiny_gguf: Path) -> None:
    async def run() -> tuple[LLMStats, LLMStats, int, int]:
        model = LlamaLLM(tiny_gguf, system_prompt=SYSTEM)
        await model.start()
        try:
            first = ask("What should I wear today?")
            s1 = model.chat(first, max_tokens=128)
            reply = await s1.text()
            second = [*first, ChatMessage("assistant", reply), ChatMessage("user", "And tomorrow?")]
            s2 = model.chat(second, max_tokens=128)
            await s2.text()
            return s1.stats, s2.stats, model.count_tokens(first), model.count_tokens(second)
        finally:
            await model.close()

    s1, s2, n1, n2 = asyncio.run(asyncio.wait_for(run(), 60))
    assert s1.prompt_tokens == n1 and s2.prompt_tokens == n2
    # Turn 1: the system prompt was prefilled at warm-up; only the user message is new.
    system_only = n1 - len("What should I wear today?")  # generous: at most a token per character
    assert s1.prompt_tokens_evaluated <= n1 - system_only
    # Turn 2: everything up to the reply is cached; only the reply tail + new message are evaluated.
    assert s2.prompt_tokens_evaluated <= n2 - n1
    assert s2.prompt_tokens_evaluated < s2.prompt_tokens / 3


def test_hundred_turns_of_history_stay_under_the_budget(llm: LlamaLLM) -> None:
    budget = 300

    async def run() -> tuple[list[int], History]:
        history = History(SYSTEM, budget, llm.count_tokens)
        sent: list[int] = []
        for i in range(100):
            history.add_user(f"Question {i}: is it warm enough for a walk by the river this evening?")
            stream = llm.chat(history.messages(), max_tokens=64)
            reply = await stream.text()
            sent.append(stream.stats.prompt_tokens)
            history.add_assistant(reply, interrupted=i % 7 == 3)
        return sent, history

    sent, history = asyncio.run(asyncio.wait_for(run(), 240))
    assert max(sent) <= budget, "llama.cpp was sent more prompt tokens than the budget"
    assert sent[-1] > budget // 3  # the history is used, not just the last message
    assert history.truncated_turns > 50


def test_a_history_trim_keeps_the_kv_cache_instead_of_prefilling_everything(tiny_gguf: Path) -> None:
    """Dropping old turns right after the system prompt used to break llama.cpp's prefix reuse: the whole
    history was prefilled again (2.5-3 s on 2 cores with a real model). The cache is shifted instead."""
    budget = 300

    async def run() -> tuple[list[tuple[int, int, int]], int, str]:
        model = LlamaLLM(tiny_gguf, system_prompt=SYSTEM)
        await model.start()
        history = History(SYSTEM, budget, model.count_tokens)
        turns = []
        try:
            for i in range(30):
                history.add_user(f"Question {i}: is it warm enough for a walk by the river this evening?")
                dropped = history.truncated_turns
                stream = model.chat(history.messages(), max_tokens=64)
                reply = await stream.text()
                turns.append((dropped, stream.stats.prompt_tokens, stream.stats.prompt_tokens_evaluated))
                history.add_assistant(reply)
            return turns, model.shifted_tokens, reply
        finally:
            await model.close()

    turns, shifted, last = asyncio.run(asyncio.wait_for(run(), 240))
    trims = [i for i in range(1, len(turns)) if turns[i][0] > turns[i - 1][0]]
    assert len(trims) >= 3 and shifted > 0
    new_message = len("Question 10: is it warm enough for a walk by the river this evening?")
    for i in trims:
        _, prompt, evaluated = turns[i]
        assert evaluated <= new_message + 10 < prompt / 2, turns[i]  # before: evaluated == about all of prompt
    assert last == gen.DEFAULT_REPLY  # the shifted cache still gives the model's own reply


def test_error_mid_stream_reaches_the_consumer_and_the_model_survives(llm: LlamaLLM) -> None:
    async def run() -> tuple[EngineError, LLMStats, str]:
        stream = llm.chat(ask("word " * 5000), max_tokens=16)  # far beyond n_ctx=2048
        with pytest.raises(EngineError) as err:
            await stream.text()
        return err.value, stream.stats, await llm.chat(ask("Still there?"), max_tokens=128).text()

    error, stats, after = asyncio.run(asyncio.wait_for(run(), 60))
    assert stats.error
    assert "context" in str(error).lower()
    assert after == gen.DEFAULT_REPLY


def test_a_reply_cancelled_while_its_prompt_is_evaluated_stops_mid_decode_and_the_next_is_whole(
    tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reply prepared at a pause is thrown away when the user goes on: its prompt must stop evaluating then,
    not when llama_decode returns (seconds next to the partial transcriptions). The cancel lands on the
    worker just before the decode (the worst moment): the decode is aborted, nothing of it stays cached, no
    error is reported, and the same question asked again is evaluated in full and answered whole."""
    model = LlamaLLM(tiny_gguf, n_ctx=4096, threads=1, system_prompt=SYSTEM)
    messages = ask("word " * 800)

    async def run() -> tuple[LLMStats, int, LLMStats, str]:
        await model.start()
        try:
            shift = model._shift_cache
            victim: list[LlamaStream] = []

            def cancel_then_shift(msgs: Any) -> None:
                victim[0].cancel()  # from the worker thread, as the loop's cancel may land at any moment
                shift(msgs)

            monkeypatch.setattr(model, "_shift_cache", cancel_then_shift)
            stream = model.chat(messages, max_tokens=16)
            victim.append(stream)
            assert await stream.text() == ""
            cached_after_abort = int(model._llm.n_tokens)
            monkeypatch.setattr(model, "_shift_cache", shift)
            again = model.chat(messages, max_tokens=128)
            return stream.stats, cached_after_abort, again.stats, await again.text()
        finally:
            await model.close()

    stats, cached, again_stats, text = asyncio.run(asyncio.wait_for(run(), 60))
    assert stats.cancelled and stats.error is None  # a cancellation, not a failure
    assert model.abort.fired == 1
    assert stats.completion_tokens == 0
    assert cached < again_stats.prompt_tokens // 10  # the aborted batch was not kept (the system prompt was)
    assert again_stats.prompt_tokens_evaluated >= again_stats.prompt_tokens - cached - 1
    assert text == gen.DEFAULT_REPLY


def test_a_judge_on_the_reply_llms_worker_shares_its_thread_and_both_still_answer(tiny_gguf: Path) -> None:
    """The end-of-turn judge runs on the reply LLM's worker thread (one OpenMP team in the process: with two,
    libgomp sleeps at every barrier and the reply's prompt took 1.8x as long). Closing the judge leaves the
    reply LLM working."""

    async def run() -> tuple[list[int], str, str, str]:
        reply = LlamaLLM(tiny_gguf, n_ctx=2048, threads=1, system_prompt=SYSTEM)
        await reply.start()
        judge = LlamaLLM(tiny_gguf, n_ctx=512, threads=1, system_prompt=SYSTEM, worker_of=reply)
        await judge.start()
        ids = list(await asyncio.gather(reply._submit(threading.get_native_id), judge._submit(threading.get_native_id)))
        first = await reply.chat(ask("Hello?"), max_tokens=128).text()
        judged = await judge.chat(ask("Hello?"), max_tokens=128).text()
        await judge.close()
        after = await reply.chat(ask("Still there?"), max_tokens=128).text()
        await reply.close()
        return ids, first, judged, after

    ids, first, judged, after = asyncio.run(asyncio.wait_for(run(), 60))
    assert ids[0] == ids[1]
    assert first == judged == after == gen.DEFAULT_REPLY


def test_a_verdict_stops_the_reply_llms_prefill_on_their_shared_worker(tiny_gguf: Path) -> None:
    """At the pause the turn waits for the judge's verdict: a prefill of the user's partial words running on the
    same worker stops at its next chunk instead of finishing first (a 30 ms verdict took 119 ms behind one)."""
    words, other = " ".join(["walking by the river"] * 20), " ".join(["running in the park"] * 20)

    async def run() -> tuple[int, int, float | None]:
        reply = LlamaLLM(tiny_gguf, n_ctx=2048, threads=1, system_prompt=SYSTEM)
        await reply.start()
        judge = LlamaLLM(tiny_gguf, n_ctx=512, threads=1, system_prompt=SYSTEM, worker_of=reply)
        await judge.start()
        try:
            alone = reply.prefill(ask(words))
            assert alone is not None
            whole = await alone
            interrupted = reply.prefill(ask(other))  # replaces the words in the cache
            verdict = judge.end_of_turn(ask("Is it done?"))
            assert interrupted is not None and verdict is not None
            got = await interrupted, await verdict
            paused = reply.prefill(ask(words))  # the user pauses: the prefill stops (pipeline.prefill.hold)
            judge.stop_prefill()  # either model on the worker stops both
            assert paused is not None
            return whole, max(got[0], await paused), got[1]
        finally:
            await judge.close()
            await reply.close()

    whole, interrupted, p = asyncio.run(asyncio.wait_for(run(), 60))
    assert whole > 100  # on its own the prefill evaluates every word
    assert interrupted <= PREFILL_CHUNK  # at most the chunk that was running when the judge was asked
    assert p is not None and 0.0 <= p <= 1.0


def test_a_verdict_asked_during_a_reply_comes_between_its_tokens_not_after_it(tiny_gguf: Path) -> None:
    """The judge is asked once the reply has started (pipeline.speculation): its verdict runs on the shared worker
    after the reply's first clause, between two tokens, while Piper speaks that clause; not after the whole
    reply. Here nobody reads the reply, so it stops at its bounded queue: a verdict queued behind it would never
    come."""

    async def run() -> tuple[float | None, bool, list[str], str]:
        reply = LlamaLLM(tiny_gguf, n_ctx=2048, threads=1, system_prompt=SYSTEM)
        await reply.start()
        judge = LlamaLLM(tiny_gguf, n_ctx=512, threads=1, system_prompt=SYSTEM, worker_of=reply)
        await judge.start()
        try:
            stream = reply.chat(ask("How is the weather?"), max_tokens=128)
            asked = judge.end_of_turn(ask("How is the weather?"))
            assert asked is not None
            p = await asyncio.wait_for(asked, 20)
            still_going = stream.stats.finished_at is None
            deltas = [d async for d in stream]
            after = await judge.end_of_turn(ask("And tomorrow?")) if still_going else None  # no reply: at once
            return p, still_going, deltas, "" if after is None else "asked"
        finally:
            await judge.close()
            await reply.close()

    p, still_going, deltas, after = asyncio.run(asyncio.wait_for(run(), 60))
    assert p is not None and 0.0 <= p <= 1.0
    assert still_going  # the verdict came while the reply waited for its reader
    assert "".join(deltas) == gen.DEFAULT_REPLY  # and the reply lost nothing
    assert after == "asked"  # with no reply under way, a verdict is simply run


def test_a_verdict_beside_a_reply_runs_right_after_a_standalone_opener_on_the_cores_piper_leaves_free(
    tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reply's first clause may be its first word ("Sure", voicecli.openers), spoken before the comma after it:
    the verdict waiting in the lane then runs right after that token, not one token (~40 ms with the 0.5B model)
    later. That clause is spoken from memory (engines.tts), so the verdict gets the reply's cores (a judge of its
    own on one thread: SmolLM2's 7 tokens after a misheard word took 52 ms on one, ~30 on two). A reply opening on
    an ordinary word still waits for its first clause's punctuation, and its verdict stays on one thread beside
    Piper synthesising that clause."""
    plain = "The sky, as far as I know, is blue today."
    other = gen.generate(tmp_path / "other", reply=plain)
    monkeypatch.setattr(llm_mod, "current_plan", lambda *_: ThreadPlan(batch=2, decode=1, cores=2, busy=0))

    async def before_verdict(path: Path) -> tuple[int, int]:
        """(reply tokens out, threads the verdict may use) when the verdict runs."""
        reply = LlamaLLM(path, n_ctx=2048, threads=1, system_prompt=SYSTEM)
        await reply.start()
        judge = LlamaLLM(path, n_ctx=512, threads=1, batch_threads=1, system_prompt=SYSTEM, worker_of=reply)
        await judge.start()
        seen: list[tuple[int, int]] = []
        score = judge._end_of_turn
        try:
            stream = reply.chat(ask("How is the weather?"), max_tokens=128)

            def counted(messages: Any) -> float | None:  # on the worker, between two of the reply's tokens
                seen.append((stream.stats.completion_tokens, judge._lane.threads))
                return score(messages)

            judge._end_of_turn = counted  # type: ignore[method-assign]
            asked = judge.end_of_turn(ask("How is the weather?"))
            assert asked is not None
            assert await asyncio.wait_for(asked, 20) is not None
            assert "".join([d async for d in stream]) in (gen.DEFAULT_REPLY, plain)  # and the reply lost nothing
            return seen[0]
        finally:
            await judge.close()
            await reply.close()

    assert asyncio.run(asyncio.wait_for(before_verdict(tiny_gguf), 60)) == (1, 2)  # "Sure": both cores
    assert asyncio.run(asyncio.wait_for(before_verdict(other), 60)) == (3, 1)  # "The", " sky", ",": one, beside Piper


def test_count_tokens_matches_what_llama_evaluates(llm: LlamaLLM) -> None:
    messages = ask("Count me, please.")
    stream_stats = asyncio.run(asyncio.wait_for(collect(llm, messages), 30))[1]
    assert llm.count_tokens(messages) == stream_stats.prompt_tokens
    longer = [*messages, ChatMessage("assistant", "Sure."), ChatMessage("user", "More words here.")]
    assert llm.count_tokens(longer) > llm.count_tokens(messages)


def test_missing_model_names_the_pull_command(tmp_path: Path) -> None:
    model = LlamaLLM(tmp_path / "qwen.gguf", pull_name="qwen2.5-0.5b-instruct-q4_k_m")
    with pytest.raises(ModelError) as err:
        asyncio.run(model.start())
    assert "voicecli models pull qwen2.5-0.5b-instruct-q4_k_m" in err.value.hint
    assert str(tmp_path / "qwen.gguf") in err.value.message


@pytest.mark.parametrize("keep", [0.5, 0.99, 0.001])
def test_truncated_gguf_is_a_model_error_naming_the_file(tiny_gguf: Path, tmp_path: Path, keep: float) -> None:
    broken = tmp_path / "broken.gguf"
    data = tiny_gguf.read_bytes()
    broken.write_bytes(data[: max(8, int(len(data) * keep))])
    with pytest.raises(ModelError) as err:
        asyncio.run(LlamaLLM(broken).start())
    assert str(broken) in err.value.message
    assert err.value.hint


def test_not_a_gguf_is_a_model_error_naming_the_file(tmp_path: Path) -> None:
    bogus = tmp_path / "model.gguf"
    bogus.write_bytes(b"<html>404 Not Found</html>" * 100)
    with pytest.raises(ModelError) as err:
        asyncio.run(LlamaLLM(bogus).start())
    assert str(bogus) in err.value.message and "not a GGUF" in err.value.message


def test_corrupt_header_is_a_model_error_naming_the_file(tiny_gguf: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad-version.gguf"
    data = bytearray(tiny_gguf.read_bytes())
    data[4:8] = (99).to_bytes(4, "little")  # GGUF version field
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelError) as err:
        asyncio.run(LlamaLLM(bad).start())
    assert str(bad) in err.value.message and "corrupt" in err.value.message


def test_generated_model_is_usable_from_a_copy(tiny_gguf: Path, tmp_path: Path) -> None:
    """The generator writes a self-contained file (nothing else in the directory is needed)."""
    copy = tmp_path / "elsewhere.gguf"
    shutil.copy(tiny_gguf, copy)

    async def run() -> str:
        model = LlamaLLM(copy)
        await model.start()
        try:
            return await model.chat(ask("hi"), max_tokens=128).text()
        finally:
            await model.close()

    assert asyncio.run(asyncio.wait_for(run(), 30)) == gen.DEFAULT_REPLY


def test_any_reply_with_repeats_and_newlines_can_be_scripted(tmp_path: Path) -> None:
    reply = "No, no, no. Yes, yes!\nWell... it is what it is; it is 42, and 42 it is."
    path = gen.generate(tmp_path, reply=reply)

    async def run() -> str:
        model = LlamaLLM(path, threads=1)
        await model.start()
        try:
            return await model.chat(ask("anything"), max_tokens=128).text()
        finally:
            await model.close()

    assert asyncio.run(asyncio.wait_for(run(), 30)) == reply


def test_on_a_cpu_where_llama_cpp_runs_amx_the_model_loads_without_weight_repacking(
    tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The AMX path segfaults on Q4_1/Q4_K models (Intel Xeon hosts); a build that has it gets no extra buffers."""
    import llama_cpp._internals as internals

    from voicecli.engines import llm as llm_mod

    lib = internals.llama_cpp
    load = lib.llama_model_load_from_file
    default_params = lib.llama_model_default_params
    seen: list[bool] = []

    def spy_load(path: bytes, params: object) -> object:
        seen.append(bool(params.use_extra_bufts))  # type: ignore[attr-defined]
        return load(path, params)

    monkeypatch.setattr(lib, "llama_model_load_from_file", spy_load)
    monkeypatch.setattr(llm_mod, "amx_enabled", lambda: True)

    async def run() -> str:
        model = LlamaLLM(tiny_gguf, threads=1)
        await model.start()
        try:
            assert model.extra_buffers is False
            return await model.chat(ask("Hello?"), max_tokens=128).text()
        finally:
            await model.close()

    assert asyncio.run(asyncio.wait_for(run(), 60)) == gen.DEFAULT_REPLY
    assert seen == [False]  # the model was created with no repacking (AMX) buffers
    assert lib.llama_model_default_params is default_params and default_params().use_extra_bufts  # restored


def test_a_llama_cpp_that_crashes_on_this_cpu_is_an_error_naming_the_way_out(
    tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    from voicecli.engines import llm_probe

    monkeypatch.setenv("VOICECLI_DATA_DIR", str(tmp_path))
    crash = "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"  # what the AMX path does on its first decode
    monkeypatch.setattr(llm_probe, "_probe_command", lambda m, t: [sys.executable, "-c", crash])
    with pytest.raises(EngineError) as err:
        llm_probe.check(tiny_gguf)
    assert "SIGSEGV" in err.value.message and "AMX" in err.value.message
    assert "scripts/setup.sh" in err.value.hint
    # a model that runs is checked once per build and CPU, then remembered
    monkeypatch.undo()
    monkeypatch.setenv("VOICECLI_DATA_DIR", str(tmp_path))
    llm_probe.check(tiny_gguf)
    monkeypatch.setattr(llm_probe.subprocess, "run", lambda *a, **k: pytest.fail("checked twice"))
    llm_probe.check(tiny_gguf)


def test_prefill_while_speaking_leaves_only_the_tail_to_evaluate(tiny_gguf: Path) -> None:
    """The user's words so far are prefilled after a first exchange (pipeline.prefill): the question's request then
    evaluates only its last word and the template's closing tokens, and the reply is the one it would have been."""
    question = "What should I wear for a long walk by the river this evening?"
    partial = "What should I wear for a long walk by the"  # whisper's stable words while the user still speaks

    async def run(prefill: bool) -> tuple[LLMStats, str, int]:
        model = LlamaLLM(tiny_gguf, n_ctx=2048, threads=1, system_prompt=SYSTEM)
        await model.start()
        try:
            first = ask("What is the weather like today?")
            reply = await model.chat(first, max_tokens=128).text()
            history = [*first, ChatMessage("assistant", reply)]
            done = 0
            if prefill:
                job = model.prefill([*history, ChatMessage("user", partial)])
                assert job is not None
                done = await job
            s = model.chat([*history, ChatMessage("user", question)], max_tokens=128)
            return s.stats, await s.text(), done
        finally:
            await model.close()

    cold, cold_reply, _ = asyncio.run(asyncio.wait_for(run(prefill=False), 60))
    warm, warm_reply, prefilled = asyncio.run(asyncio.wait_for(run(prefill=True), 60))
    assert warm_reply == cold_reply  # the cache holds exactly what the request would have evaluated
    assert prefilled >= 8  # the partial question (its last word left to the request) and its opening
    assert warm.prompt_tokens == cold.prompt_tokens
    assert warm.prompt_tokens_evaluated <= cold.prompt_tokens_evaluated - prefilled + 1
    assert warm.prompt_tokens_evaluated < cold.prompt_tokens_evaluated / 2, (warm, cold)


def test_prefill_gives_way_to_a_reply_and_never_runs_during_one(llm: LlamaLLM) -> None:
    async def run() -> tuple[object, str]:
        stream = llm.chat(ask("How is the weather?"), max_tokens=128)
        during = llm.prefill(ask("What about tomor"))  # a reply is being generated: nothing
        return during, await stream.text()

    during, reply = asyncio.run(asyncio.wait_for(run(), 30))
    assert during is None and reply == gen.DEFAULT_REPLY


def test_the_conversation_is_prefilled_after_a_turn_so_the_next_pause_evaluates_only_the_question(
    tiny_gguf: Path,
) -> None:
    """After a reply, the history as the next request will send it (the reply as text, not as sampled, and the
    opening of the next user message) is cached: the next question evaluates its own words and the closing only."""
    question = "And tomorrow?"

    async def run(prefill: bool) -> tuple[LLMStats, str, int, int]:
        model = LlamaLLM(tiny_gguf, n_ctx=2048, threads=1, system_prompt=SYSTEM)
        await model.start()
        try:
            first = ask("What is the weather like today?")
            reply = await model.chat(first, max_tokens=128).text()
            history = [*first, ChatMessage("assistant", reply)]
            done = 0
            if prefill:
                job = model.prefill_next(history)
                assert job is not None
                done = await job
            s = model.chat([*history, ChatMessage("user", question)], max_tokens=128)
            text = await s.text()
            alone = model.count_tokens([ChatMessage("system", SYSTEM), ChatMessage("user", question)])
            opening = model.count_tokens([ChatMessage("system", SYSTEM)])
            return s.stats, text, done, alone - opening
        finally:
            await model.close()

    cold, cold_reply, _, _ = asyncio.run(asyncio.wait_for(run(prefill=False), 60))
    warm, warm_reply, prefilled, question_tokens = asyncio.run(asyncio.wait_for(run(prefill=True), 60))
    assert warm_reply == cold_reply  # the cache holds exactly what the request would have evaluated
    assert prefilled > 0
    # "And tomorrow?" with its opening and closing: all that is left; before, the reply's tail was evaluated again
    assert warm.prompt_tokens_evaluated <= question_tokens + 6 < cold.prompt_tokens_evaluated, (
        warm.prompt_tokens_evaluated,
        cold.prompt_tokens_evaluated,
    )
