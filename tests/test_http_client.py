"""The delivery HTTP client against real servers on 127.0.0.1: aiohttp for well-behaved
peers, scripted raw-socket servers for the awkward ones."""

from __future__ import annotations

import asyncio
import base64
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from switchd.http_client import HttpClient, HttpResponse, ResponseError
from tests.conftest import Sink

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def client() -> AsyncIterator[HttpClient]:
    http = HttpClient()
    yield http
    await http.close()


async def raw_server(script: Script) -> tuple[asyncio.Server, str, list[int]]:
    """A TCP server running `script` per connection; its URL and a connection counter."""
    connections: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            await script(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}", connections


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """Read one request's head and its Content-Length body."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head + await reader.readexactly(length)


def answering(*responses: bytes, then_close: bool = False) -> Script:
    """A script answering successive requests on a connection with `responses`."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for response in responses:
            await read_request(reader)
            writer.write(response)
            await writer.drain()
        if then_close:
            return
        await reader.read()  # keep the connection until the client closes it

    return script


JSON = {"Content-Type": "application/json"}


async def send(
    client: HttpClient,
    url: str,
    method: str = "POST",
    headers: dict[str, str] = JSON,
    body: bytes | None = b'{"a":1}',
    timeout: float = 5.0,
    excerpt: int = 64,
) -> HttpResponse:
    return await client.request(method, url, headers, body, timeout=timeout, excerpt=excerpt)


async def test_request_reaches_the_sink_as_sent(client: HttpClient, sink: Sink) -> None:
    response = await send(
        client, sink.url("/a/b?x=1&y=2"), headers={"X-One": "1", "Content-Type": "text/plain"}
    )
    assert response.status == 200 and response.body == b"status 200"
    (got,) = sink.requests
    assert (got.method, got.path, got.query, got.body) == ("POST", "/a/b", "x=1&y=2", b'{"a":1}')
    assert got.headers["Host"] == sink.base_url.removeprefix("http://")
    assert got.headers["X-One"] == "1" and got.headers["Content-Type"] == "text/plain"
    assert got.headers["Content-Length"] == "7" and got.headers["Accept"] == "*/*"


async def test_connections_are_kept_alive_and_reused(client: HttpClient) -> None:
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    server, url, connections = await raw_server(answering(ok, ok, ok))
    async with server:
        statuses = [(await send(client, url + "/x")).status for _ in range(3)]
    assert statuses == [200, 200, 200] and len(connections) == 1


async def test_bodyless_methods_and_content_length(client: HttpClient, sink: Sink) -> None:
    await send(client, sink.url(), method="GET", body=None, headers={})
    await send(client, sink.url(), method="DELETE", body=None, headers={})
    get, delete = sink.requests
    assert "Content-Length" not in get.headers and get.body == b""
    assert delete.headers["Content-Length"] == "0"


async def test_head_response_with_content_length_has_no_body(client: HttpClient) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n"
    server, url, _ = await raw_server(answering(head))
    async with server:
        response = await send(client, url, method="HEAD", body=None, timeout=2)
    assert (response.status, response.body) == (200, b"")


async def test_user_info_becomes_basic_authorization(client: HttpClient, sink: Sink) -> None:
    url = sink.url("/h").replace("http://", "http://us%40er:p%3Ass@")
    await send(client, url)
    expected = "Basic " + base64.b64encode(b"us@er:p:ss").decode()
    assert sink.requests[0].headers["Authorization"] == expected


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 503 No\r\nTransfer-Encoding: chunked\r\nRetry-After: 7\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 503 No\r\nRetry-After: 7\r\n"
        b"Content-Length: 11\r\n\r\nhello world",
        b"HTTP/1.0 503 No\r\nRetry-After: 7\r\n\r\nhello world",  # ends with the connection
    ],
    ids=["chunked", "interim-100", "close-delimited"],
)
async def test_response_framings(client: HttpClient, response: bytes) -> None:
    server, url, _ = await raw_server(answering(response, then_close=True))
    async with server:
        got = await send(client, url)
    assert (got.status, got.retry_after, got.body) == (503, "7", b"hello world")


async def test_body_is_cut_to_the_excerpt_and_a_huge_one_not_drained(client: HttpClient) -> None:
    huge = b"HTTP/1.1 500 X\r\nContent-Length: 10000000\r\n\r\n" + b"x" * 200_000
    server, url, connections = await raw_server(answering(huge, huge))
    async with server:
        first = await send(client, url, excerpt=10)
        second = await send(client, url, excerpt=10)
    assert first.body == b"x" * 10 and second.status == 500
    assert len(connections) == 2  # the first connection was given up, not drained


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70_000, "exceed"),
        (b"SMTP ready\r\n\r\n", "invalid HTTP response"),
        (b"", "closed the connection before answering"),
    ],
    ids=["headers-too-large", "not-http", "no-answer"],
)
async def test_broken_responses_are_connection_errors(
    client: HttpClient, response: bytes, message: str
) -> None:
    server, url, _ = await raw_server(answering(response, then_close=True))
    async with server:
        with pytest.raises(ConnectionError, match=message) as info:
            await send(client, url)
    assert isinstance(info.value, ResponseError | ConnectionResetError)


