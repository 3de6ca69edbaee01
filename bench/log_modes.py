"""What monitoring and each prediction-log durability setting cost a single-record ``/predict``.

    python -m bench.log_modes --model-dir DIR [--seconds 6] [--rounds 2]

One worker of ``python -m app`` (SQLite log) per setting, in interleaved rounds: monitoring off; on
with the spool written ahead (``always``, the default), spooling only on failure, the spool off; and
``CHURN_PREDICTION_LOG_DURABILITY=journal``. Each is loaded with ``wrk -t1 -c16`` on one Telco record;
the figures are requests per second, p99 and the server's CPU per request (its processes' user and
system time over the run, including what the monitor thread writes after it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from bench.loadgen import ServiceProcess, cpu_seconds, descendants, free_port, run_wrk, telco_records, wrk_lua_script

REPO = Path(__file__).resolve().parents[1]
TELCO = REPO.parent / "shared" / "data" / "telco" / "WA_Fn-UseC_-Telco-Customer-Churn.csv"
SETTINGS = {
    "monitoring off": {"CHURN_MONITORING_ENABLED": "false"},
    "on, spool written ahead (default)": {},
    "on, spool on failure only": {"CHURN_PREDICTION_LOG_SPOOL_MODE": "on_failure"},
    "on, spool off": {"CHURN_PREDICTION_LOG_SPOOL_MAX_BYTES": "0"},
    "on, journal": {"CHURN_PREDICTION_LOG_DURABILITY": "journal"},
}


def measure(
    name: str, extra: dict[str, str], model_dir: Path, work: Path, script: Path, seconds: int, connections: int = 16
) -> tuple:
    port, slug = free_port(), str(abs(hash((name, time.time_ns()))))
    env = {
        **os.environ,
        "CHURN_DATABASE_URL": f"sqlite:///{work / slug}.sqlite3",
        "CHURN_PREDICTION_LOG_SPOOL_DIR": str(work / f"spool-{slug}"),
        **extra,
    }
    command = [sys.executable, "-m", "app", "--model-dir", str(model_dir), "--port", str(port), "--workers", "1"]
    with ServiceProcess(name, command, port, work / "service.log", env=env, cwd=REPO) as service:
        service.wait_ready("/ready")
        url = f"http://127.0.0.1:{port}/predict"
        run_wrk(url, script, duration_s=2, connections=connections, threads=1)  # warm-up
        pids = [service.pid, *descendants(service.pid)]
        before = sum(cpu_seconds(pid) or 0.0 for pid in pids)
        result, _ = run_wrk(url, script, duration_s=seconds, connections=connections, threads=1)
        time.sleep(1.5)  # the monitor thread writes what the load left queued
        used = sum(cpu_seconds(pid) or 0.0 for pid in pids) - before
    requests = result.requests_per_s * seconds
    return result.requests_per_s, result.latency_ms["p99"], used / requests * 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=TELCO, help="the Telco CSV (one record is the request body)")
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="churn-bench-log-modes-"))
    (work / "one.json").write_text(json.dumps(telco_records(args.data, 1)[0]))
    script = work / "one.lua"
    script.write_text(wrk_lua_script(work / "one.json"))
    print("| setting | round | /predict req/s | p99 ms | server CPU µs/request |")
    print("|---|---|---|---|---|")
    for round_number in range(1, args.rounds + 1):
        for name, extra in SETTINGS.items():
            rps, p99, cpu = measure(name, extra, args.model_dir, work, script, args.seconds)
            print(f"| {name} | {round_number} | {rps:,.0f} | {p99:.1f} | {cpu:.0f} |", flush=True)


if __name__ == "__main__":
    main()
