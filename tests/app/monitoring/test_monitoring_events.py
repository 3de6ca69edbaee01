"""Gathering many single-record events into columns (the drain's transposition) and into one batch."""

from __future__ import annotations

import numpy as np
import pytest

from app.monitoring.events import gather_columns, gather_records, single_record, transpose
from tests.app.monitoring.monitoring_helpers import make_event, make_manifest, single_events


def test_dictionaries_of_one_shape_become_one_tuple_per_key() -> None:
    records = [{"validation": 1.0, "inference": 2.0}, {"validation": 3.0, "inference": 4.0}]

    assert transpose(records) == {"validation": (1.0, 3.0), "inference": (2.0, 4.0)}
    assert transpose([]) == {}


def test_dictionaries_of_differing_shapes_are_refused() -> None:
    assert transpose([{"a": 1, "b": 2}, {"b": 2, "a": 1}]) is None  # another order
    assert transpose([{"a": 1, "b": 2}, {"a": 1}, {"a": 1, "b": 2}]) is None  # a key missing in the middle
    assert transpose([{"a": 1}, ["a"]]) is None  # not a dictionary


def test_single_record_columns_are_joined_in_event_order() -> None:
    events = [{"tenure": (1.0,), "Contract": ("One year",)}, {"tenure": [None], "Contract": ("Two year",)}]

    assert gather_columns(events) == {"tenure": [1.0, None], "Contract": ["One year", "Two year"]}


def test_events_that_are_not_single_records_are_refused() -> None:
    assert gather_columns([{"tenure": (1.0, 2.0)}, {"tenure": ()}]) is None  # counts that only add up
    assert gather_columns([{"tenure": (1.0,)}, {"tenure": 2.0}]) is None  # a value that is not a column


# ---- single records and gathering them ----------------------------------------------------------------
def records_of(events, latencies=None):
    names = tuple(events[0].columns)
    latencies = latencies if latencies is not None else [None] * len(events)
    return [single_record(event, latency, names) for event, latency in zip(events, latencies, strict=True)]


def test_a_single_record_keeps_plain_values_and_its_event_only_for_warnings() -> None:
    manifest = make_manifest()
    batch = make_event(manifest, 400, seed=1)
    singles = single_events(batch)
    records = records_of(singles, [0.001] * len(singles))
    for event, record in zip(singles, records, strict=True):
        assert (record.prediction_id, record.customer_id, record.row) == (
            event.prediction_ids[0],
            event.customer_ids[0],
            event.row,
        )
        assert type(record.score) is float and record.score == float(event.scores[0])
        assert type(record.decision) is bool and record.decision == bool(event.decisions[0])
        assert record.latency == 0.001 and record.stage_seconds is event.stage_seconds
        assert (record.warned is event) == bool(event.imputed or event.unseen)
    assert any(record.warned is not None for record in records) and any(record.warned is None for record in records)


def test_events_that_are_not_single_records_with_rows_are_refused() -> None:
    manifest = make_manifest()
    names = tuple(make_event(manifest, 1).columns)
    with pytest.raises(ValueError):
        single_record(make_event(manifest, 1), None, names)  # no row
    with pytest.raises(ValueError):
        single_record(make_event(manifest, 2), None, names)  # two records
    short = single_events(make_event(manifest, 1))[0]
    short.row = short.row[:-1]
    with pytest.raises(ValueError):
        single_record(short, None, names)
    empty = single_events(make_event(manifest, 1))[0]
    empty.risk_bands = []
    with pytest.raises(IndexError):
        single_record(empty, None, names)


def test_single_records_are_gathered_per_model_version() -> None:
    manifest = make_manifest()
    old = records_of(single_events(make_event(manifest, 5, seed=1, version="v-old")))
    new_events = single_events(make_event(manifest, 7, seed=2))
    new = records_of(new_events, [0.001 * i for i in range(7)])

    groups = gather_records(new[:3] + old[:2] + new[3:] + old[2:])

    assert [group.model_version for group in groups] == [manifest.version, "v-old"]
    group = groups[0]
    assert group.prediction_ids == [event.prediction_ids[0] for event in new_events]
    assert group.customer_ids == [event.customer_ids[0] for event in new_events]
    assert group.timestamps == [event.timestamp for event in new_events]
    assert group.latencies == [0.001 * i for i in range(7)]
    assert group.risk_bands == [event.risk_bands[0] for event in new_events]
    np.testing.assert_array_equal(group.scores, np.concatenate([event.scores for event in new_events]))
    np.testing.assert_array_equal(group.decisions, np.concatenate([event.decisions for event in new_events]))
    assert group.names == tuple(new_events[0].columns)
    assert {name: list(values) for name, values in group.columns().items()} == {
        name: [event.columns[name][0] for event in new_events] for name in group.names
    }
    # No request latency known (recorded outside a request): the stages' sum stands in, as for a batch.
    assert groups[1].latencies == [pytest.approx(sum(old[0].stage_seconds.values()))] * 5


def test_records_of_one_version_with_differing_features_are_refused() -> None:
    manifest = make_manifest()
    events = single_events(make_event(manifest, 2))
    records = [single_record(events[0], None, tuple(events[0].columns)), single_record(events[1], None, ("a",) * 4)]
    with pytest.raises(ValueError, match="name their features differently"):
        gather_records(records)
