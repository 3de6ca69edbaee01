"""Gathering many single-record events into columns (the drain's transposition)."""

from __future__ import annotations

from app.monitoring.events import gather_columns, transpose


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
