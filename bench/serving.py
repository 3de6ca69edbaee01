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
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from bench.loadgen import (
    LOOPBACK,
    BenchmarkError,
    ServiceProcess,
    WrkResult,
    cpu_seconds,
    descendants,
    free_port,
    http_request,
    maps_mention,
    merge_results,
    read_status_kib,
    run_wrk,
    telco_records,
    wait_idle,
    worker_pids,
    wrk_lua_script,
)
from bench.report import Report, environment, fmt, loadavg, write_results

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
DEFAULT_DATA = SHARED / "data" / "telco" / "WA_Fn-UseC_-Telco-Customer-Churn.csv"
DEFAULT_REFERENCE = SHARED / "peers" / "plain_reference"
DEFAULT_FLOOR = SHARED / "peers" / "fastapi_floor"
DEFAULT_RESULTS = REPO / "bench" / "results"
REFERENCE = "reference"
FLOOR = "FastAPI floor"
OURS = "ours"
OURS_OFF = "ours, monitoring off"
OURS_TWO = "ours, 2 workers"

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


# ---- /metrics ----------------------------------------------------------------------------------
HTTP_DURATION = "churn_http_request_duration_seconds"
STAGE_DURATION = "churn_prediction_stage_duration_seconds"
LOG_WRITTEN = "churn_prediction_log_written"
ROUTE_LABELS = ("route", "path", "handler")  # what HTTP middlewares name the route template


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Every sample of a Prometheus text exposition as (name, labels, value)."""
    return [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def metric_sums(text: str, route: str) -> dict[str, float]:
    """From ``/metrics``: total seconds spent on ``POST route`` (``request``) and its count (``request_count``),
    and total seconds in each prediction stage; all cumulative since the server started."""
    sums: dict[str, float] = {}
    for name, labels, value in samples(text):
        on_route = labels.get("method") == "POST" and any(labels.get(key) == route for key in ROUTE_LABELS)
        if name == f"{HTTP_DURATION}_sum" and on_route:
            sums["request"] = sums.get("request", 0.0) + value
        elif name == f"{HTTP_DURATION}_count" and on_route:
            sums["request_count"] = sums.get("request_count", 0.0) + value
        elif name == f"{STAGE_DURATION}_sum" and "stage" in labels:
            sums[labels["stage"]] = sums.get(labels["stage"], 0.0) + value
    return sums


# ---- steps ----------------------------------------------------------------------------------
@dataclass
class Options:
    data: Path
    reference_dir: Path
    floor_dir: Path
    model_dir: Path | None
    results_dir: Path
    duration_s: float
    warmup_s: float
    rounds: int
    pairs: int
    pair_seconds: float
    connections: int
    threads: int
    batch_size: int
    batch_calls: int
    skip_reference: bool
    quick: bool
    train_timeout_s: float
    ready_timeout_s: float
    training_args: list[str]


class Bench:
    def __init__(self, opts: Options, report: Report, workdir: Path) -> None:
        self.opts = opts
        self.report = report
        self.workdir = workdir
        self.services: list[ServiceProcess] = []
        self.cpu_per_request_us: dict[str, float] = {}
        self.cpu_share: dict[str, float] = {}
        self.server_us: dict[str, dict[str, float]] = {}
        self.body_path = opts.reference_dir / "request.json"
        self.script = workdir / "post_request.lua"
        self.script.write_text(wrk_lua_script(self.body_path))

    # -- processes
    def start_peer(self, name: str, app_dir: Path, env: dict[str, str] | None = None) -> ServiceProcess:
        """A peer service (the plain reference, the FastAPI floor) under uvicorn, one worker, as its README says."""
        port = free_port()
        cmd = [sys.executable, "-m", "uvicorn", "app:app", "--app-dir", str(app_dir), "--host", LOOPBACK]
        cmd += ["--port", str(port), "--workers", "1", "--no-access-log", "--log-level", "warning"]
        log = self.workdir / f"{name.replace(' ', '-')}.log"
        service = ServiceProcess(name, cmd, port, log, env={**os.environ, **(env or {})}, cwd=self.workdir)
        self.services.append(service.start())
        service.wait_ready("/health", timeout_s=self.opts.ready_timeout_s)
        return service

    def start_ours(self, name: str, model_dir: Path, workers: int, monitoring: bool) -> ServiceProcess:
        port = free_port()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("CHURN_")},
            "PYTHONPATH": str(REPO) + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else ""),
            "CHURN_MODEL_DIR": str(model_dir),
            "CHURN_HOST": LOOPBACK,
            "CHURN_PORT": str(port),
            "CHURN_WORKERS": str(workers),
            "CHURN_MONITORING_ENABLED": "true" if monitoring else "false",
            "CHURN_DATABASE_URL": f"sqlite:///{self.workdir / (name + '-predictions.sqlite3')}",
            "CHURN_LOG_LEVEL": "warning",
            "CHURN_ACCESS_LOG": "false",
        }
        # run outside the repository so no developer's .env file changes the settings under test
        service = ServiceProcess(
            name, [sys.executable, "-m", "app"], port, self.workdir / f"{name}.log", env=env, cwd=self.workdir
        )
        self.services.append(service.start())
        service.wait_ready("/ready", timeout_s=self.opts.ready_timeout_s)
        return service

    def stop(self, service: ServiceProcess) -> None:
        service.stop()
        if service in self.services:
            self.services.remove(service)

    def stop_all(self) -> None:
        for service in list(self.services):
            self.stop(service)

    # -- measurements
    def preflight(self, service: ServiceProcess) -> dict[str, Any]:
        """One request with the benchmark body: it must answer 200 with a JSON object."""
        status, headers, body = http_request(
            service.port, "POST", "/predict", self.body_path.read_bytes(), {"content-type": "application/json"}
        )
        if status != 200:
            raise BenchmarkError(f"{service.name}: POST /predict answered {status}: {body[:500]!r}")
        try:
            payload = json.loads(body)
        except json.JSONDecodeError as exc:
            raise BenchmarkError(f"{service.name}: POST /predict did not answer JSON: {body[:200]!r}") from exc
        return {"status": status, "response": payload, "headers": headers}

    def single_record_load(self, services: list[tuple[str, ServiceProcess]]) -> dict[str, WrkResult]:
        """The same single-record load against every service, interleaved so that all see the same machine.

        Each service gets a warm-up, then the measured time is cut into ``rounds`` equal runs taken in
        turn, the order reversed every other round (A B C, C B A, A B C ...): a change in what else the
        machine is doing then falls on every service alike instead of on whichever ran last. Between
        runs the harness waits for all services to go idle, so deferred work (prediction-log flushes)
        is billed to the service that caused it. The runs of each service are merged into one result.
        """
        opts = self.opts
        urls = {label: f"http://{LOOPBACK}:{service.port}/predict" for label, service in services}
        all_pids = [pid for _, service in services for pid in [service.pid, *descendants(service.pid)]]
        for label, service in services:
            self.preflight(service)
            print(f"[bench] {label}: warm-up {opts.warmup_s:.0f} s", flush=True)
            warm, output = run_wrk(urls[label], self.script, opts.warmup_s, opts.connections, opts.threads)
            self._check(label + " (warm-up)", warm, output, service)
        segment_s = max(1, round(opts.duration_s / opts.rounds))
        print(
            f"[bench] single-record /predict: {opts.rounds} rounds x {segment_s} s per service, "
            f"{opts.connections} connections, {opts.threads} wrk thread(s)",
            flush=True,
        )
        runs: dict[str, list[WrkResult]] = {label: [] for label, _ in services}
        cpu: dict[str, float] = {label: 0.0 for label, _ in services}
        server_totals: dict[str, dict[str, float]] = {}  # from /metrics, where the service exposes them
        log: list[dict[str, Any]] = []
        for round_index in range(opts.rounds):
            order = services if round_index % 2 == 0 else services[::-1]
            for label, service in order:
                idle_wait = wait_idle(all_pids)
                load = loadavg()
                pids = [service.pid, *descendants(service.pid)]
                metrics_before = self._metric_sums(service, "/predict") if label != REFERENCE else None
                cpu_before = sum(cpu_seconds(pid) or 0.0 for pid in pids)
                result, output = run_wrk(urls[label], self.script, segment_s, opts.connections, opts.threads)
                cpu_used = sum(cpu_seconds(pid) or 0.0 for pid in pids) - cpu_before
                metrics_after = self._metric_sums(service, "/predict") if metrics_before is not None else None
                if metrics_before is not None and metrics_after is not None:
                    totals = server_totals.setdefault(label, {})
                    for key, value in metrics_after.items():
                        totals[key] = totals.get(key, 0.0) + value - metrics_before.get(key, 0.0)
                self._check(label, result, output, service)
                runs[label].append(result)
                cpu[label] += cpu_used
                log.append(
                    {
                        "round": round_index,
                        "service": label,
                        "requests_per_s": result.requests_per_s,
                        "p99_ms": result.latency_ms.get("p99"),
                        "service_cpu_s": cpu_used,
                        "idle_wait_s": idle_wait,
                        "loadavg_before": load,
                    }
                )
        merged = {label: merge_results(results) for label, results in runs.items()}
        self.cpu_per_request_us = {label: cpu[label] / merged[label].requests * 1e6 for label in merged}
        self.cpu_share = {label: cpu[label] / merged[label].duration_s for label in merged}
        # the server's own mean time per /predict request and per prediction stage, in microseconds
        self.server_us = {
            label: {key: value / count * 1e6 for key, value in totals.items() if key != "request_count"}
            for label, totals in server_totals.items()
            if (count := totals.get("request_count"))
        }
        self.report.runs["single_record"] = {
            "segment_s": segment_s,
            "rounds": opts.rounds,
            "segments": log,
            "merged": {
                label: {
                    **result.to_dict(),
                    "service_cpu_s": cpu[label],
                    "service_cpu_per_request_us": self.cpu_per_request_us[label],
                    "service_cores_used": self.cpu_share[label],
                    "server_mean_us": self.server_us.get(label),
                }
                for label, result in merged.items()
            },
        }
        for label, result in merged.items():
            lat = result.latency_ms
            print(
                f"[bench] {label}: {result.requests_per_s:,.0f} req/s, p50 {lat.get('p50', float('nan')):.2f} ms, "
                f"p99 {lat.get('p99', float('nan')):.2f} ms, {result.requests:,} requests, 0 errors; "
                f"{self.cpu_per_request_us[label]:,.0f} us CPU per request, {self.cpu_share[label]:.2f} cores busy",
                flush=True,
            )
        return merged

    def monitoring_pairs(self, on: ServiceProcess, off: ServiceProcess) -> dict[str, Any]:
        """What monitoring costs: the same load on one worker with monitoring on and one with it off, in pairs.

        The main rounds give each service a few runs of several seconds among three others, so a
        busy moment of the shared machine that falls on one of them moves this ratio by 10-20%.
        Here only these two run, in many short runs taken in pairs, the order reversed every other
        pair (on off, off on, ...); the ratio of their total requests is held to the target, and
        each pair's ratio shows the spread.
        """
        opts = self.opts
        pids = [pid for service in (on, off) for pid in [service.pid, *descendants(service.pid)]]
        segment_s = opts.pair_seconds
        print(f"[bench] monitoring on / off: {opts.pairs} pairs of {segment_s:g} s runs", flush=True)
        requests: dict[str, list[int]] = {OURS: [], OURS_OFF: []}
        for pair in range(opts.pairs):
            order = [(OURS, on), (OURS_OFF, off)] if pair % 2 == 0 else [(OURS_OFF, off), (OURS, on)]
            for label, service in order:
                wait_idle(pids)
                url = f"http://{LOOPBACK}:{service.port}/predict"
                result, output = run_wrk(url, self.script, segment_s, opts.connections, opts.threads)
                self._check(f"{label} (pair {pair + 1})", result, output, service)
                requests[label].append(result.requests)
        ratios = [a / b for a, b in zip(requests[OURS], requests[OURS_OFF], strict=True) if b]
        summary = {
            "pairs": opts.pairs,
            "segment_s": segment_s,
            "requests": requests,
            "ratio": sum(requests[OURS]) / sum(requests[OURS_OFF]) if sum(requests[OURS_OFF]) else None,
            "pair_ratios": ratios,
            "pair_ratio_median": statistics.median(ratios) if ratios else None,
        }
        self.report.runs["monitoring_pairs"] = summary
        if summary["ratio"] is not None:
            spread = _pair_range(summary)
            print(f"[bench] monitoring on / off: {summary['ratio']:.3f}{f' ({spread})' if spread else ''}", flush=True)
        return summary

    @staticmethod
    def _check(label: str, result: WrkResult, output: str, service: ServiceProcess) -> None:
        if result.error_count or result.requests == 0:
            raise BenchmarkError(
                f"{label}: {result.requests} requests with errors {result.errors}; a run with errors measures "
                f"nothing.\n--- wrk ---\n{output[-1500:]}\n{service.log_tail(20)}"
            )

    def batch_load(
        self, service: ServiceProcess, records: list[dict[str, Any]], key: str = "batch", settle: bool = False
    ) -> dict[str, Any]:
        """Time ``/predict/batch`` calls one at a time: the server's own time and the client round trip.

        The server's time comes from a response header (``Server-Timing``, ``X-Process-Time``) when
        the service sends one, else from its ``/metrics``: the growth of the request-duration sum for
        the batch route across one call (nothing else runs meanwhile), with the prediction stages
        (validation, features, inference, explanation) read the same way.

        Calls follow each other at once, so each one shares the machine with the background work
        of the one before (writing its records to the prediction log). With ``settle`` each call
        waits until the log has written every record sent before it: a call on its own.
        """
        body = json.dumps(records, separators=(",", ":")).encode()
        headers = {"content-type": "application/json"}
        calls = self.opts.batch_calls
        warmups = 1 if self.opts.quick else 2
        server_ms: list[float] = []
        client_ms: list[float] = []
        stages_ms: dict[str, list[float]] = {}
        source = "none"
        response_bytes = 0
        route = "/predict/batch"
        print(f"[bench] {route}: {len(records):,} records, {warmups} warm-up + {calls} timed calls", flush=True)
        before = self._metric_sums(service, route)
        pids = [service.pid, *descendants(service.pid)]
        cpu_ms: list[float] = []
        for i in range(warmups + calls):
            if settle:
                self._wait_for_log(service, i * len(records))
            cpu_before = sum(cpu_seconds(pid) or 0.0 for pid in pids)
            started = time.perf_counter()
            status, _, resp_body = http_request(service.port, "POST", route, body, headers, timeout_s=120)
            elapsed_ms = (time.perf_counter() - started) * 1e3
            cpu_call_ms = (sum(cpu_seconds(pid) or 0.0 for pid in pids) - cpu_before) * 1e3
            if status != 200:
                raise BenchmarkError(f"{route} answered {status}: {resp_body[:500]!r}\n{service.log_tail(20)}")
            if i == 0:
                _check_batch_response(resp_body, len(records))
            after = self._metric_sums(service, route) if before is not None else None
            if i >= warmups:
                client_ms.append(elapsed_ms)
                cpu_ms.append(cpu_call_ms)
                response_bytes = len(resp_body)
                server = None
                if before is not None and after is not None and "request" in after:
                    server = (after["request"] - before.get("request", 0.0)) * 1e3
                    source = f"/metrics {HTTP_DURATION}_sum (growth per call)"
                    for stage, total in after.items():
                        if stage not in ("request", "request_count"):
                            stages_ms.setdefault(stage, []).append((total - before.get(stage, 0.0)) * 1e3)
                if server is not None:
                    server_ms.append(server)
            before = after
        result = {
            "records": len(records),
            "request_bytes": len(body),
            "response_bytes": response_bytes,
            "calls": calls,
            "server_time_source": source,
            "server_ms": server_ms,
            "client_round_trip_ms": client_ms,
            "server_cpu_ms": cpu_ms,
            "server_cpu_ms_median": statistics.median(cpu_ms),
            "server_ms_median": statistics.median(server_ms) if len(server_ms) == calls else None,
            "client_round_trip_ms_median": statistics.median(client_ms),
            "stage_ms_median": {stage: statistics.median(values) for stage, values in stages_ms.items()},
        }
        self.report.runs[key] = result
        return result

    def _wait_for_log(self, service: ServiceProcess, records: int, timeout_s: float = 60.0) -> None:
        """Wait until the service's prediction log has written ``records`` rows (and a moment more)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status, _, body = http_request(service.port, "GET", "/metrics", timeout_s=10)
            if status != 200:
                raise BenchmarkError(f"/metrics answered {status} while waiting for the prediction log")
            written = sum(
                value
                for name, _, value in samples(body.decode(errors="replace"))
                if name in (LOG_WRITTEN, f"{LOG_WRITTEN}_total")
            )
            if written >= records:
                time.sleep(0.2)  # the writer's last commit and bookkeeping
                return
            time.sleep(0.05)
        raise BenchmarkError(f"the prediction log did not write {records} rows within {timeout_s:.0f} s")

    @staticmethod
    def _metric_sums(service: ServiceProcess, route: str) -> dict[str, float] | None:
        try:
            status, _, body = http_request(service.port, "GET", "/metrics", timeout_s=10)
        except OSError:
            return None
        return metric_sums(body.decode(errors="replace"), route) if status == 200 else None

    def memory(self, service: ServiceProcess, label: str) -> dict[str, Any]:
        workers = worker_pids(service.pid)
        info = {
            "supervisor_pid": service.pid,
            "workers": [
                {
                    "pid": pid,
                    "rss_mib": _mib(read_status_kib(pid, "VmRSS")),
                    "peak_rss_mib": _mib(read_status_kib(pid, "VmHWM")),
                    "libtorch_mapped": maps_mention(pid, "libtorch"),
                }
                for pid in workers
            ],
        }
        if workers != [service.pid]:
            info["supervisor_rss_mib"] = _mib(read_status_kib(service.pid, "VmRSS"))
        self.report.runs.setdefault("memory", {})[label] = info
        return info


