"""Send-time curves on Dask: per-profile counts by partition, population priors by a reduction.

:class:`DaskCurves` is a :class:`dmp_ml.models.send_time.fitting.CurveEngine`. The profiles
are split into contiguous ranges; each range's evidence (sends with their response weight,
engagement hours: sorted by profile, so a range is a slice) goes to a worker, which counts its
profiles' hours of week once and keeps the counts there. Then:

1. each partition returns its profiles' totals (sends, responses, engagement hours: one number
   per profile); the client derives the population response rate and the rates exactly as the
   local fit does;
2. each partition sums its counts per zone cohort and over the located population; the client
   adds the partial sums (a reduction) and smooths them: the priors;
3. each partition computes its profiles' posterior curves given the priors, with the local
   fit's own functions.

Per-profile values are the local fit's, bit for bit, given the priors; the priors are sums in
another order, so curves agree with the local engine's to float rounding (about 1e-15).

The model selection (:meth:`DaskCurves.select`) runs steps 1 and 2 on the evidence before its
split, gathers the per-profile parts of the profiles its search scores (at most 5,000) and,
with the values the search chose on the client, has each range compute its profiles' curves at
their held-out sends (the calibration's inputs). The zone inference
(:meth:`DaskCurves.map_profiles`) sums the ranges' hours of the profiles of known zone (counts:
exact) and infers each range's zones on its worker. The guard's refits are fits as above; each
held-out window is scored by range (:meth:`DaskCurves.score_guard`) after a reduction of the
ranges' engagement hours (the baselines' population curve: counts, so exact).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dmp_ml.models.send_time import baselines, curves
from dmp_ml.models.send_time.curves import Counts, Evidence
from dmp_ml.models.send_time.fitting import CurveInputs, FittedCurves, Search, hyper
from dmp_ml.models.send_time.zones import ZoneConverter, ZoneMixture
from dmp_ml.scale.cluster import PartitionedStage, map_parts, range_bounds

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProfileRange:
    """The evidence of profiles ``lo``..``hi - 1`` (codes shifted to start at 0) with their
    zone, cohort and zone source."""

    lo: int
    hi: int
    evidence: Evidence
    zone_code: np.ndarray
    cohort_code: np.ndarray
    source: np.ndarray


def split_profiles(inputs: CurveInputs, nparts: int) -> list[ProfileRange]:
    """``inputs``' profiles in at most ``nparts`` contiguous ranges, with their evidence."""
    bounds = range_bounds(inputs.n, nparts)
    out = []
    for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        rows = slice(lo, hi)
        out.append(
            ProfileRange(
                lo,
                hi,
                curves.evidence_range(inputs.full, lo, hi),
                inputs.zone_code[rows],
                inputs.cohort_code[rows],
                inputs.source[rows],
            )
        )
    return out


def range_counts(part: ProfileRange, zones: list[str]) -> Counts:
    """Hours of week per profile of the range: sends, responses, engagement hours."""
    return curves.count_hours(
        part.evidence, part.hi - part.lo, part.zone_code, ZoneConverter(zones)
    )


def range_pools(
    counts: Counts,
    part: ProfileRange,
    g: float,
    strength: float,
    n_cohorts: int,
    everyone: bool,
) -> dict[str, dict[str, np.ndarray]]:
    """The range's share of the cohort sums and of the global pool (its located profiles, or
    all when ``everyone``)."""
    located = np.ones(len(part.source), bool) if everyone else part.source != 2
    rows = curves.pooled_rows(counts, g, strength)
    return curves.pool_sums(rows, part.cohort_code, n_cohorts, located)


def range_curves(
    counts: Counts,
    part: ProfileRange,
    g: float,
    population: Mapping[str, dict[str, np.ndarray]],
    selected: Mapping[str, Any],
    strength: float,
    mixture: ZoneMixture | None,
) -> dict[str, np.ndarray]:
    """The range's posterior (:func:`~dmp_ml.models.send_time.curves.shapes`: ``shape``,
    ``shape_sd`` (k, 168), ``data_weight`` (k,), and the priors ``global_shape``,
    ``cohort_shapes``), given the smoothed population parts (``cohort``, ``pool``)."""
    alpha, beta, rho, bandwidth, activity_weight, sharpness = hyper(selected)
    rows = curves.pooled_rows(counts, g, strength).rows(slice(None))
    parts = {"rows": curves.smooth_block(curves.kernel(bandwidth, rho), **rows), **population}
    fitted = curves.shapes(
        curves.smoothed(parts, activity_weight),
        part.cohort_code,
        alpha,
        beta,
        mixture=mixture,
        source=part.source,
        rows=np.arange(part.lo, part.hi),
        sharpness=sharpness,
    )
    return fitted


