"""Generate GGUF chat models for llama.cpp locally (no download, no torch).

Both sizes are *scripted*: whatever the prompt, the model answers `reply` and stops.

How: a qwen2 model whose attention and FFN output projections are zero, so every layer passes
the residual stream through unchanged and the next token depends only on the current one.
The embedding of each reply token is a one-hot direction; the output projection maps it to the
next reply token (the last one to <|im_end|>). The prompt always ends with the ChatML generation
prompt "<|im_start|>assistant\\n", whose last token "\\n" starts the chain. Every other token's
embedding points at a shared "default" direction that predicts <|im_end|>. All rows hold a single
non-zero value, so the chain survives any quantisation.

The tiny model's reply is split into pieces along the qwen2 pre-tokenizer's word boundaries; a piece
that would repeat an earlier one is glued to its predecessor so the chain has no repeated token. The
real-size model's reply is Qwen2's own tokens (which must not repeat).

"tiny": hidden 64+, 2 layers, ~2k vocab: generated in well under a second.
"real": Qwen2.5-0.5B dimensions (hidden 896, 24 layers, 14 heads / 2 kv heads, FFN 4864), random
Q/K/V/gate/up weights (the real compute cost per token), written as F16 and quantised to Q4_K_M by llama.cpp's
own quantiser, with Qwen2's real tokenizer (151,936 tokens and its BPE merges, from the vocabulary llama.cpp's
own tests use, shipped in the llama-cpp-python source package: realweights "qwen2-vocab"). The reply is then
the real model's own tokens, and a user's words cost the prompt tokens they would cost it: a synthetic merge
table made of lowercase letter runs had split text into ~1.8x as many tokens ("How far away is the nearest
star from the Sun?": 20 against 11; the template's closing "<|im_end|>\\n<|im_start|>assistant\\n": 8
against 5), and every prompt evaluated after the user's pause cost ~1.8x what it costs with the real model.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import string
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

DEFAULT_REPLY = (
    "Sure, here is a quick answer: the weather today looks sunny and warm. "
    "Expect light wind after lunch; enjoy your day!"
)

# Qwen2.5's ChatML template, reduced to what a voice assistant sends (no tools).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
QWEN_VOCAB = 151_936  # Qwen2.5's padded vocabulary size
# The qwen2 pre-tokenizer, with Python's `re` classes ([^\W\d_] = letters).
_PRETOKEN = re.compile(
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\w]?[^\W\d_]+|\d| ?[^\s\w]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_START = "\n"  # last piece of the generation prompt: it starts the chain


@dataclass(frozen=True)
class _Dims:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int


def generate(
    out_dir: Path,
    size: Literal["tiny", "real"] = "tiny",
    reply: str = DEFAULT_REPLY,
    *,
    seed: int = 0,
    threads: int = 2,
) -> Path:
    """Write a scripted chat GGUF into `out_dir` and return its path.

    "tiny" is F32 (instant); "real" is Q4_K_M (takes tens of seconds and ~1 GB of temp disk).
    """
    if not reply.strip():
        raise ValueError("reply must contain some text")
    out_dir.mkdir(parents=True, exist_ok=True)
    if size == "tiny":
        vocab = _build_vocab(chain_pieces(reply))
        hidden = max(64, -(-(len(vocab.chain) + 2) // 64) * 64)
        dims = _Dims(hidden=hidden, layers=2, heads=4, kv_heads=2, ffn=128)
        out = out_dir / "scripted-tiny.gguf"
        _write_atomic(out, lambda p: _write(p, dims, vocab, seed=seed, dtype=np.float32))
        return out
    if size != "real":
        raise ValueError(f"size must be 'tiny' or 'real', got {size!r}")
    dims = _Dims(hidden=896, layers=24, heads=14, kv_heads=2, ffn=4864)
    vocab = _qwen_vocab(reply)
    if len(vocab.chain) + 2 > dims.hidden:
        raise ValueError(f"reply too long for a scripted model: {len(vocab.chain)} tokens")
    out = out_dir / "scripted-qwen2.5-0.5b-q4_k_m.gguf"
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        f16 = Path(tmp) / "f16.gguf"
        _write(f16, dims, vocab, seed=seed, dtype=np.float16)
        _write_atomic(out, lambda p: _quantize(f16, p, threads))
    return out


def chain_pieces(reply: str) -> list[str]:
    """Split `reply` into unique token texts whose concatenation is `reply`."""
    pieces: list[str] = []
    for piece in _PRETOKEN.findall(reply):
        while (piece in pieces or piece == _START) and pieces:
            piece = pieces.pop() + piece  # glue a repeat to its predecessor
        pieces.append(piece)
    if len(pieces) > 1 and pieces[0] == _START:  # the start token cannot also be a reply token
        pieces[:2] = [pieces[0] + pieces[1]]
    if "".join(pieces) != reply or len(set(pieces)) != len(pieces) or _START in pieces:
        raise ValueError(f"cannot script this reply as a chain of unique tokens: {reply!r}")
    return pieces


def _byte_chars() -> dict[int, str]:
    """GPT-2's byte -> printable unicode mapping used by byte-level BPE vocabularies."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    out: dict[int, str] = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in out:
            out[b] = chr(256 + extra)
            extra += 1
    return out


