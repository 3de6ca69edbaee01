"""Operations around the churn service: Prometheus config and alert rules, Grafana provisioning and
dashboard (files under this folder), and a traffic simulator (``python -m deploy.simulator``).

This module names the metrics the dashboard and the alert rules are written against, and extracts
the metric names a PromQL expression uses, so both can be checked against what the service exports.
"""

from __future__ import annotations

import re
from pathlib import Path

DEPLOY_DIR = Path(__file__).resolve().parent
PROMETHEUS_CONFIG = DEPLOY_DIR / "prometheus" / "prometheus.yml"
ALERT_RULES = DEPLOY_DIR / "prometheus" / "alerts.yml"
ALERT_RULE_TESTS = DEPLOY_DIR / "prometheus" / "alerts_test.yml"
DASHBOARD = DEPLOY_DIR / "grafana" / "dashboards" / "churn-service.json"
SCRAPE_JOB = "churn-api"

# Metric name -> Prometheus type, as the service exports them (app/monitoring/metrics.py).
SERVICE_METRICS: dict[str, str] = {
    "churn_http_requests_total": "counter",
    "churn_http_request_duration_seconds": "histogram",
    "churn_http_requests_in_flight": "gauge",
    "churn_predictions_total": "counter",
    "churn_predicted_churn_total": "counter",
    "churn_prediction_stage_duration_seconds": "histogram",
    "churn_prediction_score": "histogram",
    "churn_model_info": "gauge",
    "churn_model_ready": "gauge",
    "churn_model_reloads_total": "counter",
    "churn_feature_warnings_total": "counter",
    "churn_feature_drift_psi": "gauge",
    "churn_feature_drift_js": "gauge",
    "churn_feature_drift_threshold": "gauge",
    "churn_feature_drifting": "gauge",
    "churn_score_drift_psi": "gauge",
    "churn_score_drift_js": "gauge",
    "churn_score_drifting": "gauge",
    "churn_drift_window_predictions": "gauge",
    "churn_predicted_churn_rate": "gauge",
    "churn_reference_predicted_churn_rate": "gauge",
    "churn_prediction_log_written_total": "counter",
    "churn_prediction_log_dropped_total": "counter",
    "churn_prediction_log_errors_total": "counter",
    "churn_prediction_log_queue_size": "gauge",
    "churn_feedback_outcomes_total": "counter",
    "churn_realized_roc_auc": "gauge",
    "churn_realized_precision": "gauge",
    "churn_realized_recall": "gauge",
    "churn_realized_f1": "gauge",
    "churn_realized_labelled_predictions": "gauge",
    "churn_estimated_roc_auc": "gauge",
    "churn_estimated_precision": "gauge",
    "churn_estimated_recall": "gauge",
    "churn_estimated_f1": "gauge",
    "churn_estimated_performance_bound": "gauge",
    "churn_reference_performance": "gauge",
    "churn_role_predictions_total": "counter",
    "churn_challenger_errors_total": "counter",
    "churn_challenger_disagreements_total": "counter",
    "churn_challenger_duration_seconds": "histogram",
    "churn_challenger_info": "gauge",
    "churn_worker_resident_memory_bytes": "gauge",
}
# Series Prometheus itself provides: the scrape health and the state of alert rules.
PROMETHEUS_SERIES = frozenset({"up", "ALERTS", "ALERTS_FOR_STATE"})


def series_names(metrics: dict[str, str] = SERVICE_METRICS) -> frozenset[str]:
    """Every series name a scrape of these metrics can hold (histograms add _bucket, _sum, _count)."""
    names: set[str] = set()
    for name, kind in metrics.items():
        if kind == "histogram":
            names.update(f"{name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
        else:
            names.add(name)
    return frozenset(names)


_KEYWORDS = frozenset(
    {
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "inf",
        "nan",
    }
)
_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENTIFIER = re.compile(r"(?<![\w:.$])([A-Za-z_:][\w:]*)(\s*\()?")


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords and label names excluded)."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in _KEYWORDS:
            continue
        names.add(name)
    return names


def dashboard_queries(dashboard: dict) -> list[tuple[str, str]]:
    """(where, expr) for every PromQL query of a Grafana dashboard: panel targets, then annotations."""
    queries: list[tuple[str, str]] = []

    def walk(panels: list[dict]) -> None:
        for panel in panels:
            for target in panel.get("targets", []):
                if target.get("expr"):
                    queries.append((f"panel {panel['title']!r} query {target.get('refId', '?')}", target["expr"]))
            walk(panel.get("panels", []))

    walk(dashboard.get("panels", []))
    for annotation in dashboard.get("annotations", {}).get("list", []):
        if annotation.get("expr"):
            queries.append((f"annotation {annotation['name']!r}", annotation["expr"]))
    return queries


def grafana_to_promql(expr: str, rate_interval: str = "1m", interval: str = "15s", range_: str = "1h") -> str:
    """Replace Grafana's interval variables so an expression can be sent to Prometheus directly."""
    return (
        expr.replace("$__rate_interval", rate_interval)
        .replace("${__rate_interval}", rate_interval)
        .replace("$__interval", interval)
        .replace("${__interval}", interval)
        .replace("$__range", range_)
        .replace("${__range}", range_)
    )