async def test_stale_kept_alive_connection_is_retried_once_on_a_new_one(
    client: HttpClient,
) -> None:
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(connections) == 1:  # the first connection dies as its second request arrives
            await read_request(reader)
            writer.write(ok)
            await read_request(reader)
            return
        await answering(ok)(reader, writer)

    server, url, connections = await raw_server(script)
    async with server:
        assert (await send(client, url)).status == 200
        assert (await send(client, url)).status == 200
    assert len(connections) == 2


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A peer that reads and never answers (nor completes a TLS handshake)."""
    await reader.read()


@pytest.mark.parametrize("scheme", ["http", "https"])  # https: the handshake never ends
async def test_timeout_bounds_the_whole_request(client: HttpClient, scheme: str) -> None:
    server, url, _ = await raw_server(silent)
    async with server:
        started = asyncio.get_running_loop().time()
        with pytest.raises(TimeoutError):
            await send(client, url.replace("http:", f"{scheme}:"), timeout=0.3)
        assert asyncio.get_running_loop().time() - started < 2
    assert not any(client._idle.values())


async def test_timeout_bounds_a_request_on_a_kept_alive_connection(client: HttpClient) -> None:
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    server, url, connections = await raw_server(answering(ok))  # then silent
    async with server:
        assert (await send(client, url)).status == 200
        started = asyncio.get_running_loop().time()
        with pytest.raises(TimeoutError):  # the request's own, not wait_for's
            await asyncio.wait_for(send(client, url, timeout=0.3), 5)
        assert asyncio.get_running_loop().time() - started < 2
    assert len(connections) == 1  # the second request went on the kept-alive connection
    assert not any(client._idle.values())


async def test_a_cancelled_request_raises_nothing_at_its_deadline(client: HttpClient) -> None:
    loop = asyncio.get_running_loop()
    problems: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _, context: problems.append(context))
    server, url, _ = await raw_server(silent)
    try:
        async with server:
            request = asyncio.create_task(send(client, url, timeout=0.3))
            await asyncio.sleep(0.1)
            request.cancel()
            with pytest.raises(asyncio.CancelledError):
                await request
            await asyncio.sleep(0.4)  # past the request's deadline
    finally:
        loop.set_exception_handler(None)
    assert problems == []
    assert not any(client._idle.values())


async def test_refused_connection_is_an_os_error(client: HttpClient) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(OSError):
        await send(client, f"http://127.0.0.1:{port}/")


@pytest.mark.parametrize(
    "headers",
    [{"X-A": "1\r\nX-Injected: 1"}, {"X-A": "1\nX-B: 2"}, {"X-A\r\n": "1"}, {"X-A": "\0"}],
)
async def test_line_breaks_in_headers_are_refused(
    client: HttpClient, headers: dict[str, str]
) -> None:
    with pytest.raises(ValueError, match="line break"):
        await send(client, "http://127.0.0.1:9/", headers=headers)


async def test_not_an_http_url_is_refused(client: HttpClient) -> None:
    with pytest.raises(ValueError):
        await send(client, "ftp://127.0.0.1/x")


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no ::1 on this machine")
async def test_ipv6_literal_host(client: HttpClient) -> None:
    ok = b"HTTP/1.1 204 No Content\r\n\r\n"
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await read_request(reader))
        writer.write(ok)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "::1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        response = await send(client, f"http://[::1]:{port}/six")
    assert response.status == 204
    assert f"Host: [::1]:{port}\r\n".encode() in seen[0]


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


async def tls_server(certificate: tuple[Path, Path]) -> tuple[asyncio.Server, str]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\ntls"
    server = await asyncio.start_server(answering(ok), "127.0.0.1", 0, ssl=context)
    return server, f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}/"


async def test_https_verifies_the_certificate(certificate: tuple[Path, Path]) -> None:
    server, url = await tls_server(certificate)
    trusting = ssl.create_default_context(cafile=str(certificate[0]))
    strict, trusted = HttpClient(), HttpClient(tls=trusting)
    try:
        async with server:
            with pytest.raises(ssl.SSLCertVerificationError):
                await send(strict, url)
            response = await send(trusted, url)
        assert (response.status, response.body) == (200, b"tls")
    finally:
        await strict.close()
        await trusted.close()
