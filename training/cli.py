"""Command line: ``python -m training [options]`` trains and publishes a bundle;
``python -m training generate ...`` writes a synthetic customer table;
``python -m training models ...`` lists bundles and changes their stages (:mod:`training.models_cli`);
``python -m training retrain ...`` retrains from the prediction log (:mod:`training.retrain_cli`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.config import ALL_FAMILIES, THRESHOLD_STRATEGIES, TrainingConfig

if TYPE_CHECKING:  # the pipeline imports the ML libraries: only load it when training
    from training.pipeline import TrainingResult

EXIT_BAD_INPUT = 2
EXIT_TRAINING_FAILED = 1

TRAIN_DESCRIPTION = """\
Train churn models on a customer table and publish the best one as a verified bundle
<model-dir>/<version>/ (model, manifest with the feature schema, checksums, report), then point
<model-dir>/current at it. Without --data, trains on a built-in synthetic Telco-like table.

Every family's default is cross-validated on the development rows (all but a 20% test split); the
families near the best are tuned, a soft vote is kept when it is ahead out of fold, calibration and
threshold are fitted on out-of-fold scores, the test split is scored once by the chosen model fitted
without it, and the published model is refitted on every labelled row.

Column roles are inferred (target, churn value, customer id, numeric / yes-no / categorical
features; constant, all-missing, identifier-like, high-cardinality and date columns are dropped)
and every decision is listed in the report. Override with --target, --positive-label, --id-column.
"""

TRAIN_EXAMPLES = """\
examples:
  python -m training --data customers.csv --target Churn
  python -m training --data sqlite:///crm.db --table customers --models xgboost,lightgbm --time-budget 60
  python -m training --data customers.parquet --threshold-strategy max_profit --offer-cost 20 --saved-value 300
  python -m training --data customers.csv --as-challenger
  python -m training generate --schema bank --rows 10000 --out bank.csv
  python -m training models list
  python -m training retrain --database-url sqlite:///predictions.sqlite3 --promote-if-better

