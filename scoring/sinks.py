"""Where scores go: a Parquet directory (one file per partition) or a database table.

Every partition is written all or nothing, together with its report: a directory gets temp files
renamed into place (the scores file last, so its presence means the partition is complete); a
database gets one transaction per partition. ``written()`` lists the complete partitions, which a
rerun skips. The job's signature (source, model version, options) is stored with the output, and a
rerun with a different one is refused instead of mixing two jobs' rows.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from functools import cache
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from scoring.partition import ERROR_SCHEMA, PartitionReport

PART_NAME = re.compile(r"^part-(\d{5,})\.parquet$")


class ScoringOutputError(Exception):
    """The destination cannot take this job's output; the message says why."""


class ParquetDirectory:
    """``DEST/part-N.parquet`` scores, ``DEST/_errors/part-N.parquet`` error rows, ``DEST/_reports/``.

    Names starting with ``_`` or ``.`` are ignored by Parquet readers, so ``DEST`` reads as the scores alone.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def describe(self) -> str:
        return str(self.root)

    def summary_path(self) -> Path:
        return self.root / "_summary.json"

    def prepare(self, signature: dict[str, Any], scored: pa.Schema) -> None:
        try:
            for folder in (self.root, self.root / "_errors", self.root / "_reports"):
                folder.mkdir(parents=True, exist_ok=True)
                for leftover in folder.glob(".*.tmp"):  # from a killed run
                    leftover.unlink()
        except OSError as exc:
            raise ScoringOutputError(f"cannot write to {self.root}: {exc.strerror or exc}") from None
        job = self.root / "_job.json"
        if job.exists():
            previous = json.loads(job.read_text())
            if previous != signature:
                raise ScoringOutputError(different_job(self.describe(), previous, signature))
        else:
            self._replace(job, json.dumps(signature, indent=2).encode())

    def written(self) -> dict[int, PartitionReport]:
        reports = {}
        for path in self.root.iterdir():
            match = PART_NAME.match(path.name)
            report = self.root / "_reports" / f"part-{match.group(1)}.json" if match else None
            if report is not None and report.exists():
                reports[int(match.group(1))] = PartitionReport.from_json(report.read_text())
        return reports

    def write(self, number: int, scored: pa.Table, errors: pa.Table, report: PartitionReport) -> None:
        name = f"part-{number:05d}"
        error_path = self.root / "_errors" / f"{name}.parquet"
        if errors.num_rows:
            self._write_table(error_path, errors)
        else:
            error_path.unlink(missing_ok=True)
        self._replace(self.root / "_reports" / f"{name}.json", report.to_json().encode())
        self._write_table(self.root / f"{name}.parquet", scored)

    def _write_table(self, path: Path, table: pa.Table) -> None:
        temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        pq.write_table(table, temp)
        os.replace(temp, path)

    def _replace(self, path: Path, content: bytes) -> None:
        temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        temp.write_bytes(content)
        os.replace(temp, path)


class DatabaseTable:
    """Scores in ``TABLE``, error rows in ``TABLE_errors``, one row per written partition in ``TABLE_partitions``."""

    def __init__(self, url: str, table: str) -> None:
        self.url = url
        self.table = table
        self.signature = ""  # set by prepare(), then sent to the workers with the sink
        self.scored_schema = pa.schema([])

    def describe(self) -> str:
        from bundle.redaction import redact_url

        return f"{redact_url(self.url)} table {self.table}"

    def summary_path(self) -> Path:
        return Path(f"{self.table}_summary.json")

    def prepare(self, signature: dict[str, Any], scored: pa.Schema) -> None:
        import sqlalchemy

        self.signature = json.dumps(signature, sort_keys=True)
        engine = database_engine(self.url)
        try:
            tables(self.table, scored).create_all(engine, checkfirst=True)
            with engine.connect() as connection:
                marker = tables(self.table, scored).tables[f"{self.table}_partitions"]
                found = {row[0] for row in connection.execute(sqlalchemy.select(marker.c.job).distinct())}
        except sqlalchemy.exc.SQLAlchemyError as exc:
            raise ScoringOutputError(f"cannot write to {self.describe()}: {exc.__class__.__name__}: {exc}") from None
        for other in found - {self.signature}:
            raise ScoringOutputError(different_job(self.describe(), json.loads(other), signature))
        self.scored_schema = scored

    def written(self) -> dict[int, PartitionReport]:
        import sqlalchemy

        marker = tables(self.table, self.scored_schema).tables[f"{self.table}_partitions"]
        with database_engine(self.url).connect() as connection:
            rows = connection.execute(sqlalchemy.select(marker.c.partition, marker.c.report)).all()
        return {number: PartitionReport.from_json(report) for number, report in rows}

    def write(self, number: int, scored: pa.Table, errors: pa.Table, report: PartitionReport) -> None:
        metadata = tables(self.table, scored.schema)
        with database_engine(self.url).begin() as connection:  # one transaction: all of the partition or none
            for table in metadata.tables.values():
                connection.execute(table.delete().where(table.c.partition == number))
            for table, rows in ((self.table, scored), (f"{self.table}_errors", errors)):
                if rows.num_rows:
                    connection.execute(metadata.tables[table].insert(), rows.to_pylist())
            marker = metadata.tables[f"{self.table}_partitions"]
            connection.execute(
                marker.insert(), [{"partition": number, "job": self.signature, "report": report.to_json()}]
            )


@cache
def database_engine(url: str) -> Any:
    """One engine (and connection pool) per database per process."""
    import sqlalchemy

    return sqlalchemy.create_engine(url)


def tables(name: str, scored: pa.Schema) -> Any:
    import sqlalchemy as sa

    types = {
        pa.string(): sa.String(1024),
        pa.int64(): sa.BigInteger(),
        pa.float64(): sa.Float(),
        pa.bool_(): sa.Boolean(),
    }

    def columns(schema: pa.Schema) -> list[sa.Column]:
        return [
            sa.Column(f.name, types.get(f.type, sa.DateTime(timezone=True)), index=f.name == "partition")
            for f in schema
        ]

    metadata = sa.MetaData()
    sa.Table(name, metadata, *columns(scored))
    sa.Table(f"{name}_errors", metadata, *columns(ERROR_SCHEMA))
    sa.Table(
        f"{name}_partitions",
        metadata,
        sa.Column("partition", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("job", sa.Text()),
        sa.Column("report", sa.Text()),
    )
    return metadata


def different_job(where: str, previous: dict[str, Any], current: dict[str, Any]) -> str:
    changed = sorted(key for key in {*previous, *current} if previous.get(key) != current.get(key))
    return (
        f"{where} holds the output of a different scoring job (it differs in: {', '.join(changed)}); "
        "choose another --out or remove it"
    )


def open_sink(out: str, table: str | None = None) -> ParquetDirectory | DatabaseTable:
    from training.data import is_sql_url

    if is_sql_url(out):
        if not table:
            raise ScoringOutputError("a database --out needs --out-table NAME")
        return DatabaseTable(out, table)
    if table:
        raise ScoringOutputError("--out-table only applies to a database URL such as sqlite:///scores.db")
    return ParquetDirectory(Path(out))
