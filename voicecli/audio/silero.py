"""Silero VAD v6 on onnxruntime: the neural voice detector the barge-in confirmer (pipeline.bargein) asks whether a
stretch of the cleaned mic holds a voice. The ONNX model ships with faster-whisper (no torch)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from voicecli.audio.echo import silero_model_path
from voicecli.errors import ConfigError

SILERO_SAMPLES = 512  # Silero's fixed window at 16 kHz (32 ms)


class SileroVad:
    """Silero VAD v6, streaming: the ONNX model faster-whisper ships, run with onnxruntime (both already
    needed by the engines; no torch). ~70 us per 32 ms window on one thread."""

    CONTEXT = 64  # samples of the previous window the model sees with each new one

    def __init__(self) -> None:
        path = str(silero_model_path())  # ConfigError naming what to install when missing
        try:
            import onnxruntime
        except ImportError as exc:
            raise ConfigError(
                f"barge-in confirmation needs onnxruntime ({exc})",
                hint="reinstall voicecli (`pip install -e .`), or run with `--echo half-duplex`",
            ) from None
        opts = onnxruntime.SessionOptions()
        opts.inter_op_num_threads = 1
        opts.intra_op_num_threads = 1
        opts.log_severity_level = 4
        self._session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"], sess_options=opts)
        self.reset()

    def reset(self) -> None:
        self._h = np.zeros((1, 1, 128), dtype=np.float32)
        self._c = np.zeros((1, 1, 128), dtype=np.float32)
        self._context = np.zeros(self.CONTEXT, dtype=np.float32)

    def __call__(self, x: npt.NDArray[np.float32]) -> float:
        window = np.concatenate([self._context, x]).astype(np.float32)[None, :]
        prob, self._h, self._c = self._session.run(None, {"input": window, "h": self._h, "c": self._c})
        self._context = x[-self.CONTEXT :].astype(np.float32)
        return float(np.asarray(prob).reshape(-1)[0])
