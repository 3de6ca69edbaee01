"""A small in-process Dask cluster shared by the scoring tests, and helpers to write input tables."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from scoring.job import ScoringJob, run_job
from tests.conftest import service_settings


@pytest.fixture(scope="session")
def scheduler_address() -> Iterator[str]:
    """One worker thread in this process: the tests' jobs run through a real Dask scheduler, fast."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        yield cluster.scheduler_address


def write_parquet_parts(frame: pd.DataFrame, folder: Path, parts: int) -> Path:
    """``frame`` as ``parts`` Parquet files, every value as text (as ``python -m training generate`` writes)."""
    folder.mkdir(parents=True)
    size = -(-len(frame) // parts)
    for number in range(parts):
        chunk = frame.iloc[number * size : (number + 1) * size]
        chunk.astype(str).to_parquet(folder / f"part-{number:05d}.parquet", index=False)
    return folder


def score(models_dir: Path, data: Path | str, out: Path | str, scheduler: str, **options: Any) -> dict[str, Any]:
    job = ScoringJob(data=str(data), out=str(out), model_dir=models_dir, scheduler=scheduler, progress=False, **options)
    return run_job(job, service_settings(models_dir))


def read_scores(out: Path) -> pd.DataFrame:
    """The scored rows in input order, without the scoring time (which differs between runs)."""
    frame = pd.read_parquet(out).drop(columns="scored_at")
    return frame.sort_values(["partition", "row"]).reset_index(drop=True)
