"""Busy programs beside the benchmark: a desktop is never idle.

`background_load(n)` starts `n` processes that spin forever, each in a session of its own (setsid), as a compile
or a browser in another terminal would be: with the kernel's autogroup scheduling they then compete with the
assistant as a whole, not thread by thread. They are killed when the block ends, however it ends.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator

SPIN = "while True: pass"


@contextlib.contextmanager
def background_load(n: int) -> Iterator[list[int]]:
    """Run `n` busy processes for the duration of the block; yields their PIDs."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(max(0, n)):
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", SPIN],
                    start_new_session=True,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()
