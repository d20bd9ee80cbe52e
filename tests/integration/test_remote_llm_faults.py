"""RemoteLLM against scripted faulty servers: an OpenAI-style server on 127.0.0.1 (the standard library's HTTP
server) that answers start-up like a good one, then streams what a test scripts. Each fault here is one a real
server can produce and llama_cpp.server cannot be made to: a generation that stalls while the pings go on,
content parts instead of a string, a line or an error body that never ends."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from voicecli.engines.base import ChatMessage
from voicecli.engines.remote_llm import RemoteLLM
from voicecli.errors import EngineError

Script = Callable[["FaultHandler"], None]
ASK = [ChatMessage("system", "You are terse."), ChatMessage("user", "Hello?")]


class FaultHandler(BaseHTTPRequestHandler):
    """GET /v1/models and a non-streamed chat answer like a good server; a streamed chat runs `script`."""

    script: Script
    stop: threading.Event

    def log_message(self, format: str, *args: Any) -> None:  # keep the test output clean
        pass

    def do_GET(self) -> None:
        self.answer(200, {"object": "list", "data": [{"id": "fault-model", "object": "model"}]})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        if not self.path.endswith("/chat/completions"):
            self.answer(404, {"detail": "Not Found"})  # no tokenizer endpoint: estimates only
        elif not body.get("stream"):
            self.answer(200, {"choices": [{"message": {"content": "Hi"}}], "usage": {"prompt_tokens": 20}})
        else:
            # the client going away is what a cancel or a client-side timeout does
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.script(self)

    def answer(self, status: int, doc: dict[str, Any]) -> None:
        raw = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def start_events(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()

    def event(self, doc: dict[str, Any] | str) -> None:
        data = doc if isinstance(doc, str) else json.dumps(doc)
        self.wfile.write(f"data: {data}\n\n".encode())

    def until_stopped(self, every_s: float, write: Callable[[], None]) -> None:
        """Write for ever (until the client leaves or the test ends)."""
        while not self.stop.wait(every_s):
            write()


def delta(content: object = None, finish: str | None = None) -> dict[str, Any]:
    return {
        "choices": [{"index": 0, "delta": {} if content is None else {"content": content}, "finish_reason": finish}]
    }


@pytest.fixture
def serve() -> Iterator[Callable[[Script], str]]:
    """serve(script) -> the URL of a fault server running `script` for each streamed chat."""
    servers: list[ThreadingHTTPServer] = []
    stop = threading.Event()

    def start(script: Script) -> str:
        handler = type("Handler", (FaultHandler,), {"script": staticmethod(script), "stop": stop})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/v1"

    yield start
    stop.set()
    for server in servers:
        server.shutdown()
        server.server_close()


async def reply(url: str, timeout_s: float = 20.0, within_s: float = 5.0) -> tuple[str, RemoteLLM]:
    """The whole reply's text (an EngineError is raised from it), failing the test after `within_s`."""
    llm = RemoteLLM(url, timeout_s=timeout_s)
    await llm.start()
    try:
        return await asyncio.wait_for(llm.chat(ASK).text(), within_s), llm
    finally:
        await llm.close()


