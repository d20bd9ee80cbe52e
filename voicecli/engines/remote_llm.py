"""A language model on another machine, through the OpenAI chat-completions API with streaming.

Works with `llama-server`, `python -m llama_cpp.server`, Ollama and vLLM (anything that serves `GET /v1/models`
and `POST /v1/chat/completions` with `stream: true`), behind the same `LanguageModel` protocol as the local model.

HTTP: httpx's AsyncClient and httpx-sse on the event loop, measured before the switch against a hand-written
`http.client` reader thread (2 cores, loop busy 10%): 0.45-0.65 ms from the server writing a delta to the loop
holding it (against 0.29-0.41 ms), 0.9 ms from cancel() to the server seeing the connection close (against 0.2):
noise next to a 100-200 ms first token and a 100 ms barge-in decision. No proxy from the environment (a LAN
address must not go through HTTP_PROXY) and no keep-alive (a connection the server closed while idle must not
fail a reply). A reply is a task that queues text deltas and waits once QUEUE_DELTAS are unread (TCP then slows
the server); cancel() cancels it, which closes the response, and servers stop generating at their next token.

Faults are EngineErrors with the server's own text, raised at start or, after it, from the stream's iteration
(never from chat()): unreachable, unknown model (lists the ones it has), HTTP 4xx/5xx (MAX_ERROR_BYTES of the
body read), no first token within `timeout_s`, no text delta within `timeout_s` of the previous one (SSE
comments such as llama_cpp.server's 15 s pings do not count), a line over MAX_LINE_BYTES, a connection lost.

Token budget: `count_tokens` never touches the network. Content counts are exact where the server's tokenizer
gave them (llama-server and vLLM `POST /tokenize`, llama_cpp.server `POST /extras/tokenize/count`, asked after
each reply, off the critical path), else chars / chars-per-token x 1.15; chars-per-token (3.5 at first) is
learned from exact counts or the prompt sizes the server reports. The template overhead per message is learned
from `usage.prompt_tokens` (the warm-up's answer; a stream's last chunk with `stream_options.include_usage`).

The API key goes only into the Authorization header: never into a message, a log line, an event or repr().
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import socket
import ssl
import time
from collections.abc import AsyncIterator, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
from httpx_sse import EventSource, ServerSentEvent, SSEError, aconnect_sse

from voicecli.engines.base import QUEUE_DELTAS, ChatMessage, DeltaStream, LLMStats, Sampling
from voicecli.errors import EngineError

CONNECT_TIMEOUT_S = 5.0  # TCP connect (and the /models request at start)
WARMUP_TIMEOUT_S = 60.0  # the first request may make the server load the model (Ollama does)
TOKENIZE_TIMEOUT_S = 2.0
CHARS_PER_TOKEN = 3.5  # a conservative start for English with a BPE vocabulary
ESTIMATE_MARGIN = 1.15  # estimates err on the large side: the budget is a ceiling
OVERHEAD_PER_MESSAGE = 8.0  # template tokens around one message (ChatML takes 5) until the server tells
MAX_LINE_BYTES = 1 << 20  # one SSE line; a delta's is under 1 KiB, so more is a server streaming junk
MAX_ERROR_BYTES = 8 << 10  # of an error body: the server's message is at its start
MAX_JSON_BYTES = 16 << 20  # of a plain answer (a big server's /models list)
_MAX_EXACT = 512  # texts whose exact token count is remembered
_MAX_TOKENIZE_PER_TURN = 4
_ERROR_TEXT = 400  # characters of a server's error text kept in a message
_END = object()

CHECK_SERVER = (
    "check that the server is running and listens on that host and port (llama-server --host 0.0.0.0 "
    "--port 8080, `ollama serve`, `vllm serve MODEL`), that no firewall blocks the port, and that the URL "
    "ends in /v1; see docs/remote-llm.md"
)
RETRY_HINT = "is the server still running? its log says why; the next turn tries again"
STALL_HINT = (
    "the server is overloaded, stuck or loading a model: the turn is abandoned and the next one tries again; "
    "raise llm.timeout_s for a slow server"
)
CUT_HINT = (
    "another request may have interrupted it (python -m llama_cpp.server does that unless started with "
    "--interrupt_requests False); the next turn tries again"
)
API_HINT = "check that --llm-url points at an OpenAI-compatible API root, e.g. http://HOST:8080/v1"


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

    @property
    def origin(self) -> str:
        return self.url[: -len(self.base)]


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


class _LineTooLong(Exception):
    pass


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


def delta_text(content: object) -> str:
    """The text of a delta's `content`: a string, or content parts ([{"type": "text", "text": ...}]) as some
    servers send. Parts that carry no text add nothing; a value that is neither raises ValueError."""
    if content is None or isinstance(content, str):
        return content or ""
    texts: list[str] = []
    for part in content if isinstance(content, list) else [content]:
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, dict):
            text = part.get("text")
            if part.get("type", "text") == "text" and isinstance(text, str):
                texts.append(text)
        else:
            raise ValueError(f"delta content {content!r:.80} is neither text nor content parts")
    return "".join(texts)


async def _read_capped(resp: httpx.Response, limit: int) -> tuple[bytes, bool]:
    """At most `limit` bytes of the body, and whether there was more: an endless body must not hold the turn
    or fill memory."""
    body = bytearray()
    async for chunk in resp.aiter_bytes():
        body += chunk
        if len(body) > limit:
            return bytes(body[:limit]), True
    return bytes(body), False


async def _status_error_of(resp: httpx.Response) -> _HTTPStatusError:
    body, _ = await _read_capped(resp, MAX_ERROR_BYTES)
    return _HTTPStatusError(resp.status_code, resp.reason_phrase, _error_text(body))


class _BoundedLines(httpx.AsyncByteStream):
    """A response body that fails once a line grows past `limit` bytes: httpx-sse buffers each line whole, so a
    server streaming without newlines would fill memory until the deadline."""

    def __init__(self, inner: httpx.AsyncByteStream, limit: int) -> None:
        self._inner, self._limit = inner, limit

    async def __aiter__(self) -> AsyncIterator[bytes]:
        run = 0  # bytes since the last line end
        async for chunk in self._inner:
            end = max(chunk.rfind(b"\n"), chunk.rfind(b"\r"))
            run = run + len(chunk) if end < 0 else len(chunk) - end - 1
            if run > self._limit:
                raise _LineTooLong
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


def _root_cause(e: BaseException) -> BaseException:
    """The OS or TLS error under httpx's and httpcore's wrappers (and anyio's "all attempts failed")."""
    while True:
        under = e.exceptions[0] if isinstance(e, BaseExceptionGroup) else e.__cause__ or e.__context__
        if under is None:
            return e
        e = under


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
        self._http: httpx.AsyncClient | None = None
        self._current: RemoteStream | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # replies and background token counts
        self._turn = 0  # chat() calls so far
        self._tokenize_lock = asyncio.Lock()  # held around each background tokenize request
        # token accounting (see the module docstring)
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
        if self._started:
            return
        try:
            await self._start()
        except BaseException:
            await self._close_client()
            raise
        self._started = True

    def chat(
        self, messages: Sequence[ChatMessage], max_tokens: int = 256, sampling: Sampling | None = None
    ) -> RemoteStream:
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
        stream.attach(self._spawn(self._pump(stream, msgs, max_tokens, self._turn, sampling or self._sampling)))
        self._current = stream
        return stream

    def count_tokens(self, messages: Sequence[ChatMessage]) -> int:
        """Prompt tokens for these messages: exact content counts where the server's tokenizer gave them,
        estimates (with a margin) elsewhere, plus the learned template overhead. Never blocks."""
        total = sum(self._content_tokens(m.content) for m in messages)
        return math.ceil(total + self._per_message * len(messages))

    async def close(self) -> None:
        if self._current is not None:
            self._current.cancel()
        if self._tasks:
            _, pending = await asyncio.wait(list(self._tasks), timeout=1.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self._close_client()

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

    async def _count_exactly(self, messages: list[ChatMessage], reply: str, reported: int, turn: int) -> None:
        """After a reply, off the critical path: exact counts for the texts of this prompt and for the reply (the
        next turn's history), then the template overhead from the server's prompt size.

        Never while a chat request is under way: llama_cpp.server (with its default --interrupt_requests) ends
        the reply it is streaming as soon as another request arrives. A newer chat() stops this, and its request
        waits for a tokenize request in flight (`_tokenize_lock`) before it is sent."""
        texts = [m.content for m in messages if m.content not in self._exact] + [reply]
        for text in texts[-_MAX_TOKENIZE_PER_TURN:] if self.tokenizer else []:
            async with self._tokenize_lock:
                if self._turn != turn:
                    return
                count = await self._tokenize(text) if text else None
            if count is not None:
                self._learn_exact(text, count)
        if reported and self._turn == turn:
            self._learn_usage(messages, reported)

    # --- HTTP ---------------------------------------------------------------------------------

    @property
    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            headers = {"User-Agent": "voicecli", "Accept-Encoding": "identity"}  # byte caps count what is read
            if self._api_key:
                headers["Authorization"] = f"Bearer {self._api_key}"
            self._http = httpx.AsyncClient(
                headers=headers,
                verify=ssl.create_default_context(),  # the system's CA store, as curl and the browser use
                trust_env=False,
                limits=httpx.Limits(max_keepalive_connections=0),
            )
        return self._http

    async def _close_client(self) -> None:
        client, self._http = self._http, None
        if client is not None:
            await client.aclose()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _request(self, method: str, path: str, body: Any, timeout: float) -> Any:
        """One plain JSON request, `timeout` s in all. Raises _HTTPStatusError for a non-2xx answer,
        httpx.HTTPError or TimeoutError for network faults, ValueError for an answer that is not JSON."""
        url, limits = self.endpoint.origin + path, httpx.Timeout(timeout, connect=CONNECT_TIMEOUT_S)
        async with asyncio.timeout(timeout), self._client.stream(method, url, json=body, timeout=limits) as resp:
            if not resp.is_success:
                raise await _status_error_of(resp)
            raw, more = await _read_capped(resp, MAX_JSON_BYTES)
            if more:
                raise ValueError(f"the answer is longer than {MAX_JSON_BYTES} bytes")
            return json.loads(raw)

    def _fault(self, what: str, hint: str) -> EngineError:
        return EngineError(f"the LLM server at {self.url} {what}", hint=hint)

    def _redact(self, text: str) -> str:
        """A server's own words, minus the API key should it echo it back."""
        return text.replace(self._api_key, "***") if self._api_key else text

    def _unreachable(self, e: BaseException, doing: str) -> EngineError:
        cause = _root_cause(e)
        if isinstance(cause, socket.gaierror):
            why = f"the host name {self.endpoint.host!r} does not resolve"
        elif isinstance(cause, ConnectionRefusedError):
            why = "connection refused (nothing listens on that port)"
        elif isinstance(e, TimeoutError | httpx.TimeoutException) or isinstance(cause, TimeoutError):
            why = f"no answer within {CONNECT_TIMEOUT_S:g} s"
        elif isinstance(cause, ssl.SSLError):
            why = f"TLS failed ({cause.reason or cause})"
        else:
            why = f"{type(cause).__name__}: {cause}"
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

    # --- start --------------------------------------------------------------------------------

    async def _start(self) -> None:
        t0 = time.monotonic()
        listing = await self._list_models()
        if listing is not None:
            data = listing.get("data") if isinstance(listing, dict) else None
            self.models = [str(m.get("id")) for m in data or [] if isinstance(m, dict) and m.get("id")]
            self.model = self._pick_model()
        self.load_s = time.monotonic() - t0
        # Warm up: the first request may load the model; it leaves the system prompt in the server's cache and
        # tells the template overhead (usage.prompt_tokens).
        warm = [ChatMessage("system", self._system), ChatMessage("user", "Hi")]
        await self._find_tokenizer([m.content for m in warm])
        t0 = time.monotonic()
        answer = await self._warm_up(warm)
        usage = answer.get("usage") if isinstance(answer, dict) else None
        if isinstance(usage, dict) and isinstance(usage.get("prompt_tokens"), int):
            self._learn_usage(warm, usage["prompt_tokens"])
        self.warmup_s = time.monotonic() - t0

    async def _list_models(self) -> Any:
        """GET /models; None from a server that lists nothing when a model name was given."""
        try:
            return await self._request("GET", f"{self.endpoint.base}/models", None, CONNECT_TIMEOUT_S)
        except _HTTPStatusError as e:
            if e.status == 404 and self.model:
                return None  # trust the name given
            raise self._status_error(e, "GET /models") from None
        except (httpx.HTTPError, TimeoutError) as e:
            raise self._unreachable(e, "GET /models") from None
        except ValueError:
            raise self._fault("does not answer like an OpenAI-compatible server (GET /models)", API_HINT) from None

    async def _warm_up(self, warm: list[ChatMessage]) -> Any:
        timeout = max(WARMUP_TIMEOUT_S, self.timeout_s)
        path = f"{self.endpoint.base}/chat/completions"
        try:
            return await self._request("POST", path, self._body(warm, 1, stream=False), timeout)
        except _HTTPStatusError as e:
            raise self._status_error(e, f"a first chat request (model {self.model!r})") from None
        except (TimeoutError, httpx.ReadTimeout, httpx.WriteTimeout):
            what = f"did not answer a one-token request within {timeout:g} s (model {self.model!r})"
            hint = "it is overloaded or still loading the model: try again, or raise llm.timeout_s"
            raise self._fault(what, hint) from None
        except httpx.HTTPError as e:
            raise self._unreachable(e, "a first chat request") from None
        except ValueError:
            raise self._fault("sent a chat answer that is not JSON", API_HINT) from None

    def _pick_model(self) -> str:
        if not self.models:
            hint = "load a model on the server (e.g. `ollama pull llama3.2`), or pass its name with --llm-model"
            raise self._fault("lists no models (GET /models)", hint)
        if not self.model:
            return self.models[0]
        for name in (self.model, f"{self.model}:latest"):  # Ollama's tag default
            if name in self.models:
                return name
        hint = "pass one of those with --llm-model (or llm.model in the config), or leave it out for the first"
        raise self._fault(f"has no model {self.model!r}; it has: {', '.join(self.models)}", hint)

    # --- tokenizer ----------------------------------------------------------------------------

    def _tokenize_request(self, name: str, text: str) -> tuple[str, dict[str, Any]]:
        """Path and body of the tokenize endpoint called `name` (see the module docstring)."""
        root = self.endpoint.root
        if name == "llama-server":
            return f"{root}/tokenize", {"content": text, "add_special": False}
        if name == "vllm":
            return f"{root}/tokenize", {"model": self.model, "prompt": text, "add_special_tokens": False}
        return f"{root}/extras/tokenize/count", {"model": self.model, "input": text}

    async def _find_tokenizer(self, texts: Sequence[str]) -> None:
        """Which tokenize endpoint the server has, tried on `texts[0]`; the counts of all `texts` are kept."""
        for name in ("llama-server", "vllm", "llama_cpp.server"):
            count = await self._tokenize_with(*self._tokenize_request(name, texts[0]))
            if count is not None:
                self.tokenizer = name
                self._learn_exact(texts[0], count)
                for other in texts[1:]:
                    n = await self._tokenize(other)
                    if n is not None:
                        self._learn_exact(other, n)
                return

    async def _tokenize_with(self, path: str, body: dict[str, Any]) -> int | None:
        try:
            doc = await self._request("POST", path, body, TOKENIZE_TIMEOUT_S)
        except (_HTTPStatusError, httpx.HTTPError, TimeoutError, ValueError):
            return None
        if not isinstance(doc, dict):
            return None
        if isinstance(doc.get("count"), int):
            return int(doc["count"])
        if isinstance(doc.get("tokens"), list):
            return len(doc["tokens"])
        return None

    async def _tokenize(self, text: str) -> int | None:
        if not self.tokenizer:
            return None
        return await self._tokenize_with(*self._tokenize_request(self.tokenizer, text))

    # --- streaming ----------------------------------------------------------------------------

    def _body(
        self, messages: Sequence[ChatMessage], max_tokens: int, *, stream: bool, sampling: Sampling | None = None
    ) -> dict[str, Any]:
        sp = sampling or self._sampling
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

    async def _pump(
        self, stream: RemoteStream, messages: list[ChatMessage], max_tokens: int, turn: int, sampling: Sampling
    ) -> None:
        """Stream one reply into `stream`, then count its texts exactly in the background."""
        reply: list[str] = []
        outcome: object = _END
        try:
            if await self._stream_reply(stream, messages, max_tokens, reply, sampling) and not stream.stopped:
                self._spawn(self._count_exactly(messages, "".join(reply), stream.reported_prompt_tokens, turn))
        except EngineError as e:
            outcome = e
        except Exception as e:  # a bug must neither leave the reader waiting nor print a traceback
            outcome = EngineError(
                f"the remote LLM failed mid-reply: {type(e).__name__}: {self._redact(str(e))}",
                hint="a fault in voicecli's client: the next turn tries again; if it keeps failing, report it with "
                "the server's name and version",
            )
        finally:
            stream.finish(outcome)

    async def _stream_reply(
        self,
        stream: RemoteStream,
        messages: list[ChatMessage],
        max_tokens: int,
        reply: list[str],
        sampling: Sampling | None = None,
    ) -> bool:
        """Send the request and forward the deltas. True when the server finished the reply."""
        stats = stream.stats
        loop = asyncio.get_running_loop()
        # The first token must come within timeout_s of the request; later ones within timeout_s of the last.
        first_by = loop.time() + stats.started_at + self.timeout_s - time.monotonic()
        try:
            async with asyncio.timeout_at(first_by) as deadline:
                async with self._tokenize_lock:
                    pass  # a background tokenize request still in flight finishes first (see _count_exactly)
                async with aconnect_sse(
                    self._client,
                    "POST",
                    f"{self.url}/chat/completions",
                    json=self._body(messages, max_tokens, stream=True, sampling=sampling),
                    timeout=httpx.Timeout(None, connect=CONNECT_TIMEOUT_S),  # the deadline above bounds the rest
                ) as source:
                    if not source.response.is_success:
                        raise self._status_error(await _status_error_of(source.response), "chat")
                    return await self._read_events(stream, source, deadline, reply)
        except TimeoutError:
            what = "no first token" if stats.first_token_at is None else "nothing more mid-reply"
            raise self._fault(f"sent {what} within {self.timeout_s:g} s (llm.timeout_s)", STALL_HINT) from None
        except (httpx.ConnectError, httpx.ConnectTimeout) as e:
            raise self._unreachable(e, "chat") from None
        except httpx.HTTPError as e:
            what = f"broke the connection mid-reply ({len(reply)} deltas in): {type(e).__name__}: {e}"
            raise self._fault(what, RETRY_HINT) from None

    async def _read_events(
        self, stream: RemoteStream, source: EventSource, deadline: asyncio.Timeout, reply: list[str]
    ) -> bool:
        stats = stream.stats
        response = source.response
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _BoundedLines(response.stream, MAX_LINE_BYTES)
        finish: str | None = None
        usage: dict[str, Any] | None = None
        try:
            async with contextlib.aclosing(source.aiter_sse()) as events:
                async for event in events:
                    if not event.data:
                        continue  # comments (": ping") never get here; an event without data says nothing
                    if event.data.strip() == "[DONE]":
                        if finish is None:  # every OpenAI-style server says why a reply ended before [DONE]
                            what = f"ended the reply before it was finished ({len(reply)} deltas in)"
                            raise self._fault(what, CUT_HINT)
                        return stream.take_usage(usage)
                    chunk = self._chunk(event)
                    usage = chunk.get("usage") if isinstance(chunk.get("usage"), dict) else usage
                    _read_timings(chunk, stats)
                    for choice in chunk.get("choices") or []:
                        finish = (choice.get("finish_reason") if isinstance(choice, dict) else None) or finish
                        text = self._choice_text(choice)
                        if not text:
                            continue
                        if stats.first_token_at is None:
                            stats.first_token_at = time.monotonic()
                        reply.append(text)
                        stats.completion_tokens = len(reply)
                        deadline.reschedule(None)  # waiting for the reader to make room is not the server's delay
                        if not await stream.put(text):
                            return False
                        deadline.reschedule(asyncio.get_running_loop().time() + self.timeout_s)
        except SSEError:
            what = f"answered with {response.headers.get('content-type')!r}, not server-sent events"
            raise self._fault(what, "it does not stream chat replies: use llama-server, Ollama or vLLM") from None
        except _LineTooLong:
            what = f"sent a line longer than {MAX_LINE_BYTES} bytes mid-reply ({len(reply)} deltas in)"
            raise self._fault(what, API_HINT) from None
        if finish is None:
            raise self._fault(f"closed the connection mid-reply ({len(reply)} deltas in)", RETRY_HINT)
        return stream.take_usage(usage)  # ended without [DONE]: fine once the reply said it was complete

    def _chunk(self, event: ServerSentEvent) -> dict[str, Any]:
        """One event's JSON; the server's own error as an EngineError."""
        if event.event == "error":
            raise self._failed_mid_reply(event.data)
        try:
            chunk = json.loads(event.data)
        except ValueError:
            raise self._fault(f"sent an event that is not JSON: {self._redact(event.data[:120])!r}", API_HINT) from None
        if isinstance(chunk, dict) and "error" in chunk:
            raise self._failed_mid_reply(event.data)
        return chunk if isinstance(chunk, dict) else {}

    def _choice_text(self, choice: object) -> str:
        delta = choice.get("delta") if isinstance(choice, dict) else None
        try:
            return delta_text(delta.get("content") if isinstance(delta, dict) else None)
        except ValueError as e:
            raise self._fault(f"sent a delta this client cannot read: {self._redact(str(e))}", API_HINT) from None

    def _failed_mid_reply(self, data: str) -> EngineError:
        what = f"failed mid-reply: {self._redact(_error_text(data.encode()))}"
        return self._fault(what, "its own log says more; the next turn tries again")


def _read_timings(chunk: dict[str, Any], stats: LLMStats) -> None:
    """llama-server's `timings`: how much of the prompt it evaluated."""
    timings = chunk.get("timings")
    if isinstance(timings, dict) and isinstance(timings.get("prompt_n"), int):
        stats.prompt_tokens_evaluated = timings["prompt_n"]


class RemoteStream(DeltaStream):
    """One reply's text deltas (an `LLMStream`). Iterate it on the loop; cancel() from anywhere."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)  # unbounded: the credits bound the deltas queued ahead, the final item always fits
        self._credits = asyncio.Semaphore(QUEUE_DELTAS)
        self._task: asyncio.Task[None] | None = None
        self.reported_prompt_tokens = 0  # usage.prompt_tokens, when the server sent it

    def _taken(self) -> None:
        self._credits.release()

    def attach(self, task: asyncio.Task[None]) -> None:
        self._task = task
        task.add_done_callback(lambda _: self.finish())  # also when cancelled before it ever ran

    def cancel(self) -> None:
        """Drop what is queued at once, and close the response (the server stops generating) on the loop."""
        if self._stop:
            return
        self._stop = True
        if not self._ended:
            self.stats.cancelled = True
        with contextlib.suppress(RuntimeError):  # loop closed: nobody is listening
            self._loop.call_soon_threadsafe(self._close)

    def _close(self) -> None:
        if self._task is not None:
            self._task.cancel()  # leaving the response's context closes the connection
        self._queue.put_nowait(_END)

    async def put(self, delta: str) -> bool:
        """Queue a delta once the reader has room for it. False once the stream is stopped."""
        await self._credits.acquire()
        if self._stop:
            return False
        self._queue.put_nowait(delta)
        return True

    def take_usage(self, usage: dict[str, Any] | None) -> bool:
        """The reply is complete (True): take the server's own token counts, when it sent them."""
        stats = self.stats
        if usage is None:
            return True
        if isinstance(usage.get("prompt_tokens"), int):
            stats.prompt_tokens = self.reported_prompt_tokens = usage["prompt_tokens"]
            details = usage.get("prompt_tokens_details")
            if isinstance(details, dict) and isinstance(details.get("cached_tokens"), int):
                stats.prompt_tokens_evaluated = stats.prompt_tokens - details["cached_tokens"]
        if isinstance(usage.get("completion_tokens"), int):
            stats.completion_tokens = usage["completion_tokens"]
        return True

    def finish(self, outcome: object = _END) -> None:
        """Settle the stats and hand the reader its final item (an EngineError or the end), once."""
        stats = self.stats
        if stats.finished_at is not None:
            return
        stats.cancelled = stats.cancelled or self._stop
        if not stats.prompt_tokens_evaluated:
            stats.prompt_tokens_evaluated = stats.prompt_tokens  # cache reuse unknown: all of it
        stats.finished_at = time.monotonic()
        if isinstance(outcome, EngineError) and not self._stop:
            stats.error = outcome.message
            self._queue.put_nowait(outcome)
        else:
            self._queue.put_nowait(_END)
