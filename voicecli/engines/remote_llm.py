"""A language model on another machine, through the OpenAI chat-completions API with streaming.

Works with llama.cpp's `llama-server`, `python -m llama_cpp.server`, Ollama and vLLM (anything that serves
`GET /v1/models` and `POST /v1/chat/completions` with `stream: true`). Same `LanguageModel` protocol as the
local llama.cpp adapter, so the chunker, the TTS and barge-in are unchanged.

HTTP client: the standard library (`http.client`), one worker thread per reply. Measured against httpx 0.28's
AsyncClient (reading on the event loop) with the same SSE parsing, on 2 cores (Intel Xeon, KVM) next to a loop
that is busy 10% of the time like the session's, against a local SSE server that stamps every delta:
* latency from the server writing a delta to the loop holding it, 100 deltas/s, 3 runs each: p50 0.29-0.41 ms
  (stdlib) against 0.45-0.65 ms (httpx), p95 about the same (2.0-3.3 ms against 1.7-5.2 ms); process CPU per
  delta 1.20-1.37 ms against 1.36-1.64 ms (both including the busy loop); in a burst both ~30 us per delta.
* cancel() -> the server sees the connection closed: p50 0.2 ms, max 2 ms (stdlib: `socket.shutdown` right
  inside cancel(), from any thread, whatever the loop is doing) against p50 0.9 ms, max 7 ms (httpx: the read
  task must be cancelled on the loop first; a loop blocked elsewhere delays it further).
* no new dependency (httpx is not one of voicecli's), and no HTTP_PROXY silently rerouting a LAN address (httpx
  honours it by default).

Streaming: the worker reads the server-sent events line by line and hands each text delta to the loop through
a bounded handoff (QUEUE_DELTAS credits; the worker waits when they are used up, and TCP then slows the
server down). Cancellation (barge-in): a stop flag plus `shutdown(SHUT_RDWR)` on the socket, so the blocked
read returns at once and the server sees the client go away within a delta; servers stop generating when they
find the client gone (llama_cpp.server at its next token: 3 ms after cancel(), checked in
tests/integration/test_remote_llm.py; the others in docs/remote-llm.md). Queued deltas are dropped.

Faults (each an EngineError with the server's own text when it sent one): unreachable at start (names the URL
and what to check), a model the server does not have (lists the ones it has), HTTP 4xx/5xx, no first token
within `timeout_s` (also the longest silence allowed between two deltas), the connection lost mid-reply. After
start every fault is raised from the stream's iteration, never from chat(): the session speaks what was ready
plus an apology and the next turn tries again on a fresh connection.

Token budget without the local tokenizer: `count_tokens` never touches the network (History calls it on the
event loop). It adds per-message content counts and a per-message template overhead:
* content: exact counts from the server's tokenizer when it has one (llama-server `POST /tokenize`, vLLM
  `POST /tokenize`, llama_cpp.server `POST /extras/tokenize/count`), fetched after each reply for the messages
  not counted yet, off the critical path; otherwise chars / chars-per-token x 1.15. Chars-per-token starts at
  3.5 and is learned from the exact counts, or, without a tokenizer, from the prompt sizes the server reports.
* overhead per message: learned from `usage.prompt_tokens` (always in the non-streamed warm-up's answer, and in
  the last chunk of a stream with `stream_options.include_usage` where the server supports it).
LLMStats: prompt and completion tokens from the server's `usage` when it sends one (else this estimate and the
number of deltas); `prompt_tokens_evaluated` from llama-server's `timings` or `usage.prompt_tokens_details`
(else it is the whole prompt: cache reuse unknown).

The API key goes only into the Authorization header: never into a message, a log line, an event or repr().
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import math
import socket
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from voicecli.engines.base import ChatMessage, DeltaStream
from voicecli.engines.llm import QUEUE_DELTAS, Sampling
from voicecli.errors import EngineError

CONNECT_TIMEOUT_S = 5.0  # TCP connect (and the /models request at start)
WARMUP_TIMEOUT_S = 60.0  # the first request may make the server load the model (Ollama does)
TOKENIZE_TIMEOUT_S = 2.0
CHARS_PER_TOKEN = 3.5  # a conservative start for English with a BPE vocabulary
ESTIMATE_MARGIN = 1.15  # estimates err on the large side: the budget is a ceiling
OVERHEAD_PER_MESSAGE = 8.0  # template tokens around one message (ChatML takes 5) until the server tells
_MAX_EXACT = 512  # texts whose exact token count is remembered
_MAX_TOKENIZE_PER_TURN = 4
PUT_SLICE_S = 0.25  # how often a worker waiting for the reader checks that one is still there
_ERROR_TEXT = 400  # characters of a server's error text kept in a message
_END = object()

CHECK_SERVER = (
    "check that the server is running and listens on that host and port (llama-server --host 0.0.0.0 "
    "--port 8080, `ollama serve`, `vllm serve MODEL`), that no firewall blocks the port, and that the URL "
    "ends in /v1; see docs/remote-llm.md"
)


@dataclass(frozen=True)
class Endpoint:
    """Where the server is: `base` is the API root (.../v1), `root` the server root (for /tokenize)."""

    scheme: str
    host: str
    port: int
    base: str  # path prefix of the OpenAI API, e.g. "/v1"
    url: str  # as shown to the user: scheme://host:port/base (never any credentials)

    @property
    def root(self) -> str:
        return self.base[: -len("/v1")] if self.base.endswith("/v1") else ""


def parse_url(url: str) -> Endpoint:
    """`http://HOST:PORT/v1` -> Endpoint. A bare `http://HOST:PORT` means `/v1`; a pasted
    `.../v1/chat/completions` is cut back to `/v1`."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise EngineError(
            f"the LLM server URL {url!r} is not an http(s) URL with a host",
            hint="pass it like --llm-url http://192.168.1.20:8080/v1",
        )
    path = parts.path.rstrip("/")
    for tail in ("/chat/completions", "/completions", "/models"):
        if path.endswith(tail):
            path = path[: -len(tail)]
    if not path:
        path = "/v1"
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise EngineError(f"the LLM server URL {url!r} has a bad port", hint="e.g. http://HOST:8080/v1") from None
    host = parts.hostname
    shown_host = f"[{host}]" if ":" in host else host
    return Endpoint(parts.scheme, host, port, path, f"{parts.scheme}://{shown_host}:{port}{path}")


