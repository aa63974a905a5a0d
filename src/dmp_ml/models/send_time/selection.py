"""Hyper-parameter selection of a send-time model on an internal time split, and the
calibration of its probability on the held-out email sends.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from dmp_ml.models.send_time import curves
from dmp_ml.models.send_time.curves import CALIBRATION_LAG, Evidence
from dmp_ml.models.send_time.fitting import CurveInputs

if TYPE_CHECKING:
    from dmp_ml.models.send_time.fitting import CurveEngine
    from dmp_ml.models.send_time.model import SendTimeModel
    from dmp_ml.models.send_time.zones import ZoneConverter, ZoneMixture

logger = logging.getLogger(__name__)

_SELECTION_MAX_PROFILES = 5000
_SELECTION_MAX_ROUNDS = 4


def select(
    model: SendTimeModel,
    raw: dict[str, np.ndarray],
    codes: np.ndarray,
    n: int,
    zone_code: np.ndarray,
    cohort_code: np.ndarray,
    n_cohorts: int,
    source: np.ndarray,
    converter: ZoneConverter,
    split_sec: int,
    mixture: ZoneMixture | None,
    full: Evidence,
    as_of_sec: int,
    engine: CurveEngine,
    chosen: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Choose the hyper-parameters by held-out log-likelihood of engagement hours.

    The model is fitted on events before ``split_sec`` and scored on the engagement hours in
    ``[split_sec, as_of)`` (profiles with held-out engagement; at most 5,000, an evenly spread
    subset). The search is coordinate ascent over the candidate lists, starting from the
    middle candidates, until no single change improves the score. With the chosen values,
    the response probability is then calibrated on the held-out email sends (see
    :func:`~dmp_ml.models.send_time.curves.fit_calibration`).

    The population's part (the counts before the split, pooled per cohort and overall, and
    the curves at the held-out sends) runs on ``engine``
    (:meth:`~dmp_ml.models.send_time.fitting.CurveEngine.select`); the search over the
    sample of at most 5,000 profiles and the two-parameter calibration run here.

    ``chosen`` (the selection of an earlier fit on the same log up to an earlier cutoff) skips
    the search: its values are scored once on this split and the calibration is fitted anew.
    """
    space = {
        "prior_strength": sorted(float(v) for v in model.prior_strength_candidates),
        "cohort_strength": sorted(float(v) for v in model.cohort_strength_candidates),
        "day_pooling": sorted(float(v) for v in model.day_pooling_candidates),
        "bandwidth": sorted(float(v) for v in model.bandwidth_candidates),
        "activity_weight": sorted(float(v) for v in model.activity_weight_candidates),
        "sharpness": sorted(float(v) for v in model.sharpness_candidates),
    }
    start = {name: values[len(values) // 2] for name, values in space.items()}
    if chosen is not None:
        start = {name: float(chosen[name]) for name in space}
    elif all(len(values) == 1 for values in space.values()):
        return {**start, "heldout_loglik": None, "calibration": None, "evaluated": []}
    train = curves.evidence(
        raw, codes, split_sec, model.machine_open_seconds, model.machine_open_weight
    )
    after = curves.evidence(
        raw,
        codes,
        curves.max_sec(raw) + 1,
        model.machine_open_seconds,
        model.machine_open_weight,
        start_sec=split_sec,
    )
    if len(after.act_p) == 0 or len(train.act_p) + len(train.send_p) == 0:
        logger.warning("send time: no held-out engagement; using middle candidates")
        return {**start, "heldout_loglik": None, "calibration": None, "evaluated": []}
    hp = after.act_p
    hh = converter.local_how(after.act_sec, zone_code[hp])
    per_profile = np.bincount(hp, minlength=n)
    rows = np.flatnonzero(per_profile > 0)
    if len(rows) > _SELECTION_MAX_PROFILES:
        rows = rows[np.linspace(0, len(rows) - 1, _SELECTION_MAX_PROFILES).astype(np.int64)]
    pos = np.full(n, -1, dtype=np.int64)
    pos[rows] = np.arange(len(rows))
    sel = pos[hp] >= 0
    hrow, hhow = pos[hp[sel]], hh[sel]
    n_rows = per_profile[rows]
    scores: dict[tuple[float, ...], float] = {}

    def search(pooled: curves.Pooled) -> dict[str, float]:
        """Coordinate ascent on the sample (``pooled`` holds its rows only)."""
        part_cache: dict[tuple[float, float], dict[str, dict[str, np.ndarray]]] = {}

        def score(params: dict[str, float]) -> float:
            key = tuple(params[name] for name in space)
            if key not in scores:
                pkey = (params["day_pooling"], params["bandwidth"])
                if pkey not in part_cache:
                    if len(part_cache) >= 4:  # bounded memory: drop the oldest
                        part_cache.pop(next(iter(part_cache)))
                    part_cache[pkey] = curves.smooth_parts(pooled, *pkey)
                shape = curves.shapes(
                    curves.smoothed(part_cache[pkey], params["activity_weight"]),
                    cohort_code[rows],
                    params["prior_strength"],
                    params["cohort_strength"],
                    mixture=mixture,
                    source=source[rows],
                    rows=rows,
                    sharpness=params["sharpness"],
                    with_sd=False,
                )["shape"]
                log_total = np.log(shape.sum(axis=1))
                ll = np.bincount(hrow, weights=np.log(shape[hrow, hhow]), minlength=len(rows))
                scores[key] = float((ll / n_rows - log_total).mean())
            return scores[key]

        current, best = start, score(start)
        for _ in range(0 if chosen is not None else _SELECTION_MAX_ROUNDS):
            improved = False
            for name, values in space.items():
                for value in values:
                    trial = {**current, name: value}
                    value_score = score(trial)
                    if value_score > best + 1e-9:
                        best, current, improved = value_score, trial, True
            if not improved:
                break
        return current

    # calibrate P(response | send at h) on the held-out sends (old enough to be answered),
    # when the sends before the split were answered at all
    sends = None
    late = (full.send_sec >= split_sec) & (full.send_sec < as_of_sec - CALIBRATION_LAG)
    if len(train.send_p) and train.send_resp.sum() > 0:
        sp = full.send_p[late]
        sends = (sp, converter.local_how(full.send_sec[late], zone_code[sp]))
    inputs = CurveInputs(
        full=train,
        n=n,
        zones=list(converter.zones),
        zone_code=zone_code,
        cohort_code=cohort_code,
        n_cohorts=n_cohorts,
        source=source,
        mixture=mixture,
        selected={},
        rate_strength=model.rate_prior_strength,
        span_hours=1.0,
    )
    current, at_send = engine.select(inputs, rows, search, sends)
    calibration = None
    if at_send is not None:
        calibration = curves.fit_calibration(at_send, full.send_resp[late] >= 1)
    evaluated = [
        {**dict(zip(space, key, strict=True)), "heldout_loglik": value}
        for key, value in scores.items()
    ]
    return {
        **current,
        "heldout_loglik": scores[tuple(current[name] for name in space)],
        "heldout_profiles": int(len(rows)),
        "calibration": calibration,
        "evaluated": evaluated,
    }
