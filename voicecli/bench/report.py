"""Benchmark statistics, the rich table, the per-turn waterfall and the JSON report."""

from __future__ import annotations

import os
import platform
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table
from rich.text import Text

from voicecli.bench.runner import TurnResult

# metric -> (label, unit): "s" shown in ms, "" as a plain number
METRICS: dict[str, tuple[str, str]] = {
    "ttfa": ("TTFA", "s"),  # true end of speech -> first reply sample at the speaker
    "turn_confirm": ("turn confirmed", "s"),
    "stt": ("STT compute", "s"),
    "stt_window": ("STT window, s", ""),  # the audio window whisper was run over (short-window STT)
    "stt_done": ("STT done", "s"),
    "llm_ttft": ("LLM first token (from request)", "s"),
    "first_clause": ("first clause", "s"),
    "tts_first_audio": ("TTS first audio", "s"),
    "play_start": ("play start", "s"),
    "tokens_per_s": ("LLM tokens/s", ""),
    "prefilled": ("prompt tokens prefilled while speaking", ""),
    "prompt_evaluated": ("prompt tokens evaluated after the pause", ""),
    "tts_rtf": ("TTS real-time factor", ""),
    "max_clause_gap": ("max gap between clauses", "s"),
    "underruns": ("underruns in replies", ""),
    "overruns": ("capture overruns", ""),
    "loop_lag_max": ("worst loop lag", "s"),
    "barge_in_reaction": ("barge-in onset->stop", "s"),
    "vad_end_error": ("VAD end error", "s"),
    # with --echo aec: per turn, what the canceller removed (ERLE), what it left, and the echo path delay
    "echo_erle": ("echo removed (ERLE)", "dB"),
    "echo_residual": ("residual echo", "dBFS"),
    "echo_delay": ("echo path delay", "s"),
}
ECHO_KEYS = ("echo_erle", "echo_residual", "echo_delay")  # rows shown only when the canceller ran
# Stages measured from the true end of speech: the ones where a streaming/sequential ratio means something.
RATIO_KEYS = ("ttfa", "first_clause", "tts_first_audio", "play_start")


def summarise(results: list[TurnResult]) -> dict[str, dict[str, float | int | None]]:
    out: dict[str, dict[str, float | int | None]] = {}
    for key in METRICS:
        values = [r.metrics.get(key) for r in results]
        nums = np.array([v for v in values if v is not None], dtype=np.float64)
        if nums.size == 0:
            out[key] = {"n": 0, "p50": None, "p95": None, "max": None}
        else:
            out[key] = {
                "n": int(nums.size),
                "p50": float(np.percentile(nums, 50)),
                "p95": float(np.percentile(nums, 95)),
                "max": float(nums.max()),
            }
    return out


def barge_ins(results: list[TurnResult]) -> dict[str, int]:
    """How many interrupting clips cut their reply, and how many replies were cut by nobody."""
    return {
        "interrupting_clips": sum(1 for r in results if r.interrupt),
        "detected": sum(1 for r in results if r.interrupt and "barge_in" in r.stamps),
        "self_interruptions": sum(1 for r in results if r.self_interrupted),
    }