def _check_batch_response(body: bytes, n: int) -> None:
    """The batch answer must hold one prediction per record and report no failed record.

    Accepts a bare list, or an object whose longest list holds the results (with an optional
    ``failed`` count).
    """
    payload = json.loads(body)
    failed = 0
    if isinstance(payload, dict):
        failed = payload.get("failed", 0) if isinstance(payload.get("failed", 0), int) else 0
        lists = [v for v in payload.values() if isinstance(v, list)]
        payload = max(lists, key=len) if lists else []
    if not isinstance(payload, list) or len(payload) != n:
        got = len(payload) if isinstance(payload, list) else type(payload).__name__
        raise BenchmarkError(f"/predict/batch answered {got} results for {n} records")
    if failed:
        raise BenchmarkError(f"/predict/batch rejected {failed} of {n} records; the benchmark sends valid records")


def _round_range(report: Report, numerator: str, denominator: str) -> str:
    """The spread of a throughput ratio over the interleaved rounds, e.g. "rounds: 0.78-0.93"."""
    by_round: dict[int, dict[str, float]] = {}
    for segment in report.runs.get("single_record", {}).get("segments", []):
        by_round.setdefault(segment["round"], {})[segment["service"]] = segment["requests_per_s"]
    ratios = [r[numerator] / r[denominator] for r in by_round.values() if r.get(denominator) and numerator in r]
    if len(ratios) < 2:
        return ""
    return f"rounds: {fmt(min(ratios))} to {fmt(max(ratios))}"


def _pair_range(pairs: Mapping[str, Any]) -> str:
    """The spread of the monitoring ratio over its pairs, e.g. "pairs: median 0.91, 0.84 to 0.97"."""
    ratios = pairs.get("pair_ratios") or []
    if len(ratios) < 2:
        return ""
    return f"pairs: median {fmt(statistics.median(ratios))}, {fmt(min(ratios))} to {fmt(max(ratios))}"


def _mib(kib: int | None) -> float | None:
    return None if kib is None else kib / 1024


def _worker_rss(info: Mapping[str, Any]) -> float | None:
    values = [w["rss_mib"] for w in info["workers"] if w["rss_mib"] is not None]
    return max(values) if values else None


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
