"""Served models against the plain baselines a data scientist writes in an afternoon.

For each data set and cutoff the bundle is trained on the events before the cutoff only; every
figure is measured on what happened after it, the same events and cutoff for every contender:

* **propensity** ROC-AUC of "does the target event happen within the horizon", over every
  profile the bundle scores: the served score against recency, frequency, and one plain
  LightGBM on plain recency/frequency/value features (fitted one horizon earlier, on the
  window just before the cutoff, so it too never sees the evaluation period);
* **send time**: the hour of a profile's first engagement in the week after the cutoff, hit
  within +-1 h (hour of day, UTC): the served ``send_at`` against the profile's most frequent
  past hour and the population's most frequent hour;
* **lookalike**: half the profiles that do the target event within the horizon seed an
  audience as large as the other half; precision = share of that audience in the other half.
  The served lookalike against centroid similarity and a plain positive-unlabelled LightGBM on
  the bundle's own features, and the base rate (a random audience).

Under the table, one line per run: the propensity guard's candidates on its held-out window
(as ``train`` reports them), what it chose, and what the saved bundle serves.

    python bench/quality.py                      # Online Retail, three cutoffs, 90 days
    python bench/quality.py --horizon 30
    python bench/quality.py --demo 3000 --seeds 0 1
    python bench/quality.py --retail-demo 3000
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

import dmp_ml
from dmp_ml.settings import MAPPINGS_DIR, Settings, load_settings

HERE = Path(__file__).resolve().parent
RETAIL = HERE.parent.parent / "shared" / "data" / "online_retail" / "online_retail.parquet"
TARGET = "purchase"
ENGAGEMENT = ("email_open", "email_click", "page_view", "product_view", "add_to_cart", "purchase")


def _settings(tmp: str, horizon: int) -> Settings:
    settings = load_settings(workdir=Path(tmp), mlflow_tracking_uri=f"sqlite:///{tmp}/mlflow.db")
    propensity = settings.propensity.model_copy(
        update={"horizon_days": horizon, "target_event": TARGET}
    )
    return settings.model_copy(update={"propensity": propensity})


def _resolved(events: pd.DataFrame, until: pd.Timestamp, settings: Settings) -> pd.DataFrame:
    """Events before ``until`` keyed by their resolved profile (identity as the bundle does)."""
    frame = dmp_ml.resolve_identity(events, until, settings.features).events
    return frame.assign(profile_id=frame["profile_id"].astype(str))


def _plain_features(history: pd.DataFrame, at: pd.Timestamp) -> pd.DataFrame:
    """Recency, frequency and value per profile from plain pandas, as of ``at``."""
    past = history[history["event_time"] < at]
    days = (at - past["event_time"]).dt.total_seconds() / 86400
    buys = (past["event_type"] == TARGET).astype("float64")
    value = pd.to_numeric(past.get("value"), errors="coerce") if "value" in past else None
    frame = pd.DataFrame(
        {
            "recency": days.groupby(past["profile_id"]).min(),
            "tenure": days.groupby(past["profile_id"]).max(),
            "events": past.groupby("profile_id").size(),
            "buys": buys.groupby(past["profile_id"]).sum(),
            "buys_90d": (buys * (days < 90)).groupby(past["profile_id"]).sum(),
            "buys_30d": (buys * (days < 30)).groupby(past["profile_id"]).sum(),
            "buy_recency": days.where(buys > 0).groupby(past["profile_id"]).min(),
        }
    )
    if value is not None:
        frame["value"] = value.where(buys > 0).groupby(past["profile_id"]).sum()
    return frame.astype("float64")


def _buyers(history: pd.DataFrame, start: pd.Timestamp, days: int) -> set[str]:
    window = history[
        (history["event_time"] >= start)
        & (history["event_time"] < start + pd.Timedelta(days=days))
        & (history["event_type"] == TARGET)
    ]
    return set(window["profile_id"])


def _filled(score: pd.Series) -> np.ndarray:
    """Scores with the unscored (NaN) ranked below every scored profile."""
    return score.fillna(score.min() - 1 if score.notna().any() else 0.0).to_numpy()


def _auc(y: np.ndarray, score: pd.Series) -> float:
    return float(roc_auc_score(y, _filled(score))) if 0 < y.sum() < len(y) else float("nan")


def paired_auc_se(y: np.ndarray, a: pd.Series, b: pd.Series, draws: int = 200) -> float:
    """Standard error of ROC-AUC(a) - ROC-AUC(b) over a paired bootstrap of the profiles."""
    rng = np.random.default_rng(0)
    sa, sb = _filled(a), _filled(b)
    diffs = []
    for _ in range(draws):
        i = rng.integers(0, len(y), len(y))
        if 0 < y[i].sum() < len(i):
            diffs.append(roc_auc_score(y[i], sa[i]) - roc_auc_score(y[i], sb[i]))
    return float(np.std(diffs))


def propensity_scores(
    bundle: dmp_ml.ModelBundle, history: pd.DataFrame, cutoff: pd.Timestamp, horizon: int
) -> tuple[np.ndarray, dict[str, pd.Series]]:
    """Who does the target event within the horizon after ``cutoff`` (0/1 per scored profile)
    and every contender's scores for the same profiles: ``served``, then the baselines."""
    scored = bundle.score().frame.set_index("profile_id")["score"]
    ids = scored.index.astype(str)
    y = ids.isin(list(_buyers(history, cutoff, horizon))).astype(int)
    now = _plain_features(history, cutoff).reindex(ids)
    earlier = cutoff - pd.Timedelta(days=horizon)
    train = _plain_features(history, earlier)
    label = train.index.isin(list(_buyers(history, earlier, horizon))).astype(int)
    scores = {
        "served": pd.Series(scored.to_numpy(), index=ids),
        "recency": -now["recency"],
        "frequency": now["buys"],
    }
    if 0 < label.sum() < len(label):
        model = lgb.LGBMClassifier(n_estimators=200, learning_rate=0.05, num_leaves=15, verbose=-1)
        model.fit(train, label)
        scores["rfm_lightgbm"] = pd.Series(model.predict_proba(now)[:, 1], index=ids)
    return y, scores


