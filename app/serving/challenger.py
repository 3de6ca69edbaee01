"""A challenger beside the champion: scored in the champion's shadow, or answering a canary share.

The champion is the bundle ``current`` names; the challenger the one ``challenger`` names (both
set with ``python -m training models``). How the challenger takes part is the :class:`Routing`:

- ``shadow``: a ``share`` of calls (1.0: all) is also scored by the challenger, off the caller's
  path (``app.serving.shadow``). The caller gets the champion's answer and latency alone; the
  challenger's is logged under the same prediction ids for the comparison.
- ``canary``: a ``share`` of customers gets the challenger's answer. A customer's place is a stable
  hash of their ``customer_id``, so one customer always meets the same model, in every worker and
  after restarts; a record without an id goes to the champion.
- ``off``: the challenger is not loaded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from app.serving.predictor import CUSTOMER_ID, Predictor, RecordError, build_predictor
from app.serving.response import PredictionOutcome
from app.settings import Settings
from bundle.manifest import CHALLENGER
from bundle.store import read_pointer

Mode = Literal["off", "shadow", "canary"]
MODES: tuple[str, ...] = ("off", "shadow", "canary")
_HASH_SPACE = float(2**64)


@dataclass(frozen=True)
class Routing:
    """How the challenger takes part: its mode and share (of calls in shadow, of customers in canary)."""

    mode: Mode = "off"
    share: float = 1.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if not 0.0 <= self.share <= 1.0:
            raise ValueError(f"share must lie in [0, 1], not {self.share!r}")

    @classmethod
    def from_settings(cls, settings: Settings) -> Routing:
        return cls(settings.challenger_mode, settings.challenger_share)

    def as_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "share": self.share}


def canary_position(customer_id: str) -> float:
    """Where a customer falls in [0, 1): the same for one id in every process, run and machine."""
    digest = hashlib.blake2b(customer_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _HASH_SPACE


@dataclass(frozen=True)
class Challenger:
    """A loaded, verified, warm challenger and how it takes part."""

    predictor: Predictor
    routing: Routing

    @property
    def version(self) -> str:
        return self.predictor.version

    def answers(self, record: Any) -> bool:
        """Canary: whether this parsed record's customer gets the challenger's answer."""
        if self.routing.mode != "canary" or not isinstance(record, dict):
            return False
        customer_id = record.get(CUSTOMER_ID)
        return isinstance(customer_id, str) and canary_position(customer_id) < self.routing.share

    def shadows_this_call(self) -> bool:
        """Shadow: whether this call is also scored by the challenger (a random ``share`` of calls)."""
        if self.routing.mode != "shadow":
            return False
        return self.routing.share >= 1.0 or random.random() < self.routing.share


def load_challenger(settings: Settings, routing: Routing, version: str | None = None) -> Challenger | None:
    """The challenger to serve beside the champion, or None (mode off, or none set).

    Raises BundleError with the reason when the bundle fails verification or warm-up; the caller
    keeps the champion serving alone.
    """
    if routing.mode == "off":
        return None
    version = version or read_pointer(settings.model_dir, CHALLENGER)
    return None if version is None else Challenger(build_predictor(settings, version), routing)


@dataclass(frozen=True)
class Models:
    """The models a call may meet: the champion, and the challenger when one takes part."""

    champion: Predictor
    challenger: Challenger | None = None


@dataclass(frozen=True)
class ScoredPart:
    """The records of one call that one model answered, and its outcome."""

    answered_by: Predictor
    indices: list[int]  # each record's position in the call
    records: list[Any]
    outcome: PredictionOutcome


def score_parts(models: Models, records: list[Any], explain: bool) -> list[ScoredPart]:
    """Score a call's records: the champion's part first, then the canary's, if any."""
    challenger = models.challenger
    canary = [challenger.answers(record) for record in records] if challenger is not None else []
    if not any(canary):
        outcome = models.champion.predict_records(records, explain=explain)
        return [ScoredPart(models.champion, list(range(len(records))), records, outcome)]
    parts = []
    for model, role, wanted in ((models.champion, "champion", False), (challenger.predictor, "challenger", True)):
        indices = [index for index, answered in enumerate(canary) if answered is wanted]
        if not indices:
            continue
        part = [records[index] for index in indices]
        outcome = model.predict_records(part, explain=explain)
        if outcome.event is not None:
            outcome.event.role = role
        parts.append(ScoredPart(model, indices, part, outcome))
    return parts


def merged_results(
    parts: list[ScoredPart], count: int, error_dict: Callable[[RecordError], dict[str, Any]]
) -> list[dict[str, Any]]:
    """One result per record of the call, in the call's order, whichever model answered it."""
    if len(parts) == 1:
        return parts[0].outcome.result_dicts(error_dict)
    results: list[Any] = [None] * count
    for part in parts:
        at = part.indices

        def in_call(error: RecordError, at: list[int] = at) -> dict[str, Any]:
            return error_dict(dataclasses.replace(error, index=at[error.index]))

        for position, result in enumerate(part.outcome.result_dicts(in_call)):
            results[at[position]] = result
    return results


def describe_challenger(challenger: Challenger | None, routing: Routing, error: str | None) -> dict[str, Any]:
    """How the challenger takes part, as /ready, /metadata and the admin answers show it."""
    return {
        **routing.as_dict(),
        "version": challenger.version if challenger is not None else None,
        "error": error,
    }
