"""The report's content as simple blocks, and how values are written in them.

The content is built once as a list of blocks and rendered twice (Markdown and HTML) by
:mod:`training.report.render`, so the two files cannot drift apart.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from training.evaluation import is_number


# ---- document blocks ----------------------------------------------------------------------------
@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Text:
    text: str
    muted: bool = False


@dataclass
class Bullets:
    items: list[str]


@dataclass
class KeyFigures:
    """A row of headline numbers: (label, value, hint)."""

    figures: list[tuple[str, str, str]]


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    highlight: set[int] = field(default_factory=set)  # row indices to emphasise (the winner)
    failed: set[int] = field(default_factory=set)  # row indices of failed candidates


@dataclass
class Images:
    """One or more charts shown side by side: (file name, caption)."""

    images: list[tuple[str, str]]


Block = Heading | Text | Bullets | KeyFigures | Table | Images


# ---- formatting -----------------------------------------------------------------------------------
MISSING = "—"


def fmt(value: Any, digits: int = 3) -> str:
    """A value as short text: numbers rounded, None/NaN as a dash, containers compacted."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.{digits}f}"
    if isinstance(value, Mapping):
        return ", ".join(f"{key}: {fmt(item, digits)}" for key, item in value.items()) or MISSING
    if isinstance(value, (list, tuple, set)):
        return ", ".join(fmt(item, digits) for item in value) or MISSING
    return str(value)


def fmt_pct(value: Any, digits: int = 1) -> str:
    return f"{float(value) * 100:.{digits}f}%" if is_number(value) else MISSING


def fmt_seconds(value: Any) -> str:
    if not is_number(value):
        return MISSING
    seconds = float(value)
    if seconds < 60:
        return f"{seconds:.2f} s" if seconds < 10 else f"{seconds:.1f} s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)} min {rest:.0f} s"


def fmt_params(params: Any) -> str:
    """Hyper-parameters as compact ``key=value`` text with floats to 4 significant digits."""
    if not isinstance(params, Mapping) or not params:
        return MISSING if not params else str(params)
    parts = []
    for key, value in params.items():
        shown = f"{value:.4g}" if isinstance(value, float) else json.dumps(value, default=str)
        parts.append(f"{key}={shown.strip(chr(34))}")
    return ", ".join(parts)


def humanise(key: str) -> str:
    """'drop_duplicate_rows' -> 'Drop duplicate rows'."""
    text = str(key).replace("_", " ").strip()
    return text[:1].upper() + text[1:]
