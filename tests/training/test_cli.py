"""The command line: every bad input is one line on stderr and exit code 2; success prints a summary."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from bundle.store import current_bundle_dir, verify_bundle
from training.cli import main
from training.synthetic import generate_customers

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--models", "logistic_regression", "--trials", "2", "--quiet", "--no-report"]


@pytest.fixture(scope="module")
def customers_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "customers.csv"
    generate_customers(600, seed=2).to_csv(path, index=False)
    return path


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exit_:  # argparse exits for usage errors and --help
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, message: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert message in lines[0]
    assert "Traceback" not in err


def test_train_and_summary(capsys, customers_csv: Path, tmp_path: Path) -> None:
    code, out, err = run_main(capsys, "--data", str(customers_csv), "--model-dir", str(tmp_path), *FAST)
    assert code == 0, err
    bundle = current_bundle_dir(tmp_path)
    verify_bundle(bundle)
    assert f"bundle      {bundle}" in out
    assert "winner      logistic_regression (CV ROC-AUC" in out and "test        ROC-AUC" in out
    assert err == ""  # --quiet


def test_no_current_publishes_without_switching(capsys, customers_csv: Path, tmp_path: Path) -> None:
    code, _, err = run_main(capsys, "--data", str(customers_csv), "--model-dir", str(tmp_path), "--no-current", *FAST)
    assert code == 0, err
    assert not (tmp_path / "current").exists()


def sqlite_url(tmp_path: Path) -> str:
    path = tmp_path / "crm.db"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE customers (id TEXT, Churn TEXT)")
    return f"sqlite:///{path}"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (lambda tmp, csv: ["--data", str(tmp / "absent.csv")], "absent.csv does not exist"),
        (lambda tmp, csv: ["--data", str(csv), "--target", "churn_flag"], "target column 'churn_flag' not found"),
        (lambda tmp, csv: ["--data", str(csv), "--target", "Chrun"], "did you mean: Churn"),
        (lambda tmp, csv: ["--data", str(csv), "--positive-label", "Maybe"], "--positive-label 'Maybe' is not a value"),
        (lambda tmp, csv: ["--data", str(csv), "--id-column", "nope"], "id column 'nope' not found"),
        (lambda tmp, csv: ["--data", sqlite_url(tmp), "--table", "missing"], "table 'missing' does not exist"),
        (lambda tmp, csv: ["--data", sqlite_url(tmp), "--query", "SELECT * FROM nope"], "no such table: nope"),
        (lambda tmp, csv: ["--data", sqlite_url(tmp), "--table", "customers"], "has no rows"),
        (lambda tmp, csv: ["--data", "oracle+nodriver://u:pw@h/db", "--table", "t"], "bad database URL"),
        (lambda tmp, csv: ["--data", str(csv), "--table", "t"], "only apply to a database URL"),
        (lambda tmp, csv: ["--models", "xgboost,catboost"], "unknown model family 'catboost'"),
        (lambda tmp, csv: ["--time-budget", "-5"], "must be greater than 0"),
        (lambda tmp, csv: ["--trials", "many"], "expected a whole number"),
        (lambda tmp, csv: ["--threshold-strategy", "max_profit"], "needs --offer-cost and --saved-value"),
        (lambda tmp, csv: ["--table", "a", "--query", "b"], "not allowed with argument"),
        (lambda tmp, csv: ["--data", str(csv), "--model-dir", str(csv / "m")], "cannot create model directory"),
        (lambda tmp, csv: ["--data", str(csv), "--required", "tenure,Tenure_days"], "'Tenure_days', which is not a"),
        (lambda tmp, csv: ["--data", str(csv), "--required", "Churn"], "'Churn', which is not a model feature"),
        (lambda tmp, csv: ["--required", ","], "expected comma-separated column names"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path: Path, customers_csv: Path, args, message: str) -> None:
    # A --model-dir in the case's own arguments comes later, so it wins.
    code, _, err = run_main(capsys, "--model-dir", str(tmp_path / "m"), *FAST, *args(tmp_path, customers_csv))
    assert_one_line_error(code, err, message)
    assert not (tmp_path / "m" / "current").exists()


def test_data_problems_found_after_loading(capsys, tmp_path: Path) -> None:
    one_class = tmp_path / "one_class.csv"
    pd.DataFrame({"id": range(200), "x": range(200), "Churn": ["No"] * 200}).to_csv(one_class, index=False)
    code, _, err = run_main(capsys, "--data", str(one_class), "--model-dir", str(tmp_path), *FAST)
    assert_one_line_error(code, err, "one class only")

    few = tmp_path / "few.csv"
    churn = ["Yes"] * 10 + ["No"] * 190
    pd.DataFrame({"id": range(200), "x": range(200), "Churn": churn}).to_csv(few, index=False)
    code, _, err = run_main(capsys, "--data", str(few), "--model-dir", str(tmp_path), *FAST)
    assert_one_line_error(code, err, "too few churned customers to keep a test split: 10, need at least 25")

    only_ids = tmp_path / "only_ids.csv"
    ids = pd.DataFrame({"customerID": [f"c{i}" for i in range(300)], "row": range(300), "Churn": ["Yes", "No"] * 150})
    ids.to_csv(only_ids, index=False)
    code, _, err = run_main(capsys, "--data", str(only_ids), "--model-dir", str(tmp_path), *FAST)
    assert_one_line_error(code, err, "no usable feature columns: customerID is the id; row dropped (identifier)")

    empty = tmp_path / "empty.csv"
    empty.write_text("")
    code, _, err = run_main(capsys, "--data", str(empty), "--model-dir", str(tmp_path), *FAST)
    assert_one_line_error(code, err, "is empty")


def test_subprocess_error_has_no_traceback(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "training", "--data", str(tmp_path / "nothing.csv"), "--model-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 2
    # Progress lines ("[   0.0s] ...") may come first; the error itself is one line, and the last.
    lines = completed.stderr.strip().splitlines()
    assert lines[-1] == f"error: data file {tmp_path / 'nothing.csv'} does not exist"
    assert all(line.startswith("[") for line in lines[:-1])


def test_help_describes_every_option(capsys) -> None:
    code, out, _ = run_main(capsys, "--help")
    assert code == 0
    for option in ("--data", "--table", "--query", "--target", "--positive-label", "--id-column", "--models"):
        assert option in out
    for option in ("--trials", "--time-budget", "--seed", "--threshold-strategy", "--offer-cost", "--no-report"):
        assert option in out


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_generate_writes_a_table_that_trains(capsys, tmp_path: Path, suffix: str) -> None:
    out_file = tmp_path / f"bank{suffix}"
    code, out, err = run_main(
        capsys, "generate", "--schema", "bank", "--rows", "500", "--seed", "3", "--out", str(out_file)
    )
    assert code == 0, err
    assert "wrote 500 rows" in out
    frame = pd.read_csv(out_file) if suffix == ".csv" else pd.read_parquet(out_file)
    assert len(frame) == 500 and "Exited" in frame.columns
    code, _, err = run_main(capsys, "--data", str(out_file), "--model-dir", str(tmp_path / "m"), *FAST)
    assert code == 0, err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--out", "x.json"], "must end in .csv or .parquet"),
        (["--out", "x.csv", "--drift", "2"], "--drift must lie in [0, 1]"),
        (["--out", "x.csv", "--schema", "retail"], "invalid choice: 'retail'"),
        (["--rows", "10"], "the following arguments are required: --out"),
    ],
)
def test_generate_bad_input(capsys, args: list[str], message: str) -> None:
    code, _, err = run_main(capsys, "generate", *args)
    assert_one_line_error(code, err, message)
