"""Building a feature table: identity, vocabularies, reductions and assembly, on one engine.

One path serves every engine: the ids are encoded and identity is resolved here, the
vocabularies are chosen here (:func:`~dmp_ml.features.params.params_from_codes`), an engine
turns the eligible events into the feature block (in process: :class:`PandasEngine`; on a Dask
cluster: :class:`dmp_ml.scale.DaskEngine`), and :func:`finalize` completes the table here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa

from dmp_ml import identity
from dmp_ml.features.aggregate import ENCODED_COLUMNS, aggregate, gather
from dmp_ml.features.params import (
    DAY_NS,
    INTERNAL_COLUMNS,
    FeatureParams,
    params_from_codes,
)
from dmp_ml.features.profiles import profile_attributes, profile_timezones
from dmp_ml.features.table import FEATURE_VERSION, FeatureSpec, FeatureTable
from dmp_ml.pages import small_pages
from dmp_ml.rows import distinct
from dmp_ml.settings import FeatureSettings, Settings, load_settings
from dmp_ml.times import utc


class FeatureEngine(Protocol):
    """Where the per-event work runs: ``resolve`` identity, ``gather`` the eligible events,
    then ``aggregate`` them.

    An engine is a context manager (``with engine:`` holds its resources, e.g. a Dask client,
    for several calls). ``resolve(events, codes, as_of, fs, consent=, links=, erased=)``
    returns :func:`dmp_ml.identity.resolve_codes`'s result; ``gather(events, codes, rows,
    profile_codes, params)`` takes the eligible rows ``rows`` of
    ``events`` with their profile (0..n-1); ``aggregate(gathered, n, params, tz_codes,
    tz_names)`` returns ``block`` (n_columns, n) and ``how`` (n, 168) as :func:`aggregate`
    does. Between the two calls the builder drops the encoded log, so ``gather`` should copy
    out of it what ``aggregate`` needs (and nothing more).
    """

    resolve: Callable[..., identity.Resolved]

    def __enter__(self) -> Any: ...

    def __exit__(self, *exc: object) -> None: ...

    gather: Callable[[pd.DataFrame, identity.IdCodes, np.ndarray, np.ndarray, FeatureParams], Any]
    aggregate: Callable[
        [Any, int, FeatureParams, np.ndarray, Sequence[str]], tuple[np.ndarray, np.ndarray]
    ]


class PandasEngine:
    """In process: identity over the encoded log, then :func:`gather` and :func:`aggregate`
    over all profiles at once."""

    gather = staticmethod(gather)
    aggregate = staticmethod(aggregate)

    def __enter__(self) -> PandasEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def resolve(
        self,
        events: pd.DataFrame,
        codes: identity.IdCodes,
        as_of: pd.Timestamp,
        fs: FeatureSettings,
        *,
        consent: pd.DataFrame | None = None,
        links: pd.DataFrame | None = None,
        erased: Iterable[str] = (),
    ) -> identity.Resolved:
        """:func:`dmp_ml.identity.resolve_codes` over ``codes`` (``events`` is not read)."""
        return identity.resolve_codes(codes, as_of, fs, consent=consent, links=links, erased=erased)


def engine_for(fs: FeatureSettings) -> FeatureEngine:
    """The engine ``features.engine`` names (Dask: on ``dask_scheduler``, ``dask_partitions``)."""
    if fs.engine == "dask":
        from dmp_ml.scale import DaskEngine

        return DaskEngine(fs.dask_scheduler, fs.dask_partitions)
    return PandasEngine()


def feature_settings(settings: Settings | FeatureSettings | None) -> FeatureSettings:
    """The ``features`` section of ``settings`` (None: the loaded settings)."""
    if settings is None:
        return load_settings().features
    if isinstance(settings, FeatureSettings):
        return settings
    return settings.features


def build_features(
    events: pd.DataFrame,
    as_of: pd.Timestamp | str,
    profiles: pd.DataFrame | None = None,
    consent: pd.DataFrame | None = None,
    settings: Settings | FeatureSettings | None = None,
    *,
    links: pd.DataFrame | None = None,
    erased: Iterable[str] = (),
    categories: Sequence[str] | None = None,
    reference: FeatureSpec | None = None,
    engine: FeatureEngine | None = None,
    encoded: Mapping[str, tuple[np.ndarray, pa.Array]] | None = None,
) -> FeatureTable:
    """Features of every eligible profile from the events before ``as_of``.

    Parameters
    ----------
    events : contract event frame.
    as_of : cutoff (naive = UTC); only ``event_time < as_of`` counts.
    profiles : optional profile attributes (``profile_id``, optional ``timezone``, ...).
    consent : optional consent records; see :mod:`dmp_ml.identity`.
    settings : :class:`~dmp_ml.settings.Settings` (or its ``features`` section); None = defaults.
        ``features.engine == "dask"`` runs the reductions on Dask (:mod:`dmp_ml.scale`).
    links : optional extra cookie/profile links.
    erased : ids on the erasure list.
    categories : the category vocabulary to use instead of the top-K at ``as_of`` (e.g.
        ``train_table.spec.categories`` when scoring).
    reference : a training table's spec: reuse its vocabularies and return exactly its columns.
    engine : where the reductions run; default: the one ``settings.features.engine`` names
        (e.g. ``dmp_ml.scale.DaskEngine(client)`` for a given Dask client). Every engine gives
        the same table, bit for bit.
    encoded : columns' dictionary codes as the loader computed them (``LoadResult.encoded``:
        the ids, and the text columns it kept as dictionaries), row for row with ``events``;
        saves encoding them again.

    Returns
    -------
    FeatureTable
        ``frame`` indexed by ``profile_id`` (sorted), ``hour_of_week`` (n, 168), ``spec``,
        ``summary`` (identity counts plus ``features``, ``timezones_invalid``) and ``cookie_map``.
    """
    fs = feature_settings(settings)
    engine = engine if engine is not None else engine_for(fs)
    # Arrow work (encoding, lookups, sorting) runs in a helper thread while NumPy works here;
    # the engine is held open for the whole build (Dask: one client for identity and features)
    with engine, small_pages(), ThreadPoolExecutor(max_workers=1) as helper:
        codes = identity.encode_ids(events, encoded=encoded)
        # the campaign ids too when the loader coded them (else gather codes the few it reads)
        given = ["campaign_id"] if encoded is not None and "campaign_id" in encoded else []
        extra = helper.submit(identity.encode_given, events, [*ENCODED_COLUMNS, *given], encoded, 1)
        return _build(
            events,
            codes,
            extra,
            helper,
            utc(as_of, "as_of"),
            profiles,
            consent,
            fs,
            links,
            erased,
            categories,
            reference,
            engine,
        )


def _build(
    events: pd.DataFrame,
    codes: identity.IdCodes,
    extra: Future[dict[str, tuple[np.ndarray, pa.Array]]] | None,
    helper: ThreadPoolExecutor,
    as_of: pd.Timestamp,
    profiles: pd.DataFrame | None,
    consent: pd.DataFrame | None,
    fs: FeatureSettings,
    links: pd.DataFrame | None,
    erased: Iterable[str],
    categories: Sequence[str] | None,
    reference: FeatureSpec | None,
    engine: FeatureEngine,
    res: identity.Resolved | None = None,
) -> FeatureTable:
    """The build over encoded ids; ``extra`` (the other encoded columns) may still be in
    flight on ``helper`` while identity is resolved (``res``: already resolved as of
    ``as_of``)."""
    if res is None:
        res = engine.resolve(events, codes, as_of, fs, consent=consent, links=links, erased=erased)
    if extra is not None:
        codes = identity.IdCodes(codes.n, codes.t, {**codes.columns, **extra.result()})
    params = params_from_codes(codes, res.rows, as_of, fs, categories, reference)
    gathered = engine.gather(events, codes, res.rows, res.profile_codes, params)
    resolved, summary, links = res.profiles, dict(res.summary), res.links()
    attributes = helper.submit(
        profile_attributes, resolved.index, profiles, as_of, params.columns()
    )
    del codes, res  # the encoded input is no longer needed here: keep the peak memory down
    tz_codes, tz_names, n_invalid = profile_timezones(resolved.index, profiles)
    block, how = engine.aggregate(gathered, len(resolved), params, tz_codes, tz_names)
    del gathered
    summary["timezones_invalid"] = n_invalid
    return finalize(
        block,
        how,
        resolved,
        params,
        fs,
        as_of,
        summary,
        reference,
        links,
        attributes.result(),
    )


def finalize(
    block: np.ndarray,
    how: np.ndarray,
    resolved_profiles: pd.DataFrame,
    params: FeatureParams,
    fs: FeatureSettings,
    as_of: pd.Timestamp,
    summary: dict[str, int],
    reference: FeatureSpec | None,
    links: pd.Series | Callable[[], pd.Series] | None,
    attributes: pd.DataFrame,
) -> FeatureTable:
    """Identity columns, population-smoothed rates, attributes, spec: the finished table.

    ``block`` is the (n_columns, n) output of :func:`aggregate` for all profiles, rows in
    ``resolved_profiles`` order; it is completed in place. ``attributes`` is
    :func:`profile_attributes` for the same profiles; ``links`` the table's cookie links (see
    :class:`~dmp_ml.features.table.FeatureTable`).
    """
    cols = params.columns()
    pos = {c: i for i, c in enumerate(cols)}
    block[pos["is_anonymous"]] = resolved_profiles["is_anonymous"].to_numpy(dtype=np.float64)
    block[pos["n_cookies"]] = resolved_profiles["n_cookies"].to_numpy(dtype=np.float64)
    block[pos["n_shared_devices"]] = resolved_profiles["n_shared_devices"].to_numpy(np.float64)
    first_ns = pd.DatetimeIndex(resolved_profiles["first_seen"]).as_unit("ns").asi8
    block[pos["tenure_days"]] = (as_of.value - first_ns) / DAY_NS
    sends = block[pos["_email_sends"]]
    k = float(fs.rate_prior_strength)
    prior: dict[str, float] = {}
    for name, raw in (("open", "_email_opens"), ("click", "_email_clicks")):
        hits = block[pos[raw]]
        total_sends = float(sends.sum())
        p0 = float(hits.sum()) / total_sends if total_sends > 0 else 0.0
        prior[f"email_{name}_rate_population"] = p0
        block[pos[f"email_{name}_rate_smoothed"]] = (hits + k * p0) / (sends + k)
    public = len(cols) - len(INTERNAL_COLUMNS)
    numeric = pd.DataFrame(
        block[:public].T, index=resolved_profiles.index, columns=cols[:public], copy=False
    )
    frame = pd.concat([numeric, attributes], axis=1) if len(attributes.columns) else numeric
    if reference is not None:
        frame = _align(frame, reference)
    categorical = [c for c in frame.columns if isinstance(frame[c].dtype, pd.CategoricalDtype)]
    spec = FeatureSpec(
        version=FEATURE_VERSION,
        as_of=as_of,
        columns={c: ("category" if c in categorical else "float64") for c in frame.columns},
        categorical=categorical,
        event_types=list(params.event_types),
        channels=list(params.channels),
        categories=list(params.categories),
        params={
            **params.to_dict(),
            "rate_prior_strength": k,
            "cookie_ttl_days": fs.cookie_ttl_days,
            "passive_event_types": list(fs.passive_event_types),
            **prior,
        },
    )
    summary = {**summary, "features": frame.shape[1]}
    return FeatureTable(data=frame, hour_of_week=how, spec=spec, summary=summary, links=links)


def _align(frame: pd.DataFrame, reference: FeatureSpec) -> pd.DataFrame:
    """The reference spec's columns, in its order (absent ones NaN / empty category)."""
    out = {}
    for name, dtype in reference.columns.items():
        if name in frame.columns:
            out[name] = frame[name]
        elif dtype == "category":
            out[name] = pd.Categorical.from_codes(np.full(len(frame), -1), categories=[])
        else:
            out[name] = np.full(len(frame), np.nan)
    return pd.DataFrame(out, index=frame.index)


