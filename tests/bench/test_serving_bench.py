"""Smoke tests of the serving benchmark's pieces; the benchmark itself (minutes of load) never runs here."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from bench import serving, serving_steps
from bench.loadgen import (
    QUANTILE_GRID,
    WRK_QUANTILES_MARKER,
    WRK_SUMMARY_MARKER,
    BenchmarkError,
    ServiceProcess,
    WrkResult,
    cpu_seconds,
    descendants,
    free_port,
    maps_mention,
    merge_results,
    merged_percentile,
    parse_wrk_output,
    read_status_kib,
    run_wrk,
    telco_records,
    wait_idle,
    worker_pids,
    wrk_lua_script,
)
from bench.report import Report

WRK_REPORT = """\
Running 15s test @ http://127.0.0.1:8000/predict
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.64ms    2.35ms   9.48ms   79.80%
    Req/Sec     0.86k   472.13     1.58k    60.00%
  Latency Distribution
     50%  850.00us
     75%    4.08ms
     90%    5.93ms
     99%    1.02s
  12861 requests in 15.00s, 466.66KB read
  Socket errors: connect 0, read 2, write 0, timeout 3
  Non-2xx or 3xx responses: 7
Requests/sec:    857.41
Transfer/sec:     31.10KB
"""

TELCO_SAMPLE = """\
customerID,gender,SeniorCitizen,Partner,tenure,MonthlyCharges,TotalCharges,Churn
7590-VHVEG,Female,0,Yes,1,29.85,29.85,No
5575-GNVDE,Male,1,No,34,56.95,1889.5,Yes
4472-LVYGI,Female,0,Yes,0,52.55, ,No
"""


# ---- wrk output -----------------------------------------------------------------------------
def test_parses_the_summary_line_exactly():
    summary = {
        "requests": 30000,
        "duration_us": 15_000_000,
        "bytes": 123,
        "errors": {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0},
        "latency_us": {
            "min": 100.0,
            "max": 9000.0,
            "mean": 800.5,
            "stdev": 50.0,
            "p50": 700.0,
            "p75": 900.0,
            "p90": 1200.0,
            "p99": 2500.0,
            "p99_9": 4000.0,
        },
    }
    result = parse_wrk_output(WRK_REPORT + f"{WRK_SUMMARY_MARKER} {json.dumps(summary)}\n")
    assert result.requests == 30000
    assert result.requests_per_s == pytest.approx(2000.0)
    assert result.latency_ms["p50"] == pytest.approx(0.7)
    assert result.latency_ms["p99"] == pytest.approx(2.5)
    assert result.latency_ms["p99_9"] == pytest.approx(4.0)
    assert result.error_count == 0
    assert result.quantiles_us is None


def test_parses_the_quantile_line():
    summary = {
        "requests": 10,
        "duration_us": 1_000_000,
        "bytes": 1,
        "errors": {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0},
        "latency_us": {"min": 1, "max": 9, "mean": 5, "stdev": 1, "p50": 5, "p75": 7, "p90": 8, "p99": 9, "p99_9": 9},
    }
    text = f"{WRK_SUMMARY_MARKER} {json.dumps(summary)}\n{WRK_QUANTILES_MARKER} 0.5:100,50:500,99.9:900,100:950\n"
    assert parse_wrk_output(text).quantiles_us == {0.5: 100.0, 50.0: 500.0, 99.9: 900.0, 100.0: 950.0}


def _run(requests, duration, quantiles, **latency):
    return WrkResult(requests, duration, requests / duration, latency, {"status": 0}, quantiles)


def test_quantile_grid_is_increasing_and_ends_at_100():
    assert list(QUANTILE_GRID) == sorted(set(QUANTILE_GRID))
    assert QUANTILE_GRID[-1] == 100.0
    assert {50.0, 75.0, 90.0, 99.0, 99.9} <= set(QUANTILE_GRID)


def test_merged_percentile_of_one_run_is_its_own():
    quantiles = {p: p * 10.0 for p in QUANTILE_GRID}
    for p in (50.0, 90.0, 99.0, 99.9):
        assert merged_percentile([(1000, quantiles)], p) == pytest.approx(p * 10.0)


def test_merged_percentiles_pool_runs_by_request_count():
    fast = {p: 1000.0 for p in QUANTILE_GRID}  # every request 1 ms
    slow = {p: 9000.0 for p in QUANTILE_GRID}  # every request 9 ms
    runs = [_run(900, 1.0, fast, mean=1.0, max=1.0), _run(100, 1.0, slow, mean=9.0, max=9.0)]
    merged = merge_results(runs)
    assert merged.requests == 1000
    assert merged.requests_per_s == pytest.approx(500.0)
    assert merged.segments == 2
    assert merged.latency_ms["p50"] == pytest.approx(1.0)
    assert merged.latency_ms["p90"] == pytest.approx(1.0)  # 90% of the requests took 1 ms
    assert merged.latency_ms["p99"] == pytest.approx(9.0)
    assert merged.latency_ms["mean"] == pytest.approx(1.8)
    assert merged.latency_ms["max"] == pytest.approx(9.0)


def test_merge_without_quantiles_weights_percentiles_by_requests():
    merged = merge_results([_run(300, 1.0, None, p99=2.0), _run(100, 1.0, None, p99=6.0)])
    assert merged.latency_ms == {"p99": pytest.approx(3.0)}
    assert merge_results([_run(5, 1.0, None, p99=2.0)]).latency_ms == {"p99": 2.0}


def test_falls_back_to_wrk_report_with_units_and_errors():
    result = parse_wrk_output(WRK_REPORT)
    assert result.requests == 12861
    assert result.duration_s == pytest.approx(15.0)
    assert result.requests_per_s == pytest.approx(857.41)
    assert result.latency_ms == pytest.approx({"p50": 0.85, "p75": 4.08, "p90": 5.93, "p99": 1020.0})
    assert result.errors == {"connect": 0, "read": 2, "write": 0, "timeout": 3, "status": 7}
    assert result.error_count == 12


def test_unparseable_output_is_an_error():
    with pytest.raises(ValueError, match="no request count"):
        parse_wrk_output("unable to connect to 127.0.0.1:1 Connection refused\n")


def test_lua_script_reads_the_body_file_and_prints_a_summary(tmp_path):
    odd = tmp_path / "a]=]b" / "request.json"
    script = wrk_lua_script(odd)
    assert f"[==[{odd}]==]" in script  # "]=]" in the path: a longer bracket level is chosen
    assert "wrk.method = [=[POST]=]" in script
    assert "application/json" in script
    assert WRK_SUMMARY_MARKER in script
    assert "latency:percentile(99)" in script


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # wrk closes its connections abruptly at the end of a run


class _Ok(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    bodies: list[bytes] = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        if len(self.bodies) < 5:
            self.bodies.append(body)
        status = 200 if self.headers["content-type"] == "application/json" else 415
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_wrk_posts_the_file_and_the_summary_parses(tmp_path):
    body = tmp_path / "request.json"
    body.write_text('{"tenure": 1}')
    script = tmp_path / "post.lua"
    script.write_text(wrk_lua_script(body))
    server = _QuietServer(("127.0.0.1", 0), _Ok)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        result, output = run_wrk(f"http://127.0.0.1:{server.server_port}/predict", script, 1, 2, 1)
    finally:
        server.shutdown()
        server.server_close()
    assert WRK_SUMMARY_MARKER in output
    assert result.requests > 0
    assert result.quantiles_us is not None and set(result.quantiles_us) == set(QUANTILE_GRID)
    assert result.error_count == 0
    assert set(_Ok.bodies) == {b'{"tenure": 1}'}


# ---- request bodies -------------------------------------------------------------------------
def test_telco_records_are_typed_like_a_client_sends_them(tmp_path):
    csv_path = tmp_path / "telco.csv"
    csv_path.write_text(TELCO_SAMPLE)
    records = telco_records(csv_path, 7)
    assert len(records) == 7
    first = records[0]
    assert "Churn" not in first
    assert first == {
        "customerID": "7590-VHVEG",
        "gender": "Female",
        "SeniorCitizen": 0,
        "Partner": "Yes",
        "tenure": 1,
        "MonthlyCharges": 29.85,
        "TotalCharges": 29.85,
    }
    assert records[2]["TotalCharges"] is None  # the file's blank total becomes null
    assert [r["customerID"] for r in records[3:7]] == ["7590-VHVEG-1", "5575-GNVDE-1", "4472-LVYGI-1", "7590-VHVEG-2"]
    assert len({r["customerID"] for r in records}) == 7
    json.dumps(records)  # plain JSON


# ---- the batch answer ------------------------------------------------------------------------
def test_batch_answer_must_cover_every_record():
    serving_steps._check_batch_response(json.dumps({"count": 2, "failed": 0, "results": [{}, {}]}).encode(), 2)
    serving_steps._check_batch_response(b"[{}, {}]", 2)
    with pytest.raises(BenchmarkError, match="1 results for 2"):
        serving_steps._check_batch_response(b'{"results": [{}]}', 2)
    with pytest.raises(BenchmarkError, match="rejected 1 of 2"):
        serving_steps._check_batch_response(b'{"failed": 1, "results": [{}, {}]}', 2)


def test_missing_telco_file_skips_with_a_message(tmp_path, capsys):
    code = serving.main(["--data", str(tmp_path / "absent.csv"), "--results-dir", str(tmp_path)], install_signals=False)
    assert code == 0
    assert "skipped" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_quick_shortens_runs_unless_told_otherwise():
    quick = serving.options_from_args(serving.parse_args(["--quick"]))
    assert (quick.duration_s, quick.warmup_s, quick.batch_calls) == (3.0, 1.0, 3)
    full = serving.options_from_args(serving.parse_args(["--duration", "20", "--connections", "32"]))
    assert (full.duration_s, full.warmup_s, full.batch_calls, full.connections) == (20.0, 3.0, 10, 32)


def test_quick_and_full_runs_pair_monitoring_on_and_off():
    quick = serving.options_from_args(serving.parse_args(["--quick"]))
    assert (quick.pairs, quick.pair_seconds) == (3, 1.0)
    full = serving.options_from_args(serving.parse_args([]))
    assert (full.pairs, full.pair_seconds) == (12, 2.0)
    with pytest.raises(SystemExit):
        serving.parse_args(["--pairs", "0"])


def test_pair_spread_shows_the_median_and_the_range():
    assert serving_steps._pair_range({"pair_ratios": [0.9, 0.8, 1.0]}) == "pairs: median 0.900, 0.800 to 1.00"
    assert serving_steps._pair_range({"pair_ratios": [0.9]}) == ""


POST_SERVER = """\
import http.server, sys
class Ok(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200); self.send_header("content-length", "2"); self.end_headers(); self.wfile.write(b"{}")
    def do_GET(self):
        self.do_POST()
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Ok).serve_forever()
"""


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_monitoring_pairs_alternate_two_services_and_total_their_requests(tmp_path):
    script = tmp_path / "server.py"
    script.write_text(POST_SERVER)
    (tmp_path / "request.json").write_text('{"tenure": 1}')
    opts = dataclasses.replace(
        serving.options_from_args(serving.parse_args([])),
        reference_dir=tmp_path,
        pairs=2,
        pair_seconds=1.0,
        connections=2,
    )
    report = Report("Serving benchmark", "t", "c", {}, {})
    bench = serving_steps.Bench(opts, report, tmp_path)
    services = []
    for name in ("on", "off"):
        port = free_port()
        services.append(ServiceProcess(name, [sys.executable, str(script), str(port)], port, tmp_path / f"{name}.log"))
    with services[0] as on, services[1] as off:
        on.wait_ready("/", timeout_s=30)
        off.wait_ready("/", timeout_s=30)
        summary = bench.monitoring_pairs(on, off)
    assert summary is report.runs["monitoring_pairs"]
    requests = summary["requests"]
    assert len(requests[serving_steps.OURS]) == len(requests[serving_steps.OURS_OFF]) == 2
    assert min(requests[serving_steps.OURS] + requests[serving_steps.OURS_OFF]) > 0
    assert summary["ratio"] == pytest.approx(sum(requests[serving_steps.OURS]) / sum(requests[serving_steps.OURS_OFF]))
    assert len(summary["pair_ratios"]) == 2


# ---- processes ------------------------------------------------------------------------------
def test_service_process_gets_ready_and_is_killed_with_its_children(tmp_path):
    port = free_port()
    cmd = [
        sys.executable,
        "-c",
        "import subprocess, sys; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
        f"import http.server; http.server.test(HandlerClass=http.server.SimpleHTTPRequestHandler, port={port},"
        " bind='127.0.0.1')",
    ]
    service = ServiceProcess("toy", cmd, port, tmp_path / "toy.log", cwd=tmp_path)
    with service:
        ready = service.wait_ready("/", timeout_s=30)
        assert 0 < ready < 30
        pid = service.pid
        children = descendants(pid)
        assert len(children) == 1
        assert worker_pids(pid) == [pid]  # no uvicorn workers: the process itself serves
        assert read_status_kib(pid) > 0
        assert maps_mention(pid, "libtorch") is False
        assert cpu_seconds(pid) >= 0
        assert wait_idle([pid], window_s=0.05, busy_share=1.0, timeout_s=1) < 1
    assert read_status_kib(pid) is None
    assert all(read_status_kib(child) is None for child in children)


def test_a_service_that_dies_fails_fast_with_its_log(tmp_path):
    service = ServiceProcess(
        "broken", [sys.executable, "-c", "print('no model'); raise SystemExit(3)"], free_port(), tmp_path / "broken.log"
    )
    with service, pytest.raises(BenchmarkError, match="exited with 3"):
        service.wait_ready("/ready", timeout_s=30)
    assert "no model" in Path(tmp_path / "broken.log").read_text()


METRICS = """\
# HELP churn_http_request_duration_seconds HTTP request duration
# TYPE churn_http_request_duration_seconds histogram
churn_http_request_duration_seconds_bucket{le="0.1",method="POST",route="/predict/batch"} 1.0
churn_http_request_duration_seconds_sum{method="POST",route="/predict/batch"} 0.25
churn_http_request_duration_seconds_sum{method="POST",route="/predict"} 9.0
churn_http_request_duration_seconds_sum{method="GET",route="/predict/batch"} 1.0
churn_prediction_stage_duration_seconds_sum{stage="validation"} 0.125
churn_prediction_stage_duration_seconds_sum{stage="inference"} 0.5
churn_requests_total 3
"""


def test_metrics_give_the_batch_route_and_stage_totals():
    samples = serving_steps.samples(METRICS)
    assert ("churn_requests_total", {}, 3.0) in samples
    sums = serving_steps.metric_sums(METRICS, "/predict/batch")
    assert sums == {"request": 0.25, "validation": 0.125, "inference": 0.5}
    counted = METRICS + 'churn_http_request_duration_seconds_count{method="POST",route="/predict/batch"} 4.0\n'
    assert serving_steps.metric_sums(counted, "/predict/batch")["request_count"] == 4.0


def test_ratio_spread_over_rounds():
    report = Report("Serving benchmark", "t", "c", {}, {})
    report.runs["single_record"] = {
        "segments": [
            {"round": 0, "service": "ours", "requests_per_s": 300.0},
            {"round": 0, "service": "reference", "requests_per_s": 20.0},
            {"round": 1, "service": "reference", "requests_per_s": 25.0},
            {"round": 1, "service": "ours", "requests_per_s": 250.0},
        ]
    }
    assert serving_steps._round_range(report, "ours", "reference") == "rounds: 10.0 to 15.0"
    assert serving_steps._round_range(report, "ours", "absent") == ""
