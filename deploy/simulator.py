"""Traffic simulator: realistic synthetic customers sent to a running churn service at a chosen rate.

    python -m deploy.simulator --url http://127.0.0.1:8000 --rate 20 --duration 300
    python -m deploy.simulator --rate 50 --drift 0.6 --outcomes-after 30 --api-key KEY

Customers come from ``training.synthetic.generate_customers`` (the IBM Telco layout), sent without
their churn label: one per POST /predict at low rates, in POST /predict/batch calls at higher ones.
``--drift`` moves the population toward riskier customers (more month-to-month fibre customers with
higher charges and shorter tenure), which the drift panels and the ChurnFeatureDrift alert pick up.
With ``--outcomes-after`` the true outcome of every scored customer (the generated label) is posted
to POST /feedback that many seconds after its prediction, so realized ROC-AUC, precision, recall and
F1 appear. ``--invalid`` replaces a share of calls with a /predict call carrying one customer with
a broken field (answered 422). The run stops after ``--duration`` seconds or ``--requests`` calls
(or Ctrl-C) and prints a summary.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import signal
import sys
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
import numpy as np

DEFAULT_URL = "http://127.0.0.1:8000"
LABEL_COLUMN = "Churn"
API_KEY_HEADER = "X-API-Key"
# Above this many customers per second, records travel in /predict/batch calls.
SINGLE_REQUEST_MAX_RATE = 50.0
MAX_CALLS_PER_SECOND = 50.0
FEEDBACK_CHUNK = 1000
GENERATION_CHUNK = 2000


@dataclass
class SimulatorConfig:
    url: str = DEFAULT_URL
    rate: float = 20.0  # customers per second
    duration: float | None = None  # seconds; None with requests=None means until interrupted
    requests: int | None = None  # calls to /predict or /predict/batch
    drift: float = 0.0
    concept_drift: float = 0.0  # other reasons to leave: outcomes a model trained before ranks worse
    batch_size: int = 0  # records per call; 0 chooses from the rate
    outcomes_after: float | None = None  # seconds after a prediction that its outcome is posted
    api_key: str | None = None
    invalid: float = 0.0  # share of calls replaced by one broken customer sent to /predict
    seed: int = 0
    concurrency: int = 16
    timeout: float = 10.0
    wait_for_outcomes: bool = True

    def __post_init__(self) -> None:
        if self.rate <= 0:
            raise ValueError("rate must be positive")
        if not 0.0 <= self.drift <= 1.0:
            raise ValueError("drift must lie in [0, 1]")
        if not 0.0 <= self.concept_drift <= 1.0:
            raise ValueError("concept drift must lie in [0, 1]")
        if not 0.0 <= self.invalid <= 1.0:
            raise ValueError("invalid must lie in [0, 1]")
        if self.duration is not None and self.duration <= 0:
            raise ValueError("duration must be positive")
        if self.requests is not None and self.requests < 1:
            raise ValueError("requests must be at least 1")
        if self.outcomes_after is not None:
            if self.outcomes_after < 0:
                raise ValueError("outcomes-after must not be negative")
            if not self.api_key:
                raise ValueError("posting outcomes to /feedback needs --api-key")
        if self.batch_size < 0 or self.concurrency < 1:
            raise ValueError("batch-size must not be negative and concurrency must be at least 1")

    @property
    def records_per_call(self) -> int:
        if self.batch_size:
            return self.batch_size
        if self.rate <= SINGLE_REQUEST_MAX_RATE:
            return 1
        return math.ceil(self.rate / MAX_CALLS_PER_SECOND)


@dataclass
class Summary:
    url: str
    drift: float
    elapsed_seconds: float = 0.0
    calls: int = 0
    calls_by_status: dict[str, int] = field(default_factory=dict)
    transport_errors: int = 0
    customers_sent: int = 0
    customers_scored: int = 0
    customers_rejected: int = 0
    predicted_churn: int = 0
    risk_bands: dict[str, int] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)
    outcomes_posted: int = 0
    outcomes_matched: int = 0
    outcomes_unknown: int = 0
    outcomes_failed: int = 0
    outcomes_pending: int = 0

    @property
    def customers_per_second(self) -> float:
        return self.customers_sent / self.elapsed_seconds if self.elapsed_seconds else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "customers_per_second": round(self.customers_per_second, 2)}

    def text(self) -> str:
        statuses = ", ".join(f"{status}: {count}" for status, count in sorted(self.calls_by_status.items())) or "none"
        bands = ", ".join(f"{band}: {count}" for band, count in sorted(self.risk_bands.items())) or "none"
        churn_share = self.predicted_churn / self.customers_scored if self.customers_scored else 0.0
        latency = ", ".join(f"{name} {value:.1f} ms" for name, value in self.latency_ms.items()) or "n/a"
        lines = [
            f"Sent {self.customers_sent} customers in {self.calls} calls to {self.url} "
            f"over {self.elapsed_seconds:.1f} s ({self.customers_per_second:.1f} customers/s, drift {self.drift:g})",
            f"  responses: {statuses}; transport errors: {self.transport_errors}",
            f"  scored: {self.customers_scored}, rejected: {self.customers_rejected}; "
            f"predicted to churn: {self.predicted_churn} ({churn_share:.1%})",
            f"  risk bands: {bands}",
            f"  client-side latency per call: {latency}",
        ]
        if self.outcomes_posted or self.outcomes_pending or self.outcomes_failed:
            lines.append(
                f"  outcomes posted: {self.outcomes_posted} (matched {self.outcomes_matched}, "
                f"unknown {self.outcomes_unknown}, failed {self.outcomes_failed}, not yet due {self.outcomes_pending})"
            )
        return "\n".join(lines)


def customer_stream(
    seed: int, drift: float, chunk: int = GENERATION_CHUNK, concept_drift: float = 0.0
) -> Iterator[tuple[dict[str, Any], bool]]:
    """Endless (request record, churned) pairs: seeded synthetic customers, label removed from the record."""
    from training.synthetic import generate_customers

    part = 0
    while True:
        frame = generate_customers(chunk, seed=seed * 100_003 + part, drift=drift, concept_drift=concept_drift)
        labels = (frame[LABEL_COLUMN].astype(str) == "Yes").tolist()
        frame = frame.drop(columns=[LABEL_COLUMN]).astype(object)
        frame = frame.where(frame.notna(), None)
        for record, churned in zip(frame.to_dict("records"), labels, strict=True):
            yield {key: _plain(value) for key, value in record.items()}, churned
        part += 1


def _plain(value: Any) -> Any:
    """A JSON-ready Python value (numpy scalars unwrapped)."""
    return value.item() if isinstance(value, np.generic) else value


def spoil(record: dict[str, Any]) -> dict[str, Any]:
    """A copy with one value no schema accepts (a number field holding words)."""
    spoilt = dict(record)
    spoilt["tenure"] = "not a number"
    return spoilt


class Simulator:
    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.summary = Summary(url=config.url, drift=config.drift)
        self._customers = customer_stream(config.seed, config.drift, concept_drift=config.concept_drift)
        self._rng = np.random.default_rng(config.seed + 7)
        self._statuses: Counter[str] = Counter()
        self._bands: Counter[str] = Counter()
        self._latencies: list[float] = []
        self._outcomes: deque[tuple[float, str, bool]] = deque()
        self._stop = asyncio.Event()
        self._sending_done = False

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> Summary:
        config = self.config
        per_call = config.records_per_call
        interval = per_call / config.rate
        limits = httpx.Limits(max_connections=config.concurrency, max_keepalive_connections=config.concurrency)
        started = time.monotonic()
        async with httpx.AsyncClient(base_url=config.url, timeout=config.timeout, limits=limits) as client:
            feedback = asyncio.create_task(self._post_outcomes(client)) if config.outcomes_after is not None else None
            slots = asyncio.Semaphore(config.concurrency)
            in_flight: set[asyncio.Task[None]] = set()
            call = 0
            while not self._stop.is_set():
                due = started + call * interval
                if config.duration is not None and due - started >= config.duration:
                    break
                if config.requests is not None and call >= config.requests:
                    break
                delay = due - time.monotonic()
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), delay)
                    if self._stop.is_set():
                        break
                await slots.acquire()  # a slow service slows the simulator down rather than piling up calls
                task = asyncio.create_task(self._send(client, per_call))
                task.add_done_callback(lambda _: slots.release())
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
                call += 1
            if in_flight:
                await asyncio.gather(*in_flight)
            self._sending_done = True
            if feedback is not None:
                await feedback
        self.summary.elapsed_seconds = time.monotonic() - started
        self._finish()
        return self.summary

    async def _send(self, client: httpx.AsyncClient, count: int) -> None:
        if self.config.invalid and self._rng.random() < self.config.invalid:
            # This call sends one customer with a broken field to /predict instead, which answers 422.
            record, _ = next(self._customers)
            await self._call(client, "/predict", spoil(record), [])
            return
        pairs = [next(self._customers) for _ in range(count)]
        if len(pairs) == 1 and not self.config.batch_size:
            await self._call(client, "/predict", pairs[0][0], pairs)
        else:
            await self._call(client, "/predict/batch", [record for record, _ in pairs], pairs)

    async def _call(self, client: httpx.AsyncClient, path: str, body: Any, pairs: list[tuple[dict, bool]]) -> None:
        count = len(body) if isinstance(body, list) else 1
        self.summary.customers_sent += count
        self.summary.calls += 1
        sent_at = time.monotonic()
        try:
            response = await client.post(path, json=body)
        except httpx.HTTPError:
            self.summary.transport_errors += 1
            return
        self._latencies.append((time.monotonic() - sent_at) * 1000.0)
        self._statuses[str(response.status_code)] += 1
        if response.status_code != 200:
            self.summary.customers_rejected += count
            return
        payload = response.json()
        results = payload["results"] if isinstance(body, list) else [payload]
        for result, (_, churned) in zip(results, pairs, strict=True):
            if "prediction_id" not in result:
                self.summary.customers_rejected += 1
                continue
            self.summary.customers_scored += 1
            self.summary.predicted_churn += bool(result.get("predicted_churn"))
            self._bands[str(result.get("risk_category"))] += 1
            if self.config.outcomes_after is not None:
                self._outcomes.append((time.monotonic() + self.config.outcomes_after, result["prediction_id"], churned))

    async def _post_outcomes(self, client: httpx.AsyncClient) -> None:
        headers = {API_KEY_HEADER: self.config.api_key or ""}
        while True:
            sending_over = self._sending_done or self._stop.is_set()
            if sending_over and (not self._outcomes or not self.config.wait_for_outcomes or self._stop.is_set()):
                return
            now = time.monotonic()
            due: list[tuple[str, bool]] = []
            while self._outcomes and self._outcomes[0][0] <= now and len(due) < FEEDBACK_CHUNK:
                _, prediction_id, churned = self._outcomes.popleft()
                due.append((prediction_id, churned))
            if not due:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), 0.25)
                continue
            body = {"outcomes": [{"prediction_id": pid, "churned": churned} for pid, churned in due]}
            try:
                response = await client.post("/feedback", json=body, headers=headers)
            except httpx.HTTPError:
                self.summary.outcomes_failed += len(due)
                continue
            if response.status_code != 200:
                self.summary.outcomes_failed += len(due)
                continue
            result = response.json()
            self.summary.outcomes_posted += len(due)
            self.summary.outcomes_matched += len(result.get("matched", [])) + len(result.get("updated", []))
            self.summary.outcomes_unknown += len(result.get("unknown", []))

    def _finish(self) -> None:
        summary = self.summary
        summary.calls_by_status = dict(self._statuses)
        summary.risk_bands = dict(self._bands)
        summary.outcomes_pending = len(self._outcomes)
        if self._latencies:
            values = np.asarray(self._latencies)
            summary.latency_ms = {f"p{q}": round(float(np.percentile(values, q)), 2) for q in (50, 95, 99)} | {
                "max": round(float(values.max()), 2)
            }


def parse_args(argv: list[str] | None = None) -> tuple[SimulatorConfig, bool]:
    """The simulator settings, and whether to print the summary as JSON."""
    parser = argparse.ArgumentParser(
        prog="python -m deploy.simulator", description="Send synthetic customers to a running churn service."
    )
    parser.add_argument("--url", default=DEFAULT_URL, help=f"base URL of the service (default {DEFAULT_URL})")
    parser.add_argument("--rate", type=float, default=20.0, help="customers per second (default 20)")
    parser.add_argument("--duration", type=float, help="stop after this many seconds")
    parser.add_argument("--requests", type=int, help="stop after this many calls")
    parser.add_argument("--drift", type=float, default=0.0, help="0 = training population, 1 = strongly drifted")
    parser.add_argument(
        "--concept-drift", type=float, default=0.0, help="0 = the reasons to leave of training, 1 = strongly changed"
    )
    parser.add_argument(
        "--batch-size", type=int, default=0, help="records per call; 0 = one per /predict up to 50/s, else batches"
    )
    parser.add_argument("--outcomes-after", type=float, help="post true outcomes to /feedback after this many seconds")
    parser.add_argument("--api-key", help="API key for /feedback (X-API-Key)")
    parser.add_argument("--invalid", type=float, default=0.0, help="share of calls with a broken customer (422)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic customers")
    parser.add_argument("--concurrency", type=int, default=16, help="most calls in flight at once")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per call")
    parser.add_argument(
        "--no-wait-outcomes", action="store_true", help="stop when sending stops, without posting outcomes not yet due"
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)
    try:
        config = SimulatorConfig(
            url=args.url.rstrip("/"),
            rate=args.rate,
            duration=args.duration,
            requests=args.requests,
            drift=args.drift,
            concept_drift=args.concept_drift,
            batch_size=args.batch_size,
            outcomes_after=args.outcomes_after,
            api_key=args.api_key,
            invalid=args.invalid,
            seed=args.seed,
            concurrency=args.concurrency,
            timeout=args.timeout,
            wait_for_outcomes=not args.no_wait_outcomes,
        )
    except ValueError as exc:
        parser.error(str(exc))
    return config, args.json


async def _main(config: SimulatorConfig) -> Summary:
    simulator = Simulator(config)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, simulator.stop)
    return await simulator.run()


def main(argv: list[str] | None = None) -> int:
    config, as_json = parse_args(argv)
    summary = asyncio.run(_main(config))
    if as_json:
        print(json.dumps(summary.to_dict(), indent=2))
    else:
        print(summary.text())
    return 0 if summary.customers_scored or not summary.calls else 1


if __name__ == "__main__":
    sys.exit(main())
