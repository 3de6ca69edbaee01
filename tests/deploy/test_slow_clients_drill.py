"""The slow-client drill reports truthfully: against a server that drops them, and one that never does."""

from __future__ import annotations

import asyncio

from deploy.drills.slow_clients import drill, parse_args

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


async def run_against(header_timeout: float | None) -> dict:
    """The drill against a local server that closes a connection without a full request after ``header_timeout``."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=header_timeout)
            writer.write(OK)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    clients = ["--slow=3", "--idle=4", "--seconds=1.5", "--byte-interval=0.1", "--header-mib=1"]
    args = parse_args([f"--url=http://127.0.0.1:{port}/health", *clients, "--probe-interval=0.3", "--probe-timeout=1"])
    async with server:
        return await drill(args)


def test_clients_a_server_drops_are_counted_and_probes_answered():
    report = asyncio.run(run_against(header_timeout=0.3))
    assert report["slow_header_clients"]["closed_by_server"] == 3
    assert report["idle_clients"]["closed_by_server"] == 4
    assert report["idle_clients"]["still_open"] == 0
    assert report["probes"]["answered"] >= 2 and report["probes"]["failed"] == 0
    assert report["oversized_headers"]["answer"] in {"closed without an answer", "no answer: ConnectionResetError"}


def test_clients_a_server_keeps_are_reported_still_open():
    report = asyncio.run(run_against(header_timeout=None))
    assert report["slow_header_clients"]["still_open"] == 3
    assert report["idle_clients"]["still_open"] == 4
    assert report["slow_header_clients"]["seconds_until_closed"]["max"] is None
