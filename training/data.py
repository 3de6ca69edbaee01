"""Reading the customer table: CSV, Parquet or a SQL database, into a frame of raw values.

Values are read as text where the format allows (CSV) and as plain Python objects otherwise,
so the cleaning step alone decides what is a number, a flag or a category, by the same rules
serving applies to requests.
"""

from __future__ import annotations

import csv
import difflib
import io
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from bundle.redaction import redact_text, redact_url

CSV_DELIMITERS = (",", ";", "\t")
SNIFF_BYTES = 64 * 1024
SQL_URL = re.compile(r"^[a-z][a-z0-9+]*://", re.IGNORECASE)
PARQUET_SUFFIXES = (".parquet", ".pq")


class TrainingDataError(Exception):
    """The training data cannot be used; the message says why in one line."""


@dataclass
class LoadedTable:
    frame: pd.DataFrame
    source: str  # safe to log and store: never contains a password


def is_sql_url(source: str) -> bool:
    return bool(SQL_URL.match(source))


def load_table(source: str | Path, *, table: str | None = None, query: str | None = None) -> LoadedTable:
    """Read a CSV/Parquet file or a SQL table/query; TrainingDataError with the reason on failure."""
    text = str(source)
    if is_sql_url(text):
        frame, description = read_sql(text, table=table, query=query)
    else:
        if table or query:
            raise TrainingDataError("--table and --query only apply to a database URL such as sqlite:///customers.db")
        path = Path(text)
        frame = read_parquet(path) if path.suffix.lower() in PARQUET_SUFFIXES else read_csv(path)
        description = str(path)
    if frame.shape[1] == 0:
        raise TrainingDataError(f"{description} has no columns")
    if len(frame) == 0:
        raise TrainingDataError(f"{description} has no rows")
    return LoadedTable(frame=as_raw_objects(frame), source=description)


def as_raw_objects(frame: pd.DataFrame) -> pd.DataFrame:
    """Object columns holding str/int/float/bool/None, with column names as stripped text."""
    out = frame.astype(object)
    out = out.where(out.notna(), None)
    out.columns = [str(name).strip() for name in out.columns]
    if len(set(out.columns)) != len(out.columns):
        duplicates = sorted({name for name in out.columns if list(out.columns).count(name) > 1})
        raise TrainingDataError(f"column names repeat: {', '.join(duplicates)}")
    return out.reset_index(drop=True)


# ---- files ----------------------------------------------------------------------------------
def read_file_bytes(path: Path) -> bytes:
    if not path.exists():
        raise TrainingDataError(f"data file {path} does not exist")
    if path.is_dir():
        raise TrainingDataError(f"data path {path} is a directory, not a file")
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise TrainingDataError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not content.strip():
        raise TrainingDataError(f"data file {path} is empty")
    return content


def decode_text(content: bytes) -> tuple[str, str]:
    """Text and encoding name: UTF-8 (with or without BOM) first, Latin-1 (never fails) otherwise."""
    try:
        return content.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError:
        return content.decode("latin-1"), "latin-1"


def detect_delimiter(text: str) -> str:
    """Comma, semicolon or tab, whichever splits the first lines most consistently."""
    sample = text[:SNIFF_BYTES]
    try:
        return csv.Sniffer().sniff(sample, delimiters="".join(CSV_DELIMITERS)).delimiter
    except csv.Error:
        header = sample.splitlines()[0] if sample else ""
        return max(CSV_DELIMITERS, key=header.count)


def read_csv(path: Path) -> pd.DataFrame:
    text, _ = decode_text(read_file_bytes(path))
    delimiter = detect_delimiter(text)
    try:
        # Everything as text and no NA guessing: cleaning applies the shared missing-value rules.
        return pd.read_csv(
            io.StringIO(text), sep=delimiter, dtype=object, keep_default_na=False, skipinitialspace=False
        )
    except pd.errors.EmptyDataError:
        raise TrainingDataError(f"data file {path} is empty") from None
    except (pd.errors.ParserError, ValueError) as exc:
        raise TrainingDataError(f"cannot parse {path} as CSV: {condense(exc)}") from None


