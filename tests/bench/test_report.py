import json

from bench.report import Figure, Report, write_results

TARGETS = {"start_to_ready_s": ("<=", 5.0), "ratio": (">=", 20.0), "torch_loaded": ("==", 0.0)}


def test_figures_are_judged_against_their_targets():
    assert Figure("a", "a", 4.2, "s", TARGETS["start_to_ready_s"]).verdict == "PASS"
    assert Figure("a", "a", 5.1, "s", TARGETS["start_to_ready_s"]).verdict == "FALL SHORT"
    assert Figure("a", "a", 25.0, "x", TARGETS["ratio"]).verdict == "PASS"
    assert Figure("a", "a", None, "ms", TARGETS["ratio"]).verdict == "NOT MEASURED"
    assert Figure("a", "a", 1.0, "yes/no", TARGETS["torch_loaded"]).verdict == "FALL SHORT"
    assert Figure("a", "a", 3.0, "req/s").verdict == ""


def test_report_renders_table_markdown_and_json(tmp_path):
    report = Report("Serving benchmark", "20260101T000000Z", "python -m bench.serving --quick", {"duration_s": 3}, {})
    report.targets = {"start": ("<=", 5.0), "torch_loaded": ("==", 0.0)}
    report.add("start", "start to ready", 2.5, "s", "start")
    report.add("torch", "torch loaded", 0.0, "yes/no", "torch_loaded")
    report.add("rps", "ours rps", 12345.6, "req/s")
    text = report.text_table()
    assert "start to ready" in text and "≤ 5.00 s" in text and "PASS" in text
    json_path, md_path = write_results(report, tmp_path, "serving")
    assert json_path.name == "serving-20260101T000000Z.json"
    data = json.loads(json_path.read_text())
    assert data["status"] == "complete"
    assert [f["verdict"] for f in data["figures"]] == ["PASS", "PASS", None]
    md = md_path.read_text()
    assert md.startswith("# Serving benchmark, 20260101T000000Z")
    assert "| ours rps | 12,346 req/s |  |  |  |" in md
    assert "| torch loaded | no | no | PASS |  |" in md
