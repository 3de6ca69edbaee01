"""The churn tables of the quality benchmark, each written to a CSV the way a business would export it.

``telco`` is the real IBM Telco file. The bank tables start from the training package's own
``bank`` generator (``python -m training generate``) and add the export quirks it lacks
(duplicated rows, blank cells, ``?`` markers, numbers as text). The other shapes are generated
here: churn follows non-linear effects with interactions and unobserved noise, so a good model
reaches a realistic ROC-AUC and different model families really differ.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parent.parent
TELCO_CSV = REPO.parent / "shared" / "data" / "telco" / "WA_Fn-UseC_-Telco-Customer-Churn.csv"

# The 50 states and DC.
STATE_CODES = (
    "AK AL AR AZ CA CO CT DC DE FL GA HI IA ID IL IN KS KY LA MA MD ME MI MN MO MS "
    "MT NC ND NE NH NJ NM NV NY OH OK OR PA RI SC SD TN TX UT VA VT WA WI WV WY"
)
US_STATES = STATE_CODES.split()


@dataclass(frozen=True)
class Table:
    """A benchmark table: how to build it, its churn column and the columns a data scientist drops as ids."""

    name: str
    description: str
    target: str
    positive: str  # the churn value as written in the CSV
    id_columns: tuple[str, ...]
    rows: int
    quick_rows: int
    build: Callable[[int, int, Path], pd.DataFrame | None]  # (rows, seed, workdir) -> table, None when unavailable

    def write(self, out: Path, seed: int, *, quick: bool = False) -> Path | None:
        """Write the table to ``out`` (CSV); None when its source is absent."""
        frame = self.build(self.quick_rows if quick else self.rows, seed, out.parent)
        if frame is None:
            return None
        out.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(out, index=False)
        return out


def read_exported(path: Path) -> pd.DataFrame:
    """A CSV exactly as exported: every cell as its text, blanks as empty strings."""
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _logistic_draw(rng: np.random.Generator, logit: np.ndarray, noise: float) -> np.ndarray:
    logit = logit + rng.normal(0.0, noise, logit.shape)
    return rng.random(logit.shape) < 1.0 / (1.0 + np.exp(-logit))


def _centred(logit: np.ndarray, churn_rate: float) -> np.ndarray:
    """Shift a logit so about ``churn_rate`` of customers churn (before noise)."""
    return logit - np.quantile(logit, 1.0 - churn_rate)


# ---- telco (real file) ------------------------------------------------------------------------
def telco(rows: int, seed: int, workdir: Path) -> pd.DataFrame | None:
    if not TELCO_CSV.exists():
        return None
    frame = read_exported(TELCO_CSV)
    return frame if rows >= len(frame) else frame.sample(n=rows, random_state=seed)


# ---- telecom usage ----------------------------------------------------------------------------
def telecom_usage(rows: int, seed: int, workdir: Path) -> pd.DataFrame:
    """Call-usage table: minutes, calls and charges (exact linear functions of minutes) per period."""
    rng = np.random.default_rng(seed)
    state = rng.choice(US_STATES, rows)
    international = rng.random(rows) < 0.10
    voice_mail = rng.random(rows) < 0.27
    usage = {}
    for period, (mean_minutes, sd, rate, calls) in {
        "day": (180.0, 54.0, 0.17, 100),
        "eve": (200.0, 50.0, 0.085, 100),
        "night": (200.0, 50.0, 0.045, 100),
        "intl": (10.0, 2.8, 0.27, 4),
    }.items():
        minutes = np.round(np.clip(rng.normal(mean_minutes, sd, rows), 0, None), 1)
        usage[f"total_{period}_minutes"] = minutes
        usage[f"total_{period}_calls"] = rng.poisson(calls, rows)
        usage[f"total_{period}_charge"] = np.round(minutes * rate, 2)
    service_calls = rng.poisson(1.5, rows)
    vmail_messages = np.where(voice_mail, rng.poisson(29, rows), 0)
    risky_states = set(rng.choice(US_STATES, 6, replace=False))

    day = usage["total_day_minutes"]
    intl = usage["total_intl_minutes"]
    logit = (
        2.6 * (service_calls >= 4) * (1.0 - 0.006 * np.clip(day - 150, 0, 100))  # complaints weigh less for heavy users
        + 2.4 * (day > 245) * np.clip((day - 245) / 40, 0, 1.5)
        + 0.010 * (usage["total_eve_minutes"] - 200) * (day > 215)
        + international * (0.9 + 1.6 * (intl > 13) + 0.35 * (usage["total_intl_calls"] < 3))
        - 0.9 * voice_mail
        + 0.5 * np.isin(state, list(risky_states))
    )
    churn = _logistic_draw(rng, 1.6 * _centred(logit, 0.12) - 1.0, noise=0.5)
    frame = pd.DataFrame(
        {
            "state": state,
            "account_length": np.clip(rng.normal(101, 40, rows).round(), 1, 243).astype(int),
            "area_code": rng.choice([408, 415, 510], rows, p=[0.25, 0.5, 0.25]),
            "phone_number": [
                f"{a}-{b:04d}" for a, b in zip(rng.integers(327, 423, rows), rng.integers(0, 10000, rows), strict=True)
            ],
            "international_plan": np.where(international, "yes", "no"),
            "voice_mail_plan": np.where(voice_mail, "yes", "no"),
            "number_vmail_messages": vmail_messages,
            **usage,
            "customer_service_calls": service_calls,
            "churn": np.where(churn, "True", "False"),
        }
    )
    return frame


# ---- bank tables (from the training package's generator, with export quirks added) ----------------
def generated(schema: str, rows: int, seed: int, workdir: Path) -> pd.DataFrame:
    """A table from ``python -m training generate``, read back as exported text."""
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / f"generated-{schema}-{rows}-{seed}.csv"
    command = [sys.executable, "-m", "training", "generate", "--schema", schema]
    command += ["--rows", str(rows), "--seed", str(seed), "--out", str(out)]
    subprocess.run(command, cwd=REPO, check=True, capture_output=True, text=True)
    frame = read_exported(out)
    out.unlink()
    return frame


def bank_blanks(rows: int, seed: int, workdir: Path) -> pd.DataFrame:
    """Bank customers with about 2% exactly duplicated rows and blank cells in a few columns."""
    rng = np.random.default_rng(seed + 1000)
    frame = generated("bank", rows, seed, workdir)
    repeats = frame.iloc[rng.choice(len(frame), size=len(frame) // 50, replace=False)]
    frame = pd.concat([frame.iloc[: len(frame) - len(repeats)], repeats], ignore_index=True)
    frame = frame.iloc[rng.permutation(len(frame))].reset_index(drop=True)
    for column, share in (("Geography", 0.03), ("Age", 0.04), ("Balance", 0.05), ("EstimatedSalary", 0.02)):
        frame.loc[rng.random(len(frame)) < share, column] = ""
    return frame


def bank_markers(rows: int, seed: int, workdir: Path) -> pd.DataFrame:
    """Bank customers with ``?`` for missing values and numbers written as text (decimals, flags as 1.0/0.0)."""
    rng = np.random.default_rng(seed + 2000)
    frame = generated("bank", rows, seed, workdir)
    frame["Balance"] = [f"{float(value):.2f}" for value in frame["Balance"]]
    for column in ("HasCrCard", "IsActiveMember", "Tenure"):
        frame[column] = [f"{float(value):.1f}" for value in frame[column]]
    for column, share in (("Geography", 0.03), ("Age", 0.05), ("CreditScore", 0.04), ("Balance", 0.04)):
        frame.loc[rng.random(len(frame)) < share, column] = "?"
    return frame


# ---- many-level categoricals ----------------------------------------------------------------------
def _zipf_choice(rng: np.random.Generator, levels: np.ndarray, rows: int, exponent: float) -> np.ndarray:
    weights = 1.0 / np.arange(1, len(levels) + 1) ** exponent
    return rng.choice(levels, rows, p=weights / weights.sum())


def many_levels(rows: int, seed: int, workdir: Path) -> pd.DataFrame:
    """Retail accounts with product codes (800 levels), cities (300) and sales reps (120), plus a few numerics."""
    rng = np.random.default_rng(seed)
    families = np.array(list("ABCDEFGHJK"))
    products = np.array([f"{families[i % 10]}-{1000 + i}" for i in range(800)])
    cities = np.array([f"City-{i:03d}" for i in range(300)])
    reps = np.array([f"rep{i:03d}" for i in range(120)])
    product = _zipf_choice(rng, rng.permutation(products), rows, 0.9)
    city = _zipf_choice(rng, rng.permutation(cities), rows, 0.8)
    rep = rng.choice(reps, rows)
    plan = rng.choice(["monthly", "quarterly", "annual"], rows, p=[0.55, 0.2, 0.25])
    family_effect = dict(zip(families, rng.normal(0, 0.7, len(families)), strict=True))
    city_effect = dict(zip(cities, rng.normal(0, 0.5, len(cities)), strict=True))
    rep_effect = dict(zip(reps, rng.normal(0, 0.3, len(reps)), strict=True))

    tenure = np.clip(rng.gamma(1.5, 14, rows).round(), 1, 120).astype(int)
    spend = np.round(rng.lognormal(3.6, 0.6, rows), 2)
    orders = rng.poisson(np.clip(spend / 15, 0.2, None))
    returns = rng.binomial(orders, 0.08)
    days_since = np.clip(rng.exponential(25, rows).round(), 0, 365).astype(int)
    discount = np.round(rng.beta(1.2, 8, rows), 3)

    logit = (
        np.array([family_effect[p[0]] for p in product])
        + np.array([city_effect[c] for c in city])
        + np.array([rep_effect[r] for r in rep])
        + 1.4 * (days_since > 45)
        - 0.6 * np.log1p(tenure) * (plan != "monthly")
        + 0.9 * (returns >= 2) * (plan == "monthly")
        - 0.25 * np.log1p(orders)
        + 2.0 * discount * (spend < 30)
    )
    churn = _logistic_draw(rng, _centred(logit, 0.22) - 0.5, noise=0.8)
    return pd.DataFrame(
        {
            "account_id": [f"AC{i:08d}" for i in rng.permutation(rows * 10)[:rows]],
            "product_code": product,
            "city": city,
            "sales_rep": rep,
            "plan": plan,
            "tenure_months": tenure,
            "monthly_spend": spend,
            "orders_90d": orders,
            "returns_90d": returns,
            "days_since_last_order": days_since,
            "discount_rate": discount,
            "churned": churn.astype(int),
        }
    )


# ---- small table, weak signal ---------------------------------------------------------------------
def small_weak(rows: int, seed: int, workdir: Path) -> pd.DataFrame:
    """A gym-membership table where churn is mostly noise: a good model reaches a modest ROC-AUC."""
    rng = np.random.default_rng(seed)
    age = np.clip(rng.normal(38, 11, rows).round(), 16, 80).astype(int)
    visits = rng.poisson(6, rows)
    months = np.clip(rng.gamma(2, 8, rows).round(), 1, 96).astype(int)
    membership = rng.choice(["basic", "plus", "family"], rows, p=[0.5, 0.3, 0.2])
    classes = rng.random(rows) < 0.35
    distance = np.round(rng.gamma(2, 3, rows), 1)
    logit = (
        -0.08 * np.minimum(visits, 10)
        + 0.05 * distance * (visits < 5)
        - 0.3 * classes
        + 0.25 * (membership == "basic") * (months < 12)
        - 0.006 * (age - 38)
    )
    churn = _logistic_draw(rng, 2.0 * _centred(logit, 0.3) - 0.6, noise=1.0)
    return pd.DataFrame(
        {
            "member_id": [f"M{i:06d}" for i in rng.permutation(rows * 3)[:rows]],
            "age": age,
            "gender": rng.choice(["F", "M"], rows),
            "membership": membership,
            "months_member": months,
            "visits_last_month": visits,
            "group_classes": np.where(classes, "Y", "N"),
            "distance_km": distance,
            "churned": np.where(churn, "yes", "no"),
        }
    )


TABLES: dict[str, Table] = {
    table.name: table
    for table in (
        Table("telco", "IBM Telco customer churn (real)", "Churn", "Yes", ("customerID",), 7043, 3000, telco),
        Table(
            "telecom_usage",
            "call usage: 51 states, charges linear in minutes, service-call threshold",
            "churn",
            "True",
            ("phone_number",),
            5000,
            2000,
            telecom_usage,
        ),
        Table(
            "bank_blanks",
            "bank: ~2% duplicated rows, blank cells, 1/0 target",
            "Exited",
            "1",
            ("RowNumber", "CustomerId", "Surname"),
            10_000,
            3000,
            bank_blanks,
        ),
        Table(
            "bank_markers",
            "bank: '?' for missing, numbers as text",
            "Exited",
            "1",
            ("RowNumber", "CustomerId", "Surname"),
            10_000,
            3000,
            bank_markers,
        ),
        Table(
            "many_levels",
            "retail: categoricals with 120-800 levels",
            "churned",
            "1",
            ("account_id",),
            30_000,
            5000,
            many_levels,
        ),
        Table(
            "small_weak",
            "gym membership: 2,000 rows, weak signal",
            "churned",
            "yes",
            ("member_id",),
            2000,
            1000,
            small_weak,
        ),
    )
}
