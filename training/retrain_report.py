"""The retraining report: a JSON file beside the bundles (bundles are checksummed) and a short summary."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_report(reports_dir: Path, version: str, report: dict[str, Any]) -> Path:
    """Write ``<reports_dir>/<version>.json`` atomically (a reader never sees half a report)."""
    reports_dir.mkdir(parents=True, exist_ok=True)
    path = reports_dir / f"{version}.json"
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(partial, path)
    return path


def figure(value: Any, signed: bool = False) -> str:
    if not isinstance(value, (int, float)):
        return "n/a"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def summary_lines(report: dict[str, Any], report_path: Path, bundle_dir: Path) -> list[str]:
    data, holdout, comparison = report["data"], report["holdout"], report["comparison"]
    sources = ", ".join(f"{name} {count}" for name, count in data["sources"].items())
    log_rows = data["log_training_rows"]
    lines = [
        f"bundle      {bundle_dir}",
        f"version     {report['version']} (champion before: {report['champion_before']})",
        f"cut-off     {data['cutoff']}; outcomes received after it left out: "
        f"{data['log']['outcomes_after_cutoff_left_out']}",
        f"data        {data['training_rows']} training rows ({sources}); log rows {log_rows['rows']}, "
        f"churn rate {log_rows['churn_rate']:.3f}, {log_rows['from']} .. {log_rows['to']}",
        f"holdout     {holdout['rows']} most recent labelled customers ({holdout['rule']}), "
        f"churn rate {holdout['churn_rate']:.3f}, never trained on",
    ]
    metrics = comparison.get("metrics", {})
    for label, name in (("ROC-AUC", "roc_auc"), ("PR-AUC", "pr_auc")):
        row = metrics.get(name, {})
        lines.append(
            f"{label:<11} new {figure(row.get('challenger'))} vs champion {figure(row.get('champion'))}, "
            f"difference {figure(row.get('difference'), True)} "
            f"[{figure(row.get('ci_low'), True)}, {figure(row.get('ci_high'), True)}]"
        )
    f1 = comparison.get("f1", {})
    lines += [
        f"F1          new {figure(f1.get('challenger'))} vs champion {figure(f1.get('champion'))} "
        "(each at its own threshold)",
        f"verdict     {comparison['verdict']}: {comparison['explanation']}",
        f"action      {report['action']}",
        f"report      {report_path}",
    ]
    if report["action"].startswith("promoted"):
        lines.append("next        POST /admin/reload makes the running service serve the new champion")
    else:
        lines.append(
            f"next        python -m training models promote {report['version']} --reason ... to serve it; "
            "then POST /admin/reload"
        )
    return lines
