"""The send-time estimator: per-profile 168-hour engagement curves, fitted, saved, refreshed.

:class:`SendTimeModel` owns the lifecycle (``from_settings``, ``fit``, ``save`` / ``load``,
``update`` for near-real-time refresh, ``forget`` for erasure); the maths lives in
:mod:`.curves` (evidence, smoothing, shrinkage), :mod:`.zones` (time zones),
:mod:`.selection` (hyper-parameters and calibration on an internal time split) and
:mod:`.decision` (the serving decision). See the package documentation for the model.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd

from dmp_ml.errors import BundleError, DataContractError, InsufficientDataError, RequestError
from dmp_ml.id_index import IdIndex, rows_of
from dmp_ml.mapped import map_array, write_array
from dmp_ml.models.base import EstimatorParams, constructor_args
from dmp_ml.models.send_time import baselines, curves
from dmp_ml.models.send_time.curves import BASES, HOURS_PER_WEEK
from dmp_ml.models.send_time.decision import (
    SendTimeDecision,
    best_send_time,
    check_quiet_hours,
    profiles_frame,
    utc_timestamp,
)
from dmp_ml.models.send_time.fitting import CurveEngine, CurveInputs, LocalCurves, hyper
from dmp_ml.models.send_time.selection import select
from dmp_ml.models.send_time.zones import (
    TIMEZONE_SOURCES,
    UNKNOWN_COHORT,
    ZoneConverter,
    assign_zones,
    known_zones,
    profile_universe,
    valid_zone,
    zones_and_cohorts,
)
from dmp_ml.rows import OverlaidRows, id_merge_order, stacked_take

if TYPE_CHECKING:
    from dmp_ml.models.base import ProfileUpdate
    from dmp_ml.settings import Settings

logger = logging.getLogger(__name__)

FORMAT_VERSION = "2"
_CURVES = ("local_shape", "local_shape_sd")  # per profile, (n, 168): ``<name>.npy``, mapped
_CURVE_ROWS = tuple(f"{name}_" for name in _CURVES)
_FILES = ("send_time.json", "send_time_profiles.parquet", "send_time_curves.npz")
# the other per-profile values, each ``<name>.npy`` in the dtype it is held in, mapped: a
# worker holds none of them privately (format 1 read them from the Parquet file, 50 bytes a
# profile in every worker)
_ROW_ARRAYS = {
    "zone_code": np.int64,
    "timezone_source_code": np.int8,
    "cohort_code": np.int64,
    "basis_code": np.int8,
    "rate": np.float64,
    "data_weight": np.float64,
    "n_engagement_hours": np.float64,
    "n_sends": np.float64,
}


class SendTimeModel(EstimatorParams):
    """Per-profile 168-hour send-time curves with hierarchical shrinkage.

    Parameters
    ----------
    prior_strength_candidates : sequence of float
        Candidate profile -> cohort shrinkage strengths, in pseudo engagement events per week
        (spread over the 168 hours like the prior curve).
    cohort_strength_candidates : sequence of float
        Candidate cohort -> global shrinkage strengths, same unit.
    day_pooling_candidates : sequence of float
        Candidate weights in [0, 1] of the same hour on the other six days when smoothing.
    bandwidth_candidates : sequence of float
        Candidate standard deviations (hours) of the circular Gaussian smoothing.
    machine_open_seconds : float
        A response this soon after its send is treated as a likely machine open.
    machine_open_weight : float
        Weight of such a response (a human response weighs 1).
    activity_weight_candidates : sequence of float
        Candidate weights of one engagement hour relative to one email response.
    sharpness_candidates : sequence of float
        Candidate powers applied to the posterior curve (contrast calibration; 1 = none).
    rate_prior_strength : float
        Pseudo-sends shrinking a profile's response rate to the population's.
    n_alternatives : int
        Next-best send times returned by :meth:`best_send_time`.
    default_quiet_hours : (int, int) or None
        Local quiet hours used when the caller gives none, ``[start, end)``; may wrap midnight.
    holdout_days : float
        Length of the internal held-out period (end of the training data) for model selection.
    basis_profile_min_weight : float
        Minimum share of a profile's curve that comes from its own data for ``basis="profile"``.
    tz_min_events : int
        Minimum engagement hours before a time zone is inferred from behaviour.
    tz_min_posterior : float
        Minimum posterior of the best UTC offset (uniform prior over candidates) to infer a zone.
    tz_candidates : sequence of str or None
        Zones considered for inference; None means every known zone of the training profiles.
    non_engagement_events : sequence of str
        Event types that are not engagement (besides email sends, handled as exposure).
    guard_baselines : bool
        Compare the fitted curves with plain baselines on the held-out period and serve the
        winner (see :mod:`.baselines`).
    guard_windows : int
        Consecutive ``holdout_days`` periods before ``as_of`` the guard pools (rolling origin;
        each needs a refit, and more periods make its choice less of a coin toss).
    guard_profiles : int
        The guard stops adding periods once it has this many held-out (profile, period)
        pairs: a large population decides on its latest period alone (a hit-rate difference
        over 20,000 profiles has a standard error near 0.003), a small one pools them all.

    Attributes
    ----------
    as_of_ : Timestamp
        Training cutoff (UTC).
    profile_ids_ : Index
        Profiles with a curve (sorted): every profile with events before ``as_of``, plus the
        profiles listed in ``timezones``.
    id_index_ : IdIndex or None
        The id index of ``profile_ids_`` when a bundle shares its table's (the same ids):
        lookups search it instead of building a hash table over the ids; kept through
        :meth:`update` and :meth:`forget`.
    local_shape_, local_shape_sd_ : ndarray (n_profiles, 168), float32
        Posterior relative intensity (mean 1) per local hour of week, and its sd.
    local_curve_, local_curve_sd_ : ndarray (n_profiles, 168)
        Calibrated P(engage | send at local hour of week h) and its sd (derived).
    curve_, curve_sd_ : ndarray (n_profiles, 168)
        The same in UTC hour of week (hour 0 = Monday 00:00 UTC), zone offsets at ``as_of``.
    timing_ : ndarray (n_profiles, 168)
        ``local_shape_`` normalised over the week: when the profile engages.
    best_hour_, best_local_hour_ : ndarray (n_profiles,)
        Best UTC / local hour of week.
    timezone_, timezone_source_, basis_ : ndarray of str (n_profiles,)
        Zone used; ``known`` / ``inferred`` / ``utc``; ``profile`` / ``cohort`` / ``global``.
    data_weight_ : ndarray (n_profiles,)
        Share of the curve that comes from the profile's own evidence (drives ``basis``).
    rate_, global_rate_ : per-profile and population response rate per send (or activity rate
        per hour when ``probability_kind_ == "activity"``).
    calibration_ : dict or None
        Platt parameters of the probability, fitted on the internal held-out sends.
    prior_strength_, cohort_strength_, day_pooling_, bandwidth_, activity_weight_, sharpness_
        The selected hyper-parameters; ``selection_`` holds the held-out scores of every
        combination tried.
    served_ : str
        What the curves serve: ``model`` or the winning baseline; ``guard_`` holds every
        candidate's held-out hit rate and log-likelihood (None when nothing was compared).
    baseline_global_ : ndarray (168,)
        The population's engagement share per local hour of week (baselines of new profiles).
    """

    name: ClassVar[str] = "send_time"
    """The model's directory in a bundle and its step in the manifest."""
    id_index_: IdIndex | None = None

    def __init__(
        self,
        prior_strength_candidates: Sequence[float] = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0),
        cohort_strength_candidates: Sequence[float] = (30.0, 300.0, 3000.0),
        day_pooling_candidates: Sequence[float] = (0.1, 0.3, 1.0),
        bandwidth_candidates: Sequence[float] = (1.0, 1.5, 2.5),
        machine_open_seconds: float = 120.0,
        machine_open_weight: float = 0.1,
        activity_weight_candidates: Sequence[float] = (0.5, 1.0, 2.0, 4.0, 8.0),
        sharpness_candidates: Sequence[float] = (0.8, 1.0, 1.25, 1.5, 2.0),
        rate_prior_strength: float = 5.0,
        n_alternatives: int = 3,
        default_quiet_hours: tuple[int, int] | None = None,
        holdout_days: float = 21.0,
        basis_profile_min_weight: float = 0.3,
        tz_min_events: int = 8,
        tz_min_posterior: float = 0.8,
        tz_candidates: Sequence[str] | None = None,
        non_engagement_events: Sequence[str] = (
            "ad_impression",
            "email_bounce",
            "email_unsubscribe",
            "email_delivered",
        ),
        guard_baselines: bool = True,
        guard_windows: int = 3,
        guard_profiles: int = 20_000,
    ) -> None:
        self.prior_strength_candidates = prior_strength_candidates
        self.cohort_strength_candidates = cohort_strength_candidates
        self.day_pooling_candidates = day_pooling_candidates
        self.bandwidth_candidates = bandwidth_candidates
        self.machine_open_seconds = machine_open_seconds
        self.machine_open_weight = machine_open_weight
        self.activity_weight_candidates = activity_weight_candidates
        self.sharpness_candidates = sharpness_candidates
        self.rate_prior_strength = rate_prior_strength
        self.n_alternatives = n_alternatives
        self.default_quiet_hours = default_quiet_hours
        self.holdout_days = holdout_days
        self.basis_profile_min_weight = basis_profile_min_weight
        self.tz_min_events = tz_min_events
        self.tz_min_posterior = tz_min_posterior
        self.tz_candidates = tz_candidates
        self.non_engagement_events = non_engagement_events
        self.guard_baselines = guard_baselines
        self.guard_windows = guard_windows
        self.guard_profiles = guard_profiles

    # ---------------------------------------------------------------- construction helpers

    @classmethod
    def from_settings(cls, settings: Settings) -> SendTimeModel:
        """An unfitted model configured from ``settings.send_time``."""
        st = settings.send_time
        # an empty candidate list means "no restriction", as None does
        return cls(**constructor_args(cls, st, tz_candidates=tuple(st.tz_candidates or ()) or None))

    def fit(
        self,
        events: pd.DataFrame,
        as_of: pd.Timestamp | str,
        timezones: pd.Series | None = None,
        *,
        selection: Mapping[str, Any] | None = None,
        engine: CurveEngine | None = None,
    ) -> SendTimeModel:
        """Fit the curves from resolved events strictly before ``as_of``.

        Parameters
        ----------
        events : DataFrame
            Canonical events whose ``profile_id`` is the resolved profile (rows with a missing
            ``profile_id`` are ignored), restricted to eligible profiles.
        as_of : Timestamp
            Training cutoff (UTC; a naive value is read as UTC). Only events before it are used.
        timezones : Series, optional
            IANA time zone per profile (index ``profile_id``); NA or invalid names count as
            unknown. Profiles listed here without events still get a (cohort) curve.
        selection : dict, optional
            An earlier fit's ``selection_`` (same log, earlier ``as_of``): its hyper-parameters
            are reused, not searched again; calibration and guard are fitted on this data.
        engine : CurveEngine, optional
            Where the population-sized parts of the zone inference, the selection, the
            guard and the served curves are computed from the evidence (default
            :class:`~.fitting.LocalCurves`, in process; e.g. ``dmp_ml.scale.DaskCurves``).
            Every engine gives the same curves (to float rounding).
        """
        self._check_params()
        as_of_ts = utc_timestamp(as_of, "as_of", DataContractError)
        # the extraction is handed over, not kept here: the fit lets it go before its largest
        # moment (the served curves)
        self._fit_extracted(
            curves.extract(events, as_of_ts, self.non_engagement_events),
            as_of_ts,
            timezones,
            selection,
            engine,
        )
        return self

    def _fit_extracted(
        self,
        raw: dict[str, Any],
        as_of_ts: pd.Timestamp,
        timezones: pd.Series | None,
        selection: Mapping[str, Any] | None,
        engine: CurveEngine | None,
    ) -> curves.Evidence:
        """:meth:`fit` from the log's rows before ``as_of_ts`` (:func:`.curves.extract`; the
        guard's refits pass rows cut from this fit's, :func:`.curves.before`); returns the
        evidence the fit read (a guard window's history: its baselines read it too). The
        parameters are checked already (:meth:`fit`, or the refitted model's)."""
        profile_index = profile_universe(raw["profiles"], timezones)
        if len(profile_index) == 0:
            raise InsufficientDataError("send time: no profile has events before as_of")
        codes = curves.profile_codes(raw, profile_index)
        as_of_sec = int(as_of_ts.value // 1_000_000_000)
        full = curves.evidence(
            raw, codes, as_of_sec, self.machine_open_seconds, self.machine_open_weight
        )
        if len(full.act_p) == 0 and len(full.send_p) == 0:
            raise InsufficientDataError("send time: no engagement events before as_of")
        n = len(profile_index)

        engine = engine if engine is not None else LocalCurves()
        # ---- time zones: known, inferred from behaviour, else UTC
        known = known_zones(profile_index, timezones)
        zone_of, source, mixture = assign_zones(
            known,
            full,
            as_of_sec,
            self.tz_candidates,
            self.tz_min_events,
            self.tz_min_posterior,
            engine,
        )
        zones, zone_code, cohort_names, cohort_code = zones_and_cohorts(zone_of, source)
        converter = ZoneConverter(zones)
        if mixture is not None:
            mixture.link(cohort_names)

        # ---- model selection on an internal time split
        split_sec = as_of_sec - int(self.holdout_days * 86400)
        selected = select(
            self,
            raw,
            codes,
            n,
            zone_code,
            cohort_code,
            len(cohort_names),
            source,
            converter,
            split_sec,
            mixture,
            full,
            as_of_sec,
            engine,
            chosen=selection,
        )
        # ---- the guard: serve a plain baseline when it beats the curves on held-out time. Its
        # refits run on the engine too, before the served fit (the engine keeps its last fit
        # for ``baseline``)
        guard = None
        if self.guard_baselines:
            guard = baselines.compare(self, as_of_ts, timezones, selected, raw, engine)
        served = baselines.choose_served(guard)
        span_hours = curves.span_hours(raw, as_of_sec)
        # the rows are read (the evidence holds what the curves need): they go before the
        # served curves' counts are made, the fit's largest moment (the guard's refits too)
        del raw, codes
        fc = engine.fit(
            CurveInputs(
                full=full,
                n=n,
                zones=zones,
                zone_code=zone_code,
                cohort_code=cohort_code,
                n_cohorts=len(cohort_names),
                source=source,
                mixture=mixture,
                selected=selected,
                rate_strength=self.rate_prior_strength,
                span_hours=span_hours,
            )
        )
        alpha, beta, rho, bandwidth, activity_weight, sharpness = hyper(selected)
        calibration = selected.get("calibration") if fc.kind == "rate" else None
        weight = fc.data_weight
        basis = np.where(
            weight >= self.basis_profile_min_weight,
            0,
            np.where(source == 2, 2, 1),
        ).astype(np.int8)
        shape, shape_sd = fc.shape, fc.shape_sd
        if served != baselines.MODEL:
            shape, basis = engine.baseline(served, fc, cohort_code)
            shape_sd = np.zeros_like(shape)

        self.as_of_ = as_of_ts
        self.profile_ids_ = profile_index
        self.zones_ = zones
        self.zone_code_ = zone_code
        self.timezone_source_code_ = source.astype(np.int8)
        self.cohorts_ = cohort_names
        self.cohort_code_ = cohort_code.astype(np.int64)
        self.local_shape_ = shape.astype(np.float32, copy=False)
        self.local_shape_sd_ = shape_sd.astype(np.float32, copy=False)
        self.calibration_ = calibration
        self.global_shape_ = fc.global_shape
        self.cohort_shapes_ = fc.cohort_shapes
        self.rate_ = fc.rate
        self.global_rate_ = fc.global_rate
        self.data_weight_ = weight
        self.basis_code_ = basis
        self.n_engagement_hours_ = fc.engagement_hours
        self.n_sends_ = fc.sends
        self.probability_kind_ = fc.kind
        self.prior_strength_ = float(alpha)
        self.cohort_strength_ = float(beta)
        self.bandwidth_ = float(bandwidth)
        self.activity_weight_ = float(activity_weight)
        self.sharpness_ = float(sharpness)
        self.day_pooling_ = float(rho)
        self.selection_ = selected
        self.served_ = served
        self.guard_ = guard
        self.baseline_global_ = fc.baseline_global
        self.n_events_used_ = int(len(full.act_p) + len(full.send_p))
        logger.info("send time: %s", baselines.comparison_line(guard, served))
        logger.info(
            "send time: %d profiles, %d zones; selected prior %.3g, cohort %.3g, day pooling "
            "%.2g, bandwidth %.2g h, activity weight %.2g, sharpness %.2g",
            n,
            len(zones),
            alpha,
            beta,
            rho,
            bandwidth,
            activity_weight,
            sharpness,
        )
        return full

    def _check_params(self) -> None:
        for name in ("prior_strength_candidates", "cohort_strength_candidates"):
            values = list(getattr(self, name))
            if not values or any(v <= 0 for v in values):
                raise ValueError(f"{name} must be non-empty and positive")
        pools = list(self.day_pooling_candidates)
        if not pools or any(not 0 <= v <= 1 for v in pools):
            raise ValueError("day_pooling_candidates must be non-empty and within [0, 1]")
        for name in ("bandwidth_candidates", "activity_weight_candidates"):
            values = list(getattr(self, name))
            if not values or any(v < 0 for v in values):
                raise ValueError(f"{name} must be non-empty and >= 0")
        sharp = list(self.sharpness_candidates)
        if not sharp or any(v <= 0 for v in sharp):
            raise ValueError("sharpness_candidates must be non-empty and positive")
        if self.default_quiet_hours is not None:
            try:
                check_quiet_hours(self.default_quiet_hours)
            except RequestError as exc:
                raise ValueError(f"default_quiet_hours: {exc.message}") from exc

    # ---------------------------------------------------------------- fitted views

    def check_fitted(self) -> None:
        """Raise :class:`~sklearn.exceptions.NotFittedError` unless fitted or loaded."""
        if not hasattr(self, "local_shape_"):
            # imported here: serving a loaded model never needs scikit-learn
            from sklearn.exceptions import NotFittedError

            raise NotFittedError("this SendTimeModel is not fitted yet; call fit() or load()")

    @property
    def timezone_(self) -> np.ndarray:
        """Time zone used per profile (known, inferred or UTC)."""
        self.check_fitted()
        return np.asarray(self.zones_, dtype=object)[self.zone_code_]

    @property
    def timezone_source_(self) -> np.ndarray:
        """``known`` / ``inferred`` / ``utc`` per profile."""
        self.check_fitted()
        return np.asarray(TIMEZONE_SOURCES, dtype=object)[self.timezone_source_code_]

    @property
    def basis_(self) -> np.ndarray:
        """``profile`` / ``cohort`` / ``global`` per profile: how much was learned from it."""
        self.check_fitted()
        return np.asarray(BASES, dtype=object)[self.basis_code_]

    def _utc_index(self) -> np.ndarray:
        """For each profile and UTC hour of week, the local hour of week at ``as_of``."""
        conv = ZoneConverter(self.zones_)
        ref = int(self.as_of_.value // 1_000_000_000)
        offset_h = np.floor(conv.offsets_at(ref) / 3600).astype(np.int64)
        utc_how = np.arange(HOURS_PER_WEEK)
        return (utc_how[None, :] + offset_h[self.zone_code_][:, None]) % HOURS_PER_WEEK

    def probability(
        self, codes: np.ndarray, how: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Probability and its sd for profiles ``codes`` (row positions) at local hours ``how``.

        ``how`` has one row of local hours of week per code (None: all 168 hours).
        """
        if how is None:
            shape, sd = self.local_shape_[codes], self.local_shape_sd_[codes]
        else:  # a block of codes at a time: not every code's 168 values at once
            shape, sd = (
                curves.at_hours(rows, codes, how)
                for rows in (self.local_shape_, self.local_shape_sd_)
            )
        return curves.probability(
            shape.astype(np.float64),
            sd.astype(np.float64),
            self.rate_[codes],
            self.probability_kind_,
            self.calibration_,
        )

    @property
    def local_curve_(self) -> np.ndarray:
        """P(engage | send at local hour of week h), shape (n_profiles, 168)."""
        self.check_fitted()
        return self.probability(np.arange(len(self.profile_ids_)))[0]

    @property
    def local_curve_sd_(self) -> np.ndarray:
        """Posterior sd of :attr:`local_curve_`, shape (n_profiles, 168)."""
        self.check_fitted()
        return self.probability(np.arange(len(self.profile_ids_)))[1]

    @property
    def timing_(self) -> np.ndarray:
        """When each profile engages: the intensity normalised over the 168 local hours."""
        self.check_fitted()
        return curves.timing(np.asarray(self.local_shape_))  # mapped or overlaid rows

    @property
    def curve_(self) -> np.ndarray:
        """P(engage | send at UTC hour of week h), shape (n_profiles, 168), offsets at as_of."""
        self.check_fitted()
        return np.take_along_axis(self.local_curve_, self._utc_index(), axis=1)

    @property
    def curve_sd_(self) -> np.ndarray:
        """Posterior standard deviation of :attr:`curve_`, shape (n_profiles, 168)."""
        self.check_fitted()
        return np.take_along_axis(self.local_curve_sd_, self._utc_index(), axis=1)

    @property
    def best_local_hour_(self) -> np.ndarray:
        """Best local hour of week per profile (0 = local Monday 00:00)."""
        self.check_fitted()
        return np.asarray(self.local_shape_).argmax(axis=1)

    @property
    def best_hour_(self) -> np.ndarray:
        """Best UTC hour of week per profile, using each zone's UTC offset at ``as_of``."""
        self.check_fitted()
        shape = np.asarray(self.local_shape_)
        return np.take_along_axis(shape, self._utc_index(), axis=1).argmax(axis=1)

    def profiles_frame(self) -> pd.DataFrame:
        """One row per profile: zone, basis, best hour, its probability and posterior sd
        (:func:`dmp_ml.models.send_time.decision.profiles_frame`)."""
        return profiles_frame(self)

    # ---------------------------------------------------------------- decision
    def best_send_time(
        self, profile_ids: Iterable[str] | None = None, **request: Any
    ) -> SendTimeDecision:
        """The best allowed send hour per profile in a window; ``request`` (``window_start``,
        ``window_hours``, ``quiet_hours``, ``timezone``) as in
        :func:`dmp_ml.models.send_time.decision.best_send_time`."""
        return best_send_time(self, profile_ids, **request)

    # per-profile fitted attributes, row-aligned with ``profile_ids_``
    _PROFILE_ROWS = (
        "zone_code_",
        "timezone_source_code_",
        "cohort_code_",
        "basis_code_",
        "rate_",
        "data_weight_",
        "n_engagement_hours_",
        "n_sends_",
        "local_shape_",
        "local_shape_sd_",
    )

    def detached(self) -> SendTimeModel:
        """A copy that :meth:`update` and :meth:`forget` can change while this model keeps
        answering: the rows the curves hold over their base copied, the rest shared (replaced,
        never written, on update)."""
        other = copy.copy(self)
        for name in _CURVE_ROWS:
            held = getattr(self, name)
            if isinstance(held, OverlaidRows):
                setattr(other, name, held.copy())
        return other

    def take_profiles(self, rows: np.ndarray) -> SendTimeModel:
        """Keep only the profiles at positions ``rows`` (in place; erasure and refresh)."""
        rows = np.asarray(rows, dtype=np.int64)
        self.profile_ids_ = pd.Index(self.profile_ids_[rows], name="profile_id")
        self.id_index_ = None
        for name in self._PROFILE_ROWS:
            held = getattr(self, name)
            if isinstance(held, OverlaidRows):
                held.select(rows)  # the rows kept read from where they are held
            else:
                setattr(self, name, np.asarray(held)[rows])
        return self

    def forget(self, profile_ids: Iterable[str]) -> int:
        """Drop the curves of ``profile_ids`` (erasure); returns how many the model held."""
        self.check_fitted()
        gone = pd.Index([str(p) for p in profile_ids], dtype="string").unique()
        rows = rows_of(self.profile_ids_, self.id_index_, gone)
        if not (rows >= 0).any():
            return 0
        keep = np.ones(len(self.profile_ids_), dtype=bool)
        keep[rows[rows >= 0]] = False
        ids = self.id_index_
        self.take_profiles(np.flatnonzero(keep))
        if ids is not None:  # the kept ids stay in id order: the index follows
            self.id_index_ = ids.merged(gone[rows >= 0], [], self.profile_ids_)
        return int((rows >= 0).sum())

    # ---------------------------------------------------------------- near-real-time refresh

    def update(self, change: ProfileUpdate) -> SendTimeModel:
        """Recompute the curves of the touched profiles from their resolved events (in place).

        The population parts of the fit stay as they are: the selected hyper-parameters, the
        cohort and global curves, the response rate and the calibration; only a retrain
        re-selects them. ``change.removed`` are dropped first. A new profile takes its zone
        from ``change.timezones`` when known (its zone's cohort curve as prior), else UTC with
        the unknown-zone cohort (a full fit mixes zones for it). Evidence is read from
        ``change.events`` before ``change.as_of``.
        """
        self.check_fitted()
        self.forget(change.removed)
        ids = pd.Index(change.profile_ids, dtype="string")
        if len(ids) == 0:
            return self
        as_of = change.as_of
        timezones = change.timezones
        raw = curves.extract(change.events, as_of, self.non_engagement_events)
        codes = curves.profile_codes(raw, ids)
        as_of_sec = int(as_of.value // 1_000_000_000)
        ev = curves.evidence(
            raw, codes, as_of_sec, self.machine_open_seconds, self.machine_open_weight
        )
        n = len(ids)
        existing = rows_of(self.profile_ids_, self.id_index_, ids)
        old = existing >= 0
        zones = list(self.zones_)
        cohorts = list(self.cohorts_)
        cohort_shapes = np.asarray(self.cohort_shapes_, dtype=np.float64)

        def zone(name: str) -> int:
            if name not in zones:
                zones.append(name)
            return zones.index(name)

        def cohort(name: str) -> int:
            nonlocal cohort_shapes
            if name not in cohorts:
                cohorts.append(name)
                cohort_shapes = np.vstack([cohort_shapes, np.asarray(self.global_shape_)[None, :]])
            return cohorts.index(name)

        zone_code = np.zeros(n, dtype=np.int64)
        source = np.zeros(n, dtype=np.int64)
        cohort_code = np.zeros(n, dtype=np.int64)
        zone_code[old] = self.zone_code_[existing[old]]
        source[old] = self.timezone_source_code_[existing[old]]
        cohort_code[old] = self.cohort_code_[existing[old]]
        for i in np.flatnonzero(~old):
            tz = None
            if timezones is not None and ids[i] in timezones.index:
                value = timezones.loc[ids[i]]
                tz = str(value) if valid_zone(value) else None
            if tz is None:
                zone_code[i], source[i], cohort_code[i] = zone("UTC"), 2, cohort(UNKNOWN_COHORT)
            else:
                zone_code[i], source[i], cohort_code[i] = zone(tz), 0, cohort(tz)
        counts = curves.count_hours(ev, n, zone_code, ZoneConverter(zones))
        s = float(self.rate_prior_strength)
        sends_tot = counts.sends.sum(axis=1, dtype=np.float64)
        resp_tot = counts.responses.sum(axis=1)
        act_tot = counts.activity.sum(axis=1, dtype=np.float64)
        if self.probability_kind_ == "rate":
            g = float(self.global_rate_)
            rate = (resp_tot + s * g) / (sends_tot + s)
            expo = rate[:, None] * counts.sends
        else:
            g = max(float(self.global_rate_), 1e-12)
            hours = self._fit_span_hours() + (as_of - self.as_of_).total_seconds() / 3600.0
            rate = (act_tot + s) / (max(hours, 1.0) + s / g)
            expo = np.zeros_like(counts.sends)
        kernel = curves.kernel(self.bandwidth_, self.day_pooling_)
        w = float(self.activity_weight_)
        ys = np.maximum(
            curves.smooth(counts.responses, kernel) + w * curves.smooth(counts.activity, kernel), 0
        )
        es = np.maximum(curves.smooth(expo, kernel), 0.0) + w * (act_tot / HOURS_PER_WEEK)[:, None]
        a_bin = float(self.prior_strength_) / HOURS_PER_WEEK
        prior = cohort_shapes[cohort_code]
        a = a_bin * prior + ys
        b = a_bin + es
        shape = a / b
        shape_sd = np.sqrt(a) / b
        sharp = float(self.sharpness_)
        if sharp != 1.0:
            powered = shape**sharp
            scale = powered.mean(axis=1, keepdims=True)
            shape_sd = sharp * shape ** (sharp - 1.0) * shape_sd / scale
            shape = powered / scale
        weight = es.sum(axis=1) / b.sum(axis=1)
        basis = np.where(
            weight >= self.basis_profile_min_weight, 0, np.where(source == 2, 2, 1)
        ).astype(np.int8)
        if self.served_ != baselines.MODEL:
            shape, basis = baselines.baseline_shapes(
                self.served_, counts.activity, self.baseline_global_, cohort_shapes, cohort_code
            )
            shape_sd = np.zeros_like(shape)
        rows = {
            "zone_code_": zone_code,
            "timezone_source_code_": source.astype(np.int8),
            "cohort_code_": cohort_code,
            "basis_code_": basis,
            "rate_": rate,
            "data_weight_": weight,
            "n_engagement_hours_": act_tot,
            "n_sends_": sends_tot,
            "local_shape_": shape.astype(np.float32),
            "local_shape_sd_": shape_sd.astype(np.float32),
        }
        self.zones_ = zones
        self.cohorts_ = cohorts
        self.cohort_shapes_ = cohort_shapes
        # the new profiles merged in id order (found without sorting every id; a batch of
        # profiles the model holds merges nothing: their rows are replaced where they are);
        # the curves (168 values a profile) take the batch's rows over their mapped base, the
        # other arrays are copied once (never written in place: a detached copy shares them)
        added = pd.Index(ids[~old], dtype="string")
        at = existing[old]
        order = None
        if len(added):
            keep = np.zeros(len(self.profile_ids_), bool)
            if self.id_index_ is not None:
                order = self.id_index_.merge_order(self.profile_ids_, keep, added)
            else:
                order = id_merge_order(self.profile_ids_, keep, added)
            where = np.empty(len(order), dtype=np.int64)  # each held row's place after it
            where[order] = np.arange(len(order))
            at = where[at]
        for name, values in rows.items():
            held = getattr(self, name)
            if name in _CURVE_ROWS:
                if not isinstance(held, OverlaidRows):
                    held = OverlaidRows(held)
                held[existing[old]] = values[old]
                if order is not None:
                    held.merge(values[~old].astype(held.dtype), order)
                setattr(self, name, held)
                continue
            held = np.asarray(held)
            if order is None:
                merged = held.copy()
            else:
                merged = stacked_take(held, values[~old].astype(held.dtype), order)
            merged[at] = values[old].astype(held.dtype, copy=False)
            setattr(self, name, merged)
        if order is not None:
            all_ids = self.profile_ids_.append(added)
            self.profile_ids_ = pd.Index(all_ids[order], name="profile_id")
            if self.id_index_ is not None:
                self.id_index_ = self.id_index_.merged([], added, self.profile_ids_)
        logger.debug("send time: %d curves refreshed", n)
        return self

    def _fit_span_hours(self) -> float:
        """The activity-rate span of the fit, recovered from any profile's rate (activity kind)."""
        s = float(self.rate_prior_strength)
        g = max(float(self.global_rate_), 1e-12)
        i = int(np.argmax(self.n_engagement_hours_)) if len(self.rate_) else 0
        if not len(self.rate_) or self.rate_[i] <= 0:
            return 1.0
        return float((self.n_engagement_hours_[i] + s) / self.rate_[i] - s / g)

    # ---------------------------------------------------------------- persistence

    def save(self, directory: str | Path) -> Path:
        """Write the fitted model to ``directory`` (JSON + Parquet + NPZ + NPY; no pickle); the
        per-profile curves as ``.npy`` files that :meth:`load` maps."""
        self.check_fitted()
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        meta = {
            "format_version": FORMAT_VERSION,
            "params": _jsonable(self.get_params()),
            "as_of": self.as_of_.isoformat(),
            "zones": list(self.zones_),
            "cohorts": list(self.cohorts_),
            "probability_kind": self.probability_kind_,
            "global_rate": self.global_rate_,
            "prior_strength": self.prior_strength_,
            "cohort_strength": self.cohort_strength_,
            "bandwidth": self.bandwidth_,
            "activity_weight": self.activity_weight_,
            "sharpness": self.sharpness_,
            "calibration": self.calibration_,
            "day_pooling": self.day_pooling_,
            "selection": _jsonable(self.selection_),
            "served": self.served_,
            "guard": _jsonable(self.guard_),
            "n_events_used": self.n_events_used_,
        }
        profiles = pd.DataFrame({"profile_id": pd.array(self.profile_ids_, dtype="string")})
        profiles.to_parquet(path / _FILES[1], index=False)
        for name, dtype in _ROW_ARRAYS.items():
            write_array(path / f"{name}.npy", np.asarray(getattr(self, f"{name}_"), dtype))
        for name in _CURVES:
            write_array(path / f"{name}.npy", np.asarray(getattr(self, f"{name}_"), np.float32))
        np.savez(
            path / _FILES[2],
            global_shape=self.global_shape_,
            cohort_shapes=self.cohort_shapes_,
            baseline_global=self.baseline_global_,
        )
        (path / _FILES[0]).write_text(json.dumps(meta, indent=2), encoding="utf-8")
        return path

    @classmethod
    def load(cls, directory: str | Path, n_threads: int | None = None) -> SendTimeModel:
        """Read a model written by :meth:`save`; raises BundleError when files are missing.

        ``n_threads`` is accepted for the bundle protocol; the model runs no thread pools.
        """
        path = Path(directory)
        try:
            meta = json.loads((path / _FILES[0]).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise BundleError(f"send-time model in {path} is unreadable: {exc}") from exc
        if meta.get("format_version") != FORMAT_VERSION:
            raise BundleError(
                f"send-time model format {meta.get('format_version')!r} is not "
                f"{FORMAT_VERSION!r}: retrain"
            )
        names = (*_ROW_ARRAYS, *_CURVES)
        missing = [n for n in (*_FILES, *(f"{a}.npy" for a in names)) if not (path / n).exists()]
        if missing:
            raise BundleError(f"send-time model in {path} is missing {', '.join(missing)}")
        try:
            profiles = pd.read_parquet(path / _FILES[1])
            with np.load(path / _FILES[2], allow_pickle=False) as arrays:
                stored = {key: arrays[key] for key in arrays.files}
            stored.update({name: map_array(path / f"{name}.npy") for name in names})
        except (OSError, ValueError, KeyError) as exc:
            raise BundleError(f"send-time model in {path} is unreadable: {exc}") from exc
        params = dict(meta["params"])
        for key in (
            "prior_strength_candidates",
            "cohort_strength_candidates",
            "day_pooling_candidates",
            "bandwidth_candidates",
            "activity_weight_candidates",
            "sharpness_candidates",
            "non_engagement_events",
        ):
            params[key] = tuple(params[key])
        if params.get("default_quiet_hours") is not None:
            params["default_quiet_hours"] = tuple(params["default_quiet_hours"])
        if params.get("tz_candidates") is not None:
            params["tz_candidates"] = tuple(params["tz_candidates"])
        model = cls(**params)
        model.as_of_ = pd.Timestamp(meta["as_of"])
        model.profile_ids_ = pd.Index(profiles["profile_id"].astype("string"), name="profile_id")
        model.zones_ = list(meta["zones"])
        model.cohorts_ = list(meta["cohorts"])
        for name in _ROW_ARRAYS:
            setattr(model, f"{name}_", stored[name])
        model.local_shape_ = stored["local_shape"]
        model.local_shape_sd_ = stored["local_shape_sd"]
        model.global_shape_ = stored["global_shape"]
        model.cohort_shapes_ = stored["cohort_shapes"]
        model.probability_kind_ = meta["probability_kind"]
        model.global_rate_ = float(meta["global_rate"])
        model.prior_strength_ = float(meta["prior_strength"])
        model.cohort_strength_ = float(meta["cohort_strength"])
        model.bandwidth_ = float(meta["bandwidth"])
        model.activity_weight_ = float(meta["activity_weight"])
        model.sharpness_ = float(meta["sharpness"])
        model.calibration_ = meta["calibration"]
        model.day_pooling_ = float(meta["day_pooling"])
        model.selection_ = meta["selection"]
        model.served_ = str(meta.get("served", baselines.MODEL))
        model.guard_ = meta.get("guard")
        model.baseline_global_ = stored.get(
            "baseline_global", np.asarray(model.global_shape_, dtype=np.float64) / HOURS_PER_WEEK
        )
        if model.served_ != baselines.MODEL and model.served_ not in baselines.BASELINES:
            raise BundleError(f"send-time model serves unknown {model.served_!r}")
        model.n_events_used_ = int(meta["n_events_used"])
        n = len(model.profile_ids_)
        if model.local_shape_.shape != (n, HOURS_PER_WEEK) or any(
            len(stored[name]) != n for name in _ROW_ARRAYS
        ):
            raise BundleError("send-time model arrays do not match its profile list")
        return model


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value