exit status: 0 published; 1 every model family failed or the bundle did not verify; 2 unusable input
"""


def bounded_number(parse: Callable[[str], Any], kind: str, minimum: float, *, inclusive: bool) -> Callable[[str], Any]:
    """An argparse type that reads a number and refuses values below (or at) ``minimum``, and NaN."""
    bound = f"at least {minimum:g}" if inclusive else f"greater than {minimum:g}"

    def read(text: str) -> Any:
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
        if not (value >= minimum if inclusive else value > minimum):  # written so NaN fails too
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value

    return read


positive_int = bounded_number(int, "a whole number", 1, inclusive=True)
positive_float = bounded_number(float, "a number", 0, inclusive=False)
non_negative_float = bounded_number(float, "a number", 0, inclusive=True)


def model_list(text: str) -> tuple[str, ...]:
    families = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [family for family in families if family not in ALL_FAMILIES]
    if unknown or not families:
        raise argparse.ArgumentTypeError(
            f"unknown model family {unknown[0] if unknown else text!r}; choose from {','.join(ALL_FAMILIES)}"
        )
    return families


def column_list(text: str) -> tuple[str, ...]:
    columns = tuple(part.strip() for part in text.split(",") if part.strip())
    if not columns:
        raise argparse.ArgumentTypeError(f"expected comma-separated column names, got {text!r}")
    return columns


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports usage errors in one line (exit 2) instead of the usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


def training_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="python -m training",
        description=TRAIN_DESCRIPTION,
        epilog=TRAIN_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    data = parser.add_argument_group("data")
    data.add_argument("--data", metavar="SOURCE", help="CSV or Parquet file, or a database URL (sqlite:///x.db)")
    source = data.add_mutually_exclusive_group()
    source.add_argument("--table", metavar="NAME", help="table to read from the database URL")
    source.add_argument("--query", metavar="SQL", help="SELECT to run against the database URL")
    data.add_argument("--target", metavar="COLUMN", help="churn column (default: inferred, e.g. Churn, Exited)")
    data.add_argument("--positive-label", metavar="VALUE", help="value meaning 'churned' (default: inferred)")
    data.add_argument("--id-column", metavar="COLUMN", help="customer id column (default: inferred)")
    data.add_argument(
        "--required",
        type=column_list,
        default=(),
        metavar="COL,...",
        help="features a scored record must include (default: none; missing values are imputed with a warning)",
    )
    models = parser.add_argument_group("models")
    models.add_argument(
        "--models",
        type=model_list,
        default=ALL_FAMILIES,
        metavar="LIST",
        help=f"comma-separated families to compare (default: all: {','.join(ALL_FAMILIES)})",
    )
    models.add_argument("--trials", type=positive_int, metavar="N", help="tuning trials per family")
    models.add_argument(
        "--time-budget",
        type=positive_float,
        metavar="SECONDS",
        help="total tuning time shared across the families that get tuned, after every family's default is "
        "cross-validated once (default: about 90 s plus per-family trial caps)",
    )
    models.add_argument("--seed", type=int, default=42, help="random seed (default: 42)")
    decision = parser.add_argument_group("decision threshold")
    decision.add_argument(
        "--threshold-strategy",
        choices=THRESHOLD_STRATEGIES,
        default="max_f1",
        help="max_f1 (default) or max_profit (needs --offer-cost and --saved-value)",
    )
    decision.add_argument("--offer-cost", type=non_negative_float, metavar="AMOUNT", help="cost of one retention offer")
    decision.add_argument(
        "--saved-value", type=positive_float, metavar="AMOUNT", help="value of keeping a customer who would churn"
    )
    output = parser.add_argument_group("output")
    output.add_argument(
        "--model-dir", type=Path, default=Path("models"), metavar="DIR", help="where bundles go (default: models)"
    )
    staging = output.add_mutually_exclusive_group()
    staging.add_argument("--no-current", action="store_true", help="publish without making the bundle current")
    staging.add_argument(
        "--as-challenger", action="store_true", help="publish as the challenger; the champion (current) stays"
    )
    output.add_argument("--no-report", action="store_true", help="skip the report and plots")
    output.add_argument(
        "--mlflow",
        action="store_true",
        help="log the run, its metrics and the bundle to MLflow and register it (also on with MLFLOW_TRACKING_URI; "
        "needs requirements-mlflow.txt)",
    )
    output.add_argument("--quiet", action="store_true", help="print only the final summary")
    return parser


def generate_parser() -> argparse.ArgumentParser:
    from training.synthetic import SCHEMAS

    parser = OneLineParser(
        prog="python -m training generate",
        description="Write a seeded synthetic customer table (CSV or Parquet, by the file suffix), or with "
        "--partition-rows a directory of Parquet files generated one partition at a time.",
    )
    parser.add_argument("--schema", choices=SCHEMAS, default="telco", help="column layout (default: telco)")
    parser.add_argument("--rows", type=positive_int, default=7043, help="number of customers (default: 7043)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument(
        "--drift", type=float, default=0.0, help="0..1: shift the population toward riskier customers (default: 0)"
    )
    parser.add_argument("--out", type=Path, required=True, metavar="FILE", help="output .csv or .parquet file")
    parser.add_argument(
        "--partition-rows",
        type=positive_int,
        metavar="N",
        help="write --out as a directory of Parquet files of N rows each (part-00000.parquet ...), for "
        "tables larger than memory",
    )
    return parser


def config_from_args(args: argparse.Namespace) -> TrainingConfig:
    return TrainingConfig(
        data=args.data,
        table=args.table,
        query=args.query,
        target=args.target,
        positive_label=args.positive_label,
        id_column=args.id_column,
        required=args.required,
        model_dir=args.model_dir,
        models=args.models,
        trials=args.trials,
        time_budget=args.time_budget,
        seed=args.seed,
        threshold_strategy=args.threshold_strategy,
        offer_cost=args.offer_cost,
        saved_value=args.saved_value,
        make_current=not (args.no_current or args.as_challenger),
        as_challenger=args.as_challenger,
        mlflow=args.mlflow,
        report=not args.no_report,
        progress=not args.quiet,
    )


def metric_text(metrics: dict, name: str) -> str:
    value = metrics.get(name)
    return f"{value:.4f}" if isinstance(value, (int, float)) else "n/a"


def summary_lines(result: TrainingResult) -> list[str]:
    manifest = result.manifest
    metrics = manifest.metrics
    winner = next(row for row in result.leaderboard if row["family"] == manifest.model_family)
    test = "  ".join(
        f"{label} {metric_text(metrics, name)}"
        for label, name in (("ROC-AUC", "roc_auc"), ("PR-AUC", "pr_auc"), ("F1", "f1"), ("ECE", "ece"))
    )
    lines = [
        f"bundle      {result.bundle_dir}",
        f"version     {manifest.version}",
        f"winner      {manifest.model_family} (CV ROC-AUC {winner['cv_roc_auc']:.4f} "
        f"± {winner['cv_roc_auc_std']:.4f} over {winner['cv_fits']} fits)",
        f"test        {test} (model fitted without the test split; the published one uses every row)",
        f"threshold   {manifest.threshold:.4f} ({manifest.threshold_strategy}), "
        f"calibration {manifest.calibration.method}",
    ]
    failed = [row["family"] for row in result.leaderboard if row.get("status") == "failed"]
    if failed:
        lines.append(f"failed      {', '.join(failed)} (see the leaderboard in the report)")
    if result.report_path is not None:
        lines.append(f"report      {result.report_path}")
    return lines


def failure_status(exc: Exception, bundle_failed: str) -> int:
    """A failed training run's exit status, its reason on stderr (a data URL's password left out)."""
    from bundle.redaction import redact_text
    from training.data import TrainingDataError

    reason = redact_text(str(exc))
    if isinstance(exc, TrainingDataError):
        print(f"error: {reason}", file=sys.stderr)
        return EXIT_BAD_INPUT
    from training.pipeline import TrainingError

    label = "training failed" if isinstance(exc, TrainingError) else bundle_failed
    print(f"{label}: {reason}", file=sys.stderr)
    return EXIT_TRAINING_FAILED


def train(argv: Sequence[str]) -> int:
    args = training_parser().parse_args(list(argv))
    config = config_from_args(args)
    from training.tracking import MLFLOW_INSTALL, tracking_available

    if config.mlflow and not tracking_available():  # before hours of training, not after
        print(f"error: --mlflow needs MLflow, which is not installed: {MLFLOW_INSTALL}", file=sys.stderr)
        return EXIT_BAD_INPUT
    from bundle.manifest import BundleError
    from training.data import TrainingDataError
    from training.pipeline import TrainingError, run_training

    try:
        result = run_training(config)
    except (TrainingDataError, TrainingError, BundleError) as exc:
        return failure_status(exc, bundle_failed="publishing failed, nothing was published")
    except KeyboardInterrupt:
        print("interrupted: nothing was published", file=sys.stderr)
        return 130
    print("\n".join(summary_lines(result)))
    if config.as_challenger:
        print("stage       challenger; the champion is unchanged (python -m training models --help)")
    return 0


def generate(argv: Sequence[str]) -> int:
    args = generate_parser().parse_args(list(argv))
    from training.synthetic import generate_customers

    if not 0.0 <= args.drift <= 1.0:
        print("error: --drift must lie in [0, 1]", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.partition_rows is not None:
        return generate_partitioned(args)
    suffix = args.out.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        print(f"error: --out must end in .csv or .parquet, got {args.out.name!r}", file=sys.stderr)
        return EXIT_BAD_INPUT
    frame = generate_customers(args.rows, args.seed, drift=args.drift, schema=args.schema)
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        if suffix == ".csv":
            frame.to_csv(args.out, index=False)
        else:
            frame.astype(str).to_parquet(args.out, index=False)
    except OSError as exc:
        print(f"error: cannot write {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"wrote {len(frame)} rows x {frame.shape[1]} columns ({args.schema} schema) to {args.out}")
    return 0


def generate_partitioned(args: argparse.Namespace) -> int:
    """The table as ``--out/part-NNNNN.parquet``, one generated chunk in memory at a time."""
    from training.synthetic import customer_chunks

    chunks = customer_chunks(args.rows, args.partition_rows, args.seed, drift=args.drift, schema=args.schema)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        for stale in args.out.glob("part-*.parquet"):
            stale.unlink()
        for number, chunk in enumerate(chunks):
            chunk.astype(str).to_parquet(args.out / f"part-{number:05d}.parquet", index=False)
    except OSError as exc:
        print(f"error: cannot write {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"wrote {args.rows} rows in {number + 1} Parquet files ({args.schema} schema) to {args.out}/")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments and arguments[0] == "generate":
        return generate(arguments[1:])
    if arguments and arguments[0] == "models":
        from training.models_cli import main as models

        return models(arguments[1:])
    if arguments and arguments[0] == "retrain":
        from training.retrain_cli import main as retrain

        return retrain(arguments[1:])
    return train(arguments)
