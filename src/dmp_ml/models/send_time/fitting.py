"""The send-time model's population work on the evidence: per-profile counts, population
priors, the posterior per profile; a call each for the zone inference, the model selection,
the fit, the scoring of a guard window and a baseline the guard may serve instead.

The work has three parts: per-profile hour-of-week counts (a map over profiles), the
population's priors (cohort and global sums of those counts: a reduction), and each profile's
posterior given the priors (a map again). The zone inference sums the hours of the profiles
of known zone and infers the others' zones profile by profile; the selection does as the fit
on the evidence before its split, for the profiles it scores and at the held-out sends; the
guard scores its candidates profile by profile on each held-out window, given the
population's engagement (a reduction). :class:`LocalCurves` does them in process, a range of
profiles at a time (what it holds of the counts is one range's, whatever the population);
:class:`dmp_ml.scale.send_time.DaskCurves` partition by partition on Dask. Both give the same
values (the priors to float rounding: their sums run in another order).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
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
        """The population's part of a selection: ``inputs``' evidence pooled
        (:class:`~dmp_ml.models.send_time.curves.Pooled`: the cohort and pool sums), with the
        per-profile parts of ``rows`` (sorted) only, goes to ``search`` (run in process);
        then, with the values it chose, each of ``sends`` (profile codes sorted, local hours
        of week) gets its profile's response rate times its curve at that hour (None without
        ``sends``).
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


RANGE_ROWS = 8 * curves.BLOCK_ROWS
"""Profiles :class:`LocalCurves` counts at once: a range's (rows, 168) counts of sends,
responses and engagement hours (about 2.7 kB a profile, 44 MB a range) are what a fit holds
of them, whatever the population. A multiple of the posterior's blocks."""


@dataclass
class _Reduced:
    """What every profile's counts reduce to: per profile, the totals of sends, responses and
    engagement hours, the response rate and the mean engagement per hour of week; the
    population's engagement per hour of week and response rate ``g``; the cohort and pool
    sums (unsmoothed); the per-profile parts of the profiles asked for (``picked``)."""

    sends: np.ndarray
    responses: np.ndarray
    activity: np.ndarray
    activity_how: np.ndarray
    g: float
    rate: np.ndarray
    mu: np.ndarray
    cohort: dict[str, np.ndarray]
    pool: dict[str, np.ndarray]
    picked: curves.Pooled | None

    def per_profile(self) -> curves.Counts:
        """Each profile's totals as (n, 1) counts (:func:`.curves.total_counts`)."""
        return curves.total_counts(self.sends, self.responses, self.activity)


def _ranges(n: int) -> list[slice]:
    return [slice(lo, min(lo + RANGE_ROWS, n)) for lo in range(0, n, RANGE_ROWS)]


def _range_counts(inputs: CurveInputs, rows: slice, converter: ZoneConverter) -> curves.Counts:
    """The hours of week of profiles ``rows`` (their evidence is a slice of ``inputs.full``)."""
    return curves.count_hours(
        curves.evidence_range(inputs.full, rows.start, rows.stop),
        rows.stop - rows.start,
        inputs.zone_code[rows],
        converter,
    )


def _reduce(inputs: CurveInputs, picked: np.ndarray | None = None) -> _Reduced:
    """Count the profiles range by range, twice: first their totals (the population's
    response rate and each profile's), then the cohort and pool sums, which go on from range
    to range row after row, so that every figure is the one counting every profile at once
    gives, bit for bit (:func:`.curves.pooled_rows` and :func:`.curves.pool_sums` of the whole
    population's counts). ``picked``: sorted profiles whose per-profile parts the caller
    wants (the selection's sample)."""
    converter = ZoneConverter(inputs.zones)
    ranges = _ranges(inputs.n)
    parts = [curves.totals(_range_counts(inputs, rows, converter)) for rows in ranges]
    sends, responses, activity = (np.concatenate([p[i] for p in parts]) for i in range(3))
    activity_how = np.sum([p[3] for p in parts], axis=0)
    del parts
    g = curves.population_rate(responses, sends)
    per_profile = curves.pooled_rows(
        curves.total_counts(sends, responses, activity), g, inputs.rate_strength
    )
    rate, mu = per_profile.rate, per_profile.mu
    everyone = curves.pools_everyone(inputs.source, responses, activity)
    located = np.ones(inputs.n, bool) if everyone else inputs.source != 2
    hours = (inputs.n_cohorts, curves.HOURS_PER_WEEK)
    cohort = {k: np.zeros(hours) for k in ("resp", "act", "expo")}
    pool = {k: np.zeros(curves.HOURS_PER_WEEK) for k in ("resp", "act", "expo")}
    taken: list[curves.Pooled] = []
    for rows in ranges:
        counts = _range_counts(inputs, rows, converter)
        mine = {
            "resp": (counts.responses, None),
            "act": (counts.activity, None),
            "expo": (counts.sends, rate[rows]),
        }
        for key, (values, scale) in mine.items():
            cohort[key] = curves.group_sum(
                values, inputs.cohort_code[rows], inputs.n_cohorts, scale, start=cohort[key]
            )
            pool[key] = curves.rows_sum(values, located[rows], scale, start=pool[key])
        if picked is not None:
            at = picked[(picked >= rows.start) & (picked < rows.stop)] - rows.start
            taken.append(
                curves.Pooled(
                    counts.responses[at],
                    counts.activity[at],
                    counts.sends[at],
                    rate[rows][at],
                    mu[rows][at],
                    {},
                    {},
                )
            )
    cohort["mu"] = np.bincount(inputs.cohort_code, weights=mu, minlength=inputs.n_cohorts)
    pool["mu"] = np.array(mu[located].sum())
    chosen = None
    if picked is not None:
        fields = ("resp", "act", "sends", "rate", "mu")
        chosen = curves.Pooled(
            *(np.concatenate([getattr(p, k) for p in taken]) for k in fields), cohort, pool
        )
    return _Reduced(sends, responses, activity, activity_how, g, rate, mu, cohort, pool, chosen)


