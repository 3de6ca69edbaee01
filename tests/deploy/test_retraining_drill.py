"""The retraining loop end to end: drift, a firing alert, Alertmanager, the retrainer, a better champion."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from deploy.drills.retraining import main, run

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("prometheus") is None, reason="needs Prometheus (Debian's package)"),
    pytest.mark.skipif(
        shutil.which("prometheus-alertmanager") is None, reason="needs Alertmanager (Debian's prometheus-alertmanager)"
    ),
]


def test_a_stale_model_is_replaced_by_a_retrained_one_after_drift(tmp_path: Path) -> None:
    figures = run(tmp_path, seconds=60, rate=80)

    report = figures["report"]
    assert figures["retraining"]["outcome"] == "published", figures["retraining"]
    assert figures["retraining"]["trigger"].startswith("alert: ")
    # Started by the alert, after the drift window filled, not by a schedule.
    assert figures["serving_s"] < figures["drift_alert_firing_s"] <= figures["retraining_started_s"]
    comparison = report["comparison"]
    assert comparison["verdict"] == "better", comparison
    assert comparison["metrics"]["roc_auc"]["ci_low"] > 0
    assert report["action"] == "promoted to champion"
    # The service was asked to reload and now serves the retrained model.
    assert figures["served_version"] == report["version"] != figures["champion"]


def test_the_drill_says_how_to_run_it() -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
