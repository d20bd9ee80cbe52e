"""Models generated locally for tests and benchmarks, loaded through the real engine libraries.

tiny:  scripted, small, generated in seconds (whisper always hears a fixed phrase, the LLM streams a fixed
       multi-clause reply, the voice has a deterministic length).
real:  the real dimensions (whisper base.en, a Qwen2.5-0.5B-class Q4 GGUF, a Piper medium VITS) with random
       weights: the same compute per token as the real models, for honest timings.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

Size = Literal["tiny", "real"]
KINDS = ("stt", "llm", "tts")


def _source_hash() -> str:
    """Regenerate when a generator changes."""
    h = hashlib.sha256()
    for name in ("whisper.py", "llama.py", "piper.py"):
        h.update((Path(__file__).parent / name).read_bytes())
    return h.hexdigest()[:16]


def generate_all(
    out_dir: Path,
    size: Size = "tiny",
    *,
    progress: Callable[[str], None] = print,
) -> dict[str, Path]:
    """Generate (or reuse, when the generators have not changed) the three models under out_dir/size."""
    from voicecli.testmodels import llama, piper, whisper

    root = out_dir / size
    stamp = root / "models.json"
    key = _source_hash()
    if stamp.exists():
        info = json.loads(stamp.read_text())
        paths = {k: Path(v) for k, v in info.get("paths", {}).items()}
        if info.get("key") == key and all(p.exists() for p in paths.values()):
            return paths
    gens = {"stt": whisper.generate, "llm": llama.generate, "tts": piper.generate}
    paths = {}
    for kind in KINDS:
        t0 = time.monotonic()
        progress(f"generating {size} {kind} model ...")
        paths[kind] = gens[kind](root / kind, size)  # type: ignore[operator]
        progress(f"  {paths[kind]} ({time.monotonic() - t0:.1f} s)")
    stamp.write_text(json.dumps({"key": key, "paths": {k: str(v) for k, v in paths.items()}}))
    return paths
