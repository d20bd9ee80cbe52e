"""Generate Piper voices locally (no download): a tiny deterministic one for tests, a real-size one to time.

"tiny": an ONNX graph written directly with the `onnx` package. It has the inputs and output of a real
Piper voice and turns every phoneme id into one segment of a voiced harmonic tone, so its output length is
exact: `raw_samples(n_ids, length_scale)`. Ids for silence, word breaks and punctuation are silent, and the
voice adds `EDGE_SEGMENTS` silent segments before and after the speech, as real voices do, so trimming shows.

"real": a Piper "medium" VITS (the training code's default hyper-parameters) with random weights, built
from `piper.train.vits.models.SynthesizerTrn` and exported like Piper exports its voices. It needs torch
(`pip install torch==2.13.0`, CPU wheel) and costs what a real medium voice costs per second of audio.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np

from voicecli.errors import ModelError

HOP = 256  # samples per phoneme id at length_scale 1.0 (Piper's hop length)
EDGE_SEGMENTS = 8  # silent segments the tiny voice adds before and after the speech
NUM_SYMBOLS = 256  # what Piper's espeak voices declare
# Silent ids in the tiny voice: "^" BOS, "$" EOS, " " and the punctuation marks ! ' ( ) , - . : ; ?
SILENT_IDS = frozenset(range(1, 14))
OPSET = 17
# Shifts the random duration predictor to a real voice's pace (an 11-word clause lasts ~3.3 s).
_REAL_LOG_FRAMES_PER_ID = math.log(1.25)
_SPEAKER_PITCH = (1.0, 1.6, 0.75, 1.3)  # pitch multiplier per speaker of the tiny voice, cycled


def raw_samples(n_ids: int, length_scale: float = 1.0) -> int:
    """Exact length of the tiny voice's output for `n_ids` phoneme ids (before any trimming)."""
    # Same float32 arithmetic as the graph.
    seg = np.float32(length_scale) * np.float32(HOP)
    return int(np.floor(np.float32(n_ids + 2 * EDGE_SEGMENTS) * seg))


def voiced_samples(phoneme_ids: list[int], length_scale: float = 1.0) -> int:
    """Samples from the first to the last voiced id of the tiny voice (what is left after trimming)."""
    voiced = [i for i, pid in enumerate(phoneme_ids) if pid not in SILENT_IDS]
    if not voiced:
        return 0
    return round((voiced[-1] - voiced[0] + 1) * HOP * length_scale)


def generate(
    out_dir: Path,
    size: Literal["tiny", "real"] = "tiny",
    sample_rate: int = 22050,
    num_speakers: int = 1,
) -> Path:
    """Write a voice `.onnx` with its `.onnx.json` beside it into `out_dir`; return the `.onnx` path."""
    if num_speakers < 1:
        raise ValueError("num_speakers must be at least 1")
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = f"-{num_speakers}spk" if num_speakers > 1 else ""
    onnx_path = out_dir / f"en_US-generated-{size}{suffix}.onnx"
    if size == "tiny":
        _write_tiny_onnx(onnx_path, sample_rate, num_speakers)
    elif size == "real":
        _write_real_onnx(onnx_path, num_speakers)
    else:
        raise ValueError(f"unknown size {size!r}: use 'tiny' or 'real'")
    config = _voice_config(sample_rate, num_speakers)
    Path(f"{onnx_path}.json").write_text(json.dumps(config, ensure_ascii=False, indent=2), encoding="utf-8")
    return onnx_path


def _voice_config(sample_rate: int, num_speakers: int) -> dict[str, Any]:
    # The standard espeak phoneme id map, as shipped by piper-tts itself.
    from piper.phoneme_ids import DEFAULT_PHONEME_ID_MAP

    return {
        "audio": {"sample_rate": sample_rate, "quality": "medium"},
        "espeak": {"voice": "en-us"},
        "language": {"code": "en_US"},
        "inference": {"noise_scale": 0.667, "length_scale": 1.0, "noise_w": 0.8},
        "phoneme_type": "espeak",
        "phoneme_map": {},
        "phoneme_id_map": DEFAULT_PHONEME_ID_MAP,
        "num_symbols": NUM_SYMBOLS,
        "num_speakers": num_speakers,
        "speaker_id_map": {f"speaker_{i}": i for i in range(num_speakers)} if num_speakers > 1 else {},
        "piper_version": "1.0.0",
        "dataset": "voicecli-generated",
    }