def range_baseline(
    part: ProfileRange,
    zones: list[str],
    name: str,
    baseline_global: np.ndarray,
    cohort_shapes: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Baseline ``name``'s curves and basis codes for the range."""
    activity = range_counts(part, zones).activity
    return baselines.baseline_shapes(
        name, activity, baseline_global, cohort_shapes, part.cohort_code
    )


def range_rows(counts: Counts, rows: np.ndarray, g: float, strength: float) -> curves.Pooled:
    """The per-profile parts of the range's profiles ``rows`` (positions in the range), as
    :func:`~dmp_ml.models.send_time.curves.pooled_rows` forms them (without the sums)."""
    return curves.pooled_rows(counts, g, strength).take(rows)


def range_at_sends(
    counts: Counts,
    part: ProfileRange,
    send_p: np.ndarray,
    send_how: np.ndarray,
    g: float,
    population: Mapping[str, dict[str, np.ndarray]],
    selected: Mapping[str, Any],
    strength: float,
    mixture: ZoneMixture | None,
) -> np.ndarray:
    """Each send's profile response rate times its curve at the send's local hour of week
    (``send_p``: positions in the range)."""
    fitted = range_curves(counts, part, g, population, selected, strength, mixture)
    rate = (counts.responses.sum(axis=1) + strength * g) / (counts.sends.sum(axis=1) + strength)
    return rate[send_p] * fitted["shape"][send_p, send_how]


def _hours_of_week(activity: np.ndarray) -> np.ndarray:
    """Engagement hours per hour of week, summed over the range's profiles."""
    return activity.sum(axis=0, dtype=np.float64)


def _summed(partials: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Key by key, the sum of the partitions' partial sums (in partition order)."""
    return {k: np.sum([p[k] for p in partials], axis=0) for k in partials[0]}


def _by_range(ranges: list[ProfileRange], codes: np.ndarray, *values: np.ndarray) -> list[list]:
    """Per range, the sorted profile ``codes`` that fall in it (as positions in the range),
    with the matching slices of ``values``."""
    cut = np.searchsorted(codes, [r.lo for r in ranges] + [ranges[-1].hi])
    return [
        [codes[cut[i] : cut[i + 1]] - r.lo, *(v[cut[i] : cut[i + 1]] for v in values)]
        for i, r in enumerate(ranges)
    ]


@dataclass
class _Counted:
    """The counts of one evidence on the workers, and what the client reduced from them."""

    ranges: list[ProfileRange]
    parts: list[Any]  # futures of the ranges
    counts: list[Any]  # futures of their counts
    sends: np.ndarray  # per profile
    responses: np.ndarray
    activity: np.ndarray
    activity_how: np.ndarray  # engagement per hour of week, summed over the population
    g: float  # the population's response rate
    sums: dict[str, dict[str, np.ndarray]]  # unsmoothed cohort and pool sums


class DaskCurves(PartitionedStage):
    """Fit the served send-time curves on Dask (see the module doc) in ``npartitions``
    profile ranges."""

    def __init__(self, session: Any, npartitions: int = 8) -> None:
        super().__init__(session, npartitions)
        self._ranges: list[ProfileRange] = []
        self._zones: list[str] = []

    def _count(self, client: Any, inputs: CurveInputs) -> _Counted:
        """Steps 1 and 2 of the module doc: counts by range, totals and partial sums reduced."""
        strength, n_cohorts = inputs.rate_strength, inputs.n_cohorts
        ranges = split_profiles(inputs, self.npartitions)
        logger.info(
            "dask send time: %d profiles in %d ranges on %s",
            inputs.n,
            len(ranges),
            client.scheduler.address,
        )
        parts = client.scatter(ranges, hash=False)
        counts = map_parts(client, range_counts, parts, shared=(list(inputs.zones),))
        totals = client.gather(client.map(curves.totals, counts, pure=False))
        sends = np.concatenate([t[0] for t in totals])
        resp = np.concatenate([t[1] for t in totals])
        act = np.concatenate([t[2] for t in totals])
        g = curves.population_rate(resp, sends)
        everyone = curves.pools_everyone(inputs.source, resp, act)
        partial = client.gather(
            map_parts(client, range_pools, counts, parts, shared=(g, strength, n_cohorts, everyone))
        )
        return _Counted(
            ranges=ranges,
            parts=parts,
            counts=counts,
            sends=sends,
            responses=resp,
            activity=act,
            activity_how=np.sum([t[3] for t in totals], axis=0),
            g=g,
            sums={level: _summed([p[level] for p in partial]) for level in ("cohort", "pool")},
        )

    @staticmethod
    def _population(counted: _Counted, selected: Mapping[str, Any]) -> dict[str, Any]:
        """The smoothed cohort and pool sums (the priors' evidence) for ``selected``."""
        _, _, _, bandwidth, _, _ = hyper(selected)
        k_pop = curves.kernel(bandwidth, 0.0)
        return {level: curves.smooth_block(k_pop, **sums) for level, sums in counted.sums.items()}

    def map_profiles(
        self,
        func: Callable[..., Any],
        ev: Evidence,
        rows: Sequence[np.ndarray],
        shared: tuple = (),
    ) -> list[Any]:
        """See :meth:`~dmp_ml.models.send_time.fitting.CurveEngine.map_profiles`: a task per
        range of profiles."""
        bounds = range_bounds(len(rows[0]), self.npartitions).tolist()
        spans = list(zip(bounds[:-1], bounds[1:], strict=True))
        with self.session.client() as client:
            evs = client.scatter(
                [curves.evidence_range(ev, lo, hi) for lo, hi in spans], hash=False
            )
            per_row = [client.scatter([r[lo:hi] for lo, hi in spans], hash=False) for r in rows]
            return client.gather(map_parts(client, func, evs, *per_row, shared=shared))

    def select(
        self,
        inputs: CurveInputs,
        rows: np.ndarray,
        search: Search,
        sends: tuple[np.ndarray, np.ndarray] | None,
    ) -> tuple[Mapping[str, float], np.ndarray | None]:
        """See :meth:`~dmp_ml.models.send_time.fitting.CurveEngine.select`: the counts and
        partial sums by range, the scored profiles' rows gathered from their ranges, the
        curves at the sends computed by each range for its profiles."""
        strength = inputs.rate_strength
        with self.session.client() as client:
            c = self._count(client, inputs)
            mine = [r[0] for r in _by_range(c.ranges, rows)]
            picked = client.gather(
                map_parts(client, range_rows, c.counts, mine, shared=(c.g, strength))
            )
            chosen = search(
                curves.Pooled(
                    *(
                        np.concatenate([getattr(p, k) for p in picked])
                        for k in ("resp", "act", "sends", "rate", "mu")
                    ),
                    cohort=c.sums["cohort"],
                    pool=c.sums["pool"],
                )
            )
            if sends is None:
                return chosen, None
            split = _by_range(c.ranges, *sends)
            out = client.gather(
                map_parts(
                    client,
                    range_at_sends,
                    c.counts,
                    c.parts,
                    [s[0] for s in split],
                    [s[1] for s in split],
                    shared=(
                        c.g,
                        self._population(c, chosen),
                        dict(chosen),
                        strength,
                        inputs.mixture,
                    ),
                )
            )
        return chosen, np.concatenate(out)

    def fit(self, inputs: CurveInputs) -> FittedCurves:
        """The curves from ``inputs``, partition-wise."""
        strength = inputs.rate_strength
        with self.session.client() as client:
            c = self._count(client, inputs)
            self._ranges, self._zones = c.ranges, list(inputs.zones)
            out = client.gather(
                map_parts(
                    client,
                    range_curves,
                    c.counts,
                    c.parts,
                    shared=(
                        c.g,
                        self._population(c, inputs.selected),
                        dict(inputs.selected),
                        strength,
                        inputs.mixture,
                    ),
                )
            )
        kind = "rate" if c.sends.sum() > 0 and c.responses.sum() > 0 else "activity"
        per_profile = curves.total_counts(c.sends, c.responses, c.activity)
        rate, rate_global = curves.rates(per_profile, kind, strength, inputs.span_hours)
        return FittedCurves(
            shape=np.concatenate([o["shape"] for o in out], dtype=np.float32),
            shape_sd=np.concatenate([o["shape_sd"] for o in out], dtype=np.float32),
            global_shape=out[0]["global_shape"],  # every range has the same priors
            cohort_shapes=out[0]["cohort_shapes"],
            data_weight=np.concatenate([o["data_weight"] for o in out]),
            rate=rate,
            global_rate=float(rate_global),
            kind=kind,
            engagement_hours=c.activity,
            sends=c.sends,
            baseline_global=baselines.global_curve(c.activity_how[None, :], out[0]["global_shape"]),
        )

    def score_guard(
        self, window: baselines.GuardWindow
    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """See :meth:`~dmp_ml.models.send_time.fitting.CurveEngine.score_guard`: each range
        counts its profiles' engagement before the window, the client adds the ranges' hours
        of week (the baselines' population curve), each range scores its profiles."""
        bounds = range_bounds(len(window.zone_code), self.npartitions).tolist()
        with self.session.client() as client:
            parts = client.scatter(
                [window.take(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)],
                hash=False,
            )
            activity = client.map(baselines.window_activity, parts, pure=False)
            hours = client.gather(client.map(_hours_of_week, activity, pure=False))
            glob = baselines.global_curve(np.sum(hours, axis=0)[None, :], window.global_shape)
            out = client.gather(
                map_parts(client, baselines.score_profiles, parts, activity, shared=(glob,))
            )
        return {
            name: (
                np.concatenate([o[name][0] for o in out]),
                np.concatenate([o[name][1] for o in out]),
            )
            for name in out[0]
        }

    def baseline(
        self, name: str, fitted: FittedCurves, cohort_code: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Baseline ``name``'s curves and basis codes for the profiles of the last fit,
        partition-wise (each range counts its hours again: the guard rarely serves one)."""
        with self.session.client() as client:
            parts = client.scatter(self._ranges, hash=False)
            out = client.gather(
                map_parts(
                    client,
                    range_baseline,
                    parts,
                    shared=(self._zones, name, fitted.baseline_global, fitted.cohort_shapes),
                )
            )
        return np.concatenate([o[0] for o in out]), np.concatenate([o[1] for o in out])
