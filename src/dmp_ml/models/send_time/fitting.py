"""The send-time model's population work on the evidence: per-profile counts, population
priors, the posterior per profile; a call each for the zone inference, the model selection,
the fit, the scoring of a guard window and a baseline the guard may serve instead.

The work has three parts: per-profile hour-of-week counts (a map over profiles), the
population's priors (cohort and global sums of those counts: a reduction), and each profile's
posterior given the priors (a map again). The zone inference sums the hours of the profiles
of known zone and infers the others' zones profile by profile; the selection does as the fit
on the evidence before its split, for the profiles it scores and at the held-out sends; the
guard scores its candidates profile by profile on each held-out window, given the
population's engagement (a reduction). :class:`LocalCurves` does them in process (the
posterior block by block); :class:`dmp_ml.scale.send_time.DaskCurves` partition by partition
on Dask. Both give the same values.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from dmp_ml.models.send_time import baselines, curves
from dmp_ml.models.send_time.curves import Evidence
from dmp_ml.models.send_time.zones import ZoneConverter, ZoneMixture


@dataclass(frozen=True)
class CurveInputs:
    """What the curves are fitted from: evidence sorted by profile (as
    :func:`~dmp_ml.models.send_time.curves.evidence` returns it), each profile's zone and
    cohort, the zone mixture for profiles left in UTC, the selected hyper-parameters."""

    full: Evidence
    n: int
    zones: list[str]
    zone_code: np.ndarray
    cohort_code: np.ndarray
    n_cohorts: int
    source: np.ndarray
    mixture: ZoneMixture | None
    selected: Mapping[str, Any]
    rate_strength: float
    span_hours: float


@dataclass
class FittedCurves:
    """The fitted curves of ``n`` profiles.

    ``shape``, ``shape_sd`` (n, 168): posterior relative intensity per local hour of week and
    its sd, as float32 (what the model keeps: two population-sized float64 matrices fewer
    at the fit's peak); ``global_shape`` (168,), ``cohort_shapes`` (n_cohorts, 168): the priors;
    ``data_weight`` (n,): share from the profile's own evidence; ``rate`` (n,) and
    ``global_rate``: response rate per send (``kind == "rate"``) or activity rate per hour
    (``"activity"``); ``engagement_hours``, ``sends`` (n,): totals per profile;
    ``baseline_global`` (168,): the population's engagement share per local hour of week.
    """

    shape: np.ndarray
    shape_sd: np.ndarray
    global_shape: np.ndarray
    cohort_shapes: np.ndarray
    data_weight: np.ndarray
    rate: np.ndarray
    global_rate: float
    kind: str
    engagement_hours: np.ndarray
    sends: np.ndarray
    baseline_global: np.ndarray


Search = Callable[[curves.Pooled], Mapping[str, float]]
"""The hyper-parameter search of a selection: given the pooled evidence (the cohort and
population sums, and the per-profile parts of the profiles it scores), the chosen values."""


class CurveEngine(Protocol):
    """Where the population work runs: ``map_profiles(...)`` for the zone inference,
    ``select(...)`` for the model selection, ``fit(inputs)`` for the guard's refits and the
    served fit, ``score_guard(window)`` for each guard window, then, if the guard serves a
    baseline, ``baseline(name, fitted, cohort_code)`` -> (shape (n, 168), basis code (n,))
    for the profiles of the last fit."""

    def select(
        self,
        inputs: CurveInputs,
        rows: np.ndarray,
        search: Search,
        sends: tuple[np.ndarray, np.ndarray] | None,
    ) -> tuple[Mapping[str, float], np.ndarray | None]:
        """The population's part of a selection: ``inputs``' evidence pooled as
        :func:`~dmp_ml.models.send_time.curves.pool_counts` does, with the per-profile parts
        of ``rows`` (sorted) only, goes to ``search`` (run in process); then, with the values
        it chose, each of ``sends`` (profile codes sorted, local hours of week) gets its
        profile's response rate times its curve at that hour (None without ``sends``).
        Returns the chosen values and those raw probabilities."""
        ...

    def map_profiles(
        self,
        func: Callable[..., Any],
        ev: Evidence,
        rows: Sequence[np.ndarray],
        shared: tuple = (),
    ) -> list[Any]:
        """``func(evidence, *rows, *shared)`` on ranges of the profiles: each range's evidence
        (``ev``'s, sorted by profile, codes from 0) and its slices of the per-profile arrays
        ``rows``; the results in profile order. For work profile by profile (the zone
        inference): the caller concatenates or sums the results."""
        ...

    def fit(self, inputs: CurveInputs) -> FittedCurves: ...

    def score_guard(
        self, window: baselines.GuardWindow
    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """:func:`~dmp_ml.models.send_time.baselines.score_window`: per scored profile, every
        guard candidate's hit and mean log-likelihood on one held-out window."""
        ...

    def baseline(
        self, name: str, fitted: FittedCurves, cohort_code: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]: ...


def hyper(selected: Mapping[str, Any]) -> tuple[float, float, float, float, float, float]:
    """(prior strength, cohort strength, day pooling, bandwidth, activity weight, sharpness)."""
    return (
        selected["prior_strength"],
        selected["cohort_strength"],
        selected["day_pooling"],
        selected["bandwidth"],
        selected["activity_weight"],
        selected["sharpness"],
    )


def _counted(inputs: CurveInputs) -> tuple[curves.Counts, curves.Pooled]:
    """Every profile's totals (sends, responses, engagement hours, each (n, 1)) and hours of
    week with their cohort and population sums (``Pooled``: its ``resp``, ``act`` and
    ``sends`` are the counts). The sends times each profile's rate (``expo``) are formed a
    block of profiles at a time: no population-sized float64 matrix of them."""
    counts = curves.count_hours(
        inputs.full, inputs.n, inputs.zone_code, ZoneConverter(inputs.zones)
    )
    pooled = curves.pool_counts(
        counts, inputs.cohort_code, inputs.n_cohorts, inputs.source, inputs.rate_strength
    )
    totals = curves.Counts(
        *(
            m.sum(axis=1, keepdims=True, dtype=np.float64)
            for m in (counts.sends, counts.responses, counts.activity)
        )
    )
    return totals, pooled


class LocalCurves:
    """In process: the counts of every profile at once, the posterior a block of profiles at a
    time (:func:`~dmp_ml.models.send_time.curves.posterior_blocks`); keeps the activity counts
    for :meth:`baseline`."""

    def map_profiles(
        self,
        func: Callable[..., Any],
        ev: Evidence,
        rows: Sequence[np.ndarray],
        shared: tuple = (),
    ) -> list[Any]:
        """See :meth:`CurveEngine.map_profiles`: every profile as one range."""
        return [func(ev, *rows, *shared)]

    def select(
        self,
        inputs: CurveInputs,
        rows: np.ndarray,
        search: Search,
        sends: tuple[np.ndarray, np.ndarray] | None,
    ) -> tuple[Mapping[str, float], np.ndarray | None]:
        """See :meth:`CurveEngine.select`: the counts of every profile at once, the curves at
        the sends a block of profiles at a time."""
        counts, pooled = _counted(inputs)
        chosen = search(pooled.take(rows))
        if sends is None:
            return chosen, None
        sp, how = sends
        rate, _ = curves.rates(counts, "rate", inputs.rate_strength, 1.0)
        at_send = np.empty(len(sp))
        params = hyper(chosen)
        for block, fitted in curves.posterior_blocks(
            pooled, inputs.cohort_code, inputs.source, inputs.mixture, params
        ):
            mine = (sp >= block.start) & (sp < block.stop)
            at_send[mine] = fitted["shape"][sp[mine] - block.start, how[mine]]
        return chosen, rate[sp] * at_send

    def fit(self, inputs: CurveInputs) -> FittedCurves:
        """The curves from ``inputs`` (see the module doc)."""
        counts, pooled = _counted(inputs)
        kind = "rate" if counts.sends.sum() > 0 and counts.responses.sum() > 0 else "activity"
        shape = np.empty((inputs.n, curves.HOURS_PER_WEEK), dtype=np.float32)
        shape_sd = np.empty((inputs.n, curves.HOURS_PER_WEEK), dtype=np.float32)
        data_weight = np.empty(inputs.n)
        for rows, fitted in curves.posterior_blocks(
            pooled, inputs.cohort_code, inputs.source, inputs.mixture, hyper(inputs.selected)
        ):
            shape[rows], shape_sd[rows] = fitted["shape"], fitted["shape_sd"]
            data_weight[rows] = fitted["data_weight"]
        rate, rate_global = curves.rates(counts, kind, inputs.rate_strength, inputs.span_hours)
        self.activity_ = pooled.act
        return FittedCurves(
            shape=shape,
            shape_sd=shape_sd,
            global_shape=fitted["global_shape"],  # every block has the same priors
            cohort_shapes=fitted["cohort_shapes"],
            data_weight=data_weight,
            rate=rate,
            global_rate=float(rate_global),
            kind=kind,
            engagement_hours=counts.activity.sum(axis=1),
            sends=counts.sends.sum(axis=1),
            baseline_global=baselines.global_curve(pooled.act, fitted["global_shape"]),
        )

    def score_guard(
        self, window: baselines.GuardWindow
    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """See :meth:`CurveEngine.score_guard`; a block of profiles at a time."""
        return baselines.score_window(window)

    def baseline(
        self, name: str, fitted: FittedCurves, cohort_code: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Baseline ``name``'s curves and basis codes for the profiles of the last fit."""
        return baselines.baseline_shapes(
            name, self.activity_, fitted.baseline_global, fitted.cohort_shapes, cohort_code
        )
