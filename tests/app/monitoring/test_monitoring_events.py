"""Gathering many single-record events into columns (the drain's transposition) and into one batch."""

from __future__ import annotations

import numpy as np
import pytest

from app.monitoring.events import gather_columns, gather_singles, transpose
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


# ---- gathering a drain's single-record events ---------------------------------------------------------
def test_single_records_are_gathered_per_model_version_and_batches_left_alone() -> None:
    manifest = make_manifest()
    old = single_events(make_event(manifest, 5, seed=1, version="v-old"))
    new = single_events(make_event(manifest, 7, seed=2))
    batch = make_event(manifest, 30, seed=3)
    entries = [(event, 0.001 * i) for i, event in enumerate(new[:3] + old[:2] + [batch] + new[3:] + old[2:])]

    groups, rest = gather_singles(entries)

    assert rest == [entries[5]]  # the batch
    assert [group.model_version for group in groups] == [manifest.version, "v-old"]
    group = groups[0]
    assert group.prediction_ids == [event.prediction_ids[0] for event in new]
    assert group.customer_ids == [event.customer_ids[0] for event in new]
    assert group.timestamps == [event.timestamp for event in new]
    assert group.latencies == [0.0, 0.001, 0.002] + [0.001 * i for i in range(6, 10)]
    assert group.risk_bands == [event.risk_bands[0] for event in new]
    np.testing.assert_array_equal(group.scores, np.concatenate([event.scores for event in new]))
    np.testing.assert_array_equal(group.decisions, np.concatenate([event.decisions for event in new]))
    assert group.names == tuple(new[0].columns)
    assert {name: list(values) for name, values in group.columns().items()} == {
        name: [event.columns[name][0] for event in new] for name in group.names
    }


def test_a_version_whose_events_do_not_fit_is_left_to_the_event_by_event_path() -> None:
    manifest = make_manifest()
    fine = single_events(make_event(manifest, 4, seed=1))
    odd = single_events(make_event(manifest, 3, seed=2, version="v-odd"))
    odd[1].row = odd[1].row[:-1]  # one value short of its columns
    no_row = single_events(make_event(manifest, 1, seed=3, version="v-no-row"))[0]
    no_row.row = None
    entries = [(event, None) for event in [*fine, *odd, no_row]]

    groups, rest = gather_singles(entries)

    assert [group.model_version for group in groups] == [manifest.version]
    assert [event for event, _ in rest] == [no_row, *odd]
    # No request latency known (recorded outside a request): the stages' sum stands in, as for a batch.
    assert groups[0].latencies == [pytest.approx(sum(fine[0].stage_seconds.values()))] * 4
