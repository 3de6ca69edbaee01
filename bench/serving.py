"""End-to-end serving benchmark: our service against the plain reference API, on this machine, in one run.

    python -m bench.serving                 # train a Telco bundle, then measure everything
    python -m bench.serving --model-dir DIR # reuse a model directory that already has a current bundle
    python -m bench.serving --quick         # short durations: checks the harness, figures are rough

Steps, all on loopback, every process bounded in time and killed at the end:

1. a Telco-trained bundle (``python -m training``), or the one in ``--model-dir``;
2. the plain reference service (trained with its own ``train.py``) under uvicorn, one worker;
3. our service (``python -m app``), one worker, monitoring on: process start -> ``/ready``;
4. single-record ``/predict`` under wrk, same body and settings against both: requests/s, latency;
5. the same load with monitoring off (what monitoring costs);
6. ``/predict/batch`` with 10,000 Telco records: server time and records/s, calls back to back
   (each shares the machine with the log writing of the one before; held to the target), one at
   a time (each after the log has written the one before), and with monitoring off;
7. resident memory per worker, and whether torch got loaded;
8. our service with two workers under the same load.

Results go to stdout and to ``bench/results/serving-<timestamp>.{json,md}``; every figure that has
a target is shown beside it as PASS or FALL SHORT. Ratios measured in one run are what to compare:
the machine is shared, so absolute figures move from run to run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.loadgen import (
    BenchmarkError,
    ServiceProcess,
    telco_records,
)
from bench.report import Report, environment, fmt, write_results
from bench.serving_steps import (
    FLOOR,
    OURS,
    OURS_OFF,
    OURS_TWO,
    REFERENCE,
    Bench,
    Options,
    _pair_range,
    _round_range,
    _worker_rss,
)

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
DEFAULT_DATA = SHARED / "data" / "telco" / "WA_Fn-UseC_-Telco-Customer-Churn.csv"
DEFAULT_REFERENCE = SHARED / "peers" / "plain_reference"
DEFAULT_FLOOR = SHARED / "peers" / "fastapi_floor"
DEFAULT_RESULTS = REPO / "bench" / "results"

# Targets: (comparison, bound). "<=" means the measured figure must not exceed the bound.
TARGETS: dict[str, tuple[str, float]] = {
    "start_to_ready_s": ("<=", 5.0),
    "throughput_ratio_vs_floor": (">=", 0.6),
    "throughput_ratio_vs_reference": (">=", 20.0),
    "p99_ratio_vs_floor": ("<=", 1.5),
    "monitoring_on_over_off": (">=", 0.85),
    "two_workers_over_one": (">=", 1.5),
    "batch_server_ms": ("<=", 150.0),
    "torch_loaded": ("==", 0.0),
}


# ---- the bundle -----------------------------------------------------------------------------
def bundle_info(model_dir: Path) -> dict[str, Any] | None:
    """Version and model family of the bundle ``current`` names, or None if there is none."""
    pointer = model_dir / "current"
    if not pointer.is_file():
        return None
    version = pointer.read_text().strip()
    manifest_path = model_dir / version / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    model = manifest.get("model", {})
    return {
        "version": manifest.get("version", version),
        "family": model.get("family"),
        "artifact_format": model.get("artifact_format"),
        "data": manifest.get("training", {}).get("data_source") or manifest.get("training", {}).get("data"),
    }


def train_bundle(data: Path, model_dir: Path, timeout_s: float, extra_args: list[str]) -> float:
    """``python -m training`` on the Telco file into ``model_dir``; returns the wall time in seconds."""
    cmd = [sys.executable, "-m", "training", "--data", str(data), "--model-dir", str(model_dir), *extra_args]
    print(f"[bench] training a bundle: {' '.join(cmd)}", flush=True)
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, timeout=timeout_s, check=False, start_new_session=True)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise BenchmarkError(f"training failed with exit code {proc.returncode}: {' '.join(cmd)}")
    if bundle_info(model_dir) is None:
        raise BenchmarkError(f"training finished but {model_dir / 'current'} names no readable bundle")
    return elapsed


def train_reference(reference_dir: Path, data: Path, out: Path, timeout_s: float) -> float:
    cmd = [sys.executable, str(reference_dir / "train.py"), str(data), str(out)]
    print(f"[bench] training the reference pipeline: {' '.join(cmd)}", flush=True)
    started = time.perf_counter()
    proc = subprocess.run(
        cmd, cwd=out.parent, timeout=timeout_s, capture_output=True, text=True, check=False, start_new_session=True
    )
    if proc.returncode != 0 or not out.is_file():
        raise BenchmarkError(
            f"reference training failed ({proc.returncode}):\n{proc.stdout[-1500:]}{proc.stderr[-1500:]}"
        )
    return time.perf_counter() - started


# ---- the run --------------------------------------------------------------------------------
def run(opts: Options, report: Report) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="churn-serving-bench-"))
    bench = Bench(opts, report, workdir)
    try:
        _run_steps(opts, report, bench)
    finally:
        bench.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)


def _run_steps(opts: Options, report: Report, bench: Bench) -> None:
    # 1. the bundle
    if opts.model_dir is not None:
        model_dir = opts.model_dir.resolve()
        if bundle_info(model_dir) is None:
            raise BenchmarkError(f"{model_dir} has no current bundle; leave out --model-dir to train one")
    else:
        model_dir = (opts.results_dir / f"models-{report.started_at}").resolve()
        report.runs["training_s"] = train_bundle(opts.data, model_dir, opts.train_timeout_s, opts.training_args)
        report.notes.append(f"bundle trained into {model_dir}; reuse it with --model-dir {model_dir}")
    info = bundle_info(model_dir)
    report.runs["bundle"] = {"model_dir": str(model_dir), **(info or {})}
    info = info or {}
    print(f"[bench] bundle {info.get('version')} ({info.get('family')}) in {model_dir}", flush=True)

    # 2, 3, 5, 8. every service, started one at a time (each start timed alone), then left idle
    services: list[tuple[str, ServiceProcess]] = []
    if not opts.skip_reference:
        pipeline = bench.workdir / "reference_pipeline.joblib"
        report.runs["reference_training_s"] = train_reference(opts.reference_dir, opts.data, pipeline, 600)
        services.append(
            (REFERENCE, bench.start_peer(REFERENCE, opts.reference_dir, {"REFERENCE_PIPELINE": str(pipeline)}))
        )
    services.append((FLOOR, bench.start_peer(FLOOR, opts.floor_dir)))
    services.append((OURS, bench.start_ours("ours", model_dir, workers=1, monitoring=True)))
    services.append((OURS_OFF, bench.start_ours("ours-monitoring-off", model_dir, workers=1, monitoring=False)))
    services.append((OURS_TWO, bench.start_ours("ours-2-workers", model_dir, workers=2, monitoring=True)))
    ready = {label: service.ready_after_s for label, service in services}
    report.runs["start_to_ready_s"] = ready
    report.runs["start_to_ready_cpu_s"] = {label: service.ready_cpu_s for label, service in services}
    print(f"[bench] start -> ready: {', '.join(f'{k} {v:.2f} s' for k, v in ready.items())}", flush=True)
    by_label = dict(services)

    # 4, 5, 8. single-record load, interleaved
    loads = bench.single_record_load(services)

    # 7. memory after the load
    memory = {label: bench.memory(service, f"{label} after /predict load") for label, service in services}

    # 5. what monitoring costs, in pairs of short runs with only those two services left running
    for label in (REFERENCE, FLOOR, OURS_TWO):
        if label in by_label:
            bench.stop(by_label[label])
    pairs = bench.monitoring_pairs(by_label[OURS], by_label[OURS_OFF])

    # 6. batches, one service at a time: monitoring on back to back (the figure held to the target),
    # monitoring on one call at a time, then monitoring off; the others idle
    ours_service = by_label[OURS]
    batch_records = telco_records(opts.data, opts.batch_size)
    batch = bench.batch_load(ours_service, batch_records)
    memory_batch = bench.memory(ours_service, f"{OURS} after /predict/batch")
    batch_settled = bench.batch_load(ours_service, batch_records, key="batch_settled", settle=True)
    bench.stop(ours_service)
    batch_off = bench.batch_load(by_label[OURS_OFF], batch_records, key="batch_monitoring_off")
    bench.stop(by_label[OURS_OFF])

    reference = loads.get(REFERENCE)
    floor, ours, off, two = loads[FLOOR], loads[OURS], loads[OURS_OFF], loads[OURS_TWO]
    start_to_ready = ready[OURS]
    ref_memory = memory.get(REFERENCE)
    memory_single, memory_two = memory[OURS], memory[OURS_TWO]

    # figures
    add = report.add
    add("start_to_ready_s", "ours: process start -> /ready", start_to_ready, "s", "start_to_ready_s")
    add(
        "start_to_ready_cpu_s",
        "ours: CPU used from start to ready",
        report.runs["start_to_ready_cpu_s"][OURS],
        "s",
        note="about the start time on an otherwise idle core",
    )
    if reference is not None:
        add("reference_rps", "reference /predict throughput", reference.requests_per_s, "req/s")
        add("reference_p50_ms", "reference /predict p50", reference.latency_ms.get("p50"), "ms")
        add("reference_p90_ms", "reference /predict p90", reference.latency_ms.get("p90"), "ms")
        add("reference_p99_ms", "reference /predict p99", reference.latency_ms.get("p99"), "ms")
    add("floor_rps", "FastAPI floor /predict throughput", floor.requests_per_s, "req/s")
    add("floor_p99_ms", "FastAPI floor /predict p99", floor.latency_ms.get("p99"), "ms")
    add("ours_rps", "ours /predict throughput (1 worker, monitoring on)", ours.requests_per_s, "req/s")
    add("ours_p50_ms", "ours /predict p50", ours.latency_ms.get("p50"), "ms")
    add("ours_p90_ms", "ours /predict p90", ours.latency_ms.get("p90"), "ms")
    add("ours_p99_ms", "ours /predict p99", ours.latency_ms.get("p99"), "ms")
    add(
        "throughput_ratio_floor",
        "throughput ours / FastAPI floor",
        ours.requests_per_s / floor.requests_per_s if floor.requests_per_s else None,
        "x",
        "throughput_ratio_vs_floor",
        _round_range(report, OURS, FLOOR),
    )
    floor_p99 = floor.latency_ms.get("p99")
    add(
        "p99_ratio_floor",
        "p99 ours / FastAPI floor",
        ours.latency_ms.get("p99", 0.0) / floor_p99 if floor_p99 else None,
        "x",
        "p99_ratio_vs_floor",
    )
    if reference is not None:
        ratio = ours.requests_per_s / reference.requests_per_s if reference.requests_per_s else None
        add(
            "throughput_ratio",
            "throughput ours / reference",
            ratio,
            "x",
            "throughput_ratio_vs_reference",
            _round_range(report, OURS, REFERENCE),
        )
    cpu_us = bench.cpu_per_request_us
    if reference is not None:
        add("reference_cpu_us", "reference: service CPU per request", cpu_us[REFERENCE], "us")
    add("floor_cpu_us", "FastAPI floor: service CPU per request", cpu_us[FLOOR], "us")
    add("ours_cpu_us", "ours: service CPU per request", cpu_us[OURS], "us")
    add(
        "cpu_ratio_floor",
        "CPU per request FastAPI floor / ours",
        cpu_us[FLOOR] / cpu_us[OURS],
        "x",
        note="the throughput ratio the CPU alone allows; less sensitive to other load",
    )
    if reference is not None:
        add(
            "cpu_ratio",
            "CPU per request reference / ours",
            cpu_us[REFERENCE] / cpu_us[OURS],
            "x",
            note="less sensitive to other load than requests/s",
        )
    add("ours_cores_busy", "ours: cores busy under load", bench.cpu_share[OURS], note="1.00 = one full core")
    if reference is not None:
        add("reference_cores_busy", "reference: cores busy under load", bench.cpu_share[REFERENCE])
        if bench.cpu_share[OURS] < 0.9:
            report.notes.append(
                f"other processes competed for the CPUs: under load our worker got {bench.cpu_share[OURS]:.2f} of a "
                f"core and the reference {bench.cpu_share[REFERENCE]:.2f} (the scheduler shares CPU per thread, and "
                "the reference runs several); the CPU-per-request ratio is the fairer comparison in such a run"
            )
    for key, value in bench.server_us.get(OURS, {}).items():
        what = "whole request in the server" if key == "request" else f"stage: {key}"
        add(f"ours_server_{key}_us", f"ours /predict, {what} (mean)", value, "us", note="from /metrics")
    add("ours_off_rps", "ours /predict throughput, monitoring off", off.requests_per_s, "req/s")
    add("ours_off_p99_ms", "ours /predict p99, monitoring off", off.latency_ms.get("p99"), "ms")
    add("ours_off_cpu_us", "ours, monitoring off: service CPU per request", cpu_us[OURS_OFF], "us")
    add(
        "monitoring_on_over_off",
        f"throughput monitoring on / off ({pairs['pairs']} pairs of {fmt(pairs['segment_s'])} s runs)",
        pairs["ratio"],
        "",
        "monitoring_on_over_off",
        _pair_range(pairs),
    )
    add(
        "monitoring_on_over_off_rounds",
        "throughput monitoring on / off in the main rounds",
        ours.requests_per_s / off.requests_per_s if off.requests_per_s else None,
        "",
        note="; ".join(filter(None, [_round_range(report, OURS, OURS_OFF), "four services: not held to the target"])),
    )
    server_ms = batch["server_ms_median"]
    n = batch["records"]
    if server_ms is not None:
        add(
            "batch_server_ms", f"/predict/batch {n:,} records: server time (median)", server_ms, "ms", "batch_server_ms"
        )
        add(
            "batch_records_per_s",
            "/predict/batch records/s (server time)",
            n / server_ms * 1e3,
            "rec/s",
        )
        client_target = None
        client_note = "client round trip on loopback, for comparison"
    else:
        client_target = "batch_server_ms"
        client_note = "no server time reported (header or /metrics); client round trip is an upper bound"
        report.notes.append(f"/predict/batch: {client_note}")
    client_ms = batch["client_round_trip_ms_median"]
    add(
        "batch_client_ms",
        f"/predict/batch {n:,} records: round trip (median)",
        client_ms,
        "ms",
        client_target,
        client_note,
    )
    if server_ms is None:
        add(
            "batch_records_per_s",
            "/predict/batch records/s (round trip)",
            n / client_ms * 1e3,
            "rec/s",
            None,
            "upper bound on server time, so a lower bound on rate",
        )
    add(
        "batch_server_cpu_ms", f"/predict/batch {n:,} records: server CPU (median)", batch["server_cpu_ms_median"], "ms"
    )
    for stage, stage_ms in batch["stage_ms_median"].items():
        add(f"batch_stage_{stage}_ms", f"/predict/batch stage: {stage} (median)", stage_ms, "ms")
    add(
        "batch_settled_server_ms",
        f"/predict/batch {n:,} records: server time, one call at a time (median)",
        batch_settled["server_ms_median"],
        "ms",
        note="each call after the log has written the one before",
    )
    add(
        "batch_monitoring_off_ms",
        f"/predict/batch {n:,} records: round trip, monitoring off (median)",
        batch_off["client_round_trip_ms_median"],
        "ms",
        note="back to back; no /metrics to read server time from",
    )
    add("ours_rss_mib", "ours: worker RSS after /predict load", _worker_rss(memory_single), "MiB")
    add("ours_rss_batch_mib", "ours: worker RSS after /predict/batch", _worker_rss(memory_batch), "MiB")
    if ref_memory is not None:
        add("reference_rss_mib", "reference: worker RSS after /predict load", _worker_rss(ref_memory), "MiB")
    torch_flags = [w["libtorch_mapped"] for m in (memory_single, memory_batch, memory_two) for w in m["workers"]]
    family = info.get("family")
    add(
        "torch_loaded",
        f"ours: libtorch mapped in a worker ({family} bundle)",
        float(any(bool(flag) for flag in torch_flags)),
        "yes/no",
        "torch_loaded" if family != "mlp" else None,
        "" if family != "mlp" else "MLP bundles need torch",
    )
    add("two_workers_rps", "ours /predict throughput, 2 workers", two.requests_per_s, "req/s")
    add(
        "two_workers_over_one",
        "throughput 2 workers / 1 worker",
        two.requests_per_s / ours.requests_per_s,
        "x",
        "two_workers_over_one",
        f"{os.cpu_count()} CPUs shared with wrk",
    )
    add("two_workers_p99_ms", "ours /predict p99, 2 workers", two.latency_ms.get("p99"), "ms")
    add(
        "two_workers_rss_mib",
        "ours: RSS per worker, 2 workers",
        _worker_rss(memory_two),
        "MiB",
        note=f"{len(memory_two['workers'])} worker processes, the largest shown",
    )


# ---- CLI ------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.serving", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the IBM Telco CSV (default: %(default)s)")
    parser.add_argument(
        "--reference-dir",
        type=Path,
        default=DEFAULT_REFERENCE,
        help="the plain reference service (default: %(default)s)",
    )
    parser.add_argument(
        "--floor-dir",
        type=Path,
        default=DEFAULT_FLOOR,
        help="FastAPI with a pydantic model and a constant answer (default: %(default)s)",
    )
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=None,
        help="reuse this model directory (it must have a current bundle) instead of training one",
    )
    parser.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS, help="where to write results")
    parser.add_argument("--duration", type=float, default=None, help="seconds measured per load run (default 15)")
    parser.add_argument("--warmup", type=float, default=None, help="seconds of warm-up before each (default 3)")
    parser.add_argument(
        "--rounds", type=int, default=3, help="measured time per service is split into this many interleaved runs"
    )
    parser.add_argument(
        "--pairs", type=int, default=None, help="paired monitoring on/off runs (default 12; 3 with --quick)"
    )
    parser.add_argument(
        "--pair-seconds", type=float, default=None, help="seconds per paired run (default 2; 1 with --quick)"
    )
    parser.add_argument("--connections", type=int, default=16, help="wrk connections (default 16)")
    parser.add_argument("--threads", type=int, default=1, choices=(1, 2), help="wrk threads (default 1)")
    parser.add_argument("--batch-size", type=int, default=10_000, help="records per /predict/batch call")
    parser.add_argument("--batch-calls", type=int, default=None, help="timed /predict/batch calls (default 10)")
    parser.add_argument("--skip-reference", action="store_true", help="do not train or measure the reference")
    parser.add_argument("--quick", action="store_true", help="short runs to check the harness; rough figures")
    parser.add_argument("--train-timeout", type=float, default=3600, help="seconds allowed for training")
    parser.add_argument("--ready-timeout", type=float, default=120, help="seconds allowed for a service to get ready")
    parser.add_argument(
        "--training-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for python -m training (repeatable)",
    )
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.pairs is not None and args.pairs < 1:
        parser.error("--pairs must be at least 1")
    if args.pair_seconds is not None and args.pair_seconds < 1:
        parser.error("--pair-seconds must be at least 1")
    if args.connections < args.threads:
        parser.error("--connections must be at least --threads")
    return args


def options_from_args(args: argparse.Namespace) -> Options:
    return Options(
        data=args.data,
        reference_dir=args.reference_dir,
        floor_dir=args.floor_dir,
        model_dir=args.model_dir,
        results_dir=args.results_dir,
        duration_s=args.duration if args.duration is not None else (3.0 if args.quick else 15.0),
        warmup_s=args.warmup if args.warmup is not None else (1.0 if args.quick else 3.0),
        rounds=args.rounds,
        pairs=args.pairs if args.pairs is not None else (3 if args.quick else 12),
        pair_seconds=args.pair_seconds if args.pair_seconds is not None else (1.0 if args.quick else 2.0),
        connections=args.connections,
        threads=args.threads,
        batch_size=args.batch_size,
        batch_calls=args.batch_calls if args.batch_calls is not None else (3 if args.quick else 10),
        skip_reference=args.skip_reference,
        quick=args.quick,
        train_timeout_s=args.train_timeout,
        ready_timeout_s=args.ready_timeout,
        training_args=list(args.training_arg),
    )


def _raise_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None, install_signals: bool = True) -> int:
    args = parse_args(argv)
    opts = options_from_args(args)
    if not opts.data.is_file():
        print(f"[bench] skipped: the IBM Telco file {opts.data} is absent (pass --data PATH)", file=sys.stderr)
        return 0
    if shutil.which("wrk") is None:
        print("[bench] cannot run: wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    if not (opts.floor_dir / "app.py").is_file():
        print(f"[bench] cannot run: no FastAPI floor service in {opts.floor_dir}", file=sys.stderr)
        return 2
    if not opts.skip_reference and not (opts.reference_dir / "app.py").is_file():
        print(
            f"[bench] cannot run: no reference service in {opts.reference_dir} (or pass --skip-reference)",
            file=sys.stderr,
        )
        return 2
    if install_signals:
        signal.signal(signal.SIGTERM, _raise_on_signal)
    report = Report(
        title="Serving benchmark",
        targets=TARGETS,
        started_at=datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ"),
        command=" ".join(["python -m bench.serving", *(argv if argv is not None else sys.argv[1:])]),
        settings={
            "duration_s": opts.duration_s,
            "warmup_s": opts.warmup_s,
            "rounds": opts.rounds,
            "pairs": opts.pairs,
            "pair_seconds": opts.pair_seconds,
            "connections": opts.connections,
            "wrk_threads": opts.threads,
            "batch_size": opts.batch_size,
            "batch_calls": opts.batch_calls,
            "request_body": str(opts.reference_dir / "request.json"),
            "data": str(opts.data),
            "quick": opts.quick,
        },
        environment=environment(),
    )
    status = 0
    try:
        run(opts, report)
    except BenchmarkError as exc:
        report.error = str(exc)
        status = 1
    except (KeyboardInterrupt, SystemExit):
        report.error = "interrupted before the end; every service it started has been stopped"
        raise
    finally:
        json_path, md_path = write_results(report, opts.results_dir, "serving")
        if report.figures:
            print()
            print(report.text_table())
        for note in report.notes:
            print(f"note: {note}")
        print(f"\nresults: {json_path}\n         {md_path}")
    if report.error:
        print(f"\n[bench] FAILED: {report.error}", file=sys.stderr)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
