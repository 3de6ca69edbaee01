"""bench.trees runs on small tree bundles, checks every engine agrees, and reports each figure as a table."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.trees import FIGURES, main


def tables(output: str) -> dict[str, dict[str, list[str]]]:
    """Each printed Markdown table as {row label: cells} (the header row under "engines"), by its bold title."""
    parsed: dict[str, dict[str, list[str]]] = {}
    for line in output.splitlines():
        if line.startswith("**"):
            title, parsed[line] = line, {}
        elif line.startswith("|") and not line.startswith("|---"):
            label, *cells = [cell.strip() for cell in line.split("|")[1:-1]]
            parsed[title]["engines" if label == "figure" else label] = cells
    return parsed


@pytest.mark.parametrize(("family", "compilers"), [("lightgbm", False), ("random_forest", False), ("xgboost", True)])
def test_the_tree_benchmark_reports_each_figure_for_each_engine(
    family: str, compilers: bool, family_models_dirs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    arguments = ["--model-dir", str(family_models_dirs[family]), "--repeats", "5", "--rows", "300"]
    main(arguments + ([] if compilers else ["--no-compilers"]))

    (title, table), *others = tables(capsys.readouterr().out).items()
    assert not others and title.startswith(f"**{family}: ")
    assert float(title.rstrip("*").rsplit(" ", 1)[1]) < 1e-6  # the kernels' values are shap's
    assert table["engines"][:3] == ["numba kernels", "native library", "shap TreeExplainer"]
    assert ("tl2cgen" in table["engines"]) == compilers
    kernels = [table[figure][0] for figure in FIGURES]
    assert all(cell.endswith(" us") or cell.endswith(" ms") for cell in kernels)
    assert table["score 1 record"][1].endswith("x)")  # the native library, as a ratio to the kernels
    assert table["explain 1 record"][2].endswith("x)")  # shap's TreeExplainer likewise
    assert len(table["compile"]) == len(table["engines"])


def test_a_bundle_without_trees_is_refused(linear_models_dir: Path) -> None:
    with pytest.raises(SystemExit, match="no tree model"):
        main(["--model-dir", str(linear_models_dir), "--repeats", "2", "--no-compilers"])
