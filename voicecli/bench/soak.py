"""A long scripted conversation (barge-ins included) to show nothing drifts: memory, latency, lost turns."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from voicecli.bench.procstat import rss_by_process, rss_mb
from voicecli.bench.report import barge_ins
from voicecli.bench.runner import TurnResult, run_corpus
from voicecli.config import Config
from voicecli.pipeline.wiring import Engines


def _p50(values: list[float]) -> float | None:
    return float(np.percentile(values, 50)) if values else None


def window_ttfa(results: list[TurnResult], first: bool, window_s: float) -> float | None:
    if not results:
        return None
    edge = results[0].feed_t + window_s if first else results[-1].feed_t - window_s
    picked = [r for r in results if (r.feed_t <= edge if first else r.feed_t >= edge)]
    return _p50([v for r in picked if (v := r.metrics.get("ttfa")) is not None])


async def soak(cfg: Config, engines: Engines, clips: list[Any], minutes: float, progress: Any = None) -> dict[str, Any]:
    """Converse for `minutes` over the corpus (cycled); returns the soak figures."""
    rss_start, by_process_start = rss_mb(), rss_by_process()
    # Memory after the first pass over the corpus: every path (barge-ins, a whisper re-run on the 30 s window,
    # Piper, the echo canceller) has allocated once by then. A 4-minute soak grew ~100 MB before it and ~0 after.
    warm: list[float] = []
    fed = 0
    corpus_size = len({clip.name for clip in clips})  # `clips` repeats the corpus for as long as the soak lasts

    def on_turn(res: Any) -> None:
        nonlocal fed
        fed += 1
        if fed == corpus_size:
            warm.append(rss_mb())
        if progress is not None:
            progress(res)

    t0 = time.monotonic()
    results = await run_corpus(cfg, engines, clips, progress=on_turn, deadline=t0 + minutes * 60.0)
    elapsed = time.monotonic() - t0
    rss_end, by_process_end = rss_mb(), rss_by_process()
    window = min(300.0, elapsed / 3.0)  # first/last 5 minutes, or thirds of a short soak

    def total(key: str) -> float:
        return float(sum(r.metrics.get(key) or 0 for r in results))

    answered = [r for r in results if r.stamps.get("play_start") is not None]
    barge = barge_ins(results)
    return {
        "minutes": elapsed / 60.0,
        "turns_fed": len(results),
        "turns_answered": len(answered),
        "barge_ins": barge["detected"],
        "interrupting_clips": barge["interrupting_clips"],
        "self_interruptions": barge["self_interruptions"],
        "rss_start_mb": rss_start,
        "rss_end_mb": rss_end,
        "rss_growth_mb": rss_end - rss_start,
        "rss_warm_mb": warm[0] if warm else None,
        "rss_growth_after_warmup_mb": rss_end - warm[0] if warm else None,
        # pid -> [MB at the start, MB at the end] (None: not alive then), to tell which process grew
        "rss_by_process_mb": {
            str(p): [by_process_start.get(p), by_process_end.get(p)]
            for p in sorted({*by_process_start, *by_process_end})
        },
        "ttfa_p50_first_window": window_ttfa(results, True, window),
        "ttfa_p50_last_window": window_ttfa(results, False, window),
        "window_s": window,
        "overruns": total("overruns"),
        "underruns": total("underruns"),
        "loop_lag_max": max((r.metrics.get("loop_lag_max") or 0.0 for r in results), default=0.0),
        "results": results,
    }