class FeatureBuilder:
    """Encode an event log once, then build features (or resolve identity) at many cutoffs.

    Training builds one table per snapshot cutoff; encoding the log's text columns is the
    largest fixed cost of a build, and this pays it once. ``build(as_of)`` equals
    ``build_features(events, as_of, profiles, consent, settings, links=..., erased=...)``;
    identity and features run on the engine ``features.engine`` names. ``with builder:`` holds
    that engine open (a Dask client, a local cluster started once) for every call inside.

    Identity is resolved once per cutoff: the builder keeps the identity at the latest cutoff
    it was asked for (the one a train scores and serves at) and at the most recent other one
    (a snapshot's features and the previous snapshot's labels share it).
    ``resolved_cutoffs`` lists every cutoff it resolved, in order.
    """

    def __init__(
        self,
        events: pd.DataFrame,
        profiles: pd.DataFrame | None = None,
        consent: pd.DataFrame | None = None,
        settings: Settings | FeatureSettings | None = None,
        *,
        links: pd.DataFrame | None = None,
        erased: Iterable[str] = (),
    ) -> None:
        self.events = events
        self.profiles = profiles
        self.consent = consent
        self.settings = settings
        self.links = links
        self.erased = tuple(str(e) for e in erased)
        self._fs = feature_settings(settings)
        self.engine = engine_for(self._fs)
        self.resolved_cutoffs: list[pd.Timestamp] = []
        self._kept: dict[pd.Timestamp, identity.Resolved] = {}
        self._encoded: identity.IdCodes | None = None
        _ = self._codes  # encoded once, up front

    @property
    def _codes(self) -> identity.IdCodes:
        """The log's ids and the columns features read, encoded (again after :meth:`release`)."""
        if self._encoded is None:
            with small_pages():
                self._encoded = identity.encode_ids(self.events, extra=ENCODED_COLUMNS)
        return self._encoded

    def release(self) -> None:
        """Let go of the encoded log and every identity kept (a train's steps are done: what
        follows, saving the bundle and the log, reads neither); a later call encodes again."""
        self._encoded = None
        self._kept = {}

    def __enter__(self) -> FeatureBuilder:
        self.engine.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.engine.__exit__(*exc)

    def build(
        self,
        as_of: pd.Timestamp | str,
        *,
        categories: Sequence[str] | None = None,
        reference: FeatureSpec | None = None,
    ) -> FeatureTable:
        """Features as of ``as_of`` (see :func:`build_features`)."""
        as_of = utc(as_of, "as_of")
        res = self.resolved(as_of)
        with small_pages(), ThreadPoolExecutor(max_workers=1) as helper:
            return _build(
                self.events,
                self._codes,
                None,
                helper,
                as_of,
                self.profiles,
                self.consent,
                self._fs,
                self.links,
                self.erased,
                categories,
                reference,
                self.engine,
                res,
            )

    def resolved(self, as_of: pd.Timestamp | str) -> identity.Resolved:
        """Identity as of ``as_of`` over the encoded log, resolved at most once per cutoff
        while kept (see the class doc)."""
        as_of = utc(as_of, "as_of")
        if as_of not in self._kept:
            res = self.engine.resolve(
                self.events,
                self._codes,
                as_of,
                self._fs,
                consent=self.consent,
                links=self.links,
                erased=self.erased,
            )
            self.resolved_cutoffs.append(as_of)
            latest = max([as_of, *self._kept])
            self._kept = {t: r for t, r in self._kept.items() if t == latest}
            self._kept[as_of] = res
        return self._kept[as_of]

    def keep_only(self, as_of: pd.Timestamp | str) -> None:
        """Let go of the identity kept at any cutoff but ``as_of`` (a train's own, which every
        step reads): the per-event arrays of a step's other cutoffs do not outlive the step."""
        as_of = utc(as_of, "as_of")
        self._kept = {t: r for t, r in self._kept.items() if t == as_of}

    def resolve(
        self, as_of: pd.Timestamp | str, columns: Sequence[str] | None = None
    ) -> identity.Resolution:
        """Identity as of ``as_of`` (see :func:`dmp_ml.identity.resolve_identity`); its events
        hold only ``columns`` (and ``profile_id``) when given."""
        return identity.resolution_from(self.events, self.resolved(as_of), columns)

    def positives(
        self, as_of: pd.Timestamp | str, start: pd.Timestamp, end: pd.Timestamp, event_type: str
    ) -> pd.Index:
        """Profiles (identity as of ``as_of``) with an ``event_type`` event in ``[start,
        end)``, sorted: read from the encoded log, no copy of the resolved events."""
        res = self.resolved(as_of)
        kind, vocab = self._codes.columns["event_type"]
        target = identity.lookup([event_type], vocab)[0]
        if target < 0:
            return res.profiles.index[:0]
        t = self._codes.t[res.rows]
        hit = (kind[res.rows] == target) & (t >= utc(start).value) & (t < utc(end).value)
        return res.profiles.index[distinct(res.profile_codes[hit])]
