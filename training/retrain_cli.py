"""``python -m training retrain``: retrain from the prediction log and compare with the champion."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from training.cli import (
    OneLineParser,
    failure_status,
    model_list,
    non_negative_float,
    positive_float,
    positive_int,
)
from training.config import ALL_FAMILIES, THRESHOLD_STRATEGIES, TrainingConfig

EXIT_SKIPPED = 3

DESCRIPTION = """\
Retrain from what the service saw. The training table is the prediction log's labelled predictions
(the outcomes received through /feedback) known at the cut-off: predictions made before it, with an
outcome received and last corrected before it. Each customer counts once, by their latest labelled
prediction. With --data the original table is appended; a customer in both keeps the log's row.

The most recent labelled customers (--holdout-share, or --holdout-days) are held out: the new model
never trains on them, and both it and the champion score them through the service's own predictor
(ROC-AUC, PR-AUC, F1 at each model's threshold, and a paired bootstrap of the ROC-AUC difference).

The new bundle is published as the challenger. With --promote-if-better it becomes the champion only
when the verdict is 'better': the 95% bootstrap interval of (new - champion) ROC-AUC on the holdout
lies above zero. A report goes to <model-dir>/retrain-reports/<version>.json.
"""

EXAMPLES = """\
examples:
  python -m training retrain --database-url sqlite:///predictions.sqlite3
  python -m training retrain --database-url postgresql://churn@db/churn --data customers.csv --promote-if-better
  python -m training retrain --database-url sqlite:///predictions.sqlite3 --cutoff 2026-11-30 --holdout-days 14
  python -m training retrain --database-url sqlite:///predictions.sqlite3 --if-due 24 --promote-if-better

Only one retraining of a model directory runs at a time: a second one is skipped (exit 3) at once.

exit status: 0 published; 1 training failed or the bundle did not verify; 2 unusable input or too few
labels; 3 skipped (another retraining is running, or --if-due and the last one is too recent)
"""


def share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must lie strictly between 0 and 1, got {text}")
    return value


def moment(text: str) -> float:
    """An ISO 8601 time (UTC when no offset is given) as UNIX seconds."""
    try:
        parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an ISO time such as 2026-11-30T00:00:00Z, got {text!r}") from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def retrain_parser() -> argparse.ArgumentParser:
    from training.retrain import DEFAULT_HOLDOUT_SHARE, DEFAULT_MIN_LABELS

    parser = OneLineParser(
        prog="python -m training retrain",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    data = parser.add_argument_group("data")
    data.add_argument("--database-url", required=True, metavar="URL", help="the prediction log (the service's)")
    data.add_argument("--data", metavar="SOURCE", help="original table to append: CSV, Parquet or a database URL")
    source = data.add_mutually_exclusive_group()
    source.add_argument("--table", metavar="NAME", help="table of --data when it is a database URL")
    source.add_argument("--query", metavar="SQL", help="SELECT for --data when it is a database URL")
    data.add_argument(
        "--cutoff", type=moment, metavar="ISO_TIME", help="only what was known at this time (default: now)"
    )
    data.add_argument(
        "--min-labels",
        type=positive_int,
        default=DEFAULT_MIN_LABELS,
        metavar="N",
        help=f"refuse with fewer labelled customers in the log (default: {DEFAULT_MIN_LABELS})",
    )
    holdout = data.add_mutually_exclusive_group()
    holdout.add_argument(
        "--holdout-days", type=positive_float, metavar="N", help="hold out the last N days of labelled predictions"
    )
    holdout.add_argument(
        "--holdout-share",
        type=share,
        default=DEFAULT_HOLDOUT_SHARE,
        metavar="S",
        help=f"hold out this share of the labelled customers, the most recent (default: {DEFAULT_HOLDOUT_SHARE})",
    )
    models = parser.add_argument_group("training")
    models.add_argument(
        "--models", type=model_list, default=ALL_FAMILIES, metavar="LIST", help="families to compare (default: all)"
    )
    models.add_argument("--trials", type=positive_int, metavar="N", help="tuning trials per family")
    models.add_argument("--time-budget", type=positive_float, metavar="SECONDS", help="total tuning time")
    models.add_argument("--seed", type=int, default=42, help="random seed (default: 42)")
    models.add_argument("--threshold-strategy", choices=THRESHOLD_STRATEGIES, default="max_f1")
    models.add_argument("--offer-cost", type=non_negative_float, metavar="AMOUNT")
    models.add_argument("--saved-value", type=positive_float, metavar="AMOUNT")
    output = parser.add_argument_group("output")
    output.add_argument("--model-dir", type=Path, default=Path("models"), metavar="DIR", help="default: models")
    output.add_argument(
        "--promote-if-better",
        action="store_true",
        help="make the new bundle the champion when the verdict is 'better' (the ROC-AUC interval lies above zero)",
    )
    output.add_argument(
        "--if-due",
        type=positive_float,
        metavar="HOURS",
        help="skip (exit 3) unless the last retraining of this model directory finished at least HOURS ago",
    )
    output.add_argument("--no-report", action="store_true", help="skip the training report and plots")
    output.add_argument("--quiet", action="store_true", help="print only the final summary")
    return parser


def main(argv: Sequence[str]) -> int:
    args = retrain_parser().parse_args(list(argv))
    from bundle.manifest import BundleError
    from training.data import TrainingDataError
    from training.pipeline import TrainingError
    from training.retrain import RetrainConfig, run_retrain
    from training.retrain_lock import RetrainSkipped
    from training.retrain_report import summary_lines

    config = RetrainConfig(
        database_url=args.database_url,
        model_dir=args.model_dir,
        data=args.data,
        cutoff=args.cutoff,
        holdout_days=args.holdout_days,
        holdout_share=args.holdout_share,
        min_labels=args.min_labels,
        promote_if_better=args.promote_if_better,
        cool_down_hours=args.if_due,
        training=TrainingConfig(
            table=args.table,
            query=args.query,
            models=args.models,
            trials=args.trials,
            time_budget=args.time_budget,
            seed=args.seed,
            threshold_strategy=args.threshold_strategy,
            offer_cost=args.offer_cost,
            saved_value=args.saved_value,
            report=not args.no_report,
            progress=not args.quiet,
        ),
    )
    try:
        result = run_retrain(config)
    except RetrainSkipped as exc:
        print(f"skipped: {exc}", file=sys.stderr)
        return EXIT_SKIPPED
    except (TrainingDataError, TrainingError, BundleError) as exc:
        return failure_status(exc, bundle_failed="bundle error")
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print("\n".join(summary_lines(result.report, result.report_path, result.bundle_dir)))
    return 0