def propensity_rows(
    bundle: dmp_ml.ModelBundle, history: pd.DataFrame, cutoff: pd.Timestamp, horizon: int
) -> dict[str, float]:
    """Each contender's ROC-AUC and ``se``, the paired standard error of served minus the best
    baseline."""
    y, scores = propensity_scores(bundle, history, cutoff, horizon)
    aucs = {name: _auc(y, s) for name, s in scores.items()}
    best = max((n for n in aucs if n != "served"), key=lambda n: np.nan_to_num(aucs[n], nan=-1))
    return {
        "positives": float(y.sum()),
        "profiles": float(len(y)),
        **aucs,
        "se": paired_auc_se(y, scores["served"], scores[best]),
    }


def _hits(predicted: pd.Series, actual: pd.Series) -> pd.Series:
    """1.0 where the predicted hour is within +-1 h of the actual one, per profile of
    ``actual`` (NaN where nothing was predicted)."""
    p = predicted.reindex(actual.index)
    diff = (p - actual).abs() % 24
    return (np.minimum(diff, 24 - diff) <= 1).astype("float64").where(p.notna())


def send_time_rows(
    bundle: dmp_ml.ModelBundle, history: pd.DataFrame, cutoff: pd.Timestamp
) -> dict[str, float]:
    engaged = history[history["event_type"].isin(ENGAGEMENT)]
    week = engaged[
        (engaged["event_time"] >= cutoff) & (engaged["event_time"] < cutoff + pd.Timedelta(days=7))
    ]
    ids = pd.Index(bundle.features.frame.index.astype(str))
    first = week[week["profile_id"].isin(ids)].sort_values("event_time")
    actual = first.groupby("profile_id")["event_time"].first().dt.hour
    if actual.empty:
        return {}
    answer = bundle.send_time(actual.index.tolist(), window_start=cutoff, window_hours=168).frame
    served = pd.Series(
        pd.to_datetime(answer["send_at"], utc=True).dt.hour.to_numpy(),
        index=answer["profile_id"].astype(str),
    )
    past = engaged[engaged["event_time"] < cutoff]
    hours = past["event_time"].dt.hour
    global_hour = int(hours.mode().iloc[0]) if len(hours) else 12
    own = hours.groupby(past["profile_id"]).agg(lambda h: h.mode().iloc[0])
    hits = {
        "served": _hits(served, actual),
        "profile_mode_hour": _hits(own.reindex(actual.index).fillna(global_hour), actual),
        "global_hour": _hits(pd.Series(global_hour, index=actual.index), actual),
    }
    best = max(("profile_mode_hour", "global_hour"), key=lambda n: hits[n].mean())
    paired = (hits["served"] - hits[best]).dropna()
    return {
        "profiles": float(len(actual)),
        **{name: float(h.mean()) for name, h in hits.items()},
        "se": float(paired.std() / np.sqrt(max(1, len(paired)))),
    }