def _fmt(value: float | int | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "s":
        return f"{value * 1000:.0f} ms"
    return f"{value:.1f} {unit}" if unit else f"{value:.3g}"


def table(summary: dict[str, Any], sequential: dict[str, Any] | None, title: str) -> Table:
    t = Table(title=title)
    t.add_column("metric")
    t.add_column("n", justify="right")
    for col in ("p50", "p95", "max"):
        t.add_column(col, justify="right")
    if sequential is not None:
        t.add_column("sequential p50", justify="right")
        t.add_column("ratio", justify="right")
    for key, (label, unit) in METRICS.items():
        row = summary[key]
        if key in ECHO_KEYS and not row["n"]:
            continue
        cells = [label, str(row["n"]), *(_fmt(row[c], unit) for c in ("p50", "p95", "max"))]
        if sequential is not None:
            seq = sequential[key]["p50"]
            cells.append(_fmt(seq, unit))
            ratio = seq / row["p50"] if seq and row["p50"] and key in RATIO_KEYS and row["p50"] > 0 else None
            cells.append(f"{ratio:.1f}x" if ratio else "")
        t.add_row(*cells)
    return t


LOAD_KEYS = ("ttfa", "llm_ttft", "tokens_per_s", "stt", "tts_rtf", "max_clause_gap", "underruns", "loop_lag_max")


def load_table(quiet: dict[str, Any], loaded: dict[str, Any], busy: int) -> Table:
    """The same corpus quiet and next to `busy` busy processes, side by side (one run, one machine)."""
    t = Table(title=f"quiet vs next to {busy} busy process(es)")
    t.add_column("metric")
    for col in ("quiet p50", "quiet max", "loaded p50", "loaded max", "loaded/quiet p50"):
        t.add_column(col, justify="right")
    for key in LOAD_KEYS:
        label, unit = METRICS[key]
        q, ld = quiet[key], loaded[key]
        ratio = ld["p50"] / q["p50"] if q["p50"] and ld["p50"] is not None else None
        cells = [_fmt(q["p50"], unit), _fmt(q["max"], unit), _fmt(ld["p50"], unit), _fmt(ld["max"], unit)]
        t.add_row(label, *cells, f"{ratio:.2f}x" if ratio is not None else "")
    return t


def answered(results: list[TurnResult]) -> int:
    """Clips (not interruptions) whose reply started to play."""
    return sum(1 for r in results if not r.interrupt and not r.missed and r.metrics.get("ttfa") is not None)


WATERFALL = [  # (from, to, glyph, style): the stages as they overlap after the end of speech
    ("end", "eou", "░", "dim"),
    ("eou", "stt_done", "▒", "cyan"),
    ("stt_done", "llm_first_token", "▓", "yellow"),
    ("llm_first_token", "tts_first_audio", "█", "magenta"),
    ("tts_first_audio", "play_start", "▌", "green"),
]


def waterfall(results: list[TurnResult], width: int = 60) -> list[Text]:
    """One bar per turn from the true end of speech to the first reply sample; legend on top."""
    spans = [r.metrics.get("ttfa") or 0.0 for r in results]
    scale = max([s for s in spans if s] + [0.001])
    lines = [
        Text.assemble(
            "legend: ",
            ("░ confirm ", "dim"),
            ("▒ stt ", "cyan"),
            ("▓ llm ttft ", "yellow"),
            ("█ clause+tts ", "magenta"),
            ("▌ to speaker", "green"),
            f"   (full width = {scale * 1000:.0f} ms)",
        )
    ]
    for r in results:
        line = Text(f"{r.clip[:18]:<18} ")
        if r.true_end is None:
            lines.append(line.append("(clip not located in the capture)", style="red"))
            continue
        stamps = {"end": r.true_end, **r.stamps}
        pos = 0
        for start, stop, glyph, style in WATERFALL:
            if start not in stamps or stop not in stamps:
                continue
            a = round((stamps[start] - r.true_end) / scale * width)
            b = round((stamps[stop] - r.true_end) / scale * width)
            a, b = max(a, pos), max(b, pos)
            line.append(" " * (a - pos))
            line.append(glyph * (b - a), style=style)
            pos = b
        ttfa = r.metrics.get("ttfa")
        line.append(" " * max(0, width - pos) + (f" {ttfa * 1000:5.0f} ms" if ttfa is not None else "  -"))
        if r.interrupt:
            line.append("  (interrupts)", style="yellow")
        lines.append(line)
    return lines


def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        from voicecli.engines.llm import amx_enabled, system_info

        llama = {"system_info": system_info().strip(), "amx": amx_enabled()}
    except ImportError:
        llama = {}
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "llama_cpp": llama,
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def model_info(paths: dict[str, Path], label: str) -> dict[str, Any]:
    def size(p: Path) -> int:
        if p.is_dir():
            return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        return p.stat().st_size

    return {"set": label, **{k: {"path": str(p), "bytes": size(p)} for k, p in paths.items()}}


def to_json(results: list[TurnResult]) -> list[dict[str, Any]]:
    return [asdict(r) for r in results]


def splits(results: list[TurnResult]) -> dict[str, int]:
    """False end-of-turn splits: clips that became more than one turn, over all clips and the paused ones."""
    fed = [r for r in results if not r.interrupt and not r.missed]
    paused = [r for r in fed if r.paused_ms]
    return {
        "clips": len(fed),
        "split": sum(1 for r in fed if r.turns_started > 1),
        "paused_clips": len(paused),
        "paused_split": sum(1 for r in paused if r.turns_started > 1),
        "longest_pause_ms": max((r.paused_ms for r in paused), default=0),
    }


def end_of_turn(results: list[TurnResult]) -> dict[str, Any]:
    """The semantic end of turn's verdicts at the pauses of the fed clips (pipeline.turn_end): how many of each
    kind, which signal decided, how many came too late to matter, and their cost from the pause (ms)."""
    verdicts = [v for r in results for v in r.verdicts]
    on_time = [v for v in verdicts if not v.get("late")]
    costs = [float(v["cost_ms"]) for v in verdicts if v.get("by") == "llm"]
    return {
        "pauses": len(verdicts),
        "complete": sum(1 for v in on_time if v["verdict"] == "complete"),
        "incomplete_words": sum(1 for v in on_time if v["verdict"] == "incomplete" and v["by"] == "words"),
        "incomplete_llm": sum(1 for v in on_time if v["verdict"] == "incomplete" and v["by"] == "llm"),
        "fallback": sum(1 for v in on_time if v["verdict"] == "fallback"),
        "late": len(verdicts) - len(on_time),
        "llm_cost_p50_ms": float(np.percentile(costs, 50)) if costs else None,
        "llm_cost_max_ms": max(costs) if costs else None,
        "cut_ins": sum(1 for r in results if r.cut_in),
    }


def sense(results: list[TurnResult]) -> dict[str, int]:
    """Whether the replies answer (issue 18): copies of an earlier reply to another question (first 8 words,
    Jaccard >= 0.75), replies sharing no content word with a question that has 2 or more, answers regenerated
    because the first one copied, and clips answered at all."""
    from voicecli.pipeline import reply_copy

    earlier: list[reply_copy.Exchange] = []
    out = {"answered": 0, "copies": 0, "no_content_word": 0, "regenerated": 0}
    for r in results:
        if not r.user_text:
            continue
        if r.reply_text:
            out["answered"] += 1
            out["copies"] += reply_copy.copies(r.reply_text, r.user_text, earlier) is not None
            out["no_content_word"] += reply_copy.shares_content_word(r.user_text, r.reply_text) is False
        out["regenerated"] += r.regenerated
        earlier.append(reply_copy.Exchange(r.user_text, r.reply_text))
    return out


def print_report(
    console: Console,
    results: list[TurnResult],
    summary: dict[str, Any],
    seq_summary: dict[str, Any] | None,
    models: dict[str, Any],
    figures: dict[str, Any] | None = None,
) -> None:
    console.print(
        f"models: {models['set']} — "
        + ", ".join(f"{k} {Path(v['path']).name} ({v['bytes'] / 1e6:.1f} MB)" for k, v in models.items() if k != "set")
    )
    m = machine()
    amx = m["llama_cpp"].get("amx")
    console.print(f"CPU: {m['cpu']} ({m['cores']} cores); llama.cpp AMX path: {'on' if amx else 'off'}")
    console.print(table(summary, seq_summary, f"voicecli bench — {len(results)} turns, streaming"))
    console.print("[dim]times from the true end of speech (located in the captured audio), on the audio clock[/]")
    prepared = sum(1 for r in results if r.timings.get("reply_prepared"))
    wasted = (figures or {}).get("replies_wasted")
    thrown = "" if wasted is None else f"; thrown away (the user went on talking): {wasted}"
    console.print(f"replies prepared during the hangover (LLM and first clause before the turn was confirmed): "
                  f"{prepared} of {len(results)} turns{thrown}")  # fmt: skip
    whole = summarise([r for r in results if not r.interrupt and not r.paused_ms and not r.missed])["ttfa"]
    if whole["n"]:
        console.print(f"TTFA over the {whole['n']} complete questions (no mid-sentence pause, not interrupting): "
                      f"p50 {_fmt(whole['p50'], 's')}, p95 {_fmt(whole['p95'], 's')}")  # fmt: skip
    sp = splits(results)
    if sp["paused_clips"]:
        console.print(f"false end-of-turn splits: {sp['paused_split']} of {sp['paused_clips']} clips with a "
                      f"mid-sentence pause (up to {sp['longest_pause_ms']} ms); {sp['split']} of {sp['clips']} "
                      f"clips in all")  # fmt: skip
    e = end_of_turn(results)
    if e["pauses"]:
        cost = (
            ""
            if e["llm_cost_p50_ms"] is None
            else (
                f"; the LLM's verdict {e['llm_cost_p50_ms']:.0f} ms after the pause at p50 "
                f"(max {e['llm_cost_max_ms']:.0f})"
            )
        )
        console.print(f"end of turn (judge: {(figures or {}).get('judge') or 'none'}): {e['pauses']} pauses judged: "
                      f"{e['complete']} complete (ended at the pause), {e['incomplete_words']} + "
                      f"{e['incomplete_llm']} held open (words rule + LLM), {e['fallback']} left to the hangover, "
                      f"{e['late']} too late{cost}; cut-ins {e['cut_ins']}")  # fmt: skip
    if figures and figures.get("idle_cpu") is not None:
        console.print(f"idle CPU while listening: {figures['idle_cpu'] * 100:.1f}% of a core (this process "
                      f"and its STT worker, {figures.get('echo', '?')} echo mode)")  # fmt: skip
    s = sense(results)
    console.print(f"reply sense: {s['answered']} clips answered; {s['copies']} replies copy an earlier reply to "
                  f"another question; {s['no_content_word']} share no content word with their question; "
                  f"{s['regenerated']} answered afresh after a copy")  # fmt: skip
    if figures and figures.get("device_xruns") is not None:
        x = figures["device_xruns"]
        console.print(f"device xruns (PortAudio status, whole run): {x['output_underflows']} output underflows, "
                      f"{x['input_overflows']} input overflows")  # fmt: skip
    if figures and figures.get("phantom_turns") is not None:
        console.print(f"turns no clip asked for (its own voice): {figures['phantom_turns']}, of which dropped "
                      f"unanswered as the reply's own words: {figures.get('own_voice_dropped', 0)}")  # fmt: skip
    b = barge_ins(results)
    if b["interrupting_clips"] or b["self_interruptions"]:
        console.print(
            f"barge-ins: {b['detected']} of {b['interrupting_clips']} interrupting clips detected; "
            f"self-interruptions: {b['self_interruptions']}"
        )
    for line in waterfall(results):
        console.print(line)
