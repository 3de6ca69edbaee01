"""Statistics, targets and the written report of the quality benchmark (``bench.quality``)."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

TABLE_MEAN_DIFFERENCE_MIN = 0.0  # project ROC-AUC minus the best baseline's, per table, over seeds
AVERAGE_DIFFERENCE_MIN = 0.005  # the same, averaged across tables
MISSING_VALUE_REFUSALS_MAX = 0
COST_TARGETS = {1_000_000: {"wall_seconds": 600.0, "peak_rss_mb": 4096.0}}  # rows -> figure -> upper bound


def verdict(passed: bool) -> str:
    return "PASS" if passed else "FALL SHORT"


def best_baseline(baselines: dict[str, float]) -> tuple[str, float]:
    name = max(baselines, key=baselines.__getitem__)
    return name, baselines[name]


def missing_value_refusals(refused: dict[str, int]) -> int:
    return sum(count for reason, count in refused.items() if reason.startswith("missing value"))


def seed_row(run: dict[str, Any]) -> dict[str, Any]:
    """One seed of one table: project AUC, the best baseline and the difference."""
    name, auc = best_baseline(run["baselines"])
    row = {"seed": run["seed"], "best_baseline": name, "best_baseline_auc": auc, "project_auc": run.get("project_auc")}
    row["difference"] = None if row["project_auc"] is None else row["project_auc"] - auc
    refused = run.get("refused", {})
    row["refused_records"] = refused.get("records", 0)
    row["refused_missing_value"] = missing_value_refusals(refused)
    return row


def spread(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "min": min(values),
        "max": max(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
    }


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per table: the seeds and the spread of the difference; across tables: the average and the targets."""
    tables: dict[str, Any] = {}
    for run in runs:
        tables.setdefault(run["table"], {"seeds": []})["seeds"].append(seed_row(run))
    for entry in tables.values():
        differences = [row["difference"] for row in entry["seeds"] if row["difference"] is not None]
        entry["difference"] = spread(differences) if differences else None
        entry["target"] = f">= {TABLE_MEAN_DIFFERENCE_MIN:+.3f}"
        entry["verdict"] = verdict(
            bool(differences)
            and len(differences) == len(entry["seeds"])
            and entry["difference"]["mean"] >= TABLE_MEAN_DIFFERENCE_MIN
        )
    means = [entry["difference"]["mean"] for entry in tables.values() if entry["difference"] is not None]
    refusals = sum(row["refused_missing_value"] for entry in tables.values() for row in entry["seeds"])
    average = statistics.fmean(means) if means else None
    return {
        "tables": tables,
        "average_difference": average,
        "average_target": f">= {AVERAGE_DIFFERENCE_MIN:+.3f}",
        "average_verdict": verdict(average is not None and average >= AVERAGE_DIFFERENCE_MIN),
        "missing_value_refusals": refusals,
        "refusals_verdict": verdict(refusals <= MISSING_VALUE_REFUSALS_MAX),
    }


def cost_targets(rows: int, run: dict[str, Any]) -> dict[str, str]:
    bounds = COST_TARGETS.get(rows, {})
    return {
        figure: f"<= {bound:g}: {verdict(run['exit_code'] == 0 and run[figure] <= bound)}"
        for figure, bound in bounds.items()
    }


# ---- Markdown ---------------------------------------------------------------------------------------
def _auc(value: float | None) -> str:
    return "failed" if value is None else f"{value:.4f}"


def _signed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.4f}"


def table_lines(results: dict[str, Any]) -> list[str]:
    lines = [
        "| table | seed | rows | project ROC-AUC | best baseline | baseline ROC-AUC | difference | winner | "
        "training s | peak RSS MB | refused |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in results["runs"]:
        row = seed_row(run)
        training = run["training"]
        refused = {k: v for k, v in run.get("refused", {}).items() if k != "records"}
        lines.append(
            f"| {run['table']} | {run['seed']} | {run['table_shape'][0]} | {_auc(row['project_auc'])} | "
            f"{row['best_baseline']} | {row['best_baseline_auc']:.4f} | {_signed(row['difference'])} | "
            f"{training.get('winner', '-')} | {training['wall_seconds']:.0f} | {training['peak_rss_mb']:.0f} | "
            f"{row['refused_records']}{' ' + str(refused) if refused else ''} |"
        )
    return lines


def summary_lines(summary: dict[str, Any]) -> list[str]:
    lines = [
        "| table | mean difference | min | max | std | target | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, entry in summary["tables"].items():
        spread_ = entry["difference"] or {}
        cells = [_signed(spread_.get(key)) for key in ("mean", "min", "max")]
        std = f"{spread_['std']:.4f}" if spread_ else "n/a"
        lines.append(f"| {name} | {' | '.join(cells)} | {std} | {entry['target']} | {entry['verdict']} |")
    lines += [
        "",
        f"Average difference across tables: {_signed(summary['average_difference'])} "
        f"(target {summary['average_target']}): {summary['average_verdict']}",
        f"Records refused for a missing value: {summary['missing_value_refusals']} (target 0): "
        f"{summary['refusals_verdict']}",
    ]
    return lines


def cost_lines(cost: list[dict[str, Any]]) -> list[str]:
    lines = ["| rows | exit | wall s | peak RSS MB | winner | targets |", "|---|---|---|---|---|---|"]
    for run in cost:
        targets = "; ".join(f"{figure} {text}" for figure, text in run["targets"].items()) or "-"
        lines.append(
            f"| {run['rows']:,} | {run['exit_code']} | {run['wall_seconds']:.0f} | {run['peak_rss_mb']:.0f} | "
            f"{run.get('winner', '-')} | {targets} |"
        )
    return lines


def failure_line(run: dict[str, Any]) -> str:
    training = run["training"]
    if training["exit_code"] != 0:
        last = training.get("error", "").strip().splitlines()[-1:] or ["no output"]
        return f"- {run['table']} seed {run['seed']}: training exited {training['exit_code']}: {last[0]}"
    return f"- {run['table']} seed {run['seed']}: the service did not answer: {run.get('service_error', '')[:200]}"


def markdown(results: dict[str, Any]) -> str:
    protocol = results["protocol"]
    lines = [
        "# Model quality against untuned baselines",
        "",
        f"Seeds {protocol['seeds'] if results['runs'] else '-'}; training arguments: "
        f"{' '.join(protocol['training_args']) or '(default)'}; "
        f"load average at the end {[round(x, 2) for x in results['environment']['load_average']]}.",
    ]
    if results["runs"]:
        lines += ["", *table_lines(results), "", *summary_lines(results["summary"])]
    failures = [failure_line(run) for run in results["runs"] if "project_auc" not in run]
    if failures:
        lines += ["", "Failed runs (details in the JSON):", *failures]
    if results["skipped"]:
        lines += ["", f"Skipped (source absent): {', '.join(results['skipped'])}"]
    if results["cost"]:
        lines += ["", "## Training cost", "", *cost_lines(results["cost"])]
    return "\n".join(lines) + "\n"


def write_results(results: dict[str, Any], out_dir: Path) -> tuple[Path, Path, str]:
    """``quality-<timestamp>.json`` and ``.md`` in ``out_dir``; returns both paths and the Markdown."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    json_path, md_path = out_dir / f"quality-{stamp}.json", out_dir / f"quality-{stamp}.md"
    json_path.write_text(json.dumps(results, indent=2, default=str))
    text = markdown(results)
    md_path.write_text(text)
    return json_path, md_path, text
