"""Seeded synthetic customer tables, for demos, tests and monitoring drills.

``telco`` reproduces the IBM Telco customer-churn columns and value sets (including its quirks:
TotalCharges as text with blanks for brand-new customers). ``bank`` and ``subscription`` have
different columns and messier data (identifier-like and high-cardinality columns, currency text,
missing markers, a constant and a date column) so the pipeline is exercised beyond one layout.
Churn follows a logistic model of plausible drivers plus noise, so a good model reaches a
realistic, not perfect, ROC-AUC.
"""

from __future__ import annotations

import string
from collections.abc import Iterator

import numpy as np
import pandas as pd

SCHEMAS = ("telco", "bank", "subscription")

TELCO_ADDONS = ("OnlineSecurity", "OnlineBackup", "DeviceProtection", "TechSupport", "StreamingTV", "StreamingMovies")
TELCO_ADDON_RATES = (0.37, 0.44, 0.44, 0.37, 0.49, 0.50)
TELCO_CONTRACTS = ("Month-to-month", "One year", "Two year")
TELCO_PAYMENTS = ("Electronic check", "Mailed check", "Bank transfer (automatic)", "Credit card (automatic)")


def generate_customers(
    n_rows: int = 7043,
    seed: int | list[int] = 0,
    *,
    drift: float = 0.0,
    schema: str = "telco",
    concept_drift: float = 0.0,
) -> pd.DataFrame:
    """A synthetic churn table of ``n_rows`` customers.

    ``drift`` in [0, 1] moves the population toward riskier customers (telco: month-to-month
    fibre customers with higher charges and shorter tenure; the other schemas: their own
    riskier segments), for drift-detection demos. ``concept_drift`` in [0, 1] (telco only) changes
    why customers leave rather than who they are: fibre customers stay more and DSL and mailed-check
    customers leave more, long tenure protects less, so a model trained before goes stale.
    """
    if schema not in SCHEMAS:
        raise ValueError(f"unknown synthetic schema {schema!r}; choose from {', '.join(SCHEMAS)}")
    if n_rows < 1:
        raise ValueError("n_rows must be at least 1")
    if not 0.0 <= drift <= 1.0:
        raise ValueError("drift must lie in [0, 1]")
    if not 0.0 <= concept_drift <= 1.0 or (concept_drift and schema != "telco"):
        raise ValueError("concept_drift must lie in [0, 1], and only the telco schema has one")
    rng = np.random.default_rng(seed)
    if schema == "telco":
        return _telco(n_rows, rng, drift, concept_drift)
    generator = {"bank": _bank, "subscription": _subscription}[schema]
    return generator(n_rows, rng, drift)


def customer_chunks(
    n_rows: int, chunk_rows: int, seed: int = 0, *, drift: float = 0.0, schema: str = "telco"
) -> Iterator[pd.DataFrame]:
    """A table of ``n_rows`` customers as chunks of at most ``chunk_rows``, each generated on its own.

    Chunk ``i`` is seeded by ``(seed, i)``, so any table size needs one chunk's memory and the same
    arguments give the same chunks.
    """
    if chunk_rows < 1:
        raise ValueError("chunk_rows must be at least 1")
    for number, start in enumerate(range(0, n_rows, chunk_rows)):
        yield generate_customers(min(chunk_rows, n_rows - start), [seed, number], drift=drift, schema=schema)


def _churn_draw(rng: np.random.Generator, logit: np.ndarray, noise: float) -> np.ndarray:
    """Bernoulli outcomes from a logit plus unobserved noise (what no model can know)."""
    logit = logit + rng.normal(0.0, noise, size=logit.shape)
    return rng.random(logit.shape) < 1.0 / (1.0 + np.exp(-logit))


def _choice(rng: np.random.Generator, values: tuple[str, ...], probabilities: list[float], n: int) -> np.ndarray:
    p = np.asarray(probabilities, dtype=np.float64)
    return rng.choice(np.asarray(values, dtype=object), size=n, p=p / p.sum())


def _yes_no(flags: np.ndarray) -> np.ndarray:
    return np.where(flags, "Yes", "No").astype(object)


