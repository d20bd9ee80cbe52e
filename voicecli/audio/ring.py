"""A preallocated single-producer / single-consumer int16 ring buffer without locks.

One thread writes (the PortAudio input callback, or the loop feeding playback), one thread reads.
When the ring is full a write overwrites the oldest audio; the consumer detects and counts it.

Why this is safe without a lock:

* Positions are absolute sample counts (Python ints, never wrapped). Only the producer stores
  `_reserved` and `_written`; only the consumer stores `_read` and `_lost`. A store to an attribute
  is a single bytecode, atomic under the GIL, and the GIL's release/acquire orders it against the
  other thread, so each side always sees a consistent (if slightly stale) value of the other's index.
* The producer first announces the span it is about to overwrite (`_reserved = w + n`), then copies,
  then publishes `_written = w + n`. numpy may drop the GIL while copying, so copies of the two
  threads can truly overlap.
* The consumer snapshots `_written`, copies `[read, written)` out, and only then reads `_reserved`.
  Any sample whose index is below `_reserved - capacity` may have been overwritten during (or before)
  its copy, so it is dropped from the front and counted in `overrun_samples`. Everything returned was
  therefore published before the copy and not touched during it: no torn and no duplicated audio.
  `_written` never runs ahead of `_reserved`, so the check covers writes that are still in progress.
"""

from __future__ import annotations

import time

import numpy as np
import numpy.typing as npt


class RingBuffer:
    """SPSC ring of int16 samples, `channels` interleaved per frame; overwrites the oldest when full."""

    def __init__(self, capacity_samples: int, channels: int = 1) -> None:
        if capacity_samples <= 0 or channels <= 0:
            raise ValueError("capacity_samples and channels must be positive")
        self.capacity = int(capacity_samples)
        self.channels = int(channels)
        self._buf = np.zeros((self.capacity, self.channels), dtype=np.int16)
        self._reserved = 0  # producer: highest index being (or already) written
        self._written = 0  # producer: samples fully written and published
        self._read = 0  # consumer: next sample to hand out
        self._lost = 0  # consumer: samples overwritten before they were read

    # -- producer side ------------------------------------------------------------------------------

    def write(self, block: npt.NDArray[np.int16]) -> None:
        """Append `block` ((n,) or (n, channels) int16). Producer thread only."""
        data = block.reshape(-1, self.channels) if block.ndim == 1 else block
        n = data.shape[0]
        if n == 0:
            return
        w = self._written
        if n > self.capacity:  # only the newest `capacity` samples can survive
            skip = n - self.capacity
            data = data[skip:]
            w += skip
            n = self.capacity
        self._reserved = w + n
        start = w % self.capacity
        first = min(n, self.capacity - start)
        self._buf[start : start + first] = data[:first]
        if first < n:
            self._buf[: n - first] = data[first:]
        self._written = w + n

    @property
    def write_index(self) -> int:
        """Absolute count of samples written so far (including any that were later overwritten)."""
        return self._written

    def free(self) -> int:
        """Samples that can be written without overwriting unread audio."""
        return self.capacity - min(self.capacity, self._written - self._read)

    # -- consumer side ------------------------------------------------------------------------------

    def available(self) -> int:
        return min(self.capacity, self._written - self._read)

    @property
    def read_index(self) -> int:
        """Absolute index of the next sample the consumer will get."""
        return self._read

    @property
    def overrun_samples(self) -> int:
        """Samples lost to overwriting, counted so far plus any already overwritten and not yet read."""
        return self._lost + max(0, self._written - self._read - self.capacity)

    def read(self, max_samples: int | None = None) -> npt.NDArray[np.int16]:
        """Oldest available samples (a copy), at most `max_samples`. Consumer thread only.

        Mono rings return shape (n,), others (n, channels).
        """
        r, w = self._span(max_samples)
        out = np.empty((w - r, self.channels), dtype=np.int16)
        got = self._copy_out(r, w, out)
        out = out[out.shape[0] - got :]
        return out[:, 0].copy() if self.channels == 1 else out

    def read_into(self, out: npt.NDArray[np.int16]) -> int:
        """Copy up to len(out) oldest samples into the start of `out` (no allocation); return the count."""
        dest = out.reshape(-1, self.channels) if out.ndim == 1 else out
        r, w = self._span(dest.shape[0])
        got = self._copy_out(r, w, dest)
        if got < w - r:  # the front was overwritten while copying: shift the survivors down
            dest[:got] = dest[w - r - got : w - r]
        return got

    def skip_to(self, index: int) -> int:
        """Drop everything before absolute `index` (e.g. a playback flush); returns samples dropped."""
        target = min(index, self._written)
        dropped = max(0, target - self._read)
        if dropped:
            self._read = target
        return dropped

    def clear(self) -> None:
        """Drop all unread audio (not counted as lost). Consumer thread only."""
        self._read = self._written

    def _span(self, max_samples: int | None) -> tuple[int, int]:
        w = self._written
        r = self._read
        if w - r > self.capacity:
            self._lost += w - r - self.capacity
            r = w - self.capacity
        if max_samples is not None and w - r > max_samples:
            w = r + max(0, max_samples)
        return r, w

    def _copy_out(self, r: int, w: int, out: npt.NDArray[np.int16]) -> int:
        """Copy [r, w) into out[:w-r]; return how many trailing samples are valid and advance."""
        n = w - r
        if n > 0:
            start = r % self.capacity
            first = min(n, self.capacity - start)
            out[:first] = self._buf[start : start + first]
            if first < n:
                out[first:n] = self._buf[: n - first]
        # Anything the producer may have touched since the snapshot is unreliable: drop it.
        clobbered = max(0, min(w, self._reserved - self.capacity) - r)
        self._lost += clobbered
        self._read = w
        return n - clobbered


class CallbackTimes:
    """Preallocated log of how long each audio callback took (written by the callback thread)."""

    def __init__(self, size: int = 4096) -> None:
        self._ns = np.zeros(size, dtype=np.int64)
        self.count = 0

    def add(self, start_ns: int) -> None:
        self._ns[self.count % self._ns.size] = time.perf_counter_ns() - start_ns
        self.count += 1

    def summary_ms(self) -> dict[str, float]:
        """p50 / p99 / max in milliseconds over the most recent callbacks."""
        n = min(self.count, self._ns.size)
        if n == 0:
            return {"p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
        ms = self._ns[:n].astype(np.float64) / 1e6
        return {
            "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)),
            "max_ms": float(ms.max()),
        }
