"""Reply sense of a real small model over long conversations, text only (issue 18).

Runs the real SmolLM2-135M-Instruct through voicecli's own LlamaLLM and History (the prompt is built exactly
as in the product: History.add_user, History.add_assistant(heard, interrupted=True) for a reply cut short by
a barge-in), with no audio. Each conversation is 22 questions and talk-overs; some replies are cut after a
few words, as a barge-in would, and the talk-over that cut them comes next.

Per run it counts (pipeline.reply_copy):
  copies    replies whose first 8 words have Jaccard >= 0.75 with an earlier reply to another question
            (or open with the same 5 words);
  no_word   replies sharing no content word with a question that has 2 or more;
  answered  non-empty replies;
  regen     replies regenerated (with --regen: the detector fired while the reply streamed);
  marker_leaks  replies in which the model wrote an "interrupted" marker itself.

A condition is a history format (how interrupted replies and past turns are shown), a system prompt, and
whether to regenerate once when the detector fires. Runs: seeds 0..2 on the base order, then shuffles.

    .venv/bin/python scripts/reply_sense.py --conditions marker,ellipsis --runs 5 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from voicecli.config import LlmConfig
from voicecli.engines.base import ChatMessage, Sampling
from voicecli.engines.llm import LlamaLLM
from voicecli.pipeline.chunker import ClauseChunker
from voicecli.pipeline.history import INTERRUPTED_SUFFIX, History
from voicecli.pipeline.reply_copy import (
    Exchange,
    Verdict,
    check_opening,
    copies,
    exchanges,
    shares_content_word,
    uncopyable,
    words,
)
from voicecli.testmodels import realweights

MODEL = "smollm2-135m-instruct-q4_1"
MAX_REPLY_WORDS = 70  # TalkConfig.max_reply_words: the reply ends with the sentence that reaches it

# (what the user says, words of the reply heard before a barge-in cuts it; None = heard whole).
# A cut question is followed by the talk-over that cut it; the pair is one block when shuffling.
BLOCKS: list[list[tuple[str, int | None]]] = [
    [("Hello there.", None)],
    [("Explain in one sentence how a rainbow forms", None)],
    [("Why is the sky blue?", 6), ("Wait, stop", None)],
    [("How do spiders make silk?", None)],
    [("What is a black hole?", 5), ("Hold on, that's enough", None)],
    [("What is the tallest mountain in the world?", None)],
    [("How does a refrigerator keep food cold?", None)],
    [("Why do cats purr?", 4), ("Wait, stop", None)],
    [("What causes thunder?", None)],
    [("Hello there.", None)],
    [("How do bees make honey?", None)],
    [("Why do leaves change colour in autumn?", 7), ("Hold on, that's enough", None)],
    [("What is photosynthesis?", None)],
    [("How far away is the moon?", None)],
    [("Why is the ocean salty?", 5), ("Wait, stop", None)],
    [("What do volcanoes do?", None)],
    [("How do airplanes stay in the air?", None)],
]

PROMPTS = {
    "default": LlmConfig().system_prompt,
    "latest": (
        "You are a voice assistant. Answer only the user's latest message, in one or two short spoken "
        "sentences. Do not repeat your earlier answers. No markdown, no lists, no emoji."
    ),
    "short": "You are a helpful voice assistant. Reply to the last message in one or two short sentences.",
}
ELLIPSIS = "..."
NOTE = "(I interrupted you.) "


@dataclass(frozen=True)
class Condition:
    name: str
    fmt: str = "marker"  # marker | ellipsis | note | plain: how an interrupted reply is shown
    keep: int = 0  # past exchanges shown (0 = all the History budget holds)
    prompt: str = "default"
    regen: bool = False
    regen_keep: int = 2  # exchanges the regeneration's uncopyable history keeps
    regen_temperature: float = 0.8  # the regeneration's sampling (the rest as the product's)
    regen_repeat_penalty: float = 1.2


CONDITIONS = {
    c.name: c
    for c in [
        Condition("marker"),  # what History does now
        Condition("ellipsis", fmt="ellipsis"),
        Condition("note", fmt="note"),
        Condition("plain", fmt="plain"),
        Condition("marker-keep3", keep=3),
        Condition("marker-keep2", keep=2),
        Condition("ellipsis-keep2", fmt="ellipsis", keep=2),
        Condition("note-keep2", fmt="note", keep=2),
        Condition("marker-keep0", keep=-1),  # no past turns at all
        Condition("marker-latest", prompt="latest"),
        Condition("marker-short", prompt="short"),
        Condition("keep2-latest", keep=2, prompt="latest"),
        Condition("marker-regen", regen=True),
        Condition("keep2-regen", keep=2, regen=True),
        Condition("keep2-latest-regen", keep=2, prompt="latest", regen=True),
        Condition("marker-regen-keep0", regen=True, regen_keep=0),
    ]
}


def conversation(run: int) -> list[tuple[str, int | None]]:
    """Runs 0-2: the base order; later runs: the blocks shuffled (seeded by the run)."""
    blocks = list(BLOCKS)
    if run >= 3:
        random.Random(run).shuffle(blocks)
    return [item for block in blocks for item in block]


def view(messages: Sequence[ChatMessage], cond: Condition) -> list[ChatMessage]:
    """The prompt a condition shows the model, from History.messages() (which marks cut replies with
    INTERRUPTED_SUFFIX)."""
    out: list[ChatMessage] = []
    note = False
    for m in messages:
        text = m.content
        if m.role == "assistant" and text.endswith(INTERRUPTED_SUFFIX):
            heard = text[: -len(INTERRUPTED_SUFFIX)].rstrip()
            if cond.fmt == "ellipsis":
                text = heard + ELLIPSIS
            elif cond.fmt in ("note", "plain"):
                text = heard
                note = cond.fmt == "note"
        elif m.role == "user" and note:
            text, note = NOTE + text, False
        out.append(ChatMessage(m.role, text))
    if cond.keep:
        head, turns, last = out[:1], out[1:-1], out[-1:]
        keep = max(0, cond.keep) * 2
        out = head + (turns[len(turns) - keep :] if keep else []) + last
    return out


@dataclass
class Reply:
    text: str
    attempt: str = ""  # the thrown-away copy, when regenerated
    detected_at: int = 0  # words streamed when the detector fired
    first_clause_words: int = 0  # words of the attempt's first clause (0 = it had not ended)


async def generate(llm: LlamaLLM, messages: list[ChatMessage], question: str, detect: bool) -> Reply:
    """Stream a reply as the product would (ended by the sentence that reaches MAX_REPLY_WORDS); with
    `detect`, stop as soon as the copy detector says COPY (checked per delta, forced at the first clause)."""
    stream = llm.chat(messages, max_tokens=LlmConfig().max_tokens)
    earlier = exchanges(messages)
    chunker = ClauseChunker()
    text, spoken_words, first_clause = "", 0, 0
    decided = not detect
    async for delta in stream:
        text += delta
        clauses = chunker.push(delta)
        if not decided:
            check = check_opening(text, question, earlier)
            if check.verdict is Verdict.UNDECIDED and clauses and not first_clause:
                check = check_opening(clauses[0], question, earlier, clause_end=True)
            if clauses and not first_clause:
                first_clause = len(words(clauses[0]))
            if check.verdict is Verdict.COPY:
                stream.cancel()
                return Reply(text="", attempt=text, detected_at=check.words, first_clause_words=first_clause)
            decided = check.verdict is Verdict.FRESH
        for clause in clauses:
            spoken_words += len(clause.split())
            if spoken_words >= MAX_REPLY_WORDS and clause.rstrip().endswith((".", "!", "?")):
                stream.cancel()
                return Reply(text=text.strip())
    if not decided and check_opening(text, question, earlier, final=True).copy:
        return Reply(text="", attempt=text, detected_at=len(words(text)), first_clause_words=first_clause)
    return Reply(text=text.strip())


@dataclass
class Turn:
    user: str
    reply: str
    cut: int | None
    copies: int | None  # index of the copied earlier turn
    no_word: bool
    regenerated: bool
    attempt: str = ""
    detected_at: int = 0
    first_clause_words: int = 0


@dataclass
class Run:
    condition: str
    run: int
    seed: int
    turns: list[Turn] = field(default_factory=list)
    seconds: float = 0.0

    def counts(self) -> dict[str, int]:
        return {
            "copies": sum(t.copies is not None for t in self.turns),
            "no_word": sum(t.no_word for t in self.turns),
            "answered": sum(bool(words(t.reply)) for t in self.turns),
            "regen": sum(t.regenerated for t in self.turns),
            # the model wrote the history's interrupted-reply marker into its own reply
            "marker_leaks": sum("interrupted" in t.reply.lower() for t in self.turns),
            "turns": len(self.turns),
        }


async def run_conversation(path: Path, cond: Condition, run: int) -> Run:
    cfg = LlmConfig()
    sampling = Sampling(cfg.temperature, cfg.top_p, cfg.min_p, cfg.repeat_penalty)
    system = PROMPTS[cond.prompt]
    llm = LlamaLLM(path, n_ctx=cfg.n_ctx, threads=1, batch_threads=1, seed=run, sampling=sampling, system_prompt=system)
    regen_llm: LlamaLLM | None = None
    if cond.regen:
        regen_sampling = replace(sampling, temperature=cond.regen_temperature, repeat_penalty=cond.regen_repeat_penalty)
        regen_llm = LlamaLLM(
            path, n_ctx=cfg.n_ctx, threads=1, batch_threads=1, seed=run + 1000, sampling=regen_sampling
        )
    await llm.start()
    if regen_llm is not None:
        await regen_llm.start()
    history = History(system, cfg.history_tokens, llm.count_tokens)
    out = Run(cond.name, run, run)
    said: list[Exchange] = []  # every earlier reply as generated, and as the history keeps it when cut
    t0 = time.monotonic()
    try:
        for user, cut in conversation(run):
            history.add_user(user)
            prompt = view(history.messages(), cond)
            reply = await generate(llm, prompt, user, detect=cond.regen)
            regenerated = False
            if cond.regen and reply.attempt:
                assert regen_llm is not None
                fresh = uncopyable(prompt, reply.attempt, keep_exchanges=cond.regen_keep)
                again = await generate(regen_llm, fresh, user, detect=False)
                reply = replace(again, attempt=reply.attempt, detected_at=reply.detected_at,
                                first_clause_words=reply.first_clause_words)  # fmt: skip
                regenerated = True
            text = reply.text
            heard = " ".join(text.split()[:cut]) if cut is not None else text
            turn = Turn(
                user=user,
                reply=text,
                cut=cut,
                copies=copies(text, user, said),
                no_word=shares_content_word(user, text) is False,
                regenerated=regenerated,
                attempt=reply.attempt,
                detected_at=reply.detected_at,
                first_clause_words=reply.first_clause_words,
            )
            out.turns.append(turn)
            said.append(Exchange(user, text))
            if cut is not None:
                said.append(Exchange(user, heard))
                history.add_assistant(heard, interrupted=True)
            else:
                history.add_assistant(text)
    finally:
        out.seconds = time.monotonic() - t0
        await llm.close()
        if regen_llm is not None:
            await regen_llm.close()
    return out


def cpu_model() -> str:
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("Model name")), "unknown")


def table(runs: list[Run]) -> str:
    by: dict[str, list[Run]] = {}
    for r in runs:
        by.setdefault(r.condition, []).append(r)
    lines = [
        "| condition | copies per run | mean | no content word per run | mean | answered per run | mean "
        "| regenerated mean | marker leaks mean |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, rs in by.items():
        cs = [r.counts() for r in rs]

        def col(key: str, cs: list[dict[str, int]] = cs) -> str:
            vals = [c[key] for c in cs]
            return f"{' / '.join(map(str, vals))} | {statistics.mean(vals):.1f}"

        regen = statistics.mean(c["regen"] for c in cs)
        leaks = statistics.mean(c["marker_leaks"] for c in cs)
        lines.append(f"| {name} | {col('copies')} | {col('no_word')} | {col('answered')} | {regen:.1f} | {leaks:.1f} |")
    return "\n".join(lines)


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--conditions", default="marker", help=f"comma-separated, of: {', '.join(CONDITIONS)}")
    ap.add_argument("--runs", type=int, default=5, help="runs 0-2 are the base order (seeds 0-2), later shuffles")
    ap.add_argument("--json", type=Path, help="append every run (turns and all) to this JSON-lines file")
    ap.add_argument("--verbose", action="store_true", help="print every reply")
    args = ap.parse_args()
    path = realweights.fetch(MODEL)
    print(f"model {MODEL}; CPU {cpu_model()}; 1 thread", file=sys.stderr)
    runs: list[Run] = []
    for name in args.conditions.split(","):
        cond = CONDITIONS[name]
        for i in range(args.runs):
            r = await run_conversation(path, cond, i)
            runs.append(r)
            print(f"{name} run {i}: {r.counts()} in {r.seconds:.0f} s", file=sys.stderr)
            if args.verbose:
                for t in r.turns:
                    flag = ("COPY " if t.copies is not None else "") + ("OFF " if t.no_word else "")
                    print(f"  {flag}{t.user!r} -> {t.reply[:100]!r}", file=sys.stderr)
            if args.json:
                with args.json.open("a") as f:
                    f.write(json.dumps({**asdict(r), "counts": r.counts()}) + "\n")
    print(table(runs))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