# ---- telco ----------------------------------------------------------------------------------
def _telco_ids(rng: np.random.Generator, n: int) -> list[str]:
    letters = np.asarray(list(string.ascii_uppercase))
    ids: set[str] = set()
    out: list[str] = []
    while len(out) < n:
        candidate = f"{rng.integers(0, 10000):04d}-{''.join(rng.choice(letters, 5))}"
        if candidate not in ids:
            ids.add(candidate)
            out.append(candidate)
    return out


def _telco_tenure(rng: np.random.Generator, contract: np.ndarray, drift: float) -> np.ndarray:
    # Month-to-month customers are mostly recent; two-year customers mostly long-standing.
    mean = np.select([contract == "Month-to-month", contract == "One year"], [20.0, 42.0], 58.0)
    mean = mean * (1.0 - 0.5 * drift)
    tenure = rng.gamma(shape=1.6, scale=mean / 1.6)
    tenure = np.clip(np.round(tenure), 1, 72).astype(int)
    # A handful of customers signed up this month: tenure 0 and no total charges yet.
    tenure[rng.random(len(tenure)) < 0.0016] = 0
    return tenure


def _telco(n: int, rng: np.random.Generator, drift: float, concept: float = 0.0) -> pd.DataFrame:
    gender = _choice(rng, ("Male", "Female"), [0.505, 0.495], n)
    senior = (rng.random(n) < 0.16).astype(int)
    partner = rng.random(n) < 0.48
    dependents = rng.random(n) < np.where(partner, 0.5, 0.1)
    contract = _choice(rng, TELCO_CONTRACTS, [0.55 + 0.35 * drift, 0.21 * (1 - drift), 0.24 * (1 - drift)], n)
    tenure = _telco_tenure(rng, contract, drift)
    phone = rng.random(n) < 0.90
    multiple = phone & (rng.random(n) < 0.47)
    internet = _choice(
        rng, ("DSL", "Fiber optic", "No"), [0.34 * (1 - drift), 0.44 + 0.5 * drift, 0.22 * (1 - drift)], n
    )
    has_internet = internet != "No"
    # Long-standing customers accumulate add-ons.
    addon_boost = 0.25 * (tenure / 72.0 - 0.4)
    addons = {
        name: has_internet & (rng.random(n) < np.clip(rate + addon_boost, 0.02, 0.98))
        for name, rate in zip(TELCO_ADDONS, TELCO_ADDON_RATES, strict=True)
    }
    paperless = rng.random(n) < 0.59 + 0.2 * drift
    payment = _choice(rng, TELCO_PAYMENTS, [0.34 + 0.3 * drift, 0.23, 0.22, 0.21], n)

    monthly = (
        np.where(phone, 20.0, 0.0)
        + np.where(multiple, 5.0, 0.0)
        + np.select([internet == "DSL", internet == "Fiber optic"], [25.0, 50.0], 0.0)
        + sum(np.where(addons[name], 5.0, 0.0) for name in TELCO_ADDONS[:4])
        + sum(np.where(addons[name], 10.0, 0.0) for name in TELCO_ADDONS[4:])
        + rng.normal(0.0, 2.0, n)
        + 8.0 * drift
    )
    monthly = np.round(np.clip(monthly, 18.25, 118.75), 2)
    total = tenure * monthly * rng.normal(1.0, 0.04, n)
    total_text = np.where(tenure == 0, " ", np.char.mod("%.2f", np.maximum(total, monthly)))

    logit = (
        -0.55
        + 0.95 * (contract == "Month-to-month")
        - 0.85 * (contract == "Two year")
        + 0.75 * (internet == "Fiber optic")
        - 0.55 * (internet == "No")
        + 0.45 * (payment == "Electronic check")
        - 0.045 * (tenure - 24)
        + 0.012 * (monthly - 65)
        + 0.45 * (has_internet & ~addons["TechSupport"])
        + 0.30 * (has_internet & ~addons["OnlineSecurity"])
        + 0.30 * senior
        + 0.20 * paperless
        - 0.20 * dependents
        - 2.05
    )
    # Concept drift: the same customers, other reasons to leave (a competitor's fibre offer, say).
    logit = logit + concept * (
        -1.6 * (internet == "Fiber optic")
        + 1.2 * (internet == "DSL")
        + 0.9 * (payment == "Mailed check")
        + 0.05 * (tenure - 24)
    )
    churn = _churn_draw(rng, logit, noise=0.8)

    frame = pd.DataFrame(
        {
            "customerID": _telco_ids(rng, n),
            "gender": gender,
            "SeniorCitizen": senior,
            "Partner": _yes_no(partner),
            "Dependents": _yes_no(dependents),
            "tenure": tenure,
            "PhoneService": _yes_no(phone),
            "MultipleLines": np.where(phone, _yes_no(multiple), "No phone service"),
            "InternetService": internet,
        }
    )
    for name in TELCO_ADDONS:
        frame[name] = np.where(has_internet, _yes_no(addons[name]), "No internet service")
    frame["Contract"] = contract
    frame["PaperlessBilling"] = _yes_no(paperless)
    frame["PaymentMethod"] = payment
    frame["MonthlyCharges"] = monthly
    frame["TotalCharges"] = total_text
    frame["Churn"] = _yes_no(churn)
    return frame.astype(object)


