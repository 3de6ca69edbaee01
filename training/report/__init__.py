"""The training report: what data went in, what was tried, what won, and how good it really is.

:func:`write_report` draws the charts into the bundle directory and writes the same content
twice: ``report.md`` (links the PNG files) and ``report.html`` (self-contained, the PNGs embedded,
so it can be mailed or opened anywhere). The content is built once as a list of simple blocks
and rendered by two small renderers, so the two files cannot drift apart.

Every part of the context except ``version`` is optional: a run that skipped a step (no
importance, no timings) or a candidate that failed still produces a complete, readable report.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from training.report.blocks import Block
from training.report.charts import draw_charts
from training.report.context import test_arrays
from training.report.quality_sections import (
    calibration_section,
    importance_section,
    test_metrics_section,
    threshold_section,
    timings_section,
    uncertainty_section,
)
from training.report.render import render_html, render_markdown
from training.report.selection_sections import (
    cleaning_section,
    data_section,
    headline_section,
    leaderboard_section,
    roles_section,
    winner_section,
)


def build_document(context: Mapping[str, Any], charts: Mapping[str, str]) -> list[Block]:
    arrays = test_arrays(context)
    return [
        *headline_section(context, arrays),
        *data_section(context),
        *cleaning_section(context),
        *roles_section(context),
        *leaderboard_section(context),
        *winner_section(context),
        *calibration_section(context, charts),
        *threshold_section(context, charts),
        *test_metrics_section(context, charts),
        *uncertainty_section(context, arrays),
        *importance_section(context, charts),
        *timings_section(context),
    ]


def write_report(directory: Path, context: Mapping[str, Any]) -> Path:
    """Draw the charts and write ``report.md`` and ``report.html`` into ``directory``; returns the HTML path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    charts = draw_charts(directory, context)
    blocks = build_document(context, charts)
    title = f"Churn model report: {context.get('version', 'unversioned')}"
    subtitle = f"Generated {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}"
    (directory / "report.md").write_text(render_markdown(title, subtitle, blocks), encoding="utf-8")
    html_path = directory / "report.html"
    html_path.write_text(render_html(title, subtitle, blocks, directory), encoding="utf-8")
    return html_path
