"""Test signals and alignment helpers for the audio tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import soxr

from tests.vsound import read_wav, speak

SENTENCE = "The quick brown fox jumps over the lazy dog, then naps in the warm afternoon sun."


def speech(tmp: Path, rate: int, seconds: float, text: str = SENTENCE) -> npt.NDArray[np.int16]:
    """espeak-ng speech resampled to `rate`, cut or zero-padded to exactly `seconds`."""
    pcm, src_rate = read_wav(speak(text, tmp / "speech.wav"))
    out = resample(pcm, src_rate, rate)
    n = int(seconds * rate)
    return np.pad(out, (0, max(0, n - out.size)))[:n]


def resample(pcm: npt.NDArray[np.int16], src: int, dst: int) -> npt.NDArray[np.int16]:
    if src == dst:
        return pcm.copy()
    y = soxr.resample(pcm.astype(np.float32) / 32768.0, src, dst, quality="HQ")
    return np.clip(np.rint(y * 32768.0), -32768, 32767).astype(np.int16)


def lag_of(ref: npt.NDArray[np.generic], rec: npt.NDArray[np.generic]) -> int:
    """Offset of `ref` inside `rec` (rec[lag:] lines up with ref), by FFT cross-correlation."""
    a = ref.astype(np.float64)
    b = rec.astype(np.float64)
    n = 1 << int(np.ceil(np.log2(a.size + b.size)))
    xc = np.fft.irfft(np.fft.rfft(b, n) * np.conj(np.fft.rfft(a, n)), n)
    lag = int(np.argmax(xc))
    return lag - n if lag > n // 2 else lag


def aligned_corr(ref: npt.NDArray[np.generic], rec: npt.NDArray[np.generic]) -> tuple[float, int]:
    """Pearson correlation of `ref` with the matching stretch of `rec`, and the lag used."""
    lag = lag_of(ref, rec)
    if lag < 0 or lag + ref.size > rec.size:
        return 0.0, lag  # the recording does not hold the whole reference
    seg = rec[lag : lag + ref.size].astype(np.float64)
    return float(np.corrcoef(ref.astype(np.float64), seg)[0, 1]), lag


def noise_clip(rate: int, seconds: float, dbfs: float = -20.0, seed: int = 0) -> npt.NDArray[np.int16]:
    """Band-limited noise that is never digitally silent (so its audible span can be measured)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(int(rate * seconds))
    x = np.convolve(x, np.ones(8) / 8, mode="same")
    x *= 10 ** (dbfs / 20) / np.sqrt(np.mean(x * x))
    return np.clip(np.rint(x * 32768.0), -32767, 32767).astype(np.int16)
