"""Reading a churn table from a real PostgreSQL server (CI starts one; skipped without a URL)."""

import os
import uuid

import pytest
import sqlalchemy as sa

from training.config import TrainingConfig
from training.data import TrainingDataError, load_table
from training.pipeline import run_training
from training.synthetic import generate_customers

POSTGRES_URL = os.environ.get("CHURN_TEST_POSTGRES_URL")
pytestmark = pytest.mark.skipif(not POSTGRES_URL, reason="set CHURN_TEST_POSTGRES_URL to a PostgreSQL database")


@pytest.fixture
def customers_table():
    name = f"customers_{uuid.uuid4().hex[:8]}"
    engine = sa.create_engine(POSTGRES_URL)
    generate_customers(600, seed=3).to_sql(name, engine, index=False)
    yield name
    with engine.begin() as connection:
        connection.execute(sa.text(f'DROP TABLE IF EXISTS "{name}"'))
    engine.dispose()


def test_table_and_query_read_from_postgresql(customers_table):
    whole = load_table(POSTGRES_URL, table=customers_table)
    assert len(whole.frame) == 600 and "Churn" in whole.frame.columns
    month_to_month = load_table(
        POSTGRES_URL, query=f'SELECT * FROM "{customers_table}" WHERE "Contract" = \'Month-to-month\''
    )
    assert 0 < len(month_to_month.frame) < 600
    assert set(month_to_month.frame["Contract"]) == {"Month-to-month"}


def test_missing_postgresql_table_is_a_clear_error():
    with pytest.raises(TrainingDataError, match="does not exist"):
        load_table(POSTGRES_URL, table="no_such_customers_table")


def test_training_from_postgresql_publishes_a_bundle(customers_table, tmp_path):
    result = run_training(
        TrainingConfig(
            data=POSTGRES_URL,
            table=customers_table,
            model_dir=tmp_path,
            models=("logistic_regression",),
            trials=2,
            report=False,
            progress=False,
        )
    )
    assert result.manifest.schema.target == "Churn"
    assert customers_table in result.manifest.training["data"]["source"]
