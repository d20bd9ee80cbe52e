"""One GGUF header walk for `voicecli models` and the llama.cpp engine (issue 17, defect 10).

The two used to disagree: a tensor type the installed `gguf` package does not know passed the models
check and was refused by the engine as corrupt, and a nested metadata array went the other way.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
import pytest

from voicecli import models
from voicecli.engines.llm import inspect_gguf
from voicecli.errors import ModelError
from voicecli.testmodels import llama as gen

UNKNOWN_TYPE = max(gguf.GGMLQuantizationType) + 1  # unknown to the installed gguf package by construction


@pytest.fixture(scope="module")
def chat_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return gen.generate(tmp_path_factory.mktemp("gguf"))


def with_unknown_tensor_type(src: Path, dst: Path) -> int:
    """Copy `src` with its last tensor's type id set to UNKNOWN_TYPE; return where that tensor's data starts."""
    reader = gguf.GGUFReader(src)
    last = max(reader.tensors, key=lambda t: t.data_offset)
    # The tensor info: name length (8), name, n_dims (4), dims (8 each), then the type id (4).
    pos = last.field.offset + 8 + len(last.name.encode()) + 4 + 8 * len(last.shape)
    offset, old_type = int(last.data_offset), int(last.tensor_type)
    del reader, last  # the reader holds the file mapped
    data = bytearray(src.read_bytes())
    assert int.from_bytes(data[pos : pos + 4], "little") == old_type
    data[pos : pos + 4] = UNKNOWN_TYPE.to_bytes(4, "little")
    dst.write_bytes(bytes(data))
    return offset


def verdict(check: Callable[[Path], object], path: Path) -> str:
    try:
        check(path)
    except ModelError as e:
        why = e.message.replace(str(path), "FILE")  # the test's directory may say "truncated" too
        return "truncated" if "truncated" in why else f"refused: {why}"
    return "ok"


def both_verdicts(path: Path) -> tuple[str, str, str]:
    """What `voicecli models` (pull, resolve before talk) and the engine before its load say."""
    resolve = lambda p: models.resolve("llm", str(p), p.parent)  # noqa: E731 - a local path, validated
    return verdict(models.check_gguf, path), verdict(resolve, path), verdict(inspect_gguf, path)


@pytest.mark.parametrize(
    ("cut", "expected"),
    [
        (None, "ok"),  # whole: tolerated, llama.cpp checks what the gguf package cannot size
        (1, "ok"),  # only the unknown tensor's first byte can be checked
        (0, "truncated"),  # its first byte is missing
    ],
)
def test_a_tensor_type_unknown_to_the_gguf_package_gets_one_verdict_everywhere(
    chat_gguf: Path, tmp_path: Path, cut: int | None, expected: str
) -> None:
    path = tmp_path / "newer-type.gguf"
    offset = with_unknown_tensor_type(chat_gguf, path)
    if cut is not None:
        path.write_bytes(path.read_bytes()[: offset + cut])
    assert both_verdicts(path) == (expected, expected, expected)
    if expected == "ok":
        from voicecli import gguf_header

        header = gguf_header.read(path)
        assert header.unsized_tensors == 1 and header.architecture == "qwen2"


def test_a_nested_metadata_array_gets_one_verdict_everywhere(tmp_path: Path) -> None:
    path = tmp_path / "nested.gguf"
    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_array("example.nested", [[1, 2], [3]])
    writer.add_chat_template(gen.CHAT_TEMPLATE)
    writer.add_tensor("output.weight", np.ones((8, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert both_verdicts(path) == ("ok", "ok", "ok")


def test_the_walk_reads_what_the_gguf_reader_reads(chat_gguf: Path) -> None:
    from voicecli import gguf_header

    reader = gguf.GGUFReader(chat_gguf)
    header = gguf_header.read(chat_gguf)
    assert header.n_tensors == len(reader.tensors)
    assert header.data_bytes == max(t.data_offset + int(t.n_bytes) for t in reader.tensors)
    assert header.architecture == "qwen2" and header.chat_template == gen.CHAT_TEMPLATE
    assert header.unsized_tensors == 0 and header.file_bytes == chat_gguf.stat().st_size


def test_truncated_and_corrupt_files_get_one_verdict_everywhere(chat_gguf: Path, tmp_path: Path) -> None:
    data = chat_gguf.read_bytes()
    cut = tmp_path / "cut.gguf"
    for keep in (6, 30, 5000, len(data) // 2, len(data) - 1):  # header, vocabulary, tensor data
        cut.write_bytes(data[:keep])
        assert both_verdicts(cut) == ("truncated",) * 3, keep
    bad = tmp_path / "bad-version.gguf"
    bad.write_bytes(data[:4] + (99).to_bytes(4, "little") + data[8:])
    assert all("version 99" in v for v in both_verdicts(bad))
