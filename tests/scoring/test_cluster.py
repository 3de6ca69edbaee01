"""The command on a separately started Dask cluster: ``dask scheduler`` and ``dask worker`` on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import synthetic_customers
from tests.scoring.conftest import write_parquet_parts

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 60


@pytest.fixture
def dask_cluster(tmp_path: Path) -> Iterator[str]:
    """A scheduler and one single-threaded worker, as separate processes; yields the scheduler address."""
    scheduler_file = tmp_path / "scheduler.json"
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    common = ["--no-dashboard", "--host", "127.0.0.1", "--scheduler-file", str(scheduler_file)]
    scheduler = subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_scheduler", "--port", "0", *common],
        cwd=tmp_path,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    processes = [scheduler]
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not scheduler_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        worker = subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_worker", "--nthreads", "1", "--nworkers", "1", *common],
            cwd=tmp_path,
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        processes.append(worker)
        yield json.loads(scheduler_file.read_text())["address"]
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_the_command_runs_on_an_existing_cluster(linear_models_dir: Path, dask_cluster: str, tmp_path: Path) -> None:
    table = synthetic_customers(n_rows=40, seed=8)
    data = write_parquet_parts(table, tmp_path / "data", parts=2)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "scoring", "--data", str(data), "--out", str(out), "--quiet"]
    command += ["--model-dir", str(linear_models_dir), "--scheduler", dask_cluster]

    finished = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)

    assert finished.returncode == 0, finished.stderr[-2000:]
    assert "scored      40 of 40 rows" in finished.stdout
    assert "risk bands" in finished.stdout
    assert len(pd.read_parquet(out)) == len(table)
    assert sorted(path.name for path in out.glob("part-*.parquet")) == ["part-00000.parquet", "part-00001.parquet"]


def test_unusable_input_exits_2_with_the_reason(linear_models_dir: Path, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "scoring", "--data", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "o")]
    finished = subprocess.run(
        [*command, "--model-dir", str(linear_models_dir)], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert finished.returncode == 2
    assert "missing.csv does not exist" in finished.stderr
