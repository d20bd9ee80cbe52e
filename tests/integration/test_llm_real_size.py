"""The real-size (Qwen2.5-0.5B dimensions and tokenizer, Q4_K_M) scripted GGUF loads and speaks its script.

Slow: generating it writes ~1.2 GB of F16 and quantises it (15-60 s on 2 cores). Timings are
printed for the record, never asserted (`pytest -s` shows them).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from voicecli.engines.base import ChatMessage, LLMStats
from voicecli.engines.llm import LlamaLLM, inspect_gguf
from voicecli.testmodels import llama as gen

pytestmark = [pytest.mark.engines, pytest.mark.slow]


def test_real_size_model_is_q4_k_m_with_qwen_dimensions_and_tokenizer_and_speaks_its_script(tmp_path: Path) -> None:
    import llama_cpp

    path = gen.generate(tmp_path, "real")
    info = inspect_gguf(path)
    assert info.architecture == "qwen2" and info.n_tensors == 291
    assert 400e6 < path.stat().st_size < 600e6  # the real Qwen2.5-0.5B Q4_K_M is ~491 MB

    async def run() -> tuple[str, LlamaLLM, LLMStats]:
        model = LlamaLLM(path, threads=2)
        await model.start()
        try:
            stream = model.chat([ChatMessage("user", "What is the weather like?")], max_tokens=128)
            return await stream.text(), model, stream.stats
        finally:
            await model.close()

    text, model, stats = asyncio.run(asyncio.wait_for(run(), 120))
    assert text == gen.DEFAULT_REPLY
    meta = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    assert meta.n_vocab() == gen.QWEN_VOCAB
    dims = {k: meta.metadata[f"qwen2.{k}"] for k in ("embedding_length", "block_count", "feed_forward_length")}
    assert dims == {"embedding_length": "896", "block_count": "24", "feed_forward_length": "4864"}
    heads = (meta.metadata["qwen2.attention.head_count"], meta.metadata["qwen2.attention.head_count_kv"])
    assert heads == ("14", "2")
    assert meta.metadata["general.file_type"] == str(llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M)
    # Qwen2's own tokenizer: a user's words and the template cost the prompt tokens they cost the real model (a
    # synthetic merge table split this question into 20 tokens and the closing into 8), and the reply is Qwen2's
    # own 26 tokens.
    question = meta.tokenize(b"How far away is the nearest star from the Sun?", add_bos=False, special=True)
    assert question == [4340, 3041, 3123, 374, 279, 23480, 6774, 504, 279, 8059, 30]
    closing = meta.tokenize(b"<|im_end|>\n<|im_start|>assistant\n", add_bos=False, special=True)
    assert closing == [151645, 198, 151644, 77091, 198]
    assert stats.completion_tokens == len(meta.tokenize(gen.DEFAULT_REPLY.encode(), add_bos=False)) == 26
    ttft = (stats.first_token_at or stats.started_at) - stats.started_at
    size_mb = path.stat().st_size / 1e6
    print(f"\nreal-size: load {model.load_s:.2f}s, TTFT {ttft * 1000:.0f} ms, file {size_mb:.0f} MB")