# ---- bank -----------------------------------------------------------------------------------
def _surnames(rng: np.random.Generator, count: int) -> np.ndarray:
    """Made-up surnames from syllables: thousands of distinct values, each rare."""
    starts = ["Ab", "Bel", "Car", "Dal", "Ev", "Fon", "Gar", "Hal", "Ib", "Jor", "Kel", "Lun", "Mar", "Nor", "Ol"]
    starts += ["Per", "Quin", "Ros", "Sal", "Tor", "Ul", "Val", "Wes", "Yor", "Zan"]
    middles = ["", "a", "e", "i", "o", "u", "an", "en", "er", "in", "on", "ar"]
    ends = ["by", "son", "ton", "ley", "ford", "well", "man", "ini", "ov", "ez", "er", "ard", "etti", "ins"]
    names = sorted({s + m + e for s in starts for m in middles for e in ends})
    return rng.choice(np.asarray(names, dtype=object), size=count)


def _bank(n: int, rng: np.random.Generator, drift: float) -> pd.DataFrame:
    geography = _choice(rng, ("France", "Germany", "Spain"), [0.50 * (1 - drift), 0.25 + 0.5 * drift, 0.25], n)
    gender = _choice(rng, ("Male", "Female"), [0.55, 0.45], n)
    age = np.clip(np.round(18 + rng.gamma(3.0, 7.0, n) + 10 * drift), 18, 92).astype(int)
    tenure = rng.integers(0, 11, n)
    has_balance = rng.random(n) < 0.64
    balance = np.where(has_balance, np.round(np.clip(rng.normal(120_000, 30_000, n), 3_000, 250_000), 2), 0.0)
    products = _choice(rng, ("1", "2", "3", "4"), [0.50 + 0.2 * drift, 0.46 - 0.2 * drift, 0.03, 0.01], n).astype(int)
    credit_card = (rng.random(n) < 0.70).astype(int)
    active = (rng.random(n) < 0.51 - 0.2 * drift).astype(int)
    salary = np.round(rng.uniform(11.58, 199_992.48, n), 2)
    credit_score = np.clip(np.round(rng.normal(650, 97, n)), 350, 850).astype(int)

    logit = (
        -1.55
        + 0.11 * (age - 40) * (age < 60)
        + 2.2 * (age >= 60) * np.exp(-(age - 60) / 12.0)
        + 0.75 * (geography == "Germany")
        + 0.50 * (gender == "Female")
        - 0.95 * active
        + np.select([products == 2, products >= 3], [-1.3, 2.6], 0.0)
        + 0.25 * has_balance
        - 0.0008 * (credit_score - 650)
    )
    exited = _churn_draw(rng, logit, noise=0.5).astype(int)
    return pd.DataFrame(
        {
            "RowNumber": np.arange(1, n + 1),
            "CustomerId": 15_565_701 + rng.permutation(n * 3)[:n],
            "Surname": _surnames(rng, n),
            "CreditScore": credit_score,
            "Geography": geography,
            "Gender": gender,
            "Age": age,
            "Tenure": tenure,
            "Balance": balance,
            "NumOfProducts": products,
            "HasCrCard": credit_card,
            "IsActiveMember": active,
            "EstimatedSalary": salary,
            "Exited": exited,
        }
    ).astype(object)


