"""A scoring job on a Dask cluster: partitions in flight a few at a time, reports back, progress shown.

The client holds the bundle's bytes (sent to every worker once), the partitions' descriptions and
their small reports, never the rows of a file source. At most ``2 x worker threads`` partitions are
in flight, so a database source read by the client is streamed too.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scoring.partition import PartitionReport, PartitionTask, score_partition, scored_schema
from scoring.shipping import ScoringPolicy, pack_bundle
from scoring.sinks import open_sink
from scoring.sources import DEFAULT_PARTITION_ROWS, open_source
from scoring.summary import RunTotals, write_summary

# pyarrow's default jemalloc pool keeps a worker process alive for seconds after it is told to exit.
LOCAL_WORKER_ENV = {"ARROW_DEFAULT_MEMORY_POOL": "system"}
WORKER_WAIT_SECONDS = 60  # an existing cluster may still be starting its workers


class ScoringError(Exception):
    """The job stopped; partitions written so far stay and a rerun skips them."""


@dataclass(frozen=True)
class ScoringJob:
    data: str
    out: str
    model_dir: Path = Path("models")
    version: str | None = None
    table: str | None = None
    query: str | None = None
    out_table: str | None = None
    reasons: bool = False
    scheduler: str | None = None
    workers: int | None = None
    partition_rows: int = DEFAULT_PARTITION_ROWS
    progress: bool = True


@contextmanager
def dask_client(scheduler: str | None, workers: int | None) -> Iterator[Any]:
    """A client of the cluster at ``scheduler``, or of a local cluster of one process per core."""
    from distributed import Client, LocalCluster

    if scheduler is not None:
        with Client(scheduler, timeout="30s") as client:
            client.wait_for_workers(1, timeout=WORKER_WAIT_SECONDS)
            yield client
        return
    count = workers or os.cpu_count() or 1
    with (
        LocalCluster(
            n_workers=count, threads_per_worker=1, processes=True, dashboard_address=None, env=LOCAL_WORKER_ENV
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def run_job(job: ScoringJob, settings: Any) -> dict[str, Any]:
    """Score ``job.data`` into ``job.out``; the summary (also written beside the output)."""
    import dask

    with dask.config.set({"dataframe.convert-string": False}):
        source = open_source(job.data, table=job.table, query=job.query, partition_rows=job.partition_rows)
        sink = open_sink(job.out, job.out_table)
        bundle, manifest = pack_bundle(job.model_dir, job.version)
        signature = {
            "source": source.description,
            "model_version": manifest.version,
            "reasons": job.reasons,
            "partition_rows": job.partition_rows,
            "risk_bands": dict(settings.risk_bands),
        }
        sink.prepare(signature, scored_schema(job.reasons))
        policy = ScoringPolicy(dict(settings.risk_bands), dict(settings.playbook), settings.top_reasons)
        task = PartitionTask(policy, job.reasons, sink)
        totals = RunTotals(manifest)
        earlier = sink.written()
        for report in earlier.values():
            totals.add(report)
        if not source.all_in(set(earlier)):
            with dask_client(job.scheduler, job.workers) as client:
                run_partitions(client, source, set(earlier), bundle, task, totals, job.progress)
    summary = totals.summary(
        settings.drift_psi_threshold,
        settings.drift_min_count,
        source=source.description,
        destination=sink.describe(),
        reasons=job.reasons,
        partitions_written_before=len(earlier),
    )
    write_summary(sink.summary_path(), summary)
    return summary


def run_partitions(
    client: Any, source: Any, skip: set[int], bundle: Any, task: PartitionTask, totals: RunTotals, progress: bool
) -> None:
    from dask import delayed, is_dask_collection
    from distributed import as_completed
    from tqdm import tqdm

    shipped = client.scatter(bundle, broadcast=True)  # once per worker; tasks refer to it
    threads = sum(client.nthreads().values()) or 1
    in_flight_limit = 2 * threads
    partitions = source.partitions(skip)
    bar = tqdm(
        total=source.total_rows,
        initial=totals.rows,
        unit="rows",
        unit_scale=True,
        smoothing=0.1,
        disable=not progress,
        file=sys.stderr,
        desc="scoring",
    )

    in_flight: set[Any] = set()

    def submit() -> Any | None:
        partition = next(partitions, None)
        if partition is None:
            return None
        if is_dask_collection(partition.rows):  # read and scored in one task, where it runs
            scored = delayed(score_partition, pure=False)(partition.rows, partition.number, shipped, task)
            future = client.compute(scored)
        else:
            future = client.submit(score_partition, client.scatter(partition.rows), partition.number, shipped, task)
        in_flight.add(future)
        return future

    running = as_completed([future for future in (submit() for _ in range(in_flight_limit)) if future is not None])
    try:
        for future in running:
            try:
                report: PartitionReport = future.result()
            except Exception as exc:
                raise ScoringError(f"{type(exc).__name__}: {exc}") from exc
            in_flight.discard(future)
            future.release()
            totals.add(report)
            bar.update(report.rows)
            following = submit()
            if following is not None:
                running.add(following)
    finally:
        bar.close()
        for future in in_flight:
            future.cancel()
