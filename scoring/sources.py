"""The customer table in partitions, read where the rows are scored, never whole in one place.

Files are read in the same raw form as ``training.data`` reads them, by the task that scores the
partition: CSV with Dask's reader, as text with no missing-value guessing (delimiter and encoding
detected as training detects them); Parquet one row group at a time, as stored. ``as_raw_objects``
then makes every partition plain Python values on the worker.
A database table or query is read by the client in chunks of ``partition_rows`` (one connection,
the training reader's statement and error handling) and each chunk is sent to a worker.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.data import (
    PARQUET_SUFFIXES,
    SNIFF_BYTES,
    TrainingDataError,
    condense,
    decode_text,
    detect_delimiter,
    is_sql_url,
    sql_statement,
)

# Rows per partition of a CSV or database source: one Dask task each, a few hundred MB on a worker.
DEFAULT_PARTITION_ROWS = 100_000


@dataclass
class Partition:
    number: int
    rows: Any  # a dask Delayed that reads the partition, or a DataFrame already read


class TableSource:
    """The partitions of one customer table, numbered in a stable order."""

    def __init__(self, description: str, total_rows: int | None) -> None:
        self.description = description
        self.total_rows = total_rows  # None when unknown (a query); an estimate for CSV

    def partitions(self, skip: set[int]) -> Iterator[Partition]:
        raise NotImplementedError

    def all_in(self, written: set[int]) -> bool:
        """Whether ``written`` holds every partition (never known of a database source before reading it)."""
        return False


class FileSource(TableSource):
    def __init__(self, description: str, total_rows: int | None, parts: list[Any]) -> None:
        super().__init__(description, total_rows)
        self.parts = parts  # a dask Delayed per partition, each reading its rows where it runs

    def all_in(self, written: set[int]) -> bool:
        return set(range(len(self.parts))) <= written

    def partitions(self, skip: set[int]) -> Iterator[Partition]:
        for number, part in enumerate(self.parts):
            if number not in skip:
                yield Partition(number, part)


class DatabaseSource(TableSource):
    def __init__(self, url: str, table: str | None, query: str | None, partition_rows: int) -> None:
        with sql_statement(url, table=table, query=query) as (_, _, description):
            super().__init__(description, None)
        self.url, self.table, self.query, self.partition_rows = url, table, query, partition_rows

    def partitions(self, skip: set[int]) -> Iterator[Partition]:
        import pandas as pd

        with sql_statement(self.url, table=self.table, query=self.query) as (connection, statement, _):
            # A server-side cursor: drivers such as psycopg2 would otherwise fetch the whole result first.
            streamed = connection.execution_options(stream_results=True)
            chunks = pd.read_sql(statement, streamed, chunksize=self.partition_rows)
            for number, chunk in enumerate(chunks):
                if number not in skip:
                    yield Partition(number, chunk)


def open_source(
    source: str, *, table: str | None = None, query: str | None = None, partition_rows: int = DEFAULT_PARTITION_ROWS
) -> TableSource:
    """The table at ``source`` in partitions; TrainingDataError with the reason when it cannot be read."""
    import dask

    if is_sql_url(source):
        return DatabaseSource(source, table, query, partition_rows)
    if table or query:
        raise TrainingDataError("--table and --query only apply to a database URL such as sqlite:///customers.db")
    path = Path(source)
    if not path.exists():
        raise TrainingDataError(f"data path {path} does not exist")
    with dask.config.set({"dataframe.convert-string": False}):  # raw Python values, as training reads them
        if path.is_dir() or path.suffix.lower() in PARQUET_SUFFIXES:
            return parquet_source(path)
        return csv_source(path, partition_rows)


def parquet_source(path: Path) -> FileSource:
    """A Parquet file or a directory of Parquet files: one partition per row group, in file-name order."""
    import dask
    import pyarrow.parquet as pq

    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if parquet_file(p, path))
    if not files:
        raise TrainingDataError(f"{path} holds no Parquet files (*.parquet, *.pq)")
    pieces, rows = [], 0
    for file in files:
        try:
            metadata = pq.ParquetFile(file).metadata
        except Exception as exc:  # pyarrow raises several unrelated types for a damaged file
            raise TrainingDataError(f"cannot read {file} as Parquet: {condense(exc)}") from None
        pieces += [(file, group) for group in range(metadata.num_row_groups)]
        rows += metadata.num_rows
    if rows == 0:
        raise TrainingDataError(f"{path} has no rows")
    return FileSource(str(path), rows, [dask.delayed(read_row_group)(file, group) for file, group in pieces])


def parquet_file(path: Path, root: Path) -> bool:
    """A data file of a Parquet directory; names starting with ``_`` or ``.`` are metadata or temp files."""
    hidden = any(part.startswith(("_", ".")) for part in path.relative_to(root).parts)
    return path.is_file() and path.suffix.lower() in PARQUET_SUFFIXES and not hidden


def read_row_group(path: Path, group: int) -> Any:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).read_row_group(group).to_pandas()


def csv_source(path: Path, partition_rows: int) -> FileSource:
    """A CSV file in blocks of about ``partition_rows`` rows, every value as text."""
    import dask.dataframe as dd

    try:
        with path.open("rb") as handle:
            sample = handle.read(SNIFF_BYTES)
        size = path.stat().st_size
    except OSError as exc:
        raise TrainingDataError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not sample.strip():
        raise TrainingDataError(f"data file {path} is empty")
    text, encoding = decode_text(sample[: sample.rfind(b"\n") + 1] or sample)
    lines = max(text.count("\n"), 1)
    bytes_per_row = max(len(sample) / lines, 1.0)
    try:
        frame = dd.read_csv(
            path,
            sep=detect_delimiter(text),
            dtype=object,
            keep_default_na=False,
            skipinitialspace=False,
            encoding="utf-8-sig" if encoding == "utf-8" else encoding,
            blocksize=max(int(bytes_per_row * partition_rows), 1024),
        )
    except (ValueError, OSError) as exc:
        raise TrainingDataError(f"cannot parse {path} as CSV: {condense(exc)}") from None
    return FileSource(str(path), max(round(size / bytes_per_row) - 1, 1), frame.to_delayed())
