"""Drill: do slow and idle clients get closed, and is a new client still answered meanwhile?

Run on demand against a running service (never in CI)::

    python -m deploy.drills.slow_clients --url http://127.0.0.1:8080 --slow 200 --idle 5000 --seconds 60

It opens ``--slow`` connections that send a request's headers one byte every ``--byte-interval``
seconds (slowloris) and ``--idle`` connections that send nothing, then every ``--probe-interval``
seconds asks ``GET /health`` over a fresh connection; with ``--header-mib`` it then sends one
request whose headers run to that many MiB. At the end it prints, as JSON, how many of each kind
the server closed (and how soon), how many could not even connect, what the oversized request got
and how the probes fared. Exit status 0 when every probe was answered, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from urllib.parse import urlsplit

CONNECT_BATCH = 200  # connections opened at once, so the drill does not overflow the listen backlog itself


@dataclass
class Outcome:
    """What happened to one kind of connection."""

    opened: int = 0
    failed_to_connect: int = 0
    closed_by_server: int = 0
    seconds_until_closed: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, object]:
        waits = sorted(self.seconds_until_closed)
        data = asdict(self)
        data["seconds_until_closed"] = {
            "min": round(waits[0], 1) if waits else None,
            "median": round(waits[len(waits) // 2], 1) if waits else None,
            "max": round(waits[-1], 1) if waits else None,
        }
        data["still_open"] = self.opened - self.closed_by_server
        return data


@dataclass
class Probes:
    answered: int = 0
    failed: list[str] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)


def raise_open_file_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


async def hold(host: str, port: int, outcome: Outcome, dribble: bytes | None, interval: float, stop: float) -> None:
    """One connection: connect, then dribble ``dribble`` a byte at a time (or send nothing) until ``stop``."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout=10)
    except (OSError, TimeoutError):
        outcome.failed_to_connect += 1
        return
    outcome.opened += 1
    started = time.monotonic()
    closed = asyncio.ensure_future(reader.read(65536))  # b"" or an error once the server closes
    try:
        position = 0
        while time.monotonic() < stop:
            if dribble is not None:
                writer.write(dribble[position % len(dribble) : position % len(dribble) + 1])
                position += 1
            done, _ = await asyncio.wait({closed}, timeout=min(interval, max(stop - time.monotonic(), 0.01)))
            if done or writer.is_closing():
                outcome.closed_by_server += 1
                outcome.seconds_until_closed.append(time.monotonic() - started)
                return
    except OSError:
        outcome.closed_by_server += 1
        outcome.seconds_until_closed.append(time.monotonic() - started)
    finally:
        closed.cancel()
        writer.close()


async def probe(host: str, port: int, path: str, probes: Probes, timeout: float) -> None:
    """A new client's plain request over a fresh connection."""
    started = time.monotonic()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout=timeout)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        status = await asyncio.wait_for(reader.readline(), timeout=timeout)
        writer.close()
    except (OSError, TimeoutError) as exc:
        probes.failed.append(f"{time.monotonic() - started:.1f}s: {type(exc).__name__} {exc}".strip())
        return
    if status.split(b" ")[1:2] == [b"200"]:
        probes.answered += 1
        probes.seconds.append(time.monotonic() - started)
    else:
        probes.failed.append(f"answered {status.decode(errors='replace').strip() or 'nothing'}")


async def oversized_headers(host: str, port: int, mebibytes: int, timeout: float) -> str:
    """Send a request whose headers never end, ``mebibytes`` MiB of them; what came back, if anything."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout=timeout)
        writer.write(f"GET /health HTTP/1.1\r\nHost: {host}\r\n".encode())
        for number in range(mebibytes):
            writer.write(f"X-Drill-{number}: ".encode() + b"a" * (1 << 20) + b"\r\n")
            await writer.drain()
    except (OSError, TimeoutError) as exc:
        return f"connection ended while sending: {type(exc).__name__}"
    try:
        status = await asyncio.wait_for(reader.readline(), timeout=timeout)
    except (OSError, TimeoutError) as exc:
        return f"no answer: {type(exc).__name__}"
    finally:
        writer.close()
    return status.decode(errors="replace").strip() or "closed without an answer"


async def keep_probing(host: str, port: int, path: str, probes: Probes, args: argparse.Namespace, stop: float) -> None:
    while time.monotonic() < stop:
        await probe(host, port, path, probes, args.probe_timeout)
        await asyncio.sleep(min(args.probe_interval, max(stop - time.monotonic(), 0)))


async def open_in_batches(tasks: list) -> list[asyncio.Task]:
    started = []
    for first in range(0, len(tasks), CONNECT_BATCH):
        started += [asyncio.ensure_future(task) for task in tasks[first : first + CONNECT_BATCH]]
        await asyncio.sleep(0.05)
    return started


async def drill(args: argparse.Namespace) -> dict[str, object]:
    url = urlsplit(args.url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    stop = time.monotonic() + args.seconds
    slow, idle, probes = Outcome(), Outcome(), Probes()
    headers = f"GET /health HTTP/1.1\r\nHost: {host}\r\n".encode() + b"X-Drill: " + b"a" * 10_000
    holders = [hold(host, port, slow, headers, args.byte_interval, stop) for _ in range(args.slow)]
    holders += [hold(host, port, idle, None, 1.0, stop) for _ in range(args.idle)]
    prober = asyncio.ensure_future(keep_probing(host, port, url.path or "/health", probes, args, stop))
    running = await open_in_batches(holders)
    await asyncio.gather(prober, *running)
    headers_answer = None
    if args.header_mib:
        headers_answer = await oversized_headers(host, port, args.header_mib, args.probe_timeout)
    await probe(host, port, url.path or "/health", probes, args.probe_timeout)  # once the drill lets go
    seconds = sorted(probes.seconds)
    return {
        "target": args.url,
        "seconds": args.seconds,
        "slow_header_clients": slow.summary(),
        "idle_clients": idle.summary(),
        "oversized_headers": {"mebibytes": args.header_mib, "answer": headers_answer},
        "probes": {
            "answered": probes.answered,
            "failed": len(probes.failed),
            "failures": probes.failed[:10],
            "max_seconds": round(seconds[-1], 3) if seconds else None,
        },
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m deploy.drills.slow_clients", description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080/health", help="service (or proxy) URL to probe")
    parser.add_argument("--slow", type=int, default=100, help="slow-header connections (default 100)")
    parser.add_argument("--idle", type=int, default=1000, help="connections that send nothing (default 1000)")
    parser.add_argument("--seconds", type=float, default=60, help="how long to hold them (default 60)")
    parser.add_argument("--byte-interval", type=float, default=1.0, help="seconds between slow bytes (default 1)")
    parser.add_argument("--header-mib", type=int, default=0, help="then send this many MiB of headers (default 0)")
    parser.add_argument("--probe-interval", type=float, default=5.0, help="seconds between probes (default 5)")
    parser.add_argument("--probe-timeout", type=float, default=5.0, help="a probe's patience (default 5)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    limit = raise_open_file_limit()
    if args.slow + args.idle + 50 > limit:
        print(
            f"warning: {args.slow + args.idle} connections need more than this process's {limit} files", file=sys.stderr
        )
    report = asyncio.run(drill(args))
    print(json.dumps(report, indent=2))
    return 0 if report["probes"]["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