def read_parquet(path: Path) -> pd.DataFrame:
    read_file_bytes(path)
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a damaged file
        raise TrainingDataError(f"cannot read {path} as Parquet: {condense(exc)}") from None


# ---- databases ------------------------------------------------------------------------------
def read_sql(url: str, *, table: str | None, query: str | None) -> tuple[pd.DataFrame, str]:
    with sql_statement(url, table=table, query=query) as (connection, statement, description):
        return pd.read_sql(statement, connection), description


@contextmanager
def sql_statement(url: str, *, table: str | None, query: str | None) -> Iterator[tuple[Any, Any, str]]:
    """An open connection, the SELECT for ``table`` or ``query`` and a description safe to log.

    Database errors inside the block become TrainingDataError with the reason, so a caller may read
    the result whole or in chunks.
    """
    import sqlalchemy
    from sqlalchemy import exc as sa_exc

    if not table and not query:
        raise TrainingDataError("a database URL needs --table NAME or --query SQL")
    safe_url = redact_url(url)
    description = f"{safe_url} table {table}" if table else f"{safe_url} query {query}"
    try:
        engine = sqlalchemy.create_engine(url)
    except (sa_exc.ArgumentError, sa_exc.NoSuchModuleError, ValueError) as exc:
        raise TrainingDataError(f"bad database URL {safe_url}: {condense(exc)}") from None
    except ImportError as exc:
        raise TrainingDataError(f"no driver installed for {safe_url}: {condense(exc)}") from None
    missing = missing_sqlite_file(engine)
    if missing is not None:
        engine.dispose()
        raise TrainingDataError(f"SQLite database file {missing} does not exist ({safe_url})")
    try:
        with engine.connect() as connection:
            if table:
                if not sqlalchemy.inspect(connection).has_table(table):
                    raise TrainingDataError(f"table {table!r} does not exist in {safe_url}")
                statement = sqlalchemy.select(sqlalchemy.text("*")).select_from(sqlalchemy.table(table))
            else:
                statement = sqlalchemy.text(query)
            yield connection, statement, description
    except TrainingDataError:
        raise
    except (sa_exc.SQLAlchemyError, pd.errors.DatabaseError) as exc:
        raise TrainingDataError(f"database error for {description}: {condense(exc)}") from None
    finally:
        engine.dispose()


def missing_sqlite_file(engine: Any) -> str | None:
    """The file a SQLite URL names when it does not exist (connecting would create it empty), else None."""
    if engine.dialect.name != "sqlite":
        return None
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file:") or Path(database).exists():
        return None
    return database


def condense(exc: BaseException) -> str:
    """The first meaningful line of a library's error message, without SQLAlchemy's boilerplate."""
    original = getattr(exc, "orig", None) or exc.__cause__
    message = str(original if original is not None else exc).strip() or type(exc).__name__
    first = message.splitlines()[0].strip()
    # pandas wraps driver errors as "Execution failed on sql '...': <driver message>".
    first = re.sub(r"^Execution failed on sql .*?: (?=[^:]+$)", "", first)
    first = re.sub(r"\s*\(Background on this error at: .*\)$", "", first)
    return redact_text(first)[:300]  # drivers may echo the connection string


# ---- checks on the target column ------------------------------------------------------------
def suggest_columns(name: str, columns: list[str]) -> str:
    """' (did you mean: a, b?)' for close matches of a mistyped column name, else ''."""
    lowered = {column.lower(): column for column in columns}
    matches = difflib.get_close_matches(name.lower(), list(lowered), n=3, cutoff=0.6)
    return f" (did you mean: {', '.join(lowered[m] for m in matches)}?)" if matches else ""


def require_column(name: str, columns: list[str], what: str = "target") -> None:
    if name not in columns:
        raise TrainingDataError(
            f"{what} column {name!r} not found{suggest_columns(name, columns)}; columns are: {', '.join(columns)}"
        )
