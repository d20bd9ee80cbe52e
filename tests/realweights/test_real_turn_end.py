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
WHOLE = ["What is the weather like today?", "Give me a short recipe for pancakes.", "Why is the sky blue?"]
OPEN = ["Can you tell me?", "What is the?"]  # whisper punctuates a cut-off phrase too


def test_real_smollm2_hears_whole_questions_end_and_open_phrases_go_on(real_models: dict[str, Path]) -> None:
    async def main() -> tuple[bool, dict[str, float | None]]:
        llm = LlamaLLM(real_models[SMOLLM2], n_ctx=512, threads=1, batch_threads=1, system_prompt=SYSTEM)
        await llm.start()
        try:
            judge = Judge(llm.end_of_turn, SYSTEM, shares_prompt=False, name="smollm2", th=Thresholds())
            trusted = await judge.check()
            scores: dict[str, float | None] = {}
            for text in WHOLE + OPEN:
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
