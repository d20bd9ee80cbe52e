"""The semantic end of turn with a real model: real SmolLM2-135M-Instruct judges whether the user is done from
their words (the probability of its <|im_end|> right after them), and passes the start-up check a generated
model fails (so a test model never ends a turn early by chance)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from voicecli.config import LlmConfig
from voicecli.engines.base import ChatMessage
from voicecli.engines.llm import LlamaLLM
from voicecli.pipeline.turn_end import COMPLETE, Judge, Thresholds, by_probability, by_words

SYSTEM = LlmConfig().system_prompt
SMOLLM2 = "smollm2-135m-instruct-q4_1"
WHOLE = ["What is the weather like today?", "Why is the sky blue?"]
# Scored like whole questions (0.75, 0.77), but either may be the first half of a longer one: left to the hangover.
COMMANDS = ["Give me a short recipe for pancakes.", "Tell me a joke."]
OPEN = ["Can you tell me?", "What is the?"]  # whisper punctuates a cut-off phrase too


def test_real_smollm2_hears_whole_questions_end_and_open_phrases_go_on(real_models: dict[str, Path]) -> None:
    async def main() -> tuple[bool, dict[str, float | None]]:
        llm = LlamaLLM(real_models[SMOLLM2], n_ctx=512, threads=1, batch_threads=1, system_prompt=SYSTEM)
        await llm.start()
        try:
            judge = Judge(llm.end_of_turn, SYSTEM, shares_prompt=False, name="smollm2", th=Thresholds())
            trusted = await judge.check()
            scores: dict[str, float | None] = {}
            for text in WHOLE + COMMANDS + OPEN:
                asked = judge.ask(text, None)
                scores[text] = None if asked is None else await asked
            return trusted, scores
        finally:
            await llm.close()

    trusted, scores = asyncio.run(main())
    assert trusted
    th = Thresholds()
    verdicts = {text: (by_words(text) or by_probability(p, text, th)).kind for text, p in scores.items()}
    assert all(verdicts[t] == COMPLETE for t in WHOLE), scores
    assert all(verdicts[t] != COMPLETE for t in COMMANDS), scores
    # never ended early: "Can you tell me?" scores ~0.01 (held, or left to the hangover); "What is the?" scores 0.31
    # like a whole question, and the words rule holds it (no sentence ends on "the")
    assert all(verdicts[t] != COMPLETE for t in OPEN), [scores[t] for t in OPEN]
    assert (scores["Can you tell me?"] or 0.0) < 0.05


def test_the_request_after_a_verdict_evaluates_only_the_closing_tokens(real_models: dict[str, Path]) -> None:
    """The reply LLM as its own judge: the verdict's prefill is the reply's, reused from the KV cache."""

    async def main() -> tuple[int, int]:
        llm = LlamaLLM(real_models[SMOLLM2], n_ctx=1024, threads=1, batch_threads=1, system_prompt=SYSTEM)
        await llm.start()
        try:
            prompt = [ChatMessage("system", SYSTEM), ChatMessage("user", "How tall is Mount Everest?")]
            asked = llm.end_of_turn(prompt)
            assert asked is not None
            await asked
            stream = llm.chat(prompt, max_tokens=4)
            async for _ in stream:
                pass
            return stream.stats.prompt_tokens_evaluated, llm.count_tokens(prompt)
        finally:
            await llm.close()

    evaluated, total = asyncio.run(main())
    assert evaluated <= 6 < total  # "<|im_end|>\n<|im_start|>assistant\n" and no more


def test_a_judge_prefilled_while_the_user_speaks_evaluates_only_the_tail_and_judges_the_same(
    real_models: dict[str, Path],
) -> None:
    """A judge of its own gets the stable words of the partial transcripts (Judge.prefill): at the pause only the
    last words and the closing tokens are left to evaluate, and the probability is the one it gives cold."""
    partial, final = "What should I cook for dinner", "What should I cook for dinner tonight?"

    async def main() -> tuple[float | None, float | None, int, int]:
        cold_llm = LlamaLLM(real_models[SMOLLM2], n_ctx=512, threads=1, batch_threads=1, system_prompt=SYSTEM)
        warm_llm = LlamaLLM(real_models[SMOLLM2], n_ctx=512, threads=1, batch_threads=1, system_prompt=SYSTEM)
        await cold_llm.start()
        await warm_llm.start()
        try:
            cold = Judge(cold_llm.end_of_turn, SYSTEM, shares_prompt=False, name="cold", th=Thresholds())
            warm = Judge(warm_llm.end_of_turn, SYSTEM, shares_prompt=False, name="warm", th=Thresholds(),
                         prefill=warm_llm.prefill)  # fmt: skip
            cold.usable = warm.usable = await cold.check() and await warm.check()
            assert cold.usable
            before = warm_llm._decoded()
            job = warm.prefill(partial)
            assert job is not None
            prefilled = await job
            asked_cold, asked_warm = cold.ask(final, None), warm.ask(final, None)
            assert asked_cold is not None and asked_warm is not None
            mid = warm_llm._decoded()
            p_warm = await asked_warm
            tail = warm_llm._decoded() - mid
            assert warm_llm._decoded() - before == prefilled + tail
            return await asked_cold, p_warm, prefilled, tail
        finally:
            await cold_llm.close()
            await warm_llm.close()

    p_cold, p_warm, prefilled, tail = asyncio.run(main())
    assert prefilled >= 3  # "What should I cook for" (the rest of the prompt is cached since the start-up check)
    assert tail <= 5, tail  # " dinner tonight?" ... no more than the words after the partial and its last word
    assert p_cold is not None and p_warm is not None
    assert abs(p_cold - p_warm) < 0.02, (p_cold, p_warm)
    # a shared-prompt judge (the reply LLM) is prefilled with the reply's prompt instead: its own prefill never runs
    prefills: list[object] = []
    shared = Judge(lambda m: None, SYSTEM, shares_prompt=True, name="reply", th=Thresholds(),
                   prefill=lambda m: prefills.append(m))  # fmt: skip
    shared.usable = True
    shared.prefill(partial)
    assert prefills == []
    assert shared.prefill(partial) is None
