"""Generate faster-whisper model directories locally (no network, no torch).

The model is a *scripted* Whisper: a ctranslate2 `WhisperSpec` whose weights are set by hand so
that it always transcribes one phrase when the audio holds speech, and returns nothing (with a high
no_speech_prob) when it does not. How the weights do it:

* Decoder: token embeddings carry no signal; position `p` is a one-hot vector, and the output
  projection maps position `p` to the `p`-th token of `<|notimestamps|> phrase <|endoftext|>`.
  Position-based (not token-based), so phrases with repeated letters work. Self-attention and FFN
  outputs are (near) zero, so the residual stream is just "where am I".
* Encoder: conv1 measures each frame's mean log-mel level against a threshold on two channels
  (loud / quiet); the final layer norm turns that into a +-sqrt(d) sign per frame.
* Cross-attention: a constant query with a large key weight on the "loud" channel focuses on loud
  frames if any exist (a soft max-pool); its value reads the "quiet" channel into one decoder
  dimension, which raises the logits of `<|nospeech|>`, `<|endoftext|>` and " you". Silence ->
  no_speech_prob ~1 and the text "you" (the classic hallucination); speech -> the phrase with
  log-probability ~0 and no_speech_prob ~0.

`size="real"` keeps the same wiring at whisper base.en dimensions (d_model 512, 6+6 layers,
8 heads, FFN 2048, vocabulary 51864, 80 mels) and adds seeded random noise to every weight, so the
compute per token equals the real model's and nothing is sparse. Weights are saved as float16 like
the published conversions (198 MB instead of 145 MB: the real model ties its output projection to the
token embeddings, which the script cannot).

Limit: the script follows absolute decoder positions, so an `initial_prompt` (which shifts them)
garbles the transcript; test without one.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]

N_MELS = 80
ENCODER_FRAMES = 1500  # 30 s window after the stride-2 conv
DECODER_POSITIONS = 448
N_TIMESTAMPS = 1501
SEED = 1234

# Whisper's language tokens in their real vocabulary order (the .en models keep all 99).
_LANGUAGE_CODES = (
    "en zh de es ru ko fr ja pt tr pl ca nl ar sv it id hi fi vi he uk el ms cs ro da hu ta no th ur hr "
    "bg lt la mi ml cy sk te fa lv bn sr az sl kn et mk br eu is hy ne mn bs kk sq sw gl mr pa si km sn "
    "yo so af oc ka be tg sd gu am yi lo uz fo ht ps tk nn mt sa lb my bo tl mg as tt haw ln ha ba jw su"
)
LANGUAGES = tuple(_LANGUAGE_CODES.split())
SPECIALS_AFTER_LANGS = (
    "<|translate|>",
    "<|transcribe|>",
    "<|startoflm|>",
    "<|startofprev|>",
    "<|nospeech|>",
    "<|notimestamps|>",
)
# Byte-pair merges that faster-whisper's non-speech suppression relies on: without them " -", " '"
# and " \u2669" start with the bare space token and the space itself would be suppressed.
REQUIRED_MERGES = ((" ", "-"), (" ", "'"), (" ", "\xe2"), (" ", "y"), (" y", "o"), (" yo", "u"))
# Whisper's classic hallucination on silence, a single token as in the real vocabulary.
SILENCE_TOKEN = " you"

# Normalised log-mel level (faster-whisper features: -1.5 for digital silence, peaks of 0.3..1.2 for
# speech from -50 to -20 dBFS RMS, under 0.2 for white noise at -50 dBFS) above which a mel bin is
# "loud"; a frame is loud when its summed loud excess passes LOUD_MIN.
LEVEL_THRESHOLD = 0.25
LEVEL_GAIN = 10.0
LOUD_MIN = 1.0


@dataclass(frozen=True)
class Dims:
    d_model: int
    heads: int
    encoder_layers: int
    decoder_layers: int
    ffn: int
    n_regular: int  # byte symbols + merges, i.e. the id of <|endoftext|>
    noise: float  # std of the random part added to input-side weights (0 = exact script)


TINY = Dims(d_model=128, heads=2, encoder_layers=1, decoder_layers=1, ffn=64, n_regular=0, noise=0.0)
REAL = Dims(d_model=512, heads=8, encoder_layers=6, decoder_layers=6, ffn=2048, n_regular=50256, noise=0.02)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (the byte-level BPE alphabet)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars, strict=True)}


def _regular_vocab(n_regular: int) -> tuple[list[str], list[tuple[str, str]]]:
    """256 byte symbols plus merges of symbol pairs up to `n_regular` tokens."""
    byte_map = bytes_to_unicode()
    symbols = [byte_map[b] for b in range(256)]

    def mapped(text: str) -> str:
        return "".join(byte_map[b] for b in text.encode("latin-1"))

    merges = [(mapped(a), mapped(b)) for a, b in REQUIRED_MERGES]
    if n_regular:
        # Deterministic filler merges: every ordered pair of symbols, space-prefixed pairs first,
        # so text tokenises to realistic two-byte pieces.
        seen = set(merges)
        space = byte_map[ord(" ")]
        ordered = [space, *[s for s in symbols if s != space]]
        for a in ordered:
            for b in ordered:
                if len(symbols) + len(merges) >= n_regular:
                    break
                if (a, b) not in seen:
                    merges.append((a, b))
                    seen.add((a, b))
    tokens = symbols + [a + b for a, b in merges]
    return tokens, merges


def _special_tokens() -> list[str]:
    langs = [f"<|{code}|>" for code in LANGUAGES]
    stamps = [f"<|{i * 0.02:.2f}|>" for i in range(N_TIMESTAMPS)]
    return ["<|endoftext|>", "<|startoftranscript|>", *langs, *SPECIALS_AFTER_LANGS, *stamps]


def _write_tokenizer(path: Path, regular: list[str], merges: list[tuple[str, str]], specials: list[str]) -> None:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab = {tok: i for i, tok in enumerate(regular + specials)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    tokenizer.save(str(path))


def _encode(path: Path, text: str) -> list[int]:
    from tokenizers import Tokenizer

    return list(Tokenizer.from_file(str(path)).encode(text, add_special_tokens=False).ids)


class _Weights:
    """Seeded arrays: exact values plus optional noise, float32."""

    def __init__(self, noise: float) -> None:
        self.rng = np.random.default_rng(SEED)
        self.noise = noise

    def zeros(self, *shape: int, scale: float = 1.0) -> F32:
        if not self.noise:
            return np.zeros(shape, dtype=np.float32)
        return (self.rng.standard_normal(shape, dtype=np.float32) * (self.noise * scale)).astype(np.float32)


def _layer_norm(spec: Any, d: int, gamma: F32 | None = None, beta: F32 | None = None) -> None:
    spec.gamma = np.ones(d, dtype=np.float32) if gamma is None else gamma
    spec.beta = np.zeros(d, dtype=np.float32) if beta is None else beta


# Output-side weights (attention out, FFN fc2) get 1% of the noise: the residual stream must stay
# dominated by the scripted signal while the matrices stay dense.
_OUT = 0.01


def _quiet_attention(spec: Any, w: _Weights, d: int, n_in: int) -> None:
    """An attention block whose output is (almost) nothing. n_in: rows of linear[0] (3d or d)."""
    _layer_norm(spec.layer_norm, d)
    linears = spec.linear
    linears[0].weight = w.zeros(n_in, d)
    linears[0].bias = w.zeros(n_in)
    if len(linears) == 3:
        linears[1].weight = w.zeros(2 * d, d)
        linears[1].bias = w.zeros(2 * d)
    linears[-1].weight = w.zeros(d, d, scale=_OUT)
    linears[-1].bias = w.zeros(d, scale=_OUT)


def _quiet_ffn(spec: Any, w: _Weights, d: int, ffn: int) -> None:
    _layer_norm(spec.layer_norm, d)
    spec.linear_0.weight = w.zeros(ffn, d)
    spec.linear_0.bias = w.zeros(ffn)
    spec.linear_1.weight = w.zeros(d, ffn, scale=_OUT)
    spec.linear_1.bias = w.zeros(d, scale=_OUT)


def _whisper_spec_class() -> Any:
    """ctranslate2's WhisperSpec, imported without torch.

    ctranslate2.specs imports torch when it is installed (about a second) although numpy arrays need
    none of it; a None entry in sys.modules makes that optional import fail fast, once per process.
    """
    if "ctranslate2.specs" in sys.modules or "torch" in sys.modules:
        from ctranslate2.specs.whisper_spec import WhisperSpec
    else:
        sys.modules["torch"] = None  # type: ignore[assignment]
        try:
            from ctranslate2.specs.whisper_spec import WhisperSpec
        finally:
            del sys.modules["torch"]
    return WhisperSpec


def _build_spec(dims: Dims, vocab_size: int, script: list[int], gate: tuple[int, int, int]) -> Any:
    """script: the token that follows each decoder position; gate: (nospeech, endoftext, " you") ids."""
    WhisperSpec = _whisper_spec_class()

    d, w = dims.d_model, _Weights(dims.noise)
    silence_dim = d - 1  # decoder dimension that carries "the audio was silent"
    if d < N_MELS + 2 or len(script) > silence_dim:
        raise ValueError(f"phrase too long for d_model={d}: {len(script) - 1} tokens")
    spec = WhisperSpec(dims.encoder_layers, dims.heads, dims.decoder_layers, dims.heads)

    # Encoder. conv1: one channel per mel bin, GELU(gain * (level - threshold)): positive only for
    # bins clearly above the threshold. conv2 sums them into "loud" (channel 0) and "quiet" (channel 1).
    # Per-bin, not per-frame mean: faster-whisper pads the 30 s window with zeros *after*
    # normalisation, and those flat 0.0 frames must count as quiet.
    enc = spec.encoder
    conv1 = w.zeros(d, N_MELS, 3)
    conv1_bias = w.zeros(d)
    for b in range(N_MELS):
        conv1[b, b, 1] += LEVEL_GAIN
        conv1_bias[b] -= LEVEL_GAIN * LEVEL_THRESHOLD
    conv2 = w.zeros(d, d, 3, scale=_OUT)
    conv2_bias = w.zeros(d, scale=_OUT)
    conv2[0, :N_MELS, 1] += 1.0
    conv2[1, :N_MELS, 1] -= 1.0
    conv2_bias[0] -= LOUD_MIN
    conv2_bias[1] += LOUD_MIN
    enc.conv1.weight, enc.conv1.bias = conv1, conv1_bias
    enc.conv2.weight, enc.conv2.bias = conv2, conv2_bias
    enc.position_encodings.encodings = w.zeros(ENCODER_FRAMES, d, scale=_OUT)
    for layer in enc.layer:
        _quiet_attention(layer.self_attention, w, d, 3 * d)
        _quiet_ffn(layer.ffn, w, d, dims.ffn)
    _layer_norm(enc.layer_norm, d)

    # Decoder: one-hot positions, silence gate through cross-attention, scripted projection.
    dec = spec.decoder
    dec.embeddings.weight = w.zeros(vocab_size, d, scale=_OUT)
    positions = w.zeros(DECODER_POSITIONS, d, scale=_OUT)
    for p in range(len(script)):
        positions[p, p] += 1.0
    dec.position_encodings.encodings = positions
    head_dim = d // dims.heads
    for layer in dec.layer:
        _quiet_attention(layer.self_attention, w, d, 3 * d)
        _quiet_ffn(layer.ffn, w, d, dims.ffn)
        cross = layer.attention
        _quiet_attention(cross, w, d, d)
    # Only the first layer's cross-attention carries the gate. Query: constant (bias only) on head 0,
    # sharp enough that a few loud frames out of 1500 dominate the softmax.
    cross = dec.layer[0].attention
    cross.linear[0].bias[0] += 4.0 * np.sqrt(head_dim)
    cross.linear[1].weight[0, 0] += 1.0  # key <- loud channel
    cross.linear[1].weight[d, 1] += 1.0  # value <- quiet channel
    cross.linear[2].weight[silence_dim, 0] += 0.4
    _layer_norm(dec.layer_norm, d)

    projection = w.zeros(vocab_size, d, scale=_OUT)
    scale = 2.0
    for p in range(len(script) - 1):
        projection[script[p + 1], p] += scale
    # Silence: <|nospeech|> wins at <|startoftranscript|> (no_speech_prob ~1). ctranslate2 never ends a
    # transcript on its first step and faster-whisper suppresses <|nospeech|>, so the first token is
    # " you" (Whisper's own favourite on silence), then <|endoftext|>.
    no_speech, eot, you = gate
    projection[no_speech, silence_dim] += scale
    projection[eot, silence_dim] += 0.8 * scale
    projection[you, silence_dim] += 0.6 * scale
    dec.projection.weight = projection
    return spec


def generate(
    out_dir: Path,
    size: Literal["tiny", "real"] = "tiny",
    phrase: str = "what is the weather like today",
) -> Path:
    """Write a faster-whisper model directory to `out_dir` (created or replaced) and return it.

    Load it with `faster_whisper.WhisperModel(str(out_dir), device="cpu", compute_type="int8")`.
    Transcribes `phrase` for speech-like audio, and "you" with no_speech_prob ~1 for silence or
    faint noise (frames whose mean normalised log-mel stays under LEVEL_THRESHOLD). Deterministic.
    """
    if size not in ("tiny", "real"):
        raise ValueError(f"size must be 'tiny' or 'real', not {size!r}")
    dims = TINY if size == "tiny" else REAL
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)

    regular, merges = _regular_vocab(dims.n_regular)
    specials = _special_tokens()
    tokens = regular + specials
    tok_path = out_dir / "tokenizer.json"
    _write_tokenizer(tok_path, regular, merges, specials)
    eot = len(regular)
    ids = {tok: i for i, tok in enumerate(tokens)}
    phrase_ids = _encode(tok_path, phrase)
    if not phrase_ids:
        raise ValueError("phrase must not be empty")
    # What follows each position: sot -> notimestamps -> phrase -> endoftext.
    script = [ids["<|startoftranscript|>"], ids["<|notimestamps|>"], *phrase_ids, eot]

    you = ids["".join(bytes_to_unicode()[b] for b in SILENCE_TOKEN.encode())]
    spec = _build_spec(dims, len(tokens), script, (ids["<|nospeech|>"], eot, you))
    spec.register_vocabulary(tokens)
    space = ids[bytes_to_unicode()[ord(" ")]]
    spec.config.suppress_ids = []
    spec.config.suppress_ids_begin = [space, eot]  # as in Whisper: no blank or empty start
    spec.config.lang_ids = [ids[f"<|{code}|>"] for code in LANGUAGES]
    spec.config.alignment_heads = [
        (layer, head) for layer in range(dims.decoder_layers // 2, dims.decoder_layers) for head in range(dims.heads)
    ]
    spec.validate()
    if size == "real":
        spec.optimize(quantization="float16")
    spec.save(str(out_dir))

    preprocessor = {
        "feature_size": N_MELS,
        "sampling_rate": 16000,
        "hop_length": 160,
        "chunk_length": 30,
        "n_fft": 400,
    }
    (out_dir / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2))
    return out_dir
