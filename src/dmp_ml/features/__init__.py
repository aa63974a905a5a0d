"""Point-in-time behavioural features: one row per eligible profile as of a cutoff.

Only events with ``event_time < as_of`` count, after identity resolution
(:mod:`dmp_ml.identity`). Windows are trailing: an event is in the ``30d`` window when
``as_of - 30 days <= event_time < as_of``. Column families (``{w}`` runs over
``settings.features.windows_days``, ``{type}`` over the event-type vocabulary below):

* identity: ``is_anonymous`` (0/1), ``n_cookies``, ``n_shared_devices``;
* lifecycle: ``tenure_days`` (since first seen), ``days_since_last_event``,
  ``event_count_{w}d``, ``event_count_total``, ``active_days_{w}d`` (how many of the 24-hour
  periods ``(as_of - (k + 1) days, as_of - k days]``, k < w, hold an event),
  ``activity_decayed`` (engagement events weighted ``0.5 ** (age_days / half_life_days)``);
* per event type: ``{type}_count_{w}d``, ``{type}_count_total``, ``{type}_days_total``
  (occasions: how many of the 24-hour periods of ``active_days``, over the whole history,
  hold one; a basket logged as ten order lines is one purchase day), ``days_since_{type}``,
  ``{type}_decayed``, ``{type}_tenure_days`` (since the first one) and
  ``{type}_mean_gap_days`` (first to last over days_total - 1: the mean time between its
  occasions, NaN below two). The vocabulary is the well-known types (always present, so the
  schema is stable) plus any other type with at least ``vocab_min_share`` of the events (at most
  ``vocab_max_extra`` of them, the most frequent, ties by name); the rest is ``other_event``;
* money: ``value_sum_{w}d``, ``value_sum_total``, ``value_mean`` (over events with a value);
* mixes: ``category_share_<cat>`` for the top-K categories by event count (plus
  ``category_share_other``; shares of the profile's categorised events), ``channel_share_<ch>``
  (frequent channels by the same rule as types, plus ``channel_share_other``) and
  ``source_share_{first,second,third}_party`` (shares of all the profile's events);
* email: ``email_open_rate_smoothed``, ``email_click_rate_smoothed``: distinct campaigns
  opened (clicked) over sends in the longest window, shrunk to the population rate with a Beta
  prior of ``rate_prior_strength`` pseudo-sends: ``(opens + k * p0) / (sends + k)``;
* profile attributes: numeric ones as float64, datetimes as ``days_since_<col>``, text as
  ``category``. Direct identifiers (``email``, phone, name, address, ip, ``*_id`` ...) and
  identifier-like text columns (more than 1,000 distinct values, or one per row) are never used.
  Attributes are taken as given: supply point-in-time snapshots when training on old cutoffs.

Missing values: ``days_since_*``, ``*_tenure_days`` and ``value_mean`` are NaN when the event
never happened (an honest "never": LightGBM routes NaN natively; distance-based consumers must
impute, e.g. with the column maximum). Counts, sums and shares are 0 when there is nothing to count.

The 168-bin ``hour_of_week`` matrix counts engagement events (all but
``passive_event_types``) per hour of week in the profile's local time (``profiles.timezone``,
UTC when missing or invalid), hour 0 = Monday 00:00.

Layout: :mod:`~dmp_ml.features.table` (FeatureSpec, FeatureTable and its Parquet form),
:mod:`~dmp_ml.features.params` (windows and vocabularies), :mod:`~dmp_ml.features.profiles`
(time zones, attributes), :mod:`~dmp_ml.features.clock` (local hour of week),
:mod:`~dmp_ml.features.aggregate` (the per-profile reductions) and
:mod:`~dmp_ml.features.build` (one build path over an engine: in process, or Dask via
:mod:`dmp_ml.scale`).

Names load from their module on first use, so reading a feature table (a bundle) does not import
the build path (identity, settings, the aggregations). The reduction itself is
:func:`dmp_ml.features.aggregate.aggregate` (the module's name is taken by the module).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dmp_ml._lazy import lazy_exports

_LAZY = {
    "ENCODED_COLUMNS": "dmp_ml.features.aggregate",
    "EventArrays": "dmp_ml.features.aggregate",
    "gather": "dmp_ml.features.aggregate",
    "FeatureBuilder": "dmp_ml.features.build",
    "FeatureEngine": "dmp_ml.features.build",
    "PandasEngine": "dmp_ml.features.build",
    "build_features": "dmp_ml.features.build",
    "engine_for": "dmp_ml.features.build",
    "feature_settings": "dmp_ml.features.build",
    "finalize": "dmp_ml.features.build",
    "small_pages": "dmp_ml.pages",
    "LocalClock": "dmp_ml.features.clock",
    "local_hour_of_week": "dmp_ml.features.clock",
    "utc_hour_of_week": "dmp_ml.features.clock",
    "OTHER_EVENT": "dmp_ml.features.params",
    "FeatureParams": "dmp_ml.features.params",
    "fit_params": "dmp_ml.features.params",
    "params_from_codes": "dmp_ml.features.params",
    "slug": "dmp_ml.features.params",
    "profile_attributes": "dmp_ml.features.profiles",
    "profile_timezones": "dmp_ml.features.profiles",
    "FEATURE_VERSION": "dmp_ml.features.table",
    "HOURS_PER_WEEK": "dmp_ml.features.table",
    "HOW_PREFIX": "dmp_ml.features.table",
    "FeatureSpec": "dmp_ml.features.table",
    "FeatureTable": "dmp_ml.features.table",
}

if TYPE_CHECKING:  # pragma: no cover
    from dmp_ml.features.aggregate import ENCODED_COLUMNS, EventArrays, gather
    from dmp_ml.features.build import (
        FeatureBuilder,
        FeatureEngine,
        PandasEngine,
        build_features,
        engine_for,
        feature_settings,
        finalize,
    )
    from dmp_ml.features.clock import LocalClock, local_hour_of_week, utc_hour_of_week
    from dmp_ml.features.params import (
        OTHER_EVENT,
        FeatureParams,
        fit_params,
        params_from_codes,
        slug,
    )
    from dmp_ml.features.profiles import profile_attributes, profile_timezones
    from dmp_ml.features.table import (
        FEATURE_VERSION,
        HOURS_PER_WEEK,
        HOW_PREFIX,
        FeatureSpec,
        FeatureTable,
    )
    from dmp_ml.pages import small_pages


__all__ = [
    "ENCODED_COLUMNS",
    "EventArrays",
    "FEATURE_VERSION",
    "FeatureBuilder",
    "FeatureEngine",
    "FeatureParams",
    "FeatureSpec",
    "FeatureTable",
    "HOURS_PER_WEEK",
    "HOW_PREFIX",
    "LocalClock",
    "OTHER_EVENT",
    "PandasEngine",
    "build_features",
    "engine_for",
    "feature_settings",
    "finalize",
    "fit_params",
    "gather",
    "local_hour_of_week",
    "params_from_codes",
    "profile_attributes",
    "profile_timezones",
    "slug",
    "small_pages",
    "utc_hour_of_week",
]

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, __all__)
