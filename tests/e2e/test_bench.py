"""`voicecli bench` on the tiny generated models through the virtual sound card: valid JSON with every
field, the waterfall, the sequential comparison, and a TTFA that agrees with an independent recording."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.vsound import VSound
from voicecli.bench.report import METRICS

pytestmark = [pytest.mark.audio, pytest.mark.engines, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def loud_onsets(pcm: np.ndarray, rate: int, floor_dbfs: float = -45.0, gap_s: float = 0.4) -> list[float]:
    """Start times (s into the recording) of each stretch of sound preceded by >= gap_s of silence."""
    win = rate // 100
    n = len(pcm) // win
    x = pcm[: n * win].astype(np.float32).reshape(n, win) / 32768.0
    loud = 20 * np.log10(np.sqrt(np.mean(x * x, axis=1)) + 1e-9) > floor_dbfs
    onsets, quiet = [], int(gap_s * 100)
    run = quiet
    for i, is_loud in enumerate(loud):
        if is_loud and run >= quiet:
            onsets.append(i * 0.01)
        run = 0 if is_loud else run + 1
    return onsets


def test_bench_reports_every_stage_and_agrees_with_the_recording(vsound: VSound, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = {**os.environ, **vsound.env, "VOICECLI_DATA_DIR": str(tmp_path / "data"),
           "VOICECLI_CONFIG": str(tmp_path / "none.toml")}  # fmt: skip
    cmd = [sys.executable, "-m", "voicecli", "bench", "--turns", "3", "--compare", "sequential", "--json", str(out)]
    with vsound.record() as rec:
        proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    # the report names the models, the machine and the threads
    assert doc["models"]["set"] == "test" and {"stt", "llm", "tts"} <= set(doc["models"])
    assert doc["machine"]["cores"] >= 1 and doc["threads"]["llm"] >= 1
    # every metric is summarised; the timed stages have numbers for all 3 turns
    assert set(METRICS) <= set(doc["summary"])
    for key in ("ttfa", "turn_confirm", "stt", "llm_ttft", "first_clause", "tts_first_audio", "play_start"):
        assert doc["summary"][key]["n"] == 3, key
        assert 0 < doc["summary"][key]["p50"] <= doc["summary"][key]["p95"] <= doc["summary"][key]["max"]
    assert doc["summary"]["underruns"]["max"] == 0
    assert len(doc["turns"]) == 3
    # stages in pipeline order, every turn
    for turn in doc["turns"]:
        m = turn["metrics"]
        # the first clause may be synthesised during the hangover; nothing plays before the turn is confirmed
        assert m["first_clause"] <= m["tts_first_audio"] <= m["play_start"] + 0.005
        assert m["turn_confirm"] <= m["play_start"]
    # the sequential comparison ran over the same corpus, and streaming is not slower
    seq = doc["sequential"]
    assert len(seq["turns"]) == 3 and seq["summary"]["ttfa"]["n"] == 3
    assert doc["ttfa_ratio_sequential_over_streaming"] >= 1.0
    # the waterfall rendered one bar per turn
    assert "legend:" in proc.stdout
    assert all(t["clip"] in proc.stdout for t in doc["turns"])

    # Independent TTFA: reply onsets in the speaker recording vs the known feed time + speech end in the clip.
    onsets = [rec.t0 + s for s in loud_onsets(rec.pcm, rec.rate)]
    for turn in doc["turns"] + seq["turns"]:
        true_end = turn["feed_t"] + turn["clip_speech_end_s"]
        reply = next(t for t in onsets if t > true_end)
        independent = reply - true_end
        reported = turn["metrics"]["ttfa"]
        assert abs(independent - reported) < 0.04, (turn["clip"], independent, reported)
