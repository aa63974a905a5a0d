"""Synthetic data and fast settings shared by several test modules."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.special import expit

from dmp_ml.features import FeatureSpec, FeatureTable

FAST = {"n_estimators": 80, "early_stopping_rounds": 10, "min_child_samples": 20, "n_threads": 1}
CUTOFFS = ["2026-01-01", "2026-01-31", "2026-03-02"]
# one candidate per send-time hyper-parameter: a fit without a search
ONE_SEND_TIME_CANDIDATE = {
    "prior_strength_candidates": (10.0,),
    "cohort_strength_candidates": (300.0,),
    "day_pooling_candidates": (0.3,),
    "bandwidth_candidates": (1.5,),
    "activity_weight_candidates": (2.0,),
    "sharpness_candidates": (1.0,),
}
# a crippled send-time model: every profile pulled onto a flattened population curve, so a
# plain baseline wins the guard
CRIPPLED_SEND_TIME = {
    **ONE_SEND_TIME_CANDIDATE,
    "prior_strength_candidates": (1e7,),
    "cohort_strength_candidates": (1e7,),
    "bandwidth_candidates": (12.0,),
}


def labelled_frame(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    recency = rng.exponential(30, n)
    count = rng.poisson(3, n).astype(float)
    tier = rng.choice(["gold", "silver"], n)
    wave = rng.normal(size=n)
    logit = -2 + 0.6 * np.log1p(count) - 0.03 * recency + 1.5 * np.sin(2 * wave)
    logit = logit + np.where(tier == "gold", 0.8, 0.0)
    y = (rng.random(n) < expit(logit)).astype(int)
    X = pd.DataFrame(
        {
            "days_since_last_event": recency,
            "event_count_30d": count,
            "tier": pd.Categorical(tier),
            "wave": wave,
        },
        index=pd.Index([f"p{seed}-{i}" for i in range(n)], name="profile_id", dtype="string"),
    )
    return X, y


def feature_table(X: pd.DataFrame, as_of: str) -> FeatureTable:
    spec = FeatureSpec("test", pd.Timestamp(as_of, tz="UTC"), {c: str(X[c].dtype) for c in X})
    return FeatureTable(data=X, hour_of_week=np.zeros((len(X), 168)), spec=spec)
