"""Generate the test models: `python scripts/gen_models.py [--real-size] [--out DIR]`.

tiny scripted models by default (seconds); --real-size for the benchmark (needs torch for the Piper voice).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from voicecli.testmodels import generate_all


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path(".models"))
    ap.add_argument("--real-size", action="store_true")
    args = ap.parse_args()
    paths = generate_all(args.out, "real" if args.real_size else "tiny")
    for kind, path in paths.items():
        print(f"{kind}: {path}")


if __name__ == "__main__":
    main()
