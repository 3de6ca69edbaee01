"""What a challenger costs the champion's callers: shadow on every call, a stuck or failing challenger.

    python -m bench.challenger --model-dir DIR [--seconds 6] [--rounds 2] [--challenger VERSION]

1. **Real HTTP.** One worker of ``python -m app`` (SQLite log) in interleaved rounds: the champion
   alone, then with a challenger in shadow on every call (``CHURN_CHALLENGER_MODE=shadow``), each
   loaded with ``wrk -t1`` and 16 connections (saturating the worker), then 4, on one Telco record:
   requests per second, p99 and the server's CPU per request, and the shadow's throughput as a share
   of the champion alone. The challenger is ``--challenger`` (a version in DIR), by default the
   champion's own bundle again: the same work.
2. **In process** (ASGI calls, no sockets): p99 of ``/predict`` with no challenger, with one that
   sleeps 1 s per call and one that raises on every call, and how many calls failed.
3. **Canary split**: the share of 100,000 distinct customer ids the challenger answers, per configured share.

The machine is shared: compare the figures of one run with each other, not with another run's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.loadgen import telco_records, wrk_lua_script
from bench.log_modes import TELCO, measure
from bench.worker import time_calls

SHARES = (0.05, 0.2, 0.5)


def model_dir_with_challenger(model_dir: Path, version: str | None, work: Path) -> Path:
    """A copy of ``model_dir`` whose ``challenger`` names ``version`` (default: the current bundle)."""
    from bundle.manifest import CHALLENGER
    from bundle.store import read_current

    copy = work / "models"
    shutil.copytree(model_dir, copy, ignore=shutil.ignore_patterns(".staging-*", "*.lock"))
    (copy / CHALLENGER).write_text(version or read_current(copy))
    return copy


def http_figures(models: Path, work: Path, seconds: int, rounds: int, data: Path, connections: int) -> None:
    (work / "one.json").write_text(json.dumps(telco_records(data, 1)[0]))
    script = work / "one.lua"
    script.write_text(wrk_lua_script(work / "one.json"))
    settings = {"champion alone": {}, "challenger in shadow, every call": {"CHURN_CHALLENGER_MODE": "shadow"}}
    print(f"\n{connections} connections:\n")
    print("| setting | round | /predict req/s | p99 ms | server CPU µs/request | throughput vs alone |")
    print("|---|---|---|---|---|---|")
    for round_number in range(1, rounds + 1):
        alone = None
        for name, extra in settings.items():
            rps, p99, cpu = measure(name, extra, models, work, script, seconds, connections)
            alone = alone or rps
            print(f"| {name} | {round_number} | {rps:,.0f} | {p99:.1f} | {cpu:.0f} | {rps / alone:.2f} |", flush=True)


class SleepingPredictor:
    def __init__(self, version: str, seconds: float) -> None:
        self.version, self.seconds = version, seconds

    def predict_records(self, records: list[Any], explain: bool = True) -> Any:
        time.sleep(self.seconds)
        raise TimeoutError("the challenger took too long")


class FailingPredictor:
    def __init__(self, version: str) -> None:
        self.version = version

    def predict_records(self, records: list[Any], explain: bool = True) -> Any:
        raise RuntimeError("the challenger is broken")


async def in_process_figures(models: Path, body: bytes, calls: int) -> None:
    from app.main import create_app
    from app.serving.challenger import Challenger, Routing
    from app.settings import Settings

    work = Path(tempfile.mkdtemp(prefix="churn-bench-challenger-"))
    settings = Settings(
        _env_file=None, model_dir=models, database_url=f"sqlite:///{work / 'log.sqlite3'}", challenger_mode="shadow"
    )
    app = create_app(settings)
    challengers = {
        "no challenger": None,
        "challenger sleeping 1 s per call": SleepingPredictor("sleeping", 1.0),
        "challenger raising on every call": FailingPredictor("failing"),
    }
    print("\n| challenger in shadow | /predict median ms | p99 ms | failed calls |")
    print("|---|---|---|---|")
    async with app.router.lifespan_context(app):
        for name, predictor in challengers.items():
            app.state.challenger = None if predictor is None else Challenger(predictor, Routing("shadow", 1.0))
            try:
                figures = await time_calls(app, "/predict", body, calls, warmups=200)
                failed = 0
            except RuntimeError:  # time_calls holds every call to a 200
                figures, failed = {"wall_ms": float("nan"), "p99_ms": float("nan")}, 1
            print(f"| {name} | {figures['wall_ms']:.3f} | {figures['p99_ms']:.3f} | {failed} |", flush=True)
        app.state.challenger = None


def canary_split() -> None:
    from app.serving.challenger import canary_position

    positions = [canary_position(f"customer-{number:07d}") for number in range(100_000)]
    print("\n| configured canary share | share of 100,000 ids answered by the challenger |")
    print("|---|---|")
    for share in SHARES:
        print(f"| {share:.2f} | {sum(position < share for position in positions) / len(positions):.4f} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--challenger", help="a version in --model-dir (default: the current bundle again)")
    parser.add_argument("--data", type=Path, default=TELCO, help="the Telco CSV (one record is the request body)")
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--calls", type=int, default=3000, help="in-process /predict calls per challenger")
    parser.add_argument(
        "--connections", default="16,4", help="wrk connections, one table each (16 saturates one worker)"
    )
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="churn-bench-challenger-"))
    models = model_dir_with_challenger(args.model_dir, args.challenger, work)
    os.environ.setdefault("CHURN_PREDICTION_LOG_SPOOL_DIR", str(work / "spool"))
    for connections in (int(number) for number in args.connections.split(",")):
        http_figures(models, work, args.seconds, args.rounds, args.data, connections)
    asyncio.run(in_process_figures(models, json.dumps(telco_records(args.data, 1)[0]).encode(), args.calls))
    canary_split()


if __name__ == "__main__":
    main()
