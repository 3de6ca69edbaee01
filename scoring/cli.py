"""Command line: ``python -m scoring --data SOURCE --out DEST`` scores a whole customer table."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from training.cli import EXIT_BAD_INPUT, OneLineParser, positive_int

EXIT_FAILED = 1

DESCRIPTION = """\
Score every customer of a table with the served bundle (<model-dir>/current, or --version), on a
Dask cluster: a local one with one process per core, or an existing one (--scheduler). Records are
cleaned, encoded and scored by the service's own predictor, so a customer scores exactly as
POST /predict/batch would score it.

Output, in a Parquet directory DEST: part-NNNNN.parquet per input partition (customer_id, partition,
row, churn_probability, predicted_churn, risk_category, model_version, scored_at, top_reasons with
--reasons); _errors/ the rows that could not be scored (customer_id, partition, row, reason);
_summary.json the drift and score distribution of the scored population against the bundle's
reference. With a database URL as DEST: tables --out-table, <name>_errors and <name>_partitions.
A rerun of the same job skips the partitions already written.
"""

EXAMPLES = """\
examples:
  python -m scoring --data customers.parquet --out scores/
  python -m scoring --data sqlite:///crm.db --table customers --out sqlite:///scores.db --out-table scores
  python -m scoring --data customers.csv --out scores/ --reasons --scheduler tcp://10.0.0.5:8786

exit status: 0 scored (bad rows are in the error output); 1 the job stopped (rerun to resume); 2 unusable input
"""


def scoring_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="python -m scoring",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--data", required=True, metavar="SOURCE", help="CSV or Parquet file, Parquet directory, or database URL"
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--table", metavar="NAME", help="table to read from the database URL")
    source.add_argument(
        "--query", metavar="SQL", help="SELECT to run against the database URL (ORDER BY for resumable runs)"
    )
    parser.add_argument("--out", required=True, metavar="DEST", help="output Parquet directory, or database URL")
    parser.add_argument("--out-table", metavar="NAME", help="table to write when --out is a database URL")
    parser.add_argument(
        "--model-dir",
        type=Path,
        metavar="DIR",
        help="where bundles are (default: the service's CHURN_MODEL_DIR, models)",
    )
    parser.add_argument("--version", metavar="V", help="score with this bundle version instead of current")
    parser.add_argument("--reasons", action="store_true", help="add each customer's top reasons (slower)")
    parser.add_argument(
        "--scheduler", metavar="tcp://HOST:PORT", help="run on this Dask cluster instead of a local one"
    )
    parser.add_argument(
        "--workers", type=positive_int, metavar="N", help="local cluster processes (default: one per core)"
    )
    parser.add_argument(
        "--partition-rows",
        type=positive_int,
        default=100_000,
        metavar="N",
        help="rows per partition of a CSV or database source (default: 100000; Parquet keeps its row groups)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = scoring_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    from app.settings import Settings
    from bundle.manifest import BundleError
    from bundle.redaction import redact_text
    from scoring.job import ScoringError, ScoringJob, run_job
    from scoring.sinks import ScoringOutputError
    from scoring.summary import band_lines
    from training.data import TrainingDataError

    settings = Settings() if args.model_dir is None else Settings(model_dir=args.model_dir)
    job = ScoringJob(
        data=args.data,
        out=args.out,
        model_dir=settings.model_dir,
        version=args.version,
        table=args.table,
        query=args.query,
        out_table=args.out_table,
        reasons=args.reasons,
        scheduler=args.scheduler,
        workers=args.workers,
        partition_rows=args.partition_rows,
        progress=not args.quiet,
    )
    try:
        summary = run_job(job, settings)
    except (TrainingDataError, ScoringOutputError, BundleError) as exc:
        print(f"error: {redact_text(str(exc))}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ScoringError as exc:
        print(f"scoring stopped: {redact_text(str(exc))} (rerun to resume)", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted: the partitions written so far are kept; rerun to resume", file=sys.stderr)
        return 130
    print(f"scored      {summary['scored']:,} of {summary['rows']:,} rows with model {summary['model_version']}")
    print(f"errors      {summary['errors']:,} rows (see the error output)")
    if summary["ignored_columns"]:
        print(f"ignored     columns the model does not use: {', '.join(summary['ignored_columns'])}")
    drifting = summary["drifting_features"]
    score_psi = summary["score_distribution"]["psi"]
    print(
        f"drift       score PSI {score_psi:.4f}; drifting features: {', '.join(drifting) or 'none'}"
        if score_psi is not None
        else "drift       nothing scored"
    )
    print(f"output      {summary['destination']}")
    print("risk bands")
    bands = sorted(settings.risk_bands, key=settings.risk_bands.__getitem__)
    print("\n".join(f"  {line}" for line in band_lines(summary, bands)))
    return 0