def test_a_generation_stalled_mid_reply_times_out_although_the_server_keeps_pinging(
    serve: Callable[[Script], str],
) -> None:
    """Defect 5: comments (llama_cpp.server pings every 15 s) must not reset the deadline between two deltas."""

    def stall(h: FaultHandler) -> None:
        h.start_events()
        h.event({"choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]})
        for word in ("One", " two", " three"):
            h.event(delta(word))
        h.until_stopped(0.1, lambda: h.wfile.write(b": ping\n\n"))

    async def main() -> None:
        llm = RemoteLLM(serve(stall), timeout_s=0.6)
        await llm.start()
        try:
            stream = llm.chat(ASK)
            got: list[str] = []
            t0 = time.monotonic()
            with pytest.raises(EngineError, match=r"nothing more mid-reply within 0.6 s") as err:
                async with asyncio.timeout(5):
                    async for d in stream:
                        got.append(d)
            assert "".join(got) == "One two three"  # what came before the stall is kept
            assert 0.5 < time.monotonic() - t0 < 2.5
            assert "llm.timeout_s" in err.value.message and err.value.hint
            assert stream.stats.error is not None
        finally:
            await llm.close()

    asyncio.run(main())


def test_a_reader_that_takes_its_time_is_not_a_stalled_server(serve: Callable[[Script], str]) -> None:
    """The deadline is the server's: while the reader (the speaker) is busy, the deltas wait and it stops."""
    words = [f" w{i}" for i in range(40)]

    def fast(h: FaultHandler) -> None:
        h.start_events()
        for w in words:
            h.event(delta(w))
        h.event(delta(finish="stop"))
        h.event("[DONE]")

    async def main() -> None:
        llm = RemoteLLM(serve(fast), timeout_s=0.3)
        await llm.start()
        try:
            got: list[str] = []
            async with asyncio.timeout(10):
                async for d in llm.chat(ASK):
                    got.append(d)
                    if len(got) == 5:
                        await asyncio.sleep(1.0)  # three deadlines long
            assert "".join(got) == "".join(words)
        finally:
            await llm.close()

    asyncio.run(main())


def test_content_parts_are_joined_and_never_end_the_reply(
    serve: Callable[[Script], str], capfd: pytest.CaptureFixture[str]
) -> None:
    """Defect 9: some servers send `delta.content` as a list of parts; it was taken as the end of the reply."""

    def parts(h: FaultHandler) -> None:
        h.start_events()
        h.event(delta("Sure,"))
        h.event(delta([{"type": "text", "text": " the sky"}, {"type": "text", "text": " is"}]))
        h.event(delta([{"type": "image_url", "image_url": {"url": "data:,"}}]))  # no text: nothing to say
        h.event(delta({"type": "text", "text": " blue"}))
        h.event(delta("."))
        h.event(delta(finish="stop"))
        h.event("[DONE]")

    text, _ = asyncio.run(reply(serve(parts)))
    assert text == "Sure, the sky is blue."
    assert "Traceback" not in capfd.readouterr().err


def test_a_content_that_is_no_text_at_all_is_an_error_not_a_silent_end(serve: Callable[[Script], str]) -> None:
    def numbers(h: FaultHandler) -> None:
        h.start_events()
        h.event(delta("Forty"))
        h.event(delta(42))
        h.event(delta(finish="stop"))
        h.event("[DONE]")

    with pytest.raises(EngineError, match="cannot read: delta content 42") as err:
        asyncio.run(reply(serve(numbers)))
    assert "--llm-url" in err.value.hint


def test_delta_text_reads_strings_and_text_parts() -> None:
    from voicecli.engines.remote_llm import delta_text

    assert delta_text(None) == "" and delta_text("") == "" and delta_text("hi") == "hi"
    assert delta_text([{"type": "text", "text": "a"}, "b", {"text": "c"}, {"type": "refusal", "refusal": "x"}]) == "abc"
    with pytest.raises(ValueError, match="neither text nor content parts"):
        delta_text([1.5])


def test_a_line_without_end_stops_at_the_bound_not_at_the_memory(serve: Callable[[Script], str]) -> None:
    def endless_line(h: FaultHandler) -> None:
        h.start_events()
        h.wfile.write(b"data: ")
        h.until_stopped(0.002, lambda: h.wfile.write(b"x" * 65536))  # about 30 MB/s

    t0 = time.monotonic()
    with pytest.raises(EngineError, match=r"a line longer than \d+ bytes"):
        asyncio.run(reply(serve(endless_line)))
    assert time.monotonic() - t0 < 3.0  # the bound, not the 20 s deadline


def test_an_error_body_without_end_is_cut_and_its_message_kept(serve: Callable[[Script], str]) -> None:
    def endless_error(h: FaultHandler) -> None:
        h.send_response(500)
        h.send_header("Content-Type", "application/json")
        h.end_headers()
        h.wfile.write(b'{"error": {"message": "CUDA out of memory ')
        h.until_stopped(0.002, lambda: h.wfile.write(b"x" * 65536))

    t0 = time.monotonic()
    with pytest.raises(EngineError, match=r"answered 500 .* to chat: .*CUDA out of memory") as err:
        asyncio.run(reply(serve(endless_error)))
    assert time.monotonic() - t0 < 3.0
    assert "its own log" in err.value.hint


def test_cancel_from_another_thread_ends_the_stream_and_closes_the_connection(serve: Callable[[Script], str]) -> None:
    gone = threading.Event()

    def endless(h: FaultHandler) -> None:
        h.start_events()
        try:
            h.until_stopped(0.01, lambda: h.event(delta(" la")))
        except (BrokenPipeError, ConnectionResetError):
            gone.set()

    async def main() -> None:
        llm = RemoteLLM(serve(endless))
        await llm.start()
        try:
            stream = llm.chat(ASK)
            got: list[str] = []
            async with asyncio.timeout(5):
                async for d in stream:
                    got.append(d)
                    if len(got) == 3:
                        cancelled_at = time.monotonic()
                        threading.Thread(target=stream.cancel).start()
            assert len(got) < 10 and stream.stats.cancelled and stream.stats.error is None
            assert time.monotonic() - cancelled_at < 0.2
            assert await asyncio.to_thread(gone.wait, 2.0), "the server never saw the client leave"
        finally:
            await llm.close()

    asyncio.run(main())
