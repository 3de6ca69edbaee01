"""The Grafana dashboard and provisioning: valid JSON, the panels people expect, PromQL against exported metrics."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from deploy import (
    DASHBOARD,
    DEPLOY_DIR,
    PROMETHEUS_SERIES,
    SCRAPE_JOB,
    SERVICE_METRICS,
    dashboard_queries,
    grafana_to_promql,
    promql_metric_names,
    series_names,
)

PROVISIONING = DEPLOY_DIR / "grafana" / "provisioning"
PROMTOOL = shutil.which("promtool")


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _panels(dashboard: dict) -> list[dict]:
    return [panel for panel in dashboard["panels"] if panel["type"] != "row"]


def _exprs(dashboard: dict) -> list[str]:
    return [expr for _, expr in dashboard_queries(dashboard)]


def test_dashboard_identity_and_defaults(dashboard: dict) -> None:
    assert dashboard["uid"] == "churn-service"
    assert dashboard["title"] == "Churn prediction service"
    assert {"churn", "prometheus"} <= set(dashboard["tags"])
    assert dashboard["refresh"] == "10s"
    assert dashboard["time"] == {"from": "now-1h", "to": "now"}
    assert "id" not in dashboard or dashboard["id"] is None  # provisioned dashboards get their id from Grafana


def test_panels_have_unique_ids_and_do_not_overlap(dashboard: dict) -> None:
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


def test_every_query_uses_the_provisioned_datasource(dashboard: dict) -> None:
    provisioned = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())["datasources"]
    uid = provisioned[0]["uid"]
    for panel in _panels(dashboard):
        assert panel["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]
        assert panel["targets"], f"{panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == uid
    for annotation in dashboard["annotations"]["list"]:
        if "expr" in annotation:
            assert annotation["datasource"]["uid"] == uid


def test_every_expression_selects_only_metrics_the_service_exports(dashboard: dict) -> None:
    known = series_names() | PROMETHEUS_SERIES
    for where, expr in dashboard_queries(dashboard):
        used = promql_metric_names(expr)
        assert used, f"{where}: no metric in {expr!r}"
        assert used <= known, f"{where}: unknown metrics {sorted(used - known)}"
        if used - PROMETHEUS_SERIES:
            assert f'job="{SCRAPE_JOB}"' in expr, f"{where}: not restricted to the service's job"


def test_rate_windows_follow_the_grafana_rate_interval(dashboard: dict) -> None:
    for panel in _panels(dashboard):
        for target in panel["targets"]:
            for window in re.findall(r"\b(?:rate|increase)\([^\[]*\[([^\]]+)\]", target["expr"]):
                assert window == "$__rate_interval", f"{panel['title']!r}: window {window}"


def test_the_expected_panels_are_there(dashboard: dict) -> None:
    exprs = "\n".join(_exprs(dashboard))
    titles = {panel["title"] for panel in _panels(dashboard)}
    for quantile in ("0.50", "0.95", "0.99"):
        assert f"histogram_quantile({quantile}, sum by (route, le)" in exprs
    expected_uses = [
        "sum by (status) (rate(churn_http_requests_total",
        'status=~"5.."',
        'status=~"4.."',
        "churn_http_requests_in_flight",
        "churn_worker_resident_memory_bytes",
        "sum by (stage, le) (rate(churn_prediction_stage_duration_seconds_bucket",
        "sum by (risk_band) (rate(churn_predictions_total",
        "churn_predicted_churn_rate",
        "rate(churn_predicted_churn_total",
        "churn_reference_predicted_churn_rate",
        "churn_feature_drift_psi",
        "churn_feature_drift_threshold",
        "churn_feature_drifting",
        "churn_score_drift_psi",
        "churn_drift_window_predictions",
        "churn_realized_roc_auc",
        "churn_realized_precision",
        "churn_realized_recall",
        "churn_realized_f1",
        "churn_realized_labelled_predictions",
        "churn_estimated_roc_auc",
        'churn_estimated_performance_bound{job="churn-api", metric="roc_auc", bound="upper"}',
        "churn_estimated_precision",
        "churn_estimated_recall",
        "churn_estimated_f1",
        "churn_reference_performance",
        "churn_model_info",
        "churn_model_reloads_total",
        "churn_prediction_log_written_total",
        "churn_prediction_log_queue_size",
    ]
    for use in expected_uses:
        assert use in exprs, use
    heatmaps = [panel for panel in _panels(dashboard) if panel["type"] == "heatmap"]
    assert [target["expr"] for panel in heatmaps for target in panel["targets"]] == [
        f'sum by (le) (increase(churn_prediction_score_bucket{{job="{SCRAPE_JOB}"}}[$__rate_interval]))'
    ]
    assert heatmaps[0]["targets"][0]["format"] == "heatmap"
    assert {"Request rate by status", "Error ratio", "Feature drift: PSI and threshold", "Model"} <= titles


def test_psi_panel_draws_each_feature_against_its_threshold(dashboard: dict) -> None:
    panel = next(p for p in _panels(dashboard) if p["title"] == "Feature drift: PSI and threshold")
    legends = [target["legendFormat"] for target in panel["targets"]]
    assert legends == ["{{feature}}", "threshold {{feature}}"]
    assert all("max by (feature)" in target["expr"] for target in panel["targets"])


@pytest.mark.prometheus
@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package 'prometheus')")
def test_every_expression_is_valid_promql(dashboard: dict, tmp_path: Path) -> None:
    """promtool parses each query (Grafana variables substituted) as a recording rule."""
    rules = [
        {"record": f"dashboard:query_{i}", "expr": grafana_to_promql(expr)} for i, expr in enumerate(_exprs(dashboard))
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_the_metric_contract_matches_the_service_definitions() -> None:
    """Every metric the dashboard and alerts rely on is defined by the service, with the same type."""
    metrics_module = pytest.importorskip("app.monitoring.metrics")
    http_module = pytest.importorskip("app.monitoring.http")
    from fastapi import FastAPI

    metrics = metrics_module.Metrics()
    http_module.install_http_metrics(FastAPI(), metrics.registry)  # the HTTP metrics, as the service installs them
    exported: dict[str, str] = {}
    for family in metrics.registry.collect():
        name = f"{family.name}_total" if family.type == "counter" else family.name
        exported[name] = family.type
    missing = {name: kind for name, kind in SERVICE_METRICS.items() if exported.get(name) != kind}
    assert missing == {}, f"not exported with this type: {missing}"


def test_provisioning_files_point_grafana_at_prometheus_and_the_dashboard_folder() -> None:
    datasources = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus"
    assert source["uid"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    assert source["isDefault"] is True
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "dashboards.yml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/etc/grafana/dashboards"
