"""What a lookalike audience is likely worth, and why the seed is a seed.

- Expected quality: expand from part of the seed and count how much of the held-out rest comes
  back within the audience size (recall, lift over random, AUC against the population).
- Distinguishing features: the features whose seed distribution differs significantly from
  the population's, in words.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

import numpy as np

from dmp_ml.models.lookalike.audience import PUClassifiers, SeedPlan, fit_ranker, seeded_rng

if TYPE_CHECKING:
    from dmp_ml.models.lookalike.model import LookalikeModel


SWITCH_SE = 1.0
"""A simpler candidate serves when its held-out recall is within this many standard errors of
the best one's (the one-standard-error rule)."""


def holdout_quality(
    model: LookalikeModel,
    plan: SeedPlan,
    sizes: list[int],
    rerank: bool,
    weight: float,
    method: str = "hybrid",
    classifiers: PUClassifiers | None = None,
) -> list[dict[str, Any]]:
    """Expand from part of the seed and count how much of the held-out rest comes back.

    Every ``method`` (see :data:`.audience.CANDIDATES`) is judged on the same splits. The seed
    is shuffled once and cut into ``holdout_folds`` disjoint held-out parts of
    ``holdout_fraction`` each (fewer when the seed is too small); each part is held out in
    turn while the rest expands, and the figures pool every held-out seed (AUC: mean over
    parts). One part of a few dozen seeds moves recall by several points by chance.
    ``classifiers`` is shared as in :func:`.audience.fit_ranker` (keyed by rows, so per part).

    A held-out seed counts as recovered at size v when fewer than v available profiles
    score above it. Up to ``holdout_sample`` available profiles that count is exact;
    beyond, it is estimated from a uniform sample of ``holdout_sample`` of them (no full
    ranking needed). The sample starts from the ranker's reference sample (itself uniform
    over the same profiles, and already scored), topped up with uniform draws of the rest.
    """
    s = model.settings
    seeds = plan.seeds
    n_hold = int(math.floor(len(seeds) * s.holdout_fraction))
    n_hold = max(1, min(n_hold, len(seeds) - 1)) if len(seeds) > 1 else 0
    if n_hold == 0:
        return [
            {
                "size": v,
                "holdout_seeds": 0,
                "recall": None,
                "random_recall": None,
                "lift": None,
                "auc": None,
            }
            for v in sizes
        ]
    perm = seeded_rng(s.seed, 1).permutation(seeds)
    n_folds = max(1, min(int(s.holdout_folds), (len(seeds) - 1) // n_hold))
    inside: list[list[np.ndarray]] = [[] for _ in sizes]
    aucs: list[float] = []
    n_avail = 0
    for fold in range(n_folds):
        part = perm[fold * n_hold : (fold + 1) * n_hold]
        held, train = np.sort(part), np.sort(np.setdiff1d(perm, part, assume_unique=True))
        found, auc, n_avail = _recovered(
            model, plan, held, train, sizes, rerank, weight, method, classifiers
        )
        for i, row in enumerate(found):
            inside[i].append(row)
        aucs.append(auc)
    auc = float(np.mean(aucs))
    rows = []
    for v, parts in zip(sizes, inside, strict=True):
        recovered = np.concatenate(parts)
        recall = float(np.mean(recovered))
        random_recall = min(1.0, v / max(1, n_avail))
        rows.append(
            {
                "size": int(v),
                "holdout_seeds": int(len(recovered)),
                "recall": round(recall, 4),
                "random_recall": round(random_recall, 4),
                "lift": round(recall / random_recall, 3) if random_recall > 0 else None,
                "auc": round(auc, 4),
                # per held-out seed (same splits for every method): what the guard pairs
                "recovered": recovered.astype(np.float64),
            }
        )
    return rows


def _recovered(
    model: LookalikeModel,
    plan: SeedPlan,
    held: np.ndarray,
    train: np.ndarray,
    sizes: list[int],
    rerank: bool,
    weight: float,
    method: str,
    classifiers: PUClassifiers | None,
) -> tuple[list[np.ndarray], float, int]:
    """One held-out part: per size the chance each held-out seed is recovered, AUC, available."""
    s = model.settings
    excluded = np.union1d(train, plan.exclude)
    ranker = fit_ranker(
        model, train, rerank, weight, excluded, salt=1, method=method, classifiers=classifiers
    )
    keep = np.ones(len(model.profile_ids_), dtype=bool)
    keep[excluded] = False
    available = np.flatnonzero(keep)
    n_avail = len(available)
    sample = available
    if n_avail > s.holdout_sample:
        rng = seeded_rng(s.seed, 2)
        base = np.intersect1d(ranker.reference_rows, available, assume_unique=True)
        if len(base) > s.holdout_sample:
            base = rng.choice(base, s.holdout_sample, replace=False)
        rest = np.setdiff1d(available, base, assume_unique=True)
        extra = rng.choice(rest, min(len(rest), s.holdout_sample - len(base)), replace=False)
        sample = np.sort(np.concatenate([base, extra]).astype(np.int64))
    sample_values = np.sort(ranker.blend(ranker.similarity(sample), sample))
    held_values = ranker.blend(ranker.similarity(held), held)
    # a coarse score (a few distinct values) ties many profiles with a held-out seed: the
    # seed is recovered at size v with the chance that a random order of its tie lands in v
    lo = np.searchsorted(sample_values, held_values, side="left")
    hi = np.searchsorted(sample_values, held_values, side="right")
    scale = n_avail / max(1, len(sample))
    above, tied = (len(sample) - hi) * scale, (hi - lo) * scale
    auc = _auc(held_values, ranker.reference)
    found = [
        np.clip(np.where(tied > 0, (v - above) / np.maximum(tied, 1.0), above < v), 0, 1)
        for v in sizes
    ]
    return found, auc, n_avail


def choose_method(qualities: dict[str, dict[str, Any]]) -> str:
    """The candidate that serves: the simplest one within ``SWITCH_SE`` of the best held out.

    ``qualities`` maps each candidate, simplest first (the raw-feature centroid), to its
    :func:`holdout_quality` row (same held-out seeds for all). The one-standard-error rule:
    the best held-out recall sets the bar, and the first (simplest) candidate whose recall is
    within ``SWITCH_SE`` standard errors of the paired difference (per held-out seed) of it
    serves. With a few dozen or hundred held-out seeds recall moves by a point or two from
    noise alone; a more elaborate ranker that is not clearly better on the seed's own held-out
    part is not worth the risk (on Online Retail the hybrid tied the centroid held out at every
    cutoff and lost to it on the next 90 days at every one), while one that is clearly better
    (a seed defined by a combination of attributes, which no single direction captures) serves.
    """
    names = list(qualities)
    recall = {name: float(qualities[name]["recall"] or 0.0) for name in names}
    best = max(names, key=lambda name: recall[name])
    for name in names:
        diff = qualities[best]["recovered"] - qualities[name]["recovered"]
        se = float(diff.std(ddof=1)) / math.sqrt(len(diff)) if len(diff) > 1 else 0.0
        if recall[best] - recall[name] <= SWITCH_SE * se:
            return name
    return best


def distinguishing(model: LookalikeModel, seeds: np.ndarray) -> list[dict[str, Any]]:
    """Features whose seed distribution differs from the population's, largest effect first.

    Effect = standardized mean difference of the scaled (clipped) feature; significant when
    it is at least ``min_effect_size`` and its z statistic passes a Bonferroni-corrected 1%
    two-sided test over all features.
    """
    s = model.settings
    emb = model.embedder_
    pre = emb.pre(model.raw_[seeds], model.codes_[seeds]).astype(np.float64)
    pop = model.population_
    std = np.where(pop["std"] > 0, pop["std"], np.inf)
    effect = (pre.mean(axis=0) - pop["mean"]) / std
    z_stat = np.abs(effect) * math.sqrt(len(seeds))
    z_crit = NormalDist().inv_cdf(1 - 0.005 / max(1, len(effect)))
    significant = (np.abs(effect) >= s.min_effect_size) & (z_stat >= z_crit)
    n_num = len(emb.numeric_columns_)
    with np.errstate(all="ignore"), quiet_nan_warnings():
        seed_raw = model.raw_[seeds].astype(np.float64)
        seed_median = np.nanmedian(seed_raw, axis=0) if len(seeds) else np.array([])
        seed_mean = np.nanmean(seed_raw, axis=0) if len(seeds) else np.array([])
    out = []
    for j in np.argsort(-np.abs(effect), kind="stable"):
        name = emb.feature_names_[j]
        if j < n_num:
            sm, pm = float(seed_median[j]), float(pop["median"][j])
            sa, pa = float(seed_mean[j]), float(pop["raw_mean"][j])
            text = f"{name}: seed median {_fmt(sm)} vs population {_fmt(pm)}"
            if _fmt(sm) == _fmt(pm):
                text += f" (average {_fmt(sa)} vs {_fmt(pa)})"
            item = {
                "feature": name,
                "seed_median": _json_float(sm),
                "population_median": _json_float(pm),
                "seed_mean": _json_float(sa),
                "population_mean": _json_float(pa),
            }
        else:
            col, _, level = name.partition("=")
            ss, ps = float(pre[:, j].mean()), float(pop["mean"][j])
            text = f"{col} = {level}: {ss:.0%} of seed vs {ps:.0%} of population"
            item = {
                "feature": name,
                "seed_median": None,
                "population_median": None,
                "seed_share": round(ss, 4),
                "population_share": round(ps, 4),
            }
        item["effect_size"] = round(float(effect[j]), 3)
        item["text"] = text
        item["significant"] = bool(significant[j])
        out.append(item)
    return out


def _auc(positive: np.ndarray, reference_sorted: np.ndarray) -> float:
    """P(positive > reference) with ties counted half; ``reference_sorted`` ascending."""
    if len(positive) == 0 or len(reference_sorted) == 0:
        return 0.5
    lo = np.searchsorted(reference_sorted, positive, side="left")
    hi = np.searchsorted(reference_sorted, positive, side="right")
    return float(np.mean((lo + hi) / 2.0) / len(reference_sorted))


def _fmt(x: float) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    if abs(x - round(x)) < 1e-9:
        return str(int(round(x)))
    return f"{x:.3g}"


def _json_float(x: float) -> float | None:
    return round(x, 6) if math.isfinite(x) else None


@contextlib.contextmanager
def quiet_nan_warnings() -> Iterator[None]:
    """Silence numpy's all-NaN-slice RuntimeWarnings inside a block."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield
