"""``python -m bench.scoring``: batch scoring of a generated customer base with ``python -m scoring``.

Generates ``--rows`` Telco-like customers as a Parquet directory (``python -m training generate
--partition-rows``), then scores them with the served bundle (trained here on the Telco file, or on a
generated table when it is absent, unless ``--model-dir`` names one): with the default local cluster;
through a separately started ``dask scheduler`` and ``dask worker --nworkers 2``; and with a local
cluster of 1 and of 2 workers. Each run reports wall time, rows per second, the peak resident memory
of its whole process tree (polled from ``/proc``) and whether output rows + error rows equal the input.
Results go to ``bench/results/scoring-<timestamp>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.quality import tree_rss_kib
from bench.quality_tables import REPO, TELCO_CSV
from bench.report import loadavg

RESULTS_DIR = REPO / "bench" / "results"
TARGET_ROWS_PER_SECOND = 150_000
TARGET_PEAK_MB = 3072
POLL_SECONDS = 0.2
RUN_TIMEOUT_S = 3600
CLUSTER_START_TIMEOUT_S = 120


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


def child_environment() -> dict[str, str]:
    # Dask workers started from the command line import the project's modules from the repository.
    return {**os.environ, "PYTHONPATH": str(REPO), "ARROW_DEFAULT_MEMORY_POOL": "system"}


def run_measured(command: list[str], log: Path, also: tuple[int, ...] = ()) -> dict[str, Any]:
    """Run ``command`` to its end: exit code, wall time, peak RSS of its tree and of the ``also`` trees,
    and the CPU time of its own processes (reaped, from ``os.wait4``)."""
    started = time.perf_counter()
    peak_kib = 0
    with log.open("w") as output:
        child = subprocess.Popen(command, cwd=REPO, stdout=output, stderr=subprocess.STDOUT, env=child_environment())
        while True:
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            peak_kib = max(peak_kib, tree_rss_kib(child.pid) + sum(tree_rss_kib(pid) for pid in also))
            if time.perf_counter() - started > RUN_TIMEOUT_S:
                child.kill()
            time.sleep(POLL_SECONDS)
    return {
        "exit_code": os.waitstatus_to_exitcode(status),
        "wall_seconds": round(time.perf_counter() - started, 2),
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2),
        "peak_rss_mb": round(peak_kib / 1024, 1),
        "log_tail": log.read_text(errors="replace")[-1500:],
    }


def counted_rows(out: Path) -> int:
    """Rows written: the scores plus the error rows."""
    import pyarrow.dataset as ds

    errors = out / "_errors"
    error_rows = ds.dataset(errors, format="parquet").count_rows() if any(errors.glob("*.parquet")) else 0
    return ds.dataset(out, format="parquet").count_rows() + error_rows


def score(data: Path, out: Path, model_dir: Path, rows: int, log: Path, *args: str, also: tuple[int, ...] = ()) -> dict:
    command = python("-m", "scoring", "--data", str(data), "--out", str(out), "--model-dir", str(model_dir), "--quiet")
    run = run_measured([*command, *args], log, also)
    run["command"] = " ".join(["python", *command[1:], *args])
    run["rows_per_second"] = round(rows / run["wall_seconds"]) if run["exit_code"] == 0 else None
    # What a core fully given to the job scores: a figure the other users of a shared machine do not move.
    own_cpu = run["exit_code"] == 0 and not also and run["cpu_seconds"] > 0
    run["rows_per_cpu_second"] = round(rows / run["cpu_seconds"]) if own_cpu else None
    run["output_rows"] = counted_rows(out) if run["exit_code"] == 0 else None
    run["output_equals_input"] = run["output_rows"] == rows
    print(
        f"  {run['command']}: {run['wall_seconds']} s, {run['rows_per_second']} rows/s, {run['peak_rss_mb']} MB",
        file=sys.stderr,
        flush=True,
    )
    return run


@contextmanager
def separate_cluster(workdir: Path, workers: int) -> Iterator[tuple[str, tuple[int, ...]]]:
    """``dask scheduler`` and ``dask worker --nworkers N`` on loopback; the address and the two pids."""
    from distributed import Client

    scheduler_file = workdir / "scheduler.json"
    common = ["--no-dashboard", "--host", "127.0.0.1", "--scheduler-file", str(scheduler_file)]
    logs = [(workdir / "scheduler.log").open("w"), (workdir / "workers.log").open("w")]
    processes = [
        subprocess.Popen(
            python("-m", "distributed.cli.dask_scheduler", "--port", "0", *common),
            cwd=REPO,
            env=child_environment(),
            stdout=logs[0],
            stderr=subprocess.STDOUT,
        )
    ]
    try:
        deadline = time.monotonic() + CLUSTER_START_TIMEOUT_S
        while not scheduler_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        worker_command = ["--nworkers", str(workers), "--nthreads", "1", *common]
        processes.append(
            subprocess.Popen(
                python("-m", "distributed.cli.dask_worker", *worker_command),
                cwd=REPO,
                env=child_environment(),
                stdout=logs[1],
                stderr=subprocess.STDOUT,
            )
        )
        address = json.loads(scheduler_file.read_text())["address"]
        with Client(address, timeout="60s") as client:
            client.wait_for_workers(workers, timeout=CLUSTER_START_TIMEOUT_S)
        yield address, tuple(process.pid for process in processes)
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for log in logs:
            log.close()


def served_bundle(workdir: Path, model_dir: Path | None) -> Path:
    """``model_dir``, or a LightGBM bundle trained on the Telco file (a generated table without it)."""
    if model_dir is not None:
        return model_dir
    model_dir = workdir / "models"
    data = TELCO_CSV
    if not data.exists():
        data = workdir / "train.csv"
        subprocess.run(
            python("-m", "training", "generate", "--rows", "20000", "--out", str(data)), cwd=REPO, check=True
        )
    print(f"training a LightGBM bundle on {data.name} ...", file=sys.stderr, flush=True)
    command = python("-m", "training", "--data", str(data), "--models", "lightgbm", "--trials", "2")
    subprocess.run(
        [*command, "--no-report", "--quiet", "--model-dir", str(model_dir)],
        cwd=REPO,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return model_dir


def partition_stages(part: Path, model_dir: Path) -> dict[str, float]:
    """Microseconds per row of each step of one partition, in this process (the bundle loaded first)."""
    import pandas as pd

    from app.settings import Settings
    from scoring.partition import customer_records, error_table, scored_table
    from scoring.shipping import ScoringPolicy, load_shipped, pack_bundle

    settings = Settings(model_dir=model_dir)
    bundle, _ = pack_bundle(model_dir)
    predictor = load_shipped(bundle, ScoringPolicy(settings.risk_bands, settings.playbook, settings.top_reasons))
    started = time.perf_counter()
    frame = pd.read_parquet(part)
    read = time.perf_counter()
    records, _ = customer_records(frame, predictor.cleaner.allowed)
    built = time.perf_counter()
    outcome = predictor.predict_records(records, explain=False)
    predicted = time.perf_counter()
    scored_table([(0, outcome)], 0, datetime.now(UTC), reasons=False)
    error_table([(0, outcome)], 0)
    tabled = time.perf_counter()
    per_row = 1e6 / len(frame)
    stages = {"read Parquet": read - started, "raw values to records": built - read}
    stages |= {f"predictor: {name}": seconds for name, seconds in outcome.stage_seconds.items()}
    stages |= {"predictor: total": predicted - built, "output tables": tabled - predicted}
    return {name: round(seconds * per_row, 2) for name, seconds in stages.items()}


def verdict(value: float | None, target: float, at_least: bool) -> str:
    if value is None:
        return "n/a"
    return "**PASS**" if (value >= target if at_least else value <= target) else "**FALL SHORT**"


def figure_rows(results: dict[str, Any]) -> list[list[str]]:
    rows = results["rows"]
    table = []
    if "generate" in results:
        table.append(["generate the Parquet input (s)", f"{results['generate']['wall_seconds']}", "-", "-"])

    def add_run(label: str, run: dict[str, Any] | None) -> None:
        if run is None:
            return
        rate = run["rows_per_second"]
        table.append([f"{label}: wall time (s)", f"{run['wall_seconds']}", "-", "-"])
        table.append(
            [
                f"{label}: rows/s",
                f"{rate:,}" if rate else "failed",
                f">= {TARGET_ROWS_PER_SECOND:,}",
                verdict(rate, TARGET_ROWS_PER_SECOND, True),
            ]
        )
        if run.get("rows_per_cpu_second"):
            table.append([f"{label}: rows per CPU-second", f"{run['rows_per_cpu_second']:,}", "-", "-"])
        table.append(
            [
                f"{label}: peak RSS of the process tree (MB)",
                f"{run['peak_rss_mb']}",
                f"<= {TARGET_PEAK_MB}",
                verdict(run["peak_rss_mb"], TARGET_PEAK_MB, False),
            ]
        )
        table.append(
            [
                f"{label}: output + error rows = input ({rows:,})",
                str(run["output_equals_input"]),
                "True",
                "**PASS**" if run["output_equals_input"] else "**FALL SHORT**",
            ]
        )

    add_run("default local cluster", results["local"])
    add_run("separate scheduler + 2 workers", results.get("separate"))
    scaling = results.get("scaling")
    if scaling:
        one, two = scaling["1"]["rows_per_second"], scaling["2"]["rows_per_second"]
        for workers, rate in (("1", one), ("2", two)):
            per_cpu = scaling[workers].get("rows_per_cpu_second")
            value = (f"{rate:,}" + (f" ({per_cpu:,} per CPU-second)" if per_cpu else "")) if rate else "failed"
            table.append([f"local cluster, {workers} worker(s): rows/s", value, "-", "-"])
        if one and two:
            table.append(["speed-up of the second core", f"{two / one:.2f}x", "-", "-"])
    for stage, micros in results.get("stages", {}).items():
        table.append([f"one partition in one process: {stage} (µs/row)", f"{micros}", "-", "-"])
    fixed = results.get("fixed_cost")
    if fixed:
        table.append(["fixed cost: the default command on 1,000 rows (s)", f"{fixed['wall_seconds']}", "-", "-"])
    return table


def markdown(rows: list[list[str]]) -> str:
    lines = ["| figure | value | target | verdict |", "|---|---|---|---|"]
    return "\n".join([*lines, *("| " + " | ".join(row) + " |" for row in rows)]) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.scoring", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="customers to generate (default: 1000000)")
    parser.add_argument("--partition-rows", type=int, default=100_000, help="rows per Parquet file (default: 100000)")
    parser.add_argument("--model-dir", type=Path, help="score with this model directory's current bundle")
    parser.add_argument("--data", type=Path, help="score this Parquet directory instead of generating one")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where results go")
    parser.add_argument("--skip-separate", action="store_true", help="skip the separately started cluster")
    parser.add_argument("--skip-scaling", action="store_true", help="skip the 1- and 2-worker runs")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    results: dict[str, Any] = {"started_at": stamp, "rows": options.rows, "cpus": os.cpu_count(), "load": loadavg()}
    with tempfile.TemporaryDirectory(prefix="bench-scoring-") as scratch:
        workdir = Path(scratch)
        model_dir = served_bundle(workdir, options.model_dir)
        data = options.data or workdir / "customers"
        if options.data is None:
            print(f"generating {options.rows:,} customers ...", file=sys.stderr, flush=True)
            generate = ["--rows", str(options.rows), "--seed", "1", "--partition-rows", str(options.partition_rows)]
            results["generate"] = run_measured(
                python("-m", "training", "generate", *generate, "--out", str(data)), workdir / "generate.log"
            )
        else:
            import pyarrow.dataset as ds

            results["rows"] = options.rows = ds.dataset(data, format="parquet").count_rows()
        small = workdir / "small"
        subprocess.run(
            python("-m", "training", "generate", "--rows", "1000", "--partition-rows", "1000", "--out", str(small)),
            cwd=REPO,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        results["stages"] = partition_stages(min(data.glob("*.parquet")), model_dir)
        print("scoring ...", file=sys.stderr, flush=True)
        results["fixed_cost"] = score(small, workdir / "out-small", model_dir, 1000, workdir / "small.log")
        results["local"] = score(data, workdir / "out-local", model_dir, options.rows, workdir / "local.log")
        if not options.skip_separate:
            with separate_cluster(workdir, workers=2) as (address, pids):
                results["separate"] = score(
                    data,
                    workdir / "out-separate",
                    model_dir,
                    options.rows,
                    workdir / "separate.log",
                    "--scheduler",
                    address,
                    also=pids,
                )
        if not options.skip_scaling:
            results["scaling"] = {
                str(n): score(
                    data, workdir / f"out-{n}", model_dir, options.rows, workdir / f"w{n}.log", "--workers", str(n)
                )
                for n in (1, 2)
            }
    results["load_after"] = loadavg()
    rows = figure_rows(results)
    results["figures"] = [dict(zip(("figure", "value", "target", "verdict"), row, strict=True)) for row in rows]
    options.results_dir.mkdir(parents=True, exist_ok=True)
    base = options.results_dir / f"scoring-{stamp}"
    base.with_suffix(".json").write_text(json.dumps(results, indent=2, default=str))
    table = markdown(rows)
    load = f"load average {results['load'][:1]} before, {results['load_after'][:1]} after"
    base.with_suffix(".md").write_text(f"# Scoring benchmark {stamp} ({options.rows:,} rows, {load})\n\n{table}")
    print(load)
    print(table)
    print(f"results: {base}.json, {base}.md")
    return 0 if results["local"]["exit_code"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