class _HTTPStatusError(Exception):
    def __init__(self, status: int, reason: str, text: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status, self.reason, self.text = status, reason, text


def _error_text(body: bytes) -> str:
    """The server's own words from an error body: OpenAI's {"error": {"message"}}, FastAPI's {"detail"}, ..."""
    raw = body.decode("utf-8", errors="replace").strip()
    try:
        doc = json.loads(raw)
    except ValueError:
        return raw[:_ERROR_TEXT]
    if isinstance(doc, dict):
        err = doc.get("error", doc.get("detail", doc.get("message")))
        if isinstance(err, dict):
            err = err.get("message", err)
        if err is not None:
            text = err if isinstance(err, str) else json.dumps(err)
            return text.strip()[:_ERROR_TEXT]
    return raw[:_ERROR_TEXT]


class RemoteLLM:
    """A chat model behind an OpenAI-compatible server. `await start()` once, then `chat()` per turn."""

    def __init__(
        self,
        url: str,
        *,
        model: str = "",
        api_key: str = "",
        timeout_s: float = 20.0,
        sampling: Sampling | None = None,
        system_prompt: str = "",
    ) -> None:
        self.endpoint = parse_url(url)
        self.url = self.endpoint.url
        self.model = model  # the name asked for; after start() the one in use
        self._api_key = api_key
        self.timeout_s = timeout_s
        self._sampling = sampling or Sampling()
        self._system = system_prompt or "You are a helpful assistant."
        self.models: list[str] = []  # what the server lists (after start)
        self.tokenizer = ""  # the tokenize endpoint found at start ("" = none: estimates only)
        self._started = False
        self._current: RemoteStream | None = None
        self._workers: set[threading.Thread] = set()
        self._turn = 0  # chat() calls so far (written on the loop only)
        self._tokenize_lock = threading.Lock()  # held around each background tokenize request
        # token accounting (see the module docstring): written by worker threads under _count_lock, read on the loop
        self._count_lock = threading.Lock()
        self._exact: dict[str, int] = {}
        self._chars = 0.0  # texts counted so far: characters and tokens, for chars-per-token
        self._tokens = 0.0
        self._per_message = OVERHEAD_PER_MESSAGE
        self.load_s = 0.0
        self.warmup_s = 0.0

    def __repr__(self) -> str:
        return f"RemoteLLM({self.url!r}, model={self.model!r})"

    # --- LanguageModel ------------------------------------------------------------------------

    async def start(self) -> None:
        if not self._started:
            await asyncio.to_thread(self._start)
            self._started = True

    def chat(self, messages: Sequence[ChatMessage], max_tokens: int = 256) -> RemoteStream:
        """Start streaming a reply; a previous stream still running is cancelled first. Network faults come
        out of the stream's iteration, never from here."""
        if not self._started:
            raise EngineError("the remote language model is not started", hint="await RemoteLLM.start() first")
        if self._current is not None:
            self._current.cancel()
        msgs = list(messages)
        self._turn += 1  # background token counting of the previous turn gives way (see _count_exactly)
        stream = RemoteStream(asyncio.get_running_loop())
        stream.stats.prompt_tokens = self.count_tokens(msgs)
        worker = threading.Thread(
            target=self._generate, args=(stream, msgs, max_tokens, self._turn), name="remote-llm", daemon=True
        )
        self._workers.add(worker)
        self._current = stream
        worker.start()
        return stream

    def count_tokens(self, messages: Sequence[ChatMessage]) -> int:
        """Prompt tokens for these messages: exact content counts where the server's tokenizer gave them,
        estimates (with a margin) elsewhere, plus the learned template overhead. Never blocks."""
        total = sum(self._content_tokens(m.content) for m in messages)
        return math.ceil(total + self._per_message * len(messages))

    async def close(self) -> None:
        if self._current is not None:
            self._current.cancel()
        workers = list(self._workers)
        if workers:

            def join() -> None:
                for w in workers:
                    w.join(1.0)

            await asyncio.to_thread(join)

    # --- token accounting ---------------------------------------------------------------------

    @property
    def chars_per_token(self) -> float:
        if self._tokens <= 0:
            return CHARS_PER_TOKEN
        return min(8.0, max(1.0, self._chars / self._tokens))

    def _content_tokens(self, text: str) -> float:
        exact = self._exact.get(text)
        if exact is not None:
            return float(exact)
        return math.ceil(len(text) / self.chars_per_token * ESTIMATE_MARGIN)

    def _learn_exact(self, text: str, tokens: int) -> None:
        with self._count_lock:
            if text in self._exact:
                return
            if len(self._exact) >= _MAX_EXACT:
                self._exact.pop(next(iter(self._exact)))
            self._exact[text] = tokens
            self._chars += len(text)
            self._tokens += tokens

    def _learn_usage(self, messages: Sequence[ChatMessage], prompt_tokens: int) -> None:
        """The server counted the whole prompt: correct the template overhead (all contents counted exactly) or
        chars-per-token (some estimated)."""
        if not messages or prompt_tokens <= 0:
            return
        with self._count_lock:
            counts = [self._exact.get(m.content) for m in messages]
            known = sum(c for c in counts if c is not None)
            unknown = [m.content for m, c in zip(messages, counts, strict=True) if c is None]
            if not unknown:
                self._per_message = max(0.0, (prompt_tokens - known) / len(messages))
                return
            content = prompt_tokens - known - self._per_message * len(messages)
            chars = sum(len(t) for t in unknown)
            if content > 0 and chars > 0 and not self.tokenizer:
                self._chars += chars
                self._tokens += content

    # --- worker threads -----------------------------------------------------------------------

    def _headers(self, stream: bool = False) -> dict[str, str]:
        h = {"Content-Type": "application/json", "User-Agent": "voicecli"}
        if stream:
            h["Accept"] = "text/event-stream"
        if self._api_key:
            h["Authorization"] = f"Bearer {self._api_key}"
        return h

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        ep = self.endpoint
        if ep.scheme == "https":
            return http.client.HTTPSConnection(ep.host, ep.port, timeout=timeout, context=ssl.create_default_context())
        return http.client.HTTPConnection(ep.host, ep.port, timeout=timeout)

    def _request(self, method: str, path: str, body: Any, timeout: float) -> Any:
        """One plain JSON request. Raises _HTTPStatusError for a non-2xx answer, OSError for network faults."""
        conn = self._connection(timeout)
        try:
            data = None if body is None else json.dumps(body).encode("utf-8")
            conn.request(method, path, data, self._headers())
            resp = conn.getresponse()
            raw = resp.read()
            if not 200 <= resp.status < 300:
                raise _HTTPStatusError(resp.status, resp.reason, _error_text(raw))
            return json.loads(raw)
        finally:
            conn.close()

    def _redact(self, text: str) -> str:
        """A server's own words, minus the API key should it echo it back."""
        return text.replace(self._api_key, "***") if self._api_key else text

    def _unreachable(self, e: BaseException, doing: str) -> EngineError:
        if isinstance(e, socket.gaierror):
            why = f"the host name {self.endpoint.host!r} does not resolve"
        elif isinstance(e, ConnectionRefusedError):
            why = "connection refused (nothing listens on that port)"
        elif isinstance(e, TimeoutError):
            why = f"no answer within {CONNECT_TIMEOUT_S:g} s"
        elif isinstance(e, ssl.SSLError):
            why = f"TLS failed ({e.reason or e})"
        else:
            why = f"{type(e).__name__}: {e}"
        return EngineError(f"cannot reach the LLM server at {self.url} ({doing}): {why}", hint=CHECK_SERVER)

    def _status_error(self, e: _HTTPStatusError, doing: str) -> EngineError:
        if e.status in (401, 403):
            hint = "the server wants an API key: set llm.api_key in the config or VOICECLI_LLM_API_KEY"
        elif e.status == 404:
            hint = f"check the URL ({self.url}: it should end in /v1) and the model name"
        elif e.status >= 500:
            hint = "the server failed: its own log says why"
        else:
            hint = "the server rejected the request: its message says why"
        text = f": {self._redact(e.text)}" if e.text else ""
        return EngineError(f"the LLM server at {self.url} answered {e.status} {e.reason} to {doing}{text}", hint=hint)

    def _start(self) -> None:
        t0 = time.monotonic()
        base = self.endpoint.base
        try:
            listing = self._request("GET", f"{base}/models", None, CONNECT_TIMEOUT_S)
        except _HTTPStatusError as e:
            if e.status == 404 and self.model:
                listing = None  # a server that lists nothing: trust the name given
            else:
                raise self._status_error(e, "GET /models") from None
        except (OSError, http.client.HTTPException) as e:
            raise self._unreachable(e, "GET /models") from None
        except ValueError:
            raise EngineError(
                f"{self.url} does not answer like an OpenAI-compatible server (GET /models is not JSON)",
                hint="point --llm-url at the API root, e.g. http://HOST:8080/v1",
            ) from None
        if listing is not None:
            data = listing.get("data") if isinstance(listing, dict) else None
            self.models = [str(m.get("id")) for m in data or [] if isinstance(m, dict) and m.get("id")]
            self.model = self._pick_model()
        self.load_s = time.monotonic() - t0
        # Warm up: the first request may load the model; it leaves the system prompt in the server's cache and
        # tells the template overhead (usage.prompt_tokens).
        warm = [ChatMessage("system", self._system), ChatMessage("user", "Hi")]
        self._find_tokenizer([m.content for m in warm])
        t0 = time.monotonic()
        try:
            answer = self._request(
                "POST",
                f"{base}/chat/completions",
                self._body(warm, 1, stream=False),
                max(WARMUP_TIMEOUT_S, self.timeout_s),
            )
        except _HTTPStatusError as e:
            raise self._status_error(e, f"a first chat request (model {self.model!r})") from None
        except TimeoutError:
            raise EngineError(
                f"the LLM server at {self.url} did not answer a one-token request within "
                f"{max(WARMUP_TIMEOUT_S, self.timeout_s):g} s (model {self.model!r})",
                hint="the server is overloaded or still loading the model: try again, or raise llm.timeout_s",
            ) from None
        except (OSError, http.client.HTTPException) as e:
            raise self._unreachable(e, "a first chat request") from None
        except ValueError:
            raise EngineError(f"the LLM server at {self.url} sent a chat answer that is not JSON") from None
        usage = answer.get("usage") if isinstance(answer, dict) else None
        if isinstance(usage, dict) and isinstance(usage.get("prompt_tokens"), int):
            self._learn_usage(warm, usage["prompt_tokens"])
        self.warmup_s = time.monotonic() - t0

    def _pick_model(self) -> str:
        if not self.models:
            raise EngineError(
                f"the LLM server at {self.url} lists no models (GET /models)",
                hint="load a model on the server (e.g. `ollama pull llama3.2`), or pass its name with --llm-model",
            )
        if not self.model:
            return self.models[0]
        for name in (self.model, f"{self.model}:latest"):  # Ollama's tag default
            if name in self.models:
                return name
        raise EngineError(
            f"the LLM server at {self.url} has no model {self.model!r}; it has: {', '.join(self.models)}",
            hint="pass one of those with --llm-model (or llm.model in the config), or leave it out for the first",
        )

    def _find_tokenizer(self, texts: Sequence[str]) -> None:
        """Which tokenize endpoint the server has, tried on `texts[0]`; the counts of all `texts` are kept."""
        root, text = self.endpoint.root, texts[0]
        candidates: list[tuple[str, str, dict[str, Any]]] = [
            ("llama-server", f"{root}/tokenize", {"content": text, "add_special": False}),
            ("vllm", f"{root}/tokenize", {"model": self.model, "prompt": text, "add_special_tokens": False}),
            ("llama_cpp.server", f"{root}/extras/tokenize/count", {"model": self.model, "input": text}),
        ]
        for name, path, body in candidates:
            count = self._tokenize_with(path, body)
            if count is not None:
                self.tokenizer = name
                self._learn_exact(text, count)
                for other in texts[1:]:
                    n = self._tokenize(other)
                    if n is not None:
                        self._learn_exact(other, n)
                return

    def _tokenize_with(self, path: str, body: dict[str, Any]) -> int | None:
        try:
            doc = self._request("POST", path, body, TOKENIZE_TIMEOUT_S)
        except (_HTTPStatusError, OSError, http.client.HTTPException, ValueError):
            return None
        if not isinstance(doc, dict):
            return None
        if isinstance(doc.get("count"), int):
            return int(doc["count"])
        if isinstance(doc.get("tokens"), list):
            return len(doc["tokens"])
        return None

    def _tokenize(self, text: str) -> int | None:
        root = self.endpoint.root
        if self.tokenizer == "llama-server":
            return self._tokenize_with(f"{root}/tokenize", {"content": text, "add_special": False})
        if self.tokenizer == "vllm":
            body = {"model": self.model, "prompt": text, "add_special_tokens": False}
            return self._tokenize_with(f"{root}/tokenize", body)
        if self.tokenizer == "llama_cpp.server":
            return self._tokenize_with(f"{root}/extras/tokenize/count", {"model": self.model, "input": text})
        return None

    def _body(self, messages: Sequence[ChatMessage], max_tokens: int, *, stream: bool) -> dict[str, Any]:
        sp = self._sampling
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "max_tokens": max_tokens,
            "temperature": sp.temperature,
            "top_p": sp.top_p,
            # llama.cpp's, vLLM's and Ollama's servers read min_p; llama.cpp's repeat_penalty (others ignore it)
            "min_p": sp.min_p,
            "repeat_penalty": sp.repeat_penalty,
            "stream": stream,
        }
        if stream:
            body["stream_options"] = {"include_usage": True}
        return body

    def _generate(self, stream: RemoteStream, messages: list[ChatMessage], max_tokens: int, turn: int) -> None:
        try:
            reply = self._reply(stream, messages, max_tokens)
            if reply is not None:
                self._count_exactly(messages, reply, stream.reported_prompt_tokens, turn)
        finally:
            self._workers.discard(threading.current_thread())

    def _count_exactly(self, messages: list[ChatMessage], reply: str, reported: int, turn: int) -> None:
        """After a reply, off the critical path: exact counts for the texts of this prompt and for the reply (the
        next turn's history), then the template overhead from the server's prompt size.

        Never while a chat request is under way: llama_cpp.server (with its default --interrupt_requests) ends
        the reply it is streaming as soon as another request arrives. A newer chat() stops this, and its worker
        waits for a tokenize request in flight (`_tokenize_lock`) before sending its own."""
        texts = [m.content for m in messages if m.content not in self._exact] + [reply]
        for text in texts[-_MAX_TOKENIZE_PER_TURN:] if self.tokenizer else []:
            with self._tokenize_lock:
                if self._turn != turn:
                    return
                count = self._tokenize(text) if text else None
            if count is not None:
                self._learn_exact(text, count)
        if reported and self._turn == turn:
            self._learn_usage(messages, reported)

    def _reply(self, stream: RemoteStream, messages: list[ChatMessage], max_tokens: int) -> str | None:
        """Stream one reply into `stream`; its text when the server finished it, else None."""
        stats = stream.stats
        error: EngineError | None = None
        finished = False
        reply: list[str] = []
        try:
            finished = self._stream_reply(stream, messages, max_tokens, reply)
        except EngineError as e:
            error = e
        except Exception as e:  # a bug must not leave the reader waiting forever
            error = EngineError(f"the remote LLM failed mid-reply: {type(e).__name__}: {e}")
        finally:
            stream.close_connection()
            stats.cancelled = stats.cancelled or stream.stopped
            if not stats.prompt_tokens_evaluated:
                stats.prompt_tokens_evaluated = stats.prompt_tokens  # cache reuse unknown: all of it
            stats.finished_at = time.monotonic()
            if error is not None and not stream.stopped:
                stats.error = error.message
                stream.put(error)
            else:
                stream.put(_END)
        return "".join(reply) if finished and not stream.stopped else None

    def _stream_reply(
        self, stream: RemoteStream, messages: list[ChatMessage], max_tokens: int, reply: list[str]
    ) -> bool:
        """Send the request and forward the deltas. True when the server finished the reply."""
        stats = stream.stats
        with self._tokenize_lock:
            pass  # a background tokenize request still in flight finishes first (see _count_exactly)
        conn = self._connection(CONNECT_TIMEOUT_S)
        if not stream.attach(conn):
            return False
        try:
            conn.connect()
        except (OSError, http.client.HTTPException) as e:
            if stream.stopped:
                return False
            raise self._unreachable(e, "chat") from None
        sock = conn.sock
        if sock is None or not stream.attach_socket(sock):
            return False
        try:
            sock.settimeout(max(0.05, stats.started_at + self.timeout_s - time.monotonic()))
            conn.request(
                "POST",
                f"{self.endpoint.base}/chat/completions",
                json.dumps(self._body(messages, max_tokens, stream=True)).encode("utf-8"),
                self._headers(stream=True),
            )
            resp = conn.getresponse()
            if not 200 <= resp.status < 300:
                raise self._status_error(_HTTPStatusError(resp.status, resp.reason, _error_text(resp.read())), "chat")
            return self._read_events(stream, resp, sock, messages, reply)
        except TimeoutError:
            if stream.stopped:
                return False
            what = "no first token" if stats.first_token_at is None else "nothing more mid-reply"
            raise EngineError(
                f"the LLM server at {self.url} sent {what} within {self.timeout_s:g} s (llm.timeout_s)",
                hint="the server is overloaded, stuck or loading a model: the turn is abandoned and the next one "
                "tries again; raise llm.timeout_s for a slow server",
            ) from None
        except (OSError, http.client.HTTPException) as e:
            if stream.stopped:
                return False
            raise EngineError(
                f"the connection to the LLM server at {self.url} broke mid-reply "
                f"({len(reply)} deltas in): {type(e).__name__}: {e}",
                hint="is the server still running? its log says why; the next turn tries again",
            ) from None

    def _read_events(
        self,
        stream: RemoteStream,
        resp: http.client.HTTPResponse,
        sock: socket.socket,
        messages: list[ChatMessage],
        reply: list[str],
    ) -> bool:
        stats = stream.stats
        data: list[bytes] = []
        event = b""
        finish: str | None = None
        usage: dict[str, Any] | None = None
        deltas = 0
        while True:
            if stream.stopped:
                return False
            # The first token must come within timeout_s of the request; later ones within timeout_s of the last.
            start = stats.started_at if stats.first_token_at is None else time.monotonic()
            sock.settimeout(max(0.05, start + self.timeout_s - time.monotonic()))
            line = resp.readline()
            if not line:
                if stream.stopped:
                    return False
                if finish is not None:
                    break  # ended without [DONE]: fine once the reply said it was complete
                raise EngineError(
                    f"the LLM server at {self.url} closed the connection mid-reply ({deltas} deltas in)",
                    hint="is the server still running? its log says why; the next turn tries again",
                )
            line = line.rstrip(b"\r\n")
            if line:
                field, _, value = line.partition(b":")
                value = value.removeprefix(b" ")
                if field == b"data":
                    data.append(value)
                elif field == b"event":
                    event = value
                continue  # comments (": ping") and other fields are ignored
            if not data:
                continue
            payload, data = b"\n".join(data), []
            if payload.strip() == b"[DONE]":
                if finish is None:  # every OpenAI-style server says why a reply ended before [DONE]
                    raise EngineError(
                        f"the LLM server at {self.url} ended the reply before it was finished ({deltas} deltas in)",
                        hint="another request may have interrupted it (python -m llama_cpp.server does that unless "
                        "started with --interrupt_requests False); the next turn tries again",
                    )
                break
            try:
                chunk = json.loads(payload)
            except ValueError:
                raise EngineError(
                    f"the LLM server at {self.url} sent an event that is not JSON: "
                    f"{self._redact(payload[:120].decode('utf-8', errors='replace'))!r}"
                ) from None
            if event == b"error" or (isinstance(chunk, dict) and "error" in chunk):
                raise EngineError(
                    f"the LLM server at {self.url} failed mid-reply: {self._redact(_error_text(payload))}",
                    hint="its own log says more; the next turn tries again",
                )
            event = b""
            if not isinstance(chunk, dict):
                continue
            if isinstance(chunk.get("usage"), dict):
                usage = chunk["usage"]
            if isinstance(chunk.get("timings"), dict):  # llama-server: how much of the prompt it evaluated
                prompt_n = chunk["timings"].get("prompt_n")
                if isinstance(prompt_n, int):
                    stats.prompt_tokens_evaluated = prompt_n
            for choice in chunk.get("choices") or []:
                finish = choice.get("finish_reason") or finish
                delta = (choice.get("delta") or {}).get("content")
                if not delta:
                    continue
                if stats.first_token_at is None:
                    stats.first_token_at = time.monotonic()
                deltas += 1
                stats.completion_tokens = deltas
                reply.append(delta)
                if not stream.put(delta):
                    return False
        if usage is not None:
            if isinstance(usage.get("prompt_tokens"), int):
                stats.prompt_tokens = usage["prompt_tokens"]
                stream.reported_prompt_tokens = stats.prompt_tokens
                details = usage.get("prompt_tokens_details")
                if isinstance(details, dict) and isinstance(details.get("cached_tokens"), int):
                    stats.prompt_tokens_evaluated = stats.prompt_tokens - details["cached_tokens"]
            if isinstance(usage.get("completion_tokens"), int):
                stats.completion_tokens = usage["completion_tokens"]
        return True