def _tables(num_speakers: int) -> dict[str, np.ndarray]:
    ids = np.arange(NUM_SYMBOLS)
    # Deterministic per-phoneme loudness and pitch, so the signal has some prosody.
    amp = (0.6 + 0.4 * ((ids * 37) % 11) / 10.0).astype(np.float32)
    amp[list(SILENT_IDS)] = 0.0
    amp[0] = 0.5  # the pad between phonemes is a softer continuation, not a gap
    pitch = (105.0 + (ids * 7) % 45).astype(np.float32)
    tables = {"amp_table": amp, "pitch_table": pitch}
    if num_speakers > 1:
        pitches = [_SPEAKER_PITCH[i % len(_SPEAKER_PITCH)] for i in range(num_speakers)]
        tables["speaker_table"] = np.array(pitches, np.float32)
    return tables


def _write_tiny_onnx(path: Path, sample_rate: int, num_speakers: int) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def const(name: str, value: Any, dtype: Any = np.float32) -> onnx.TensorProto:
        return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)

    harmonics = np.arange(1, 5, dtype=np.float32)
    inits = [numpy_helper.from_array(v, k) for k, v in _tables(num_speakers).items()]
    inits += [
        const("ax0", [0], np.int64),
        const("one_i", 1, np.int64),
        const("zero_i", 0, np.int64),
        const("zero_f", 0.0),
        const("one_f", 1.0),
        const("hop", float(HOP)),
        const("edge", float(EDGE_SEGMENTS)),
        const("two_edges", float(2 * EDGE_SEGMENTS)),
        const("inv_rate", 1.0 / sample_rate),
        const("two_pi", 2.0 * math.pi),
        const("pi", math.pi),
        const("harmonics", harmonics.reshape(1, -1)),
        const("harm_weights", 0.5 / harmonics),
        const("out_shape", [1, 1, -1], np.int64),
    ]
    n = helper.make_node
    nodes = [
        n("Squeeze", ["input", "ax0"], ["ids"]),
        n("Squeeze", ["input_lengths", "ax0"], ["n_i"]),
        n("Cast", ["n_i"], ["n_f"], to=TensorProto.FLOAT),
        n("Sub", ["n_i", "one_i"], ["last_i"]),
        n("Gather", ["scales", "one_i"], ["length_scale"], axis=0),
        n("Mul", ["length_scale", "hop"], ["seg"]),
        # Total length: (n + 2 * EDGE) segments of HOP * length_scale samples.
        n("Add", ["n_f", "two_edges"], ["n_segs"]),
        n("Mul", ["n_segs", "seg"], ["total_raw"]),
        n("Floor", ["total_raw"], ["total"]),
        n("Range", ["zero_f", "total", "one_f"], ["t"]),
        # Which phoneme each sample belongs to, and where inside its segment it is.
        n("Div", ["t", "seg"], ["pos_raw"]),
        n("Sub", ["pos_raw", "edge"], ["pos"]),
        n("Floor", ["pos"], ["k_f"]),
        n("Sub", ["pos", "k_f"], ["frac"]),
        n("Cast", ["k_f"], ["k_raw"], to=TensorProto.INT64),
        n("GreaterOrEqual", ["k_raw", "zero_i"], ["after_start"]),
        n("Less", ["k_raw", "n_i"], ["before_end"]),
        n("And", ["after_start", "before_end"], ["inside_b"]),
        n("Cast", ["inside_b"], ["inside"], to=TensorProto.FLOAT),
        n("Clip", ["k_raw", "zero_i", "last_i"], ["k"]),
        n("Gather", ["ids", "k"], ["pid"], axis=0),
        n("Gather", ["amp_table", "pid"], ["amp_raw"], axis=0),
        n("Mul", ["amp_raw", "inside"], ["amp"]),
        n("Gather", ["pitch_table", "pid"], ["f0_raw"], axis=0),
    ]
    inputs = [
        helper.make_tensor_value_info("input", TensorProto.INT64, [1, "phonemes"]),
        helper.make_tensor_value_info("input_lengths", TensorProto.INT64, [1]),
        helper.make_tensor_value_info("scales", TensorProto.FLOAT, [3]),
    ]
    if num_speakers > 1:
        # Like a real multi-speaker voice: an out-of-range speaker id fails inside the model.
        inputs.append(helper.make_tensor_value_info("sid", TensorProto.INT64, [1]))
        nodes += [
            n("Gather", ["speaker_table", "sid"], ["spk"], axis=0),
            n("Mul", ["f0_raw", "spk"], ["f0"]),
        ]
    else:
        nodes.append(n("Identity", ["f0_raw"], ["f0"]))
    nodes += [
        # Continuous phase (cycles), so pitch changes between phonemes do not click.
        n("Mul", ["f0", "inv_rate"], ["cycles_step"]),
        n("CumSum", ["cycles_step", "zero_i"], ["cycles_raw"]),
        n("Mod", ["cycles_raw", "one_f"], ["cycles"], fmod=1),
        n("Unsqueeze", ["cycles", "one_i"], ["cycles_col"]),
        n("Mul", ["cycles_col", "harmonics"], ["harm_cycles"]),
        n("Mul", ["harm_cycles", "two_pi"], ["harm_phase"]),
        n("Sin", ["harm_phase"], ["harm"]),
        n("MatMul", ["harm", "harm_weights"], ["voiced"]),
        # A half-sine envelope per segment: syllable-like loudness, no steps at the edges.
        n("Mul", ["frac", "pi"], ["env_phase"]),
        n("Sin", ["env_phase"], ["env"]),
        n("Mul", ["voiced", "env"], ["shaped"]),
        n("Mul", ["shaped", "amp"], ["audio"]),
        n("Reshape", ["audio", "out_shape"], ["output"]),
    ]
    output = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1, "time"])
    graph = helper.make_graph(nodes, "voicecli_tiny_piper", inputs, [output], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="voicecli")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _write_real_onnx(path: Path, num_speakers: int) -> None:
    try:
        import torch
    except ImportError:
        raise ModelError(
            "generating a real-size Piper voice needs torch, which is not installed",
            hint="install the CPU build: .venv/bin/pip install torch==2.13.0 --find-links /opt/wheels",
        ) from None
    # Imported directly: piper.train.vits.lightning would pull in lightning and librosa.
    from piper.train.vits.models import SynthesizerTrn

    torch.manual_seed(1234)
    warnings.filterwarnings("ignore", message=".*weight_norm.* is deprecated", category=FutureWarning)
    # Piper "medium": the training code's default hyper-parameters.
    model: Any = SynthesizerTrn(
        n_vocab=NUM_SYMBOLS,
        spec_channels=1024 // 2 + 1,
        segment_size=8192 // HOP,
        inter_channels=192,
        hidden_channels=192,
        filter_channels=768,
        n_heads=2,
        n_layers=6,
        kernel_size=3,
        p_dropout=0.1,
        resblock="2",
        resblock_kernel_sizes=(3, 5, 7),
        resblock_dilation_sizes=((1, 2), (2, 6), (3, 12)),
        upsample_rates=(8, 8, 4),
        upsample_initial_channel=256,
        upsample_kernel_sizes=(16, 16, 8),
        n_speakers=num_speakers,
        gin_channels=512 if num_speakers > 1 else 0,
        use_sdp=True,
    )
    model.eval()
    with torch.no_grad():
        model.dec.remove_weight_norm()
        # The first flow of the duration predictor shifts log-durations: speak at a realistic rate.
        model.dp.flows[0].m[0] = -_REAL_LOG_FRAMES_PER_ID

    def infer_forward(
        text: torch.Tensor, text_lengths: torch.Tensor, scales: torch.Tensor, sid: torch.Tensor | None = None
    ) -> torch.Tensor:
        audio = model.infer(
            text,
            text_lengths,
            noise_scale=scales[0],
            length_scale=scales[1],
            noise_scale_w=scales[2],
            sid=sid,
        )[0].unsqueeze(1)
        return audio

    model.forward = infer_forward
    sequences = torch.randint(low=0, high=NUM_SYMBOLS, size=(1, 50), dtype=torch.long)
    sid = torch.LongTensor([0]) if num_speakers > 1 else None
    scales = torch.FloatTensor([0.667, 1.0, 0.8])
    # The tracer warns about data-dependent shapes that Piper's own export has too.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model=model,
            args=(sequences, torch.LongTensor([50]), scales, sid),
            f=str(path),
            verbose=False,
            opset_version=15,
            input_names=["input", "input_lengths", "scales", "sid"],
            output_names=["output"],
            dynamic_axes={
                "input": {0: "batch_size", 1: "phonemes"},
                "input_lengths": {0: "batch_size"},
                "output": {0: "batch_size", 2: "time"},
            },
            dynamo=False,
        )
