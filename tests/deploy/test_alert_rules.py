"""The Prometheus alert rules and config: promtool validation and unit tests, plus structural checks."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from deploy import (
    ALERT_RULE_TESTS,
    ALERT_RULES,
    PROMETHEUS_CONFIG,
    PROMETHEUS_SERIES,
    SCRAPE_JOB,
    promql_metric_names,
    series_names,
)

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package 'prometheus')")

REQUIRED_ALERTS = {
    "ChurnHighP99Latency",
    "ChurnHighErrorRatio",
    "ChurnFeatureDrift",
    "ChurnScoreDrift",
    "ChurnRealizedRocAucLow",
    "ChurnEstimatedRocAucDrop",
    "ChurnNoTraffic",
    "ChurnServiceNotReady",
}


def _rules() -> list[dict]:
    groups = yaml.safe_load(ALERT_RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def _alerts() -> dict[str, dict]:
    return {rule["alert"]: rule for rule in _rules() if "alert" in rule}


def _promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60, cwd=cwd, check=False)


# ---- promtool --------------------------------------------------------------------------------------
@pytest.mark.prometheus
@needs_promtool
def test_promtool_check_rules_accepts_the_alert_rules() -> None:
    result = _promtool("check", "rules", str(ALERT_RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in result.stdout


@pytest.mark.prometheus
@needs_promtool
def test_promtool_unit_tests_of_the_alert_rules_pass() -> None:
    result = _promtool("test", "rules", str(ALERT_RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    assert "FAILED" not in result.stdout + result.stderr


@pytest.mark.prometheus
@needs_promtool
def test_promtool_unit_tests_catch_a_broken_rule(tmp_path: Path) -> None:
    """The unit tests are sensitive: a drift alert that ignores its `for:` duration must fail them."""
    broken = ALERT_RULES.read_text().replace("for: 10m", "for: 1m")
    assert broken != ALERT_RULES.read_text()
    (tmp_path / "alerts.yml").write_text(broken)
    shutil.copy(ALERT_RULE_TESTS, tmp_path / "alerts_test.yml")
    result = _promtool("test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert result.returncode != 0
    assert "ChurnFeatureDrift" in result.stdout + result.stderr


@pytest.mark.prometheus
@needs_promtool
def test_promtool_check_config_accepts_the_compose_config(tmp_path: Path) -> None:
    # The config names alerts.yml relative to itself, as docker-compose mounts the two side by side.
    shutil.copy(PROMETHEUS_CONFIG, tmp_path / "prometheus.yml")
    shutil.copy(ALERT_RULES, tmp_path / "alerts.yml")
    result = _promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout


# ---- structure ------------------------------------------------------------------------------------
def test_prometheus_config_scrapes_the_service_every_5s_and_loads_the_rules() -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    assert config["rule_files"] == ["alerts.yml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    api = jobs[SCRAPE_JOB]
    assert api.get("scrape_interval", config["global"]["scrape_interval"]) == "5s"
    assert api.get("metrics_path", "/metrics") == "/metrics"
    assert [target for static in api["static_configs"] for target in static["targets"]] == ["churn-api:8000"]


def test_every_required_alert_exists_with_a_for_duration_severity_and_annotations() -> None:
    alerts = _alerts()
    assert set(alerts) >= REQUIRED_ALERTS
    for name, rule in alerts.items():
        assert rule.get("for"), f"{name} has no for: duration"
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["summary"].strip(), name
        assert rule["annotations"]["description"].strip(), name


def test_feature_drift_alert_keeps_the_feature_label_and_names_it() -> None:
    rule = _alerts()["ChurnFeatureDrift"]
    assert "by (job, feature)" in rule["expr"]
    assert "{{ $labels.feature }}" in rule["annotations"]["summary"]
    assert rule["for"] == "10m"


def test_alert_expressions_use_only_exported_metrics_of_the_scraped_job() -> None:
    known = series_names() | PROMETHEUS_SERIES
    for name, rule in _alerts().items():
        used = promql_metric_names(rule["expr"])
        assert used, name
        assert used <= known, f"{name} uses unknown metrics {sorted(used - known)}"
        # Every selector is restricted to the service's scrape job.
        assert rule["expr"].count("{") == rule["expr"].count(f'job="{SCRAPE_JOB}"'), name


def test_every_alert_has_unit_tests_that_fire_it_and_that_keep_it_quiet() -> None:
    tests = yaml.safe_load(ALERT_RULE_TESTS.read_text())
    assert tests["rule_files"] == ["alerts.yml"]
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in tests["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    alerts = set(_alerts())
    assert alerts - firing == set(), "alerts without a firing unit test"
    assert alerts - quiet == set(), "alerts without a not-firing unit test"
