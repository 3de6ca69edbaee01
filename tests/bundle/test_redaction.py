"""Passwords are masked in database URLs, free text, nested data and log records."""

from __future__ import annotations

import logging
import sys

import pytest

from bundle.redaction import RedactSecrets, redact_data, redact_text, redact_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql+psycopg://churn:s3cret@db:5432/crm", "postgresql+psycopg://churn:***@db:5432/crm"),
        ("postgresql://churn@db/crm?sslmode=require&password=s3cret", "postgresql://churn@db/crm?sslmode=require"),
        ("mysql://churn:s3cret@db/crm?api_key=s3cret&charset=utf8", "mysql://churn:***@db/crm?charset=utf8"),
        ("postgresql://churn:s3c@ret@db/crm", "postgresql://churn:***@db/crm"),
        ("sqlite:////data/predictions.sqlite3", "sqlite:////data/predictions.sqlite3"),
        ("postgresql://u:s3cret@db:notaport/crm", "postgresql://..."),
    ],
)
def test_redact_url_masks_the_password_and_drops_secret_parameters(url, expected):
    assert redact_url(url) == expected


@pytest.mark.parametrize(
    "text",
    [
        "cannot connect to postgresql://churn:s3cret@db/crm: connection refused",
        "host=db user=churn password=s3cret dbname=crm",
        "sslpassword: 's3cret' rejected",
        "token=s3cret&x=1",
        "https://user:s3cret@example.com/customers.csv does not exist",
    ],
)
def test_redact_text_masks_every_password_it_finds(text):
    redacted = redact_text(text)
    assert "s3cret" not in redacted and "***" in redacted


def test_redact_text_leaves_ordinary_text_alone():
    text = "bundle 20260101T000000Z-abcdef loaded from /app/models in 0.21 s; passengers: 3"
    assert redact_text(text) == text


def test_redact_data_walks_nested_values():
    data = {"data": {"source": "postgresql://u:s3cret@db/crm table customers", "rows": 10}, "tags": ["pwd=s3cret"]}
    redacted = redact_data(data)
    assert "s3cret" not in repr(redacted)
    assert redacted["data"]["rows"] == 10


def test_the_log_filter_masks_messages_and_tracebacks():
    def record_of(exc_info) -> logging.LogRecord:
        record = logging.LogRecord(
            "app", logging.ERROR, __file__, 1, "store %s failed", ("mysql://u:s3cret@h/db",), exc_info
        )
        assert RedactSecrets().filter(record)
        return record

    plain = record_of(None)
    assert plain.getMessage() == "store mysql://u:***@h/db failed"
    try:
        raise ConnectionError("postgresql://u:s3cret@db/crm unreachable")
    except ConnectionError:
        failed = record_of(sys.exc_info())
    assert "s3cret" not in logging.Formatter().format(failed)
    assert "postgresql://u:***@db/crm unreachable" in failed.exc_text
