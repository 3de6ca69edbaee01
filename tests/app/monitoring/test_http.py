"""HTTP metrics: counted by route template, timed, in flight, server errors as 500."""

from __future__ import annotations

from fastapi.testclient import TestClient

from app.monitoring import Monitor
from tests.app.monitoring.monitoring_helpers import build_app, metric_value


def test_http_metrics_use_route_templates(client: TestClient, monitor: Monitor):
    for customer in ("42", "43", "7590-VHVEG"):
        assert client.get(f"/customers/{customer}").status_code == 200
    assert client.get("/no/such/path").status_code == 404
    assert client.post("/customers/1").status_code == 405
    text = monitor.exposition().decode()
    route = "/customers/{customer_id}"
    assert metric_value(text, "churn_http_requests_total", route=route, method="GET", status="200") == 3
    assert metric_value(text, "churn_http_request_duration_seconds_count", route=route, method="GET") == 3
    assert metric_value(text, "churn_http_requests_total", route="none", method="GET", status="404") == 1
    assert metric_value(text, "churn_http_requests_total", route=route, method="POST", status="405") == 1
    assert "7590-VHVEG" not in text and "/no/such/path" not in text
    assert metric_value(text, "churn_http_requests_in_flight") == 0


def test_in_flight_counts_the_running_request_and_errors_count_as_500(settings, monitor, manifest):
    app = build_app(settings, monitor, manifest)

    @app.get("/inside")
    def inside() -> dict[str, float | None]:
        return {"in_flight": metric_value(monitor.exposition().decode(), "churn_http_requests_in_flight")}

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("handler failure")

    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.get("/inside").json() == {"in_flight": 1.0}
        assert client.get("/boom").status_code == 500
    text = monitor.exposition().decode()
    assert metric_value(text, "churn_http_requests_total", route="/boom", method="GET", status="500") == 1
    assert metric_value(text, "churn_http_requests_in_flight") == 0


def test_methods_outside_the_standard_ones_share_one_label(client: TestClient, monitor: Monitor):
    for method in ("FOO", "BAR", "X" * 50):
        client.request(method, "/customers/42")
    text = monitor.exposition().decode()
    assert "FOO" not in text and "BAR" not in text
    total = sum(
        metric_value(text, "churn_http_requests_total", route="/customers/{customer_id}", method="other", status=status)
        or 0
        for status in ("405", "400")
    )
    assert total == 3
