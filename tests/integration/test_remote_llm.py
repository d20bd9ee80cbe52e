"""RemoteLLM against a real OpenAI-compatible server: `python -m llama_cpp.server` started here on 127.0.0.1 with
the generated scripted GGUFs (the default one always answers DEFAULT_REPLY; a long one streams 800 words, long
enough to cut off, kill or stall mid-reply). No HTTP mocks."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from voicecli.engines.base import ChatMessage
from voicecli.engines.remote_llm import RemoteLLM, RemoteStream, parse_url
from voicecli.errors import EngineError
from voicecli.testmodels import llama as gen

for _module in ("uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings"):
    pytest.importorskip(_module, reason="llama_cpp.server needs llama-cpp-python[server]")

pytestmark = pytest.mark.engines

SYSTEM = "You are a helpful voice assistant running on the user's desktop. Answer in one to three short sentences."
REPLY_PIECES = len(gen.chain_pieces(gen.DEFAULT_REPLY))
_SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
LONG_REPLY = " ".join("".join(p) for p in itertools.islice(itertools.product(_SYLLABLES, repeat=2), 800)) + "."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LlamaServer:
    """`python -m llama_cpp.server` on 127.0.0.1 in a child process, its output in a log file."""

    def __init__(self, model: Path, log: Path, *, api_key: str | None = None, port: int | None = None) -> None:
        self.model = model
        self.log = log
        self.api_key = api_key
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 60.0) -> LlamaServer:
        cmd = [
            sys.executable, "-m", "llama_cpp.server", "--model", str(self.model),
            "--host", "127.0.0.1", "--port", str(self.port),
            "--n_threads", "1", "--n_threads_batch", "1", "--n_ctx", "2048",
        ]  # fmt: skip
        if self.api_key is not None:
            cmd += ["--api_key", self.api_key]
        with self.log.open("ab") as out:
            # unbuffered: the server's "disconnected" line lands in the log when it is printed
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited ({self.proc.returncode}): {self.log_text()[-2000:]}")
            try:
                urllib.request.urlopen(f"{self.url}/models", timeout=1).close()
                return self
            except urllib.error.HTTPError:
                return self  # answering (e.g. 401 without the key)
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"llama_cpp.server did not come up: {self.log_text()[-2000:]}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # in case a test left it stopped
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def cpu_s(self) -> float:
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def usage_prompt_tokens(self, messages: list[ChatMessage]) -> int:
        """The server's own prompt token count for `messages` (a non-streamed one-token request)."""
        body = {"messages": [{"role": m.role, "content": m.content} for m in messages], "max_tokens": 1}
        req = urllib.request.Request(
            f"{self.url}/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            return int(json.loads(resp.read())["usage"]["prompt_tokens"])


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return gen.generate(tmp_path_factory.mktemp("remote-llm"))


@pytest.fixture(scope="session")
def long_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return gen.generate(tmp_path_factory.mktemp("remote-llm-long"), reply=LONG_REPLY)


@pytest.fixture(scope="module")
def server(tiny_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    srv = LlamaServer(tiny_gguf, tmp_path_factory.mktemp("server") / "server.log").start()
    yield srv
    srv.stop()


@pytest.fixture
def fresh_server(tiny_gguf: Path, tmp_path: Path) -> Iterator[LlamaServer]:
    srv = LlamaServer(tiny_gguf, tmp_path / "server.log").start()
    yield srv
    srv.stop()


@pytest.fixture
def long_server(long_gguf: Path, tmp_path: Path) -> Iterator[LlamaServer]:
    srv = LlamaServer(long_gguf, tmp_path / "long.log").start()
    yield srv
    srv.stop()


def ask(text: str = "How is the weather?") -> list[ChatMessage]:
    return [ChatMessage("system", SYSTEM), ChatMessage("user", text)]


async def started(url: str, **kw: Any) -> RemoteLLM:
    llm = RemoteLLM(url, system_prompt=SYSTEM, **kw)
    await llm.start()
    return llm


async def drain(stream: RemoteStream, into: list[str]) -> None:
    async for delta in stream:
        into.append(delta)


def test_parse_url_forms() -> None:
    assert parse_url("http://10.0.0.5:8080/v1").url == "http://10.0.0.5:8080/v1"
    assert parse_url("http://gpu-box:11434").base == "/v1"  # a bare host:port means the /v1 API
    assert parse_url("http://h:8000/v1/chat/completions/").base == "/v1"
    assert parse_url("https://h/v1").port == 443
    assert parse_url("http://h:8080/v1").root == ""
    for bad in ("h:8080/v1", "ftp://h/v1", "http:///v1"):
        with pytest.raises(EngineError, match="not an http"):
            parse_url(bad)


def test_streams_the_exact_reply_delta_by_delta_and_counts_tokens_like_the_server(server: LlamaServer) -> None:
    async def main() -> None:
        llm = await started(server.url)
        try:
            assert llm.model == str(server.model)  # the first (only) model the server lists
            assert llm.tokenizer == "llama_cpp.server"  # /extras/tokenize/count
            messages = ask()
            stream = llm.chat(messages, max_tokens=128)
            deltas: list[str] = []
            await asyncio.wait_for(drain(stream, deltas), 30)
            assert "".join(deltas) == gen.DEFAULT_REPLY
            assert len(deltas) == REPLY_PIECES  # token by token, as generated
            st = stream.stats
            assert st.first_token_at is not None and st.finished_at is not None
            assert st.started_at < st.first_token_at <= st.finished_at
            assert st.completion_tokens == REPLY_PIECES
            assert not st.cancelled and st.error is None
            # History's budget: the counts the server makes with its own tokenizer and template
            await asyncio.sleep(0.3)  # exact counts are fetched after the reply
            history = [*messages, ChatMessage("assistant", gen.DEFAULT_REPLY), ChatMessage("user", "And tomorrow?")]
            for msgs in (messages, history):
                truth = server.usage_prompt_tokens(msgs)
                assert truth <= llm.count_tokens(msgs) <= truth * 1.1 + 4, (truth, llm.count_tokens(msgs))
            # a text never counted is estimated from the learned chars-per-token, erring high
            unseen = ask("Please tell me a long and winding story about the mountains, rivers and birds of spring.")
            truth = server.usage_prompt_tokens(unseen)
            assert truth * 0.9 <= llm.count_tokens(unseen) <= truth * 1.6, (truth, llm.count_tokens(unseen))
            # the next turn is whole too
            again = llm.chat(history, max_tokens=128)
            assert await asyncio.wait_for(again.text(), 30) == gen.DEFAULT_REPLY
        finally:
            await llm.close()

    asyncio.run(main())


def test_cancel_closes_the_stream_within_a_delta_and_the_server_stops_generating(long_server: LlamaServer) -> None:
    async def main() -> None:
        llm = await started(long_server.url)
        try:
            # A whole reply first: how much server CPU 800 tokens take.
            cpu0 = long_server.cpu_s()
            whole = await asyncio.wait_for(llm.chat(ask(), max_tokens=1000).text(), 60)
            assert whole == LONG_REPLY
            full_cpu = long_server.cpu_s() - cpu0
            assert full_cpu > 0.5

            disconnects = long_server.log_text().count("Disconnected from client")
            cpu0 = long_server.cpu_s()
            stream = llm.chat(ask(), max_tokens=1000)
            got: list[str] = []
            after_cancel = 0
            cancelled_at = 0.0
            async for delta in stream:
                if cancelled_at:
                    after_cancel += 1
                got.append(delta)
                if len(got) == 10:
                    cancelled_at = time.monotonic()
                    stream.cancel()
            assert after_cancel == 0  # nothing more is handed out once cancelled
            assert stream.stats.cancelled
            # The server notices the closed connection (its own log) ...
            while long_server.log_text().count("Disconnected from client") == disconnects:
                assert time.monotonic() - cancelled_at < 2.0, "the server never saw the client leave"
                await asyncio.sleep(0.002)
            noticed_s = time.monotonic() - cancelled_at
            # ... and stops generating: no CPU spent on the rest of the reply.
            await asyncio.sleep(0.5)
            cut_cpu = long_server.cpu_s() - cpu0
            print(f"\ncancel -> server log 'Disconnected': {noticed_s * 1000:.1f} ms; server CPU for the cut "
                  f"reply {cut_cpu:.2f} s vs {full_cpu:.2f} s for a whole one")  # fmt: skip
            assert noticed_s < 0.5
            assert cut_cpu < 0.25 * full_cpu
            # the next turn starts from the beginning, whole
            nxt = await asyncio.wait_for(llm.chat(ask(), max_tokens=20).text(), 30)
            assert LONG_REPLY.startswith(nxt) and len(nxt.split()) >= 15
        finally:
            await llm.close()

    asyncio.run(main())


def test_server_killed_mid_reply_raises_from_the_stream_and_a_restart_serves_the_next_chat(
    long_server: LlamaServer,
) -> None:
    async def main() -> None:
        llm = await started(long_server.url)
        try:
            stream = llm.chat(ask(), max_tokens=1000)
            got: list[str] = []
            with pytest.raises(EngineError) as err:
                async with asyncio.timeout(30):
                    async for delta in stream:
                        got.append(delta)
                        if len(got) == 10:
                            long_server.kill()
            assert len(got) >= 10 and LONG_REPLY.startswith("".join(got))  # what came before is kept
            assert "mid-reply" in err.value.message and long_server.url in err.value.message
            assert stream.stats.error is not None
            # While it is down, the next chat fails from its iteration (chat() itself never raises) ...
            down = llm.chat(ask(), max_tokens=20)
            with pytest.raises(EngineError, match="cannot reach the LLM server"):
                await asyncio.wait_for(down.text(), 10)
            # ... and once it is back, the next chat works.
            long_server.start()
            text = await asyncio.wait_for(llm.chat(ask(), max_tokens=20).text(), 30)
            assert LONG_REPLY.startswith(text) and len(text.split()) >= 15
        finally:
            await llm.close()

    asyncio.run(main())


def test_a_reply_the_server_cuts_short_is_an_error_not_a_silent_end(long_server: LlamaServer) -> None:
    """llama_cpp.server ends the reply it streams with [DONE] (no finish_reason) when another request comes in."""

    async def main() -> None:
        llm = await started(long_server.url)
        try:
            stream = llm.chat(ask(), max_tokens=1000)
            got: list[str] = []
            other: asyncio.Future[int] | None = None
            with pytest.raises(EngineError, match="ended the reply before it was finished"):
                async with asyncio.timeout(30):
                    async for delta in stream:
                        got.append(delta)
                        if len(got) == 10:
                            other = asyncio.ensure_future(asyncio.to_thread(long_server.usage_prompt_tokens, ask()))
            assert 10 <= len(got) < 800
            assert other is not None and await asyncio.wait_for(other, 30) > 0
        finally:
            await llm.close()

    asyncio.run(main())


def test_slow_server_hits_the_first_token_timeout_and_the_next_chat_works(fresh_server: LlamaServer) -> None:
    assert fresh_server.proc is not None

    async def main() -> None:
        llm = await started(fresh_server.url, timeout_s=1.0)
        try:
            fresh_server.proc.send_signal(signal.SIGSTOP)  # accepts connections (the kernel does), answers nothing
            try:
                t0 = time.monotonic()
                with pytest.raises(EngineError, match=r"no first token within 1 s") as err:
                    await asyncio.wait_for(llm.chat(ask(), max_tokens=64).text(), 10)
                waited = time.monotonic() - t0
                assert 0.9 < waited < 2.5
                assert "llm.timeout_s" in err.value.message
            finally:
                fresh_server.proc.send_signal(signal.SIGCONT)
            text = await asyncio.wait_for(llm.chat(ask(), max_tokens=64).text(), 30)
            assert text == gen.DEFAULT_REPLY
        finally:
            await llm.close()

    asyncio.run(main())


def test_unreachable_server_at_start_names_the_url_and_what_to_check() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(EngineError) as err:
        asyncio.run(started(url))
    assert url in err.value.message
    assert "connection refused" in err.value.message
    assert "running" in err.value.hint and "/v1" in err.value.hint


def test_unknown_model_lists_what_the_server_has(server: LlamaServer) -> None:
    with pytest.raises(EngineError) as err:
        asyncio.run(started(server.url, model="llama-99b"))
    assert "'llama-99b'" in err.value.message
    assert f"it has: {server.model}" in err.value.message
    assert "--llm-model" in err.value.hint


def test_http_errors_carry_the_servers_text_and_never_the_key(tiny_gguf: Path, tmp_path: Path) -> None:
    srv = LlamaServer(tiny_gguf, tmp_path / "keyed.log", api_key="sk-first-secret").start()
    try:
        # 401 at start: the server's words and what to do
        with pytest.raises(EngineError) as err:
            asyncio.run(started(srv.url, api_key="sk-wrong-secret"))
        assert "401" in err.value.message and "Invalid API key" in err.value.message
        assert "api_key" in err.value.hint
        assert "sk-wrong-secret" not in str(err.value)
        # 404: a URL that is not the API root
        with pytest.raises(EngineError) as err:
            asyncio.run(started(srv.url.replace("/v1", "/v2"), api_key="sk-first-secret"))
        assert "404" in err.value.message and "Not Found" in err.value.message and "/v1" in err.value.hint

        async def main() -> None:
            llm = await started(srv.url, api_key="sk-first-secret")
            try:
                assert await asyncio.wait_for(llm.chat(ask()).text(), 30) == gen.DEFAULT_REPLY
                assert "sk-first-secret" not in repr(llm)
                # the server comes back with another key: the next reply fails with its 401, from the stream
                srv.stop()
                srv.api_key = "sk-second-secret"
                srv.start()
                stream = llm.chat(ask())
                with pytest.raises(EngineError) as err:
                    await asyncio.wait_for(stream.text(), 30)
                assert "401" in err.value.message and "Invalid API key" in err.value.message
                assert "secret" not in str(err.value) and "secret" not in (stream.stats.error or "")
            finally:
                await llm.close()

        asyncio.run(main())
    finally:
        srv.stop()


def test_close_never_hangs_with_a_stream_in_flight(long_server: LlamaServer) -> None:
    async def main() -> None:
        llm = await started(long_server.url)
        stream = llm.chat(ask(), max_tokens=1000)
        first = await asyncio.wait_for(stream.__anext__(), 30)
        assert first
        t0 = time.monotonic()
        await llm.close()
        assert time.monotonic() - t0 < 1.0
        with pytest.raises(StopAsyncIteration):  # ended: nothing more is handed out
            await asyncio.wait_for(stream.__anext__(), 2)

    asyncio.run(main())