_BYTES = _byte_chars()


def _encode(text: str) -> str:
    return "".join(_BYTES[b] for b in text.encode("utf-8"))


def _synthetic_words() -> Iterator[tuple[str, str]]:
    """(left, right) merges that build lowercase words, shortest first, with and without a leading space."""
    space = _BYTES[ord(" ")]
    letters = string.ascii_lowercase
    for c in letters:
        yield space, c
    for length in itertools.count(2):
        for chars in itertools.product(letters, repeat=length):
            word = "".join(chars)
            yield word[:-1], word[-1]
            yield space + word[:-1], word[-1]


@dataclass
class _Vocab:
    tokens: list[str]
    types: list[int]
    merges: list[str]
    chain: list[int]  # token ids of the reply pieces, in order
    start: int  # id of the "\n" token
    eos: int  # <|im_end|>
    bos: int  # <|endoftext|>


def _build_vocab(pieces: list[str]) -> _Vocab:
    """The tiny model's vocabulary: byte tokens, reply pieces, synthetic merges, ChatML specials."""
    import gguf

    tokens = [_BYTES[b] for b in range(256)]
    index = {t: i for i, t in enumerate(tokens)}
    merges: list[str] = []

    def add(left: str, right: str) -> None:
        text = left + right
        if text not in index:
            index[text] = len(tokens)
            tokens.append(text)
            merges.append(f"{left} {right}")

    # Prefix merges for each reply piece first (lowest rank), so re-tokenising the reply usually
    # reproduces the generated tokens and llama.cpp's prefix cache covers past replies.
    for piece in pieces:
        enc = _encode(piece)
        for i in range(2, len(enc) + 1):
            add(enc[: i - 1], enc[i - 1])
        if enc not in index:
            index[enc] = len(tokens)
            tokens.append(enc)
    n_regular = len(tokens) + 26 + 2 * 26 * 26
    for left, right in _synthetic_words():
        if len(tokens) >= n_regular:
            break
        add(left, right)
    types = [int(gguf.TokenType.NORMAL)] * len(tokens)
    for special in SPECIALS:
        index[special] = len(tokens)
        tokens.append(special)
        types.append(int(gguf.TokenType.CONTROL))
    return _Vocab(
        tokens=tokens,
        types=types,
        merges=merges,
        chain=[index[_encode(p)] for p in pieces],
        start=index[_encode(_START)],
        eos=index["<|im_end|>"],
        bos=index["<|endoftext|>"],
    )


_Spec = tuple[tuple[int, ...], np.dtype, Callable[[], npt.NDArray[np.floating]]]


def _qwen_vocab(reply: str) -> _Vocab:
    """Qwen2's real vocabulary and merges; the reply chain is the reply as Qwen2's tokenizer splits it (llama.cpp's
    own tokenizer on the same vocabulary), which must not repeat a token nor contain the start token "\\n"."""
    import gguf
    import llama_cpp

    from voicecli.testmodels import realweights

    path = realweights.fetch("qwen2-vocab")
    fields = gguf.GGUFReader(str(path)).fields

    def strings(key: str) -> list[str]:
        f = fields[key]
        return [bytes(f.parts[i]).decode("utf-8") for i in f.data]

    tokens, merges = strings("tokenizer.ggml.tokens"), strings("tokenizer.ggml.merges")
    types_field = fields["tokenizer.ggml.token_type"]
    types = [int(types_field.parts[i][0]) for i in types_field.data]
    if len(tokens) != QWEN_VOCAB:
        raise ValueError(f"{path} has {len(tokens)} tokens, expected Qwen2's {QWEN_VOCAB}")
    ids = {t: i for i, t in enumerate(tokens)}
    tok = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    try:
        chain = tok.tokenize(reply.encode("utf-8"), add_bos=False, special=False)
    finally:
        tok.close()
    start = ids[_encode(_START)]
    if len(set(chain)) != len(chain) or start in chain:
        raise ValueError(f"cannot script this reply as a chain of unique Qwen2 tokens: {reply!r}")
    return _Vocab(tokens=tokens, types=types, merges=merges, chain=chain, start=start,
                  eos=ids["<|im_end|>"], bos=ids["<|endoftext|>"])  # fmt: skip


