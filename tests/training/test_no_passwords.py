"""A training run from a database URL with a password records, prints and reports it masked."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from bundle.store import current_bundle_dir, verify_bundle
from training.cli import main
from training.synthetic import generate_customers


def test_the_password_of_the_data_url_is_nowhere_in_the_bundle_or_output(capsys, tmp_path: Path) -> None:
    database = tmp_path / "crm.db"
    with sqlite3.connect(database) as connection:
        generate_customers(600, seed=4).to_sql("customers", connection, index=False)
    url = f"sqlite:///{database}?password=s3cret"
    models_dir = tmp_path / "models"

    arguments = ["--data", url, "--table", "customers", "--model-dir", str(models_dir)]
    code = main([*arguments, "--models", "logistic_regression", "--trials", "2"])

    out, err = capsys.readouterr()
    assert code == 0, err
    bundle = current_bundle_dir(models_dir)
    assert verify_bundle(bundle).training["data"]["source"] == f"sqlite:///{database} table customers"
    written = [path.read_bytes() for path in bundle.rglob("*") if path.is_file()]
    assert written and not any(b"s3cret" in content for content in written)
    assert "s3cret" not in out + err


def test_a_password_in_an_error_message_is_masked(capsys, tmp_path: Path) -> None:
    code = main(["--data", "postgresql://churn:s3cret@127.0.0.1:1/crm", "--table", "t", "--model-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert "s3cret" not in err and "postgresql://churn:***@127.0.0.1:1/crm" in err