class RemoteStream(DeltaStream):
    """One reply's text deltas (an `LLMStream`). Iterate it on the loop; cancel() from anywhere."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)  # unbounded: the credits below bound what the worker queues ahead
        self._credits = threading.Semaphore(QUEUE_DELTAS)  # deltas the worker may queue ahead of the reader
        self._lock = threading.Lock()
        self._conn: http.client.HTTPConnection | None = None
        self._sock: socket.socket | None = None
        self.reported_prompt_tokens = 0  # usage.prompt_tokens, when the server sent it

    def _taken(self) -> None:
        self._credits.release()

    def cancel(self) -> None:
        """Close the connection now (the server stops generating) and drop what is queued."""
        with self._lock:
            if self._stop:
                return
            self._stop = True
            sock = self._sock
        if not self._ended:
            self.stats.cancelled = True
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # the blocked read returns; the server sees the client leave
        self._credits.release()  # a worker waiting for room wakes up and sees the flag
        with contextlib.suppress(RuntimeError):  # loop closed: nobody is listening
            self._loop.call_soon_threadsafe(self._queue.put_nowait, _END)

    # worker thread side
    def attach(self, conn: http.client.HTTPConnection) -> bool:
        with self._lock:
            self._conn = conn
            return not self._stop

    def attach_socket(self, sock: socket.socket | None) -> bool:
        with self._lock:
            self._sock = sock
            return not self._stop

    def close_connection(self) -> None:
        with self._lock:
            conn, self._conn, self._sock = self._conn, None, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def put(self, item: object) -> bool:
        """Hand `item` to the loop; a delta waits for room. False once the stream is stopped or unread."""
        if isinstance(item, str):
            while not self._credits.acquire(timeout=PUT_SLICE_S):
                if self._stop or self._loop.is_closed() or not self._loop.is_running():
                    self._stop = True
                    return False
            if self._stop:
                return False
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the loop is closed
            self._stop = True
            return False
        return not self._stop
