"""Benchmark results: figures judged against their targets, rendered as a text table, Markdown and JSON."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Figure:
    key: str
    label: str
    value: float | None
    unit: str = ""
    target: tuple[str, float] | None = None  # (comparison, bound): "<=", ">=" or "=="
    note: str = ""

    @property
    def verdict(self) -> str:
        if self.target is None:
            return ""
        if self.value is None:
            return "NOT MEASURED"
        op, bound = self.target
        ok = {"<=": self.value <= bound, ">=": self.value >= bound, "==": self.value == bound}[op]
        return "PASS" if ok else "FALL SHORT"

    def target_text(self) -> str:
        if self.target is None:
            return ""
        op, bound = self.target
        if self.unit == "yes/no":
            return "no" if bound == 0 else "yes"
        return (
            f"{'≤' if op == '<=' else '≥' if op == '>=' else '='} {fmt(bound)}{(' ' + self.unit) if self.unit else ''}"
        )

    def value_text(self) -> str:
        if self.value is None:
            return "—"
        if self.unit == "yes/no":
            return "yes" if self.value else "no"
        return f"{fmt(self.value)}{(' ' + self.unit) if self.unit else ''}"

    def to_dict(self) -> dict[str, Any]:
        target = self.target
        return {
            "key": self.key,
            "label": self.label,
            "value": self.value,
            "unit": self.unit,
            "target": {"op": target[0], "bound": target[1]} if target else None,
            "verdict": self.verdict or None,
            "note": self.note,
        }


def fmt(value: float) -> str:
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


@dataclass
class Report:
    title: str
    started_at: str
    command: str
    settings: dict[str, Any]
    environment: dict[str, Any]
    targets: dict[str, tuple[str, float]] = field(default_factory=dict)  # target key -> (comparison, bound)
    figures: list[Figure] = field(default_factory=list)
    runs: dict[str, Any] = field(default_factory=dict)  # raw measurements by step
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    def add(self, key: str, label: str, value: float | None, unit: str = "", target: str | None = None, note: str = ""):
        self.figures.append(Figure(key, label, value, unit, self.targets.get(target) if target else None, note))

    def to_dict(self) -> dict[str, Any]:
        return {
            "started_at": self.started_at,
            "command": self.command,
            "status": "failed" if self.error else "complete",
            "error": self.error,
            "settings": self.settings,
            "environment": self.environment,
            "figures": [f.to_dict() for f in self.figures],
            "runs": self.runs,
            "notes": self.notes,
        }

    def table(self) -> list[list[str]]:
        return [[f.label, f.value_text(), f.target_text(), f.verdict, f.note] for f in self.figures]

    def text_table(self) -> str:
        header = ["figure", "measured", "target", "verdict", "note"]
        rows = [header, *self.table()]
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def markdown(self) -> str:
        out = [
            f"# {self.title}, {self.started_at}",
            "",
            f"Command: `{self.command}`",
            "",
        ]
        if self.error:
            out += [f"**The run failed:** {self.error}", ""]
        out += ["| figure | measured | target | verdict | note |", "|---|---|---|---|---|"]
        out += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in self.table()]
        out += ["", "## Settings", ""]
        out += [f"- {key}: `{value}`" for key, value in self.settings.items()]
        out += ["", "## Machine", ""]
        out += [f"- {key}: `{value}`" for key, value in self.environment.items()]
        if self.notes:
            out += ["", "## Notes", ""]
            out += [f"- {note}" for note in self.notes]
        out += [
            "",
            "Ratios compare runs made one after the other in this run on the same machine; absolute",
            "figures depend on what else the machine was doing (see the load averages in the JSON).",
            "",
        ]
        return "\n".join(out)


# ---- the machine ------------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def loadavg() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def environment() -> dict[str, Any]:
    from importlib import metadata

    versions = {}
    for dist in ("fastapi", "uvicorn", "pydantic", "numpy", "pandas", "scikit-learn", "xgboost-cpu", "xgboost"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=10, check=False)
    return {
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "python": platform.python_version(),
        "wrk": (wrk_version.stdout + wrk_version.stderr).splitlines()[0]
        if wrk_version.stdout + wrk_version.stderr
        else "",
        "libraries": versions,
        "loadavg_at_start": loadavg(),
    }


def write_results(report: Report, results_dir: Path, prefix: str) -> tuple[Path, Path]:
    results_dir.mkdir(parents=True, exist_ok=True)
    stem = results_dir / f"{prefix}-{report.started_at}"
    json_path, md_path = stem.with_suffix(".json"), stem.with_suffix(".md")
    json_path.write_text(json.dumps(report.to_dict(), indent=2, default=str) + "\n")
    md_path.write_text(report.markdown())
    return json_path, md_path