def _write(path: Path, dims: _Dims, vocab: _Vocab, *, seed: int, dtype: type[np.floating]) -> None:
    import gguf

    n_vocab, d = len(vocab.tokens), dims.hidden
    head_dim = d // dims.heads
    kv = dims.kv_heads * head_dim
    rng = np.random.default_rng(seed)

    w = gguf.GGUFWriter(str(path), "qwen2")
    w.add_name("voicecli scripted qwen2")
    w.add_context_length(32768)
    w.add_embedding_length(d)
    w.add_block_count(dims.layers)
    w.add_feed_forward_length(dims.ffn)
    w.add_head_count(dims.heads)
    w.add_head_count_kv(dims.kv_heads)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(1_000_000.0)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if dtype == np.float16 else gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(vocab.tokens)
    w.add_token_types(vocab.types)
    w.add_token_merges(vocab.merges)
    w.add_bos_token_id(vocab.bos)
    w.add_eos_token_id(vocab.eos)
    w.add_pad_token_id(vocab.bos)
    w.add_add_bos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)

    f32 = np.dtype(np.float32)  # norms and biases stay F32, as in real files
    big = np.dtype(dtype)

    def zeros(*shape: int) -> _Spec:
        return shape, big, lambda: np.zeros(shape, dtype=big)

    def ones(n: int) -> _Spec:
        return (n,), f32, lambda: np.ones(n, dtype=f32)

    def bias(n: int) -> _Spec:
        return (n,), f32, lambda: np.zeros(n, dtype=f32)

    def rand(*shape: int) -> _Spec:
        return shape, big, lambda: (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(big)

    def embedding() -> npt.NDArray[np.floating]:
        # Row i: one-hot. Chain token k -> direction k+1; everything else -> direction 0.
        emb = np.zeros((n_vocab, d), dtype=big)
        emb[:, 0] = 1.0
        for k, tok in enumerate([vocab.start, *vocab.chain]):
            emb[tok, 0] = 0.0
            emb[tok, k + 1] = 1.0
        return emb

    def output() -> npt.NDArray[np.floating]:
        # After RMSNorm a one-hot row is sqrt(d) in its direction: logit 4*sqrt(d) for the successor.
        out = np.zeros((n_vocab, d), dtype=big)
        out[vocab.eos, 0] = 4.0
        for k, nxt in enumerate([*vocab.chain, vocab.eos]):
            out[nxt, k + 1] = 4.0
        return out

    tensors: dict[str, _Spec] = {"token_embd.weight": ((n_vocab, d), big, embedding)}
    for i in range(dims.layers):
        b = f"blk.{i}."
        tensors |= {
            b + "attn_norm.weight": ones(d),
            b + "attn_q.weight": rand(d, d),
            b + "attn_q.bias": bias(d),
            b + "attn_k.weight": rand(kv, d),
            b + "attn_k.bias": bias(kv),
            b + "attn_v.weight": rand(kv, d),
            b + "attn_v.bias": bias(kv),
            b + "attn_output.weight": zeros(d, d),  # zero: the residual passes through
            b + "ffn_norm.weight": ones(d),
            b + "ffn_gate.weight": rand(dims.ffn, d),
            b + "ffn_up.weight": rand(dims.ffn, d),
            b + "ffn_down.weight": zeros(d, dims.ffn),  # zero: the residual passes through
        }
    tensors["output_norm.weight"] = ones(d)
    tensors["output.weight"] = ((n_vocab, d), big, output)

    # Declare every tensor, then stream them one at a time: a real-size model never sits in memory whole.
    for name, (shape, dt, _) in tensors.items():
        w.add_tensor_info(name, shape, dt, int(np.prod(shape)) * dt.itemsize)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for _, _, make in tensors.values():
        w.write_tensor_data(make())
    w.close()


def _quantize(src: Path, dst: Path, threads: int) -> None:
    """Q4_K_M with llama.cpp's own quantiser (the same mix of Q4_K/Q5_0/Q6_K/Q8_0 as real files)."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = threads
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
    # llama-cpp-python routes llama.cpp's log through this logger; keep the per-tensor lines quiet.
    log = logging.getLogger("llama-cpp-python")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    finally:
        log.setLevel(level)
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize failed with code {rc}")


def _write_atomic(out: Path, write: Callable[[Path], None]) -> None:
    """Write to a temp name and rename, so an interrupted run never leaves a half file behind."""
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