def lookalike_rows(
    bundle: dmp_ml.ModelBundle, history: pd.DataFrame, cutoff: pd.Timestamp, horizon: int
) -> dict[str, float]:
    table = bundle.features.frame
    ids = pd.Index(table.index.astype(str))
    future = sorted(set(ids) & _buyers(history, cutoff, horizon))
    rng = np.random.default_rng(0)
    rng.shuffle(future)
    half = len(future) // 2
    seeds, held = future[:half], set(future[half:])
    size = min(len(held), len(ids) - len(seeds))
    if half < 10 or size < 10:
        return {}
    served = bundle.lookalike(seeds, size=size).frame["profile_id"].astype(str)
    numeric = table.select_dtypes("number").astype(float)
    z = (numeric - numeric.mean()) / numeric.std().replace(0, 1)
    z = z.fillna(0.0).set_axis(ids)
    candidates = z.drop(index=seeds)
    centroid = z.loc[seeds].mean()
    norms = np.linalg.norm(candidates.to_numpy(), axis=1) * np.linalg.norm(centroid) + 1e-12
    cosine = pd.Series(candidates.to_numpy() @ centroid.to_numpy() / norms, index=candidates.index)
    sample = candidates.sample(min(len(candidates), 20 * len(seeds)), random_state=0)
    X = pd.concat([numeric.set_axis(ids).loc[seeds], numeric.set_axis(ids).loc[sample.index]])
    y = np.r_[np.ones(len(seeds)), np.zeros(len(sample))]
    pu = lgb.LGBMClassifier(n_estimators=200, learning_rate=0.05, num_leaves=15, verbose=-1)
    pu.fit(X, y)
    pu_score = pd.Series(
        pu.predict_proba(numeric.set_axis(ids).loc[candidates.index])[:, 1], index=candidates.index
    )

    chosen = {
        "served": pd.Index(served),
        "centroid": cosine.nlargest(size).index,
        "pu_lightgbm": pu_score.nlargest(size).index,
    }
    precision = {name: float(c.isin(list(held)).mean()) for name, c in chosen.items()}
    best = max(("centroid", "pu_lightgbm"), key=lambda n: precision[n])
    # paired: only the future buyers one audience has and the other lacks make a difference
    differ = chosen["served"].symmetric_difference(chosen[best]).isin(list(held)).sum()
    return {
        "seeds": float(len(seeds)),
        "audience": float(size),
        **precision,
        "random": len(held) / max(1, len(ids) - len(seeds)),
        "se": float(np.sqrt(differ) / size),
    }


def _guard_line(result: dmp_ml.TrainResult, bundle: dmp_ml.ModelBundle) -> str:
    """The propensity guard's held-out comparison and what the loaded bundle serves."""
    step = result.steps.get("propensity")
    model = bundle.propensity
    if step is None or step.status != "trained" or model is None:
        return "propensity not trained"
    serves = model.served
    if serves == "blend":
        serves += f" of model and {model.blend_.baseline}"
    agrees = "" if model.served == step.details["served"] else " (NOT what the guard chose)"
    return f"{step.details['comparison']}; the bundle serves {serves}{agrees}"


