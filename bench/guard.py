"""The propensity guard's candidates on the validation window and on the future, side by side.

For each data set and cutoff (those of ``bench/quality.py``) the labelled snapshots are built
before the cutoff and the guard is run as ``train`` runs it. Every candidate is then also
judged on what happened after the cutoff (its final fit, on every labelled row): does the
candidate the guard picks on its one validation window do as well on the future as the best
one would have? Two more questions, per candidate baseline:

* ``*_latest``: the same baseline fitted on the most recent window only (as the benchmark's
  RFM LightGBM is) instead of the pooled snapshots, judged on the future;
* ``se_pick``: the simplest candidate within one paired-bootstrap standard error of the best
  on the validation window (single < logistic < BG/NBD < RFM LightGBM < LightGBM < blend),
  and ``earlier_pick``, the candidate the guard picks one window earlier.

    python bench/guard.py --horizon 30
    python bench/guard.py --demo 3000 --seeds 0 1 --horizon 30
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile

import numpy as np
import pandas as pd
from quality import _buyers, _resolved, _settings, add_data_arguments, data_sets

from dmp_ml import metrics
from dmp_ml.models.propensity import PropensityResult, build_snapshots, train_propensity
from dmp_ml.models.propensity.baselines import BASELINES
from dmp_ml.models.propensity.snapshots import align_features

SIMPLEST_FIRST = (
    "baseline_single",
    "baseline_rf_logreg",
    "baseline_bgnbd",
    "baseline_rfm_lightgbm",
    "model",
    "blend",
)


def _short(name: str) -> str:
    return name.removeprefix("baseline_")


def _simplest_within_se(result: PropensityResult, y: np.ndarray, draws: int = 200) -> str:
    """The simplest candidate whose validation AUC is within one paired-bootstrap standard
    error of the best's."""
    aucs = result.candidates
    pred = result.validation.predictions
    scores = {n: pred[f"p_{n}"].to_numpy() for n in SIMPLEST_FIRST if f"p_{n}" in pred}
    best = max(scores, key=lambda n: aucs[n])
    rng = np.random.default_rng(0)
    rows = [rng.integers(0, len(y), len(y)) for _ in range(draws)]

    def se(name: str) -> float:
        diffs = [
            metrics.roc_auc(y[i], scores[best][i]) - metrics.roc_auc(y[i], scores[name][i])
            for i in rows
        ]
        return float(np.std(diffs))

    return next(n for n in scores if aucs[best] - aucs[n] <= se(n))


def evaluate(
    name: str,
    events: pd.DataFrame,
    cutoff: str,
    horizon: int,
    profiles: pd.DataFrame | None = None,
    consent: pd.DataFrame | None = None,
) -> dict[str, object]:
    as_of = pd.Timestamp(cutoff, tz="UTC")
    with tempfile.TemporaryDirectory() as tmp:
        settings = _settings(tmp, horizon)
        before = events[events["event_time"] < as_of]
        snapshots, score = build_snapshots(before, as_of, settings, profiles, consent)
        result = train_propensity(snapshots, score, settings)
        end = as_of + pd.Timedelta(days=horizon)
        history = _resolved(events[events["event_time"] < end], end, settings)
    ordered = sorted(snapshots, key=lambda s: s[0].spec.as_of)
    parts = [
        (align_features(t.frame, score.frame), lab.reindex(t.frame.index).fillna(0).to_numpy())
        for t, lab in ordered
    ]
    ids = score.frame.index.astype(str)
    y = ids.isin(list(_buyers(history, as_of, horizon))).astype(int)
    model = result.model
    row: dict[str, object] = {
        "data": name,
        "cutoff": cutoff,
        "future_buyers": int(y.sum()),
        "served": _short(result.served),
        "served_future": metrics.roc_auc(y, result.scores["raw"].to_numpy()),
        "model": f"{result.candidates['model']:.3f}/"
        f"{metrics.roc_auc(y, model.booster_.predict(model._prepare(score.frame))):.3f}",
    }
    X_all = pd.concat([p[0] for p in parts])
    y_all = np.concatenate([p[1] for p in parts])
    for baseline, make in BASELINES.items():
        pooled = make(settings.propensity.target_event, horizon).fit(X_all, y_all)
        latest = make(settings.propensity.target_event, horizon).fit(*parts[-1])
        row[_short(baseline)] = (
            f"{result.candidates[baseline]:.3f}/"
            f"{metrics.roc_auc(y, pooled.predict_proba(score.frame)):.3f}"
        )
        row[f"{_short(baseline)}_latest"] = metrics.roc_auc(y, latest.predict_proba(score.frame))
    if "blend" in result.candidates:
        row["blend_valid"] = result.candidates["blend"]
    row["se_pick"] = _short(_simplest_within_se(result, result.validation.y))
    if len(snapshots) >= 3:
        row["earlier_pick"] = _short(
            train_propensity(ordered[:-1], ordered[-1][0], settings).served
        )
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_arguments(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    rows = [
        evaluate(name, events, cutoff, args.horizon, profiles, consent)
        for name, events, cutoff, profiles, consent in data_sets(args)
    ]
    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", 30)
    print(f"horizon {args.horizon} days; candidates as validation AUC / future AUC (final fit)")
    print(pd.DataFrame(rows).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
