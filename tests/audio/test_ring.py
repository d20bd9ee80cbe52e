"""RingBuffer: order, wrap-around, overwrite-oldest accounting, and a real producer thread."""

from __future__ import annotations

import threading
import time

import numpy as np
import numpy.typing as npt

from voicecli.audio.ring import RingBuffer


def seq(start: int, n: int) -> npt.NDArray[np.int16]:
    return np.arange(start, start + n, dtype=np.int16)


def test_wraps_around_in_order() -> None:
    ring = RingBuffer(10)
    ring.write(seq(0, 7))
    assert ring.read(5).tolist() == [0, 1, 2, 3, 4]
    ring.write(seq(7, 6))  # crosses the end of the buffer
    assert ring.available() == 8
    assert ring.read().tolist() == list(range(5, 13))
    assert ring.overrun_samples == 0
    assert ring.read().size == 0


def test_full_ring_overwrites_oldest_and_counts_it() -> None:
    ring = RingBuffer(10)
    for k in range(0, 24, 4):  # 24 samples into 10 slots, never read
        ring.write(seq(k, 4))
    assert ring.overrun_samples == 14
    assert ring.read().tolist() == list(range(14, 24))  # the newest 10 survive, in order
    assert ring.overrun_samples == 14  # reading does not change what was lost


def test_block_larger_than_capacity_keeps_its_tail() -> None:
    ring = RingBuffer(8)
    ring.write(seq(0, 3))
    ring.write(seq(3, 20))
    assert ring.read().tolist() == list(range(15, 23))
    assert ring.overrun_samples == 15


def test_multichannel_read_into_skip_and_clear() -> None:
    ring = RingBuffer(6, channels=2)
    ring.write(np.arange(8, dtype=np.int16).reshape(4, 2))
    out = np.zeros((3, 2), dtype=np.int16)
    assert ring.read_into(out) == 3
    assert out.tolist() == [[0, 1], [2, 3], [4, 5]]
    ring.write(np.full((2, 2), 9, dtype=np.int16))
    assert ring.skip_to(ring.write_index - 1) == 2  # drop all but the last frame
    assert ring.read().tolist() == [[9, 9]]
    ring.write(np.ones((3, 2), dtype=np.int16))
    ring.clear()
    assert ring.available() == 0 and ring.overrun_samples == 0


def _decode(block: npt.NDArray[np.int16]) -> npt.NDArray[np.int64]:
    """Sample index carried by a 2-channel block (high, low 15-bit halves)."""
    return block[:, 0].astype(np.int64) * 32768 + block[:, 1].astype(np.int64)


def _encode(start: int, n: int) -> npt.NDArray[np.int16]:
    idx = np.arange(start, start + n, dtype=np.int64)
    return np.stack([idx // 32768, idx % 32768], axis=1).astype(np.int16)


def _check_stream(chunks: list[npt.NDArray[np.int16]], written: int, lost: int) -> None:
    got = np.concatenate([_decode(c) for c in chunks])
    steps = np.diff(got)
    assert (steps >= 1).all(), "duplicated or reordered audio"
    # every gap in the sequence is audio that was overwritten, and all of it was counted
    assert int((steps - 1).sum()) + int(got[0]) == lost
    assert got.size + lost == written
    assert int(got[-1]) == written - 1  # the newest audio survived


def test_producer_at_50_blocks_per_second_vs_consumer_stalling_3s() -> None:
    rate, block, seconds = 16_000, 320, 4.0
    ring = RingBuffer(2 * rate, channels=2)  # 2 s of audio
    n_blocks = int(seconds * 50)
    done = threading.Event()

    def producer() -> None:
        t0 = time.monotonic()
        for k in range(n_blocks):  # paced like an audio callback: one block per 20 ms
            ring.write(_encode(k * block, block))
            time.sleep(max(0.0, t0 + (k + 1) * 0.02 - time.monotonic()))
        done.set()

    thread = threading.Thread(target=producer)
    thread.start()
    chunks = []
    t_end = time.monotonic() + 0.5
    while time.monotonic() < t_end:  # keep up for a while
        chunks.append(ring.read())
        time.sleep(0.005)
    time.sleep(3.0)  # the consumer stalls: > 2 s of audio arrives meanwhile
    assert ring.available() == ring.capacity
    assert ring.overrun_samples > 0
    done.wait(10)
    thread.join()
    chunks.append(ring.read())
    lost = ring.overrun_samples
    _check_stream([c for c in chunks if c.size], n_blocks * block, lost)
    # ~4 s written, the first 0.5 s read live, the last 2 s survive: about 1.5 s lost
    assert 1.0 * rate < lost < 2.0 * rate


def test_concurrent_unpaced_writer_never_yields_torn_audio() -> None:
    """A producer hammering the ring with big blocks while the consumer reads big spans.

    numpy releases the GIL for copies this large, so the two copies really overlap in time and
    the producer overwrites audio the consumer is copying: it must be dropped and counted, never
    returned torn.
    """
    ring = RingBuffer(1 << 17, channels=2)
    total = 30_000_000
    stop = threading.Event()

    def producer() -> None:
        pos = 0
        rng = np.random.default_rng(1)
        while pos < total:
            n = min(int(rng.integers(20_000, 120_000)), total - pos)
            ring.write(_encode(pos, n))
            pos += n
        stop.set()

    thread = threading.Thread(target=producer)
    thread.start()
    chunks = []
    while not stop.is_set():
        chunk = ring.read()
        if chunk.size:
            chunks.append(chunk)
    thread.join()
    chunks.append(ring.read())
    _check_stream([c for c in chunks if c.size], total, ring.overrun_samples)
