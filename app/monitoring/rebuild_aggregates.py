"""``python -m app.monitoring.rebuild_aggregates``: recompute the report's hourly aggregates from the log.

For a log written before the aggregates existed (its days would otherwise report no volume), or to
repair them. Run it with the service stopped: rows written meanwhile could be counted twice or missed.
The database is ``CHURN_DATABASE_URL``, as for the service.
"""

from __future__ import annotations

from sqlalchemy import Engine, delete, literal, select

from app.monitoring import aggregates
from app.monitoring.log_store import create_tables, hourly_table, latency_table, make_engine, predictions_table

CHUNK_ROWS = 20_000


def rebuild(engine: Engine, chunk_rows: int = CHUNK_ROWS) -> int:
    """Replace the aggregates with ones recomputed from every logged row; rows read."""
    create_tables(engine)
    with engine.begin() as connection:
        connection.execute(delete(hourly_table))
        connection.execute(delete(latency_table))
    # Every column in ROW_COLUMNS order, but the inputs (unused by the aggregates) are not read.
    columns = [literal("") if column.name == "inputs" else column for column in predictions_table.columns]
    last_id, total = "", 0
    while True:
        with engine.begin() as connection:
            rows = connection.execute(
                select(*columns)
                .where(predictions_table.c.prediction_id > last_id)
                .order_by(predictions_table.c.prediction_id)
                .limit(chunk_rows)
            ).all()
            if not rows:
                return total
            aggregates.add_rows(connection, [tuple(row) for row in rows])
        last_id, total = rows[-1][0], total + len(rows)


def main() -> None:
    from app.settings import get_settings

    engine = make_engine(get_settings().database_url)
    try:
        print(f"aggregated {rebuild(engine)} logged predictions")
    finally:
        engine.dispose()


if __name__ == "__main__":
    main()
