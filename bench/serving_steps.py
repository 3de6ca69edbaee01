"""The serving benchmark's steps: the services it starts, the loads it runs and what it reads back.

``bench.serving`` runs these steps in order and writes the report; see its docstring for the plan.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
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
    wait_idle,
    worker_pids,
    wrk_lua_script,
)
from bench.report import Report, fmt, loadavg

REPO = Path(__file__).resolve().parent.parent
REFERENCE = "reference"
FLOOR = "FastAPI floor"
OURS = "ours"
OURS_OFF = "ours, monitoring off"
OURS_TWO = "ours, 2 workers"

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