# ---- subscription ---------------------------------------------------------------------------
SUBSCRIPTION_PLANS = ("basic", "standard", "premium")
SUBSCRIPTION_FEES = {"basic": 9.99, "standard": 14.99, "premium": 24.99}
SUBSCRIPTION_CHANNELS = ("organic", "paid_search", "social", "referral", "partner")
COMMON_COUNTRIES = ("US", "UK", "DE", "FR", "CA", "AU")
RARE_COUNTRIES = ("NZ", "IE", "NL", "BE", "SE", "NO", "DK", "FI", "PT", "AT", "CH", "PL", "CZ", "SG", "JP", "BR", "MX")


def _subscription(n: int, rng: np.random.Generator, drift: float) -> pd.DataFrame:
    channel = _choice(rng, SUBSCRIPTION_CHANNELS, [0.35, 0.25 + 0.3 * drift, 0.2, 0.12, 0.08], n)
    plan = _choice(rng, SUBSCRIPTION_PLANS, [0.45 + 0.3 * drift, 0.35, 0.20 * (1 - drift)], n)
    discounted = rng.random(n) < 0.15
    fee = np.array([SUBSCRIPTION_FEES[p] for p in plan]) * np.where(discounted, 0.75, 1.0)
    engagement = rng.gamma(2.0, 1.0, n) * (1.0 - 0.4 * drift)  # latent: how much the customer uses the product
    sessions = rng.poisson(4.0 + 8.0 * engagement)
    minutes = np.round(rng.gamma(3.0, 4.0, n) * (0.6 + 0.2 * engagement), 1)
    tickets = rng.poisson(0.4 + 0.6 * (engagement < 0.8))
    last_login = np.clip(np.round(rng.exponential(3.0 + 12.0 / (0.3 + engagement))), 0, 365).astype(int)
    autopay = rng.random(n) < 0.62 - 0.2 * drift
    country = _choice(rng, COMMON_COUNTRIES + RARE_COUNTRIES, [0.45, 0.14, 0.1, 0.08, 0.07, 0.05] + [0.11 / 17] * 17, n)
    signup = pd.Timestamp("2022-01-01") + pd.to_timedelta(rng.integers(0, 900, n), unit="D")

    logit = (
        0.1
        - 0.85 * engagement
        + 0.35 * tickets
        + 0.035 * np.minimum(last_login, 60)
        - 0.70 * autopay
        + np.select([plan == "basic", plan == "premium"], [0.35, -0.3], 0.0)
        + 0.40 * (channel == "paid_search")
        - 0.35 * (channel == "referral")
    )
    churned = _churn_draw(rng, logit, noise=0.6)

    minutes_text = np.char.mod("%.1f", minutes).astype(object)
    minutes_text[rng.random(n) < 0.02] = "?"
    minutes_text[rng.random(n) < 0.02] = "NA"
    frame = pd.DataFrame(
        {
            "user_id": [f"u{i:07d}" for i in rng.permutation(n * 5)[:n]],
            "signup_channel": channel,
            "plan": plan,
            "monthly_fee": [f"${value:.2f}" for value in fee],
            "sessions_last_30d": sessions,
            "avg_session_minutes": minutes_text,
            "support_tickets": tickets,
            "days_since_last_login": last_login,
            "autopay": np.where(autopay, "True", "False"),
            "country": country,
            "region": "global",
            "signup_date": signup.strftime("%Y-%m-%d"),
            "churned": np.where(churned, "true", "false"),
        }
    ).astype(object)
    # Exports of this kind repeat a few rows and pad some text with spaces.
    if n >= 200:
        kept = frame.iloc[: n - n // 200]
        repeats = kept.iloc[rng.choice(len(kept), size=n // 200, replace=False)]
        frame = pd.concat([kept, repeats], ignore_index=True).iloc[rng.permutation(n)]
    padded = rng.random(len(frame)) < 0.03
    frame.loc[padded, "plan"] = [f" {value} " for value in frame.loc[padded, "plan"]]
    return frame.reset_index(drop=True)
