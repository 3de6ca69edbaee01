"""``python -m training models ...``: list the bundles of a model directory and change their stages.

Exit status: 0 done; 1 refused (the message says why, nothing changed); 2 unusable arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bundle.manifest import BundleError
from bundle.registry import BundleEntry, ModelRegistry
from training.cli import OneLineParser, positive_int
from training.tracking import mirror_stage

EXIT_REFUSED = 1
RELOAD_HINT = "serve it: curl -X POST <service>/admin/reload -H 'X-API-Key: <key>' (every worker)"
DESCRIPTION = """\
List the model bundles of a model directory with their stage, and change stages. The champion is
the bundle <model-dir>/current names (what the service serves after POST /admin/reload), the
challenger the one <model-dir>/challenger names; archived bundles sit in <model-dir>/.archive/.
Every change is verified, atomic and recorded in <model-dir>/history.jsonl.
"""
EXAMPLES = """\
examples:
  python -m training models list
  python -m training models promote 20261207T101500Z-3fa2c1 --reason "better AUC on last month's labels"
  python -m training models rollback --reason "complaints about offers"
  python -m training models challenger 20261207T101500Z-3fa2c1
  python -m training models archive --keep 5 --dry-run
"""


def models_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model-dir", type=Path, default=Path("models"), metavar="DIR", help="default: models")
    common.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser = OneLineParser(
        prog="python -m training models",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    commands.add_parser("list", parents=[common], help="every bundle with its stage")
    show = commands.add_parser("show", parents=[common], help="one bundle, its files verified")
    show.add_argument("version")
    promote = commands.add_parser("promote", parents=[common], help="make a bundle the champion")
    promote.add_argument("version")
    promote.add_argument("--reason", required=True, help="why, recorded in the history")
    rollback = commands.add_parser("rollback", parents=[common], help="make the previous champion the champion")
    rollback.add_argument("--reason", required=True, help="why, recorded in the history")
    challenger = commands.add_parser("challenger", parents=[common], help="set or clear the challenger")
    target = challenger.add_mutually_exclusive_group(required=True)
    target.add_argument("version", nargs="?")
    target.add_argument("--clear", action="store_true", help="leave no challenger")
    challenger.add_argument("--reason", help="why, recorded in the history")
    archive = commands.add_parser("archive", parents=[common], help="archive or delete old bundles")
    chosen = archive.add_mutually_exclusive_group(required=True)
    chosen.add_argument("versions", nargs="*", default=[], metavar="VERSION")
    chosen.add_argument(
        "--keep",
        type=positive_int,
        metavar="N",
        help="keep the newest N bundles besides the champion, the challenger and the previous champion",
    )
    archive.add_argument("--delete", action="store_true", help="delete instead of moving to .archive/")
    archive.add_argument("--dry-run", action="store_true", help="say what would go, change nothing")
    archive.add_argument("--reason", help="why, recorded in the history")
    restore = commands.add_parser("restore", parents=[common], help="bring an archived bundle back")
    restore.add_argument("version")
    restore.add_argument("--reason", help="why, recorded in the history")
    history = commands.add_parser("history", parents=[common], help="every stage change, oldest first")
    history.add_argument("--limit", type=positive_int, metavar="N", help="only the last N changes")
    return parser


def metric(entry: BundleEntry, name: str) -> str:
    value = (entry.metrics or {}).get(name)
    return f"{value:.4f}" if isinstance(value, (int, float)) else "-"


def table(rows: list[list[str]]) -> str:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def list_text(entries: list[BundleEntry]) -> str:
    if not entries:
        return "no bundles yet: train one (python -m training)"
    header = ["VERSION", "STAGE", "FAMILY", "ROC-AUC", "PR-AUC", "F1", "FINGERPRINT", "CREATED"]
    rows = [header]
    for entry in entries:
        fingerprint = (entry.fingerprint or "-")[:12]
        family = entry.family or f"unreadable: {entry.problem}"
        scores = [metric(entry, name) for name in ("roc_auc", "pr_auc", "f1")]
        rows.append([entry.version, entry.stage or "-", family, *scores, fingerprint, entry.created_at or "-"])
    return table(rows)


def show_text(details: dict[str, Any]) -> str:
    lines = [f"{key:<12}{'-' if value is None else value}" for key, value in details.items() if key != "metrics"]
    lines.append("metrics     " + ("  ".join(f"{k} {v:.4f}" for k, v in (details["metrics"] or {}).items()) or "-"))
    return "\n".join(lines)


def history_text(events: list[dict[str, Any]]) -> str:
    if not events:
        return "no stage changes recorded yet"
    rows = [["WHEN", "ACTION", "STAGE", "VERSION", "FROM", "TO", "WHO", "REASON"]]
    for event in events:
        who = event.get("who") or {}
        rows.append(
            [str(event.get(key) or "-") for key in ("at", "action", "stage", "version", "from", "to")]
            + [f"{who.get('user', '?')}@{who.get('host', '?')} pid {who.get('pid', '?')}", event.get("reason") or "-"]
        )
    return table(rows)


def change_text(event: dict[str, Any]) -> str:
    line = f"{event['action']}: {event['stage']} {event['from'] or '-'} -> {event['to'] or '-'} ({event['version']})"
    if event["stage"] != "champion":
        return line
    if "challenger" in event.get("pointers", {}):
        line += "; it is no longer the challenger"
    return f"{line}\n{RELOAD_HINT}"


def show(registry: ModelRegistry, version: str) -> dict[str, Any]:
    entry = registry.entry(version)
    details = entry.to_dict()
    try:
        from bundle.store import verify_bundle

        verify_bundle(entry.path)
        details["verified"] = "every checksum matches"
    except BundleError as exc:
        details["verified"] = f"NO: {exc}"
    return details


def run(args: argparse.Namespace, registry: ModelRegistry) -> tuple[Any, str]:
    """The command's result as data (for --json) and as text."""
    if args.command == "list":
        entries = registry.entries()
        return [entry.to_dict() for entry in entries], list_text(entries)
    if args.command == "show":
        details = show(registry, args.version)
        return details, show_text(details)
    if args.command == "history":
        events = registry.history()[-args.limit :] if args.limit else registry.history()
        return events, history_text(events)
    if args.command == "archive":
        versions = args.versions or registry.retention_candidates(args.keep)
        if args.dry_run or not versions:
            verb = "would delete" if args.delete else "would archive"
            return {"versions": versions, "dry_run": True}, f"{verb}: {', '.join(versions) or 'nothing'}"
        events = registry.archive(versions, args.reason, delete=args.delete)
        return events, "\n".join(change_text(event) for event in events)
    if args.command == "promote":
        event = registry.promote(args.version, args.reason)
    elif args.command == "rollback":
        event = registry.rollback(args.reason)
    elif args.command == "challenger" and args.clear:
        event = registry.clear_challenger(args.reason)
    elif args.command == "challenger":
        event = registry.set_challenger(args.version, args.reason)
    else:
        event = registry.restore(args.version, args.reason)
    mirror_stage(event)  # the MLflow aliases follow, when tracking is on
    return event, change_text(event)


def main(argv: Sequence[str]) -> int:
    args = models_parser().parse_args(list(argv))
    try:
        data, text = run(args, ModelRegistry(args.model_dir))
    except BundleError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except OSError as exc:
        print(
            f"failed: {args.model_dir}: {exc.strerror or exc} (the next change finishes any it interrupted)",
            file=sys.stderr,
        )
        return EXIT_REFUSED
    print(json.dumps(data, indent=2, default=str) if args.json else text)
    return 0
