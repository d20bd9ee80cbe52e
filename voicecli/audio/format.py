"""Audio format constants and conversions, in one place.

Inside the pipeline: 16 kHz mono int16 frames of 20 ms (320 samples) for capture/VAD,
float32 in [-1, 1] for STT, int16 at the output device rate for playback.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

SAMPLE_RATE = 16_000
CHANNELS = 1
FRAME_MS = 20
FRAME_SAMPLES = SAMPLE_RATE * FRAME_MS // 1000  # 320
INT16_FULL_SCALE = 32768.0
# dBFS reported for digital silence (log of zero is undefined).
SILENCE_DBFS = -120.0

Int16Array = npt.NDArray[np.int16]
Float32Array = npt.NDArray[np.float32]


def int16_to_float32(pcm: npt.NDArray[np.int16]) -> Float32Array:
    """int16 PCM -> float32 in [-1, 1)."""
    return (pcm.astype(np.float32) / INT16_FULL_SCALE).astype(np.float32, copy=False)


def float32_to_int16(audio: npt.NDArray[np.floating]) -> Int16Array:
    """float in [-1, 1] -> int16, clipped (never wraps around)."""
    scaled = np.clip(np.asarray(audio, dtype=np.float32) * INT16_FULL_SCALE, -32768.0, 32767.0)
    return np.rint(scaled).astype(np.int16)


def _as_unit_float(audio: npt.NDArray[np.generic]) -> npt.NDArray[np.float64]:
    if audio.dtype == np.int16:
        return audio.astype(np.float64) / INT16_FULL_SCALE
    return audio.astype(np.float64)


def rms_dbfs(audio: npt.NDArray[np.generic]) -> float:
    """RMS level in dBFS (a full-scale square wave is 0 dBFS, a full-scale sine about -3 dBFS)."""
    if audio.size == 0:
        return SILENCE_DBFS
    # A dot product, not np.mean(x * x): this runs several times per 20 ms frame while listening, and
    # np.mean's Python-level overhead was most of the cost of a 320-sample frame.
    x = np.asarray(audio).reshape(-1).astype(np.float64)
    scale = INT16_FULL_SCALE * INT16_FULL_SCALE if audio.dtype == np.int16 else 1.0
    ms = float(np.dot(x, x)) / (x.size * scale)
    return max(SILENCE_DBFS, 10.0 * math.log10(ms)) if ms > 0 else SILENCE_DBFS


def peak_dbfs(audio: npt.NDArray[np.generic]) -> float:
    """Peak level in dBFS."""
    if audio.size == 0:
        return SILENCE_DBFS
    peak = float(np.max(np.abs(_as_unit_float(audio))))
    return max(SILENCE_DBFS, 20.0 * np.log10(peak)) if peak > 0 else SILENCE_DBFS


def frames_to_seconds(n_samples: int, rate: int = SAMPLE_RATE) -> float:
    return n_samples / float(rate)
