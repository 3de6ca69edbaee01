"""bench.trees runs on a small tree bundle, checks both paths agree, and reports every figure."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.trees import main


@pytest.mark.parametrize("family", ["lightgbm", "xgboost"])
def test_the_tree_benchmark_reports_each_figure(
    family: str, family_models_dirs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    main(["--model-dir", str(family_models_dirs[family]), "--repeats", "20"])

    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("bundle ") and f"({family})" in lines[0]
    figures = {line[:58].strip(): float(line[58:].split()[0]) for line in lines[1:7]}
    assert len(figures) == 6 and all(value > 0 for value in figures.values())
    assert sum("/ compiled:" in line for line in lines) == 3


def test_a_bundle_without_trees_is_refused(linear_models_dir: Path) -> None:
    with pytest.raises(SystemExit, match="no tree model"):
        main(["--model-dir", str(linear_models_dir), "--repeats", "2"])
