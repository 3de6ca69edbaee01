"""Reading customer tables: file formats, encodings, databases, and the one-line errors."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pandas as pd
import pytest

from training.data import TrainingDataError, load_table, redact_url, require_column

ROWS = [["A-1", "Yes", "29,85", "Müller"], ["A-2", "No", "56,95", "Zoë"], ["A-3", "No", " ", "Ann"]]
COLUMNS = ["customerID", "Churn", "MonthlyCharges", "Name"]


def write_text(path: Path, delimiter: str, encoding: str) -> Path:
    lines = [delimiter.join(COLUMNS)] + [delimiter.join(row) for row in ROWS]
    path.write_bytes(("\n".join(lines) + "\n").encode(encoding))
    return path


@pytest.mark.parametrize("delimiter", [",", ";", "\t"])
def test_csv_delimiters_are_detected(tmp_path: Path, delimiter: str) -> None:
    # Semicolon exports use decimal commas; quote them for the comma-separated variant.
    rows = [[f'"{cell}"' if delimiter == "," and "," in cell else cell for cell in row] for row in ROWS]
    lines = [delimiter.join(COLUMNS)] + [delimiter.join(row) for row in rows]
    path = tmp_path / "customers.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    frame = load_table(path).frame
    assert list(frame.columns) == COLUMNS
    assert frame["MonthlyCharges"].tolist() == ["29,85", "56,95", " "]


def test_latin1_file_falls_back_from_utf8(tmp_path: Path) -> None:
    frame = load_table(write_text(tmp_path / "latin.csv", ";", "latin-1")).frame
    assert frame["Name"].tolist() == ["Müller", "Zoë", "Ann"]


def test_utf8_with_bom(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbf" + b"customerID,Churn\nA,Yes\nB,No\n")
    assert list(load_table(path).frame.columns) == ["customerID", "Churn"]


def test_csv_values_stay_text_so_cleaning_decides(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("id,tenure,flag\n1,007,NA\n2,12,\n")
    frame = load_table(path).frame
    assert frame["tenure"].tolist() == ["007", "12"]
    assert frame["flag"].tolist() == ["NA", ""]


def test_parquet(tmp_path: Path) -> None:
    path = tmp_path / "customers.parquet"
    pd.DataFrame({"tenure": [1, 2, None], "Churn": ["Yes", "No", "No"]}).to_parquet(path)
    frame = load_table(path).frame
    assert frame["Churn"].tolist() == ["Yes", "No", "No"]
    assert frame["tenure"].tolist()[:2] == [1.0, 2.0] and frame["tenure"].tolist()[2] is None


def make_sqlite(tmp_path: Path) -> str:
    path = tmp_path / "crm.db"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE customers (customerID TEXT, tenure INTEGER, Churn TEXT)")
        connection.executemany("INSERT INTO customers VALUES (?, ?, ?)", [("a", 1, "Yes"), ("b", 30, "No")])
    return f"sqlite:///{path}"


def test_sqlite_table_and_query(tmp_path: Path) -> None:
    url = make_sqlite(tmp_path)
    table = load_table(url, table="customers")
    assert table.frame["customerID"].tolist() == ["a", "b"]
    assert "table customers" in table.source
    query = load_table(url, query="SELECT tenure, Churn FROM customers WHERE tenure > 5")
    assert query.frame.to_dict("list") == {"tenure": [30], "Churn": ["No"]}


def test_password_never_appears_in_the_source_description() -> None:
    assert "s3cret" not in redact_url("postgresql+psycopg://user:s3cret@db.example/crm")
    assert redact_url("postgresql+psycopg://user:s3cret@db.example/crm").startswith("postgresql+psycopg://user:***@")


@pytest.mark.parametrize(
    ("make_source", "kwargs", "message"),
    [
        (lambda tmp: tmp / "absent.csv", {}, "does not exist"),
        (lambda tmp: tmp, {}, "is a directory"),
        (lambda tmp: (tmp / "empty.csv", (tmp / "empty.csv").write_text(""))[0], {}, "is empty"),
        (lambda tmp: (tmp / "blank.csv", (tmp / "blank.csv").write_text("\n \n"))[0], {}, "is empty"),
        (lambda tmp: (tmp / "head.csv", (tmp / "head.csv").write_text("a,b\n"))[0], {}, "has no rows"),
        (lambda tmp: (tmp / "bad.parquet", (tmp / "bad.parquet").write_text("not parquet"))[0], {}, "as Parquet"),
        (lambda tmp: make_sqlite(tmp), {"table": "nope"}, "table 'nope' does not exist"),
        (lambda tmp: make_sqlite(tmp), {"query": "SELEKT * FROM customers"}, "database error"),
        (lambda tmp: make_sqlite(tmp), {"query": "SELECT * FROM missing"}, "no such table: missing"),
        (lambda tmp: make_sqlite(tmp), {}, "needs --table NAME or --query SQL"),
        (lambda tmp: "nosuchdialect://host/db", {"table": "t"}, "bad database URL"),
        (lambda tmp: f"sqlite:///{tmp / 'absent.db'}", {"table": "t"}, "SQLite database file .* does not exist"),
        (lambda tmp: tmp / "x.csv", {"table": "t"}, "only apply to a database URL"),
    ],
)
def test_unusable_sources_raise_one_clear_line(tmp_path: Path, make_source, kwargs, message: str) -> None:
    source = make_source(tmp_path)
    before = set(tmp_path.iterdir())
    with pytest.raises(TrainingDataError, match=message) as raised:
        load_table(source, **kwargs)
    assert "\n" not in str(raised.value)
    assert not {path for path in tmp_path.iterdir() if path.suffix == ".db"} - before  # nothing created


def test_sqlite_file_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "notdb.db"
    path.write_text("hello" * 100)
    with pytest.raises(TrainingDataError, match="database error") as raised:
        load_table(f"sqlite:///{path}", query="SELECT * FROM customers")
    assert "\n" not in str(raised.value)


def test_missing_column_lists_columns_and_suggests_close_matches() -> None:
    with pytest.raises(TrainingDataError, match=r"did you mean: Churn\?.*columns are: customerID, Churn"):
        require_column("churn_", ["customerID", "Churn"])