def evaluate(
    name: str,
    events: pd.DataFrame | Path,
    cutoff: str,
    horizon: int,
    mapping: Path | None = None,
    profiles: pd.DataFrame | None = None,
    consent: pd.DataFrame | None = None,
) -> tuple[list[dict[str, object]], str]:
    """The table's rows for one data set and cutoff, and its guard line."""
    as_of = pd.Timestamp(cutoff, tz="UTC")
    frame = (
        dmp_ml.load_events(events, mapping=mapping).frame if isinstance(events, Path) else events
    )
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        settings = _settings(tmp, horizon)
        before = frame[frame["event_time"] < as_of]
        started = time.perf_counter()
        result = dmp_ml.train(
            before, as_of, tmp, profiles=profiles, consent=consent, settings=settings
        )
        seconds = time.perf_counter() - started
        bundle = dmp_ml.load_bundle(result.bundle_path)
        guard = f"{name} {cutoff}: {_guard_line(result, bundle)}"
        end = as_of + pd.Timedelta(days=horizon)
        history = _resolved(frame[frame["event_time"] < end], end, settings)
        for model, measure in (
            ("propensity AUC", lambda: propensity_rows(bundle, history, as_of, horizon)),
            ("send time hit +-1h", lambda: send_time_rows(bundle, history, as_of)),
            ("lookalike precision", lambda: lookalike_rows(bundle, history, as_of, horizon)),
        ):
            step = model.split()[0].replace("send", "send_time")
            status = result.steps[step].status if step in result.steps else "trained"
            figures = measure() if status == "trained" else {}
            if not figures:
                rows.append({"data": name, "cutoff": cutoff, "model": model, "note": status})
                continue
            contenders = {
                k: v
                for k, v in figures.items()
                if k not in ("positives", "profiles", "seeds", "audience", "random", "se")
            }
            baselines = {k: v for k, v in contenders.items() if k != "served"}
            best = max(baselines, key=lambda k: -np.inf if np.isnan(baselines[k]) else baselines[k])
            rows.append(
                {
                    "data": name,
                    "cutoff": cutoff,
                    "model": model,
                    **{k: round(v, 3) for k, v in figures.items()},
                    "best_baseline": best,
                    "served_minus_best": round(figures["served"] - baselines[best], 3),
                    "train_s": round(seconds, 1),
                }
            )
    return rows, guard


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """The data sets, cutoffs and horizon to judge on (shared with ``bench/guard.py``)."""
    parser.add_argument("--events", type=Path, default=RETAIL)
    parser.add_argument("--cutoffs", nargs="+", default=None)
    parser.add_argument("--horizon", type=int, default=90)
    parser.add_argument("--demo", type=int, metavar="N", help="demo worlds of N profiles")
    parser.add_argument("--retail-demo", type=int, metavar="N", help="sparse retail demo worlds")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])


Run = tuple[str, pd.DataFrame, str, pd.DataFrame | None, pd.DataFrame | None]


def data_sets(args: argparse.Namespace) -> Iterator[Run]:
    """(name, events, cutoff, profiles, consent) for every data set and cutoff asked for."""
    if args.demo or args.retail_demo:
        from dmp_ml.demo import generate_retail_world

        for seed in args.seeds:
            if args.demo:
                world = dmp_ml.generate_demo_world(n_profiles=args.demo, days=150, seed=seed)
                name = f"demo {args.demo} seed {seed}"
            else:
                world = generate_retail_world(args.retail_demo, seed=seed)
                name = f"retail demo {args.retail_demo} seed {seed}"
            end = world.events["event_time"].max().floor("D")
            for cutoff in args.cutoffs or [str((end - pd.Timedelta(days=args.horizon)).date())]:
                yield name, world.events, cutoff, world.profiles, world.consent
    else:
        mapping = MAPPINGS_DIR / "online_retail.yaml"
        frame = dmp_ml.load_events(args.events, mapping=mapping).frame
        for cutoff in args.cutoffs or ["2011-06-01", "2011-09-01", "2011-10-01"]:
            yield args.events.stem, frame, cutoff, None, None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_arguments(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows: list[dict[str, object]] = []
    guards: list[str] = []
    for name, events, cutoff, profiles, consent in data_sets(args):
        run, guard = evaluate(
            name, events, cutoff, args.horizon, profiles=profiles, consent=consent
        )
        rows += run
        guards.append(guard)
    table = pd.DataFrame(rows)
    pd.set_option("display.width", 250)
    print(f"horizon {args.horizon} days; every figure on events after the cutoff")
    print(table.to_string(index=False))
    print("\n".join(guards))
    return 0


if __name__ == "__main__":
    sys.exit(main())