def _posterior(
    inputs: CurveInputs, reduced: _Reduced, params: tuple[float, float, float, float, float, float]
) -> Iterator[tuple[slice, dict[str, np.ndarray]]]:
    """Each block's posterior (:func:`~dmp_ml.models.send_time.curves.posterior_blocks`) in
    order of the profiles; the counts are made a range at a time."""
    converter = ZoneConverter(inputs.zones)
    for rng in _ranges(inputs.n):
        counts = _range_counts(inputs, rng, converter)
        pooled = curves.Pooled(
            counts.responses,
            counts.activity,
            counts.sends,
            reduced.rate[rng],
            reduced.mu[rng],
            reduced.cohort,
            reduced.pool,
        )
        for rows, fitted in curves.posterior_blocks(
            pooled,
            inputs.cohort_code[rng],
            inputs.source[rng],
            inputs.mixture,
            params,
            first=rng.start,
        ):
            yield slice(rng.start + rows.start, rng.start + rows.stop), fitted


class LocalCurves:
    """In process, a range of profiles at a time (:data:`RANGE_ROWS`): the counts of each
    range are made when needed and let go, the population's sums go on from range to range,
    and the posterior is computed block by block
    (:func:`~dmp_ml.models.send_time.curves.posterior_blocks`). The figures are those of
    counting every profile at once, bit for bit; what a fit holds of its counts is one
    range's. Keeps the last fit's inputs for :meth:`baseline`."""

    def __init__(self) -> None:
        self.inputs_: CurveInputs | None = None

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
        """See :meth:`CurveEngine.select`: the counts range by range, the curves at the sends
        a block of profiles at a time."""
        reduced = _reduce(inputs, picked=rows)
        assert reduced.picked is not None
        chosen = search(reduced.picked)
        if sends is None:
            return chosen, None
        sp, how = sends
        rate, _ = curves.rates(reduced.per_profile(), "rate", inputs.rate_strength, 1.0)
        at_send = np.empty(len(sp))
        for block, fitted in _posterior(inputs, reduced, hyper(chosen)):
            mine = (sp >= block.start) & (sp < block.stop)
            at_send[mine] = fitted["shape"][sp[mine] - block.start, how[mine]]
        return chosen, rate[sp] * at_send

    def fit(self, inputs: CurveInputs) -> FittedCurves:
        """The curves from ``inputs`` (see the module doc)."""
        self.inputs_ = None  # the last fit's, no longer wanted
        reduced = _reduce(inputs)
        totals = reduced.per_profile()
        kind = "rate" if totals.sends.sum() > 0 and totals.responses.sum() > 0 else "activity"
        shape = np.empty((inputs.n, curves.HOURS_PER_WEEK), dtype=np.float32)
        shape_sd = np.empty((inputs.n, curves.HOURS_PER_WEEK), dtype=np.float32)
        data_weight = np.empty(inputs.n)
        for rows, fitted in _posterior(inputs, reduced, hyper(inputs.selected)):
            shape[rows], shape_sd[rows] = fitted["shape"], fitted["shape_sd"]
            data_weight[rows] = fitted["data_weight"]
        rate, rate_global = curves.rates(totals, kind, inputs.rate_strength, inputs.span_hours)
        self.inputs_ = inputs
        return FittedCurves(
            shape=shape,
            shape_sd=shape_sd,
            global_shape=fitted["global_shape"],  # every block has the same priors
            cohort_shapes=fitted["cohort_shapes"],
            data_weight=data_weight,
            rate=rate,
            global_rate=float(rate_global),
            kind=kind,
            engagement_hours=reduced.activity,
            sends=reduced.sends,
            baseline_global=baselines.global_curve(
                reduced.activity_how[None, :], fitted["global_shape"]
            ),
        )

    def score_guard(
        self, window: baselines.GuardWindow
    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """See :meth:`CurveEngine.score_guard`; a block of profiles at a time."""
        return baselines.score_window(window)

    def baseline(
        self, name: str, fitted: FittedCurves, cohort_code: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Baseline ``name``'s curves and basis codes for the profiles of the last fit (their
        engagement hours counted again: the guard rarely serves a baseline)."""
        inputs = self.inputs_
        assert inputs is not None, "baseline() follows a fit()"
        activity = curves.count_activity(
            inputs.full, inputs.n, inputs.zone_code, ZoneConverter(inputs.zones)
        )
        return baselines.baseline_shapes(
            name, activity, fitted.baseline_global, fitted.cohort_shapes, cohort_code
        )
