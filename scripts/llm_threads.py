"""LLM first token and decode rate, quiet and next to busy processes, with the thread policy and without it.

    .venv/bin/python scripts/llm_threads.py MODEL.gguf [--busy 0 1] [--requests 8] [--tokens 40]

"blind" is the policy that ignores the run queue (what voicecli did before engines.threads: prefill and the
first 16 tokens on 2 threads whatever else runs); "policy" is engines.threads as shipped. Each busy process
runs in a session of its own, as a program in another terminal would.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

from voicecli.bench.load import background_load
from voicecli.bench.report import machine
from voicecli.engines import threads
from voicecli.engines.base import ChatMessage
from voicecli.engines.llm import LlamaLLM

QUESTIONS = [
    "Why is the sky blue?",
    "How do bees make honey?",
    "What is the tallest mountain on Earth?",
    "Explain in one sentence how a rainbow forms.",
    "What should I cook for dinner tonight?",
    "How far away is the moon?",
    "Why do cats purr?",
    "What is a black hole?",
]


async def measure(model: Path, requests: int, tokens: int) -> dict[str, Any]:
    llm = LlamaLLM(model, system_prompt="You are a helpful voice assistant. Answer in one short sentence.")
    await llm.start()
    ttft, rate, plans = [], [], []
    try:
        for i in range(requests):
            msgs = [
                ChatMessage("system", "You are a helpful voice assistant. Answer in one short sentence."),
                ChatMessage("user", QUESTIONS[i % len(QUESTIONS)]),
            ]
            t0 = time.monotonic()
            stream = llm.chat(msgs, max_tokens=tokens)
            async for _ in stream:
                pass
            st = stream.stats
            if st.first_token_at is not None:
                ttft.append(st.first_token_at - t0)
                if st.finished_at and st.completion_tokens > 1:
                    rate.append((st.completion_tokens - 1) / max(1e-6, st.finished_at - st.first_token_at))
            plans.append((st.threads_batch, st.threads_decode, st.cpu_busy, st.stalls))
    finally:
        await llm.close()
    return {
        "ttft_p50_s": statistics.median(ttft),
        "ttft_max_s": max(ttft),
        "tokens_per_s_p50": statistics.median(rate) if rate else None,
        "tokens_per_s_min": min(rate) if rate else None,
        "plans": plans,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", type=Path)
    ap.add_argument("--busy", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=40)
    args = ap.parse_args()
    real = threads.runnable_elsewhere
    out: dict[str, Any] = {"machine": machine()["cpu"], "cores": threads.usable_cores(), "runs": []}
    for busy in args.busy:
        for policy in ("blind", "policy"):
            threads.runnable_elsewhere = (lambda *a, **k: 0) if policy == "blind" else real  # type: ignore[assignment]
            with background_load(busy):
                time.sleep(0.5)
                r = asyncio.run(measure(args.model, args.requests, args.tokens))
            r.update(busy=busy, policy=policy)
            out["runs"].append(r)
            print(
                f"busy={busy} {policy:6s} first token p50 {r['ttft_p50_s'] * 1000:7.0f} ms "
                f"max {r['ttft_max_s'] * 1000:7.0f} ms, decode p50 {r['tokens_per_s_p50'] or 0:6.1f} tok/s "
                f"min {r['tokens_per_s_min'] or 0:6.1f}; plans (batch, decode, busy, stalls) {r['plans'][:3]}",
                flush=True,
            )
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
