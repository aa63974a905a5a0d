"""Near-real-time refresh: apply a batch of new events to the live bundle without retraining.

A batch goes through the data contract (the same validation and quarantine as ``train``: bad
rows are counted by reason and kept in ``W/events/quarantine/<batch>.parquet``, never lost),
is stored in the workdir's event store (``W/events/incoming/<batch>.parquet``, which the next
``train`` adds to its input, see :func:`dmp_ml.store.merge_incoming`), and updates the
**affected profiles** only:

* **Which profiles.** Those the batch names, those linked to a cookie it names, and the
  anonymous profiles of its cookies. Their complete history (event store plus the batch) is
  re-resolved with the identity rules of :mod:`dmp_ml.identity`: a cookie newly linked to a
  known profile folds its anonymous profile into it, a new cookie or profile id becomes a new
  profile, a cookie now shared stops counting for its former owner.
* **Features, as of when.** Refreshed features are point-in-time features as of
  ``features_as_of = max(previous features_as_of, data_end(batch))``, where ``data_end`` is the
  UTC midnight after the batch's last event, the cutoff ``train(..., as_of="end")`` uses (an
  event later than now plus ``contract.future_tolerance_minutes`` is quarantined as
  ``future_time``, and ``data_end`` never passes :func:`dmp_ml.contract.clock_limit`). So a
  full ``train`` with ``as_of="end"`` on the same events (the training events plus the
  refreshed batches) gives the refreshed profiles the same features, bit for bit except the
  two population-smoothed e-mail rates: the refresh keeps the bundle's population prior (and
  vocabularies), which only a retrain re-estimates. Profiles the batch does not touch keep
  the features of the bundle's ``as_of`` until the next train. ``refresh/refreshed.parquet``
  in the bundle records each refreshed profile's ``features_as_of``.
* **Scores** come from the bundle's propensity model on the new features; the percentile
  ranks the new raw score among the other profiles' (theirs are not re-ranked).
* **Send-time curves** are recomputed from the profile's own evidence with the population
  parts of the fitted model (selected hyper-parameters, cohort and global curves, response
  rate, calibration) frozen; only a retrain re-selects those. A profile without a known zone
  takes its zone cohort's curve as prior (a full fit mixes zones for it).
* **Lookalike vectors** are re-embedded with the fitted embedder and replaced in the FAISS
  index (a flat or IVF index keeps its mapped base and holds the changed rows in a side index;
  index types that cannot remove get the old row masked and a new one appended).
  Population statistics refresh at retrain.

The result is published as a *delta version* (:mod:`dmp_ml.delta`): only the touched
profiles' rows, next to the base bundle, so what a batch writes grows with the batch, not with
the population (atomic pointer swap, checksums valid); service workers pick it up through the
pointer and overlay the deltas on the mapped base. Once the deltas over the base pass
``refresh.max_deltas`` or ``refresh.max_delta_bytes``, :meth:`Refresher.compact_if_due` (after
the batch is live) folds them into a new base (:func:`compact`; ``train`` publishes a new base
anyway), while later batches go on as deltas. Writers serialise on the workdir lock.
:class:`Refresher` keeps the bundle in memory between batches (one per service worker) but not
the history: each batch reads its affected profiles' events from the event store
(:func:`dmp_ml.store.history_of`, the base events through their index,
:mod:`dmp_ml.event_index`); it loads the models lazily (a delta is written from the change, so
a batch never loads the send-time, lookalike and affinity models: a compaction, which loads
the bundle on its own, writes them) and ranks new scores against the stored raw scores;
:func:`apply_events` is the one-shot form.
"""

from __future__ import annotations

import gc
import logging
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from dmp_ml import bundle as bundle_io
from dmp_ml import layout, store
from dmp_ml.bundle import DELTA_KEY, FEATURES_DIR, live_bundle_path, load_bundle
from dmp_ml.contract import LoadResult, clock_limit, data_end, load_events
from dmp_ml.delta import Delta, members, read_link_change, removed_ids
from dmp_ml.erasure import (
    apply_erasure_list,
    erased_in,
    erasure_stamp,
    read_erasure_list,
)
from dmp_ml.errors import DmpMlError, RequestError, storage_errors_in
from dmp_ml.event_index import ensure_index
from dmp_ml.features import FeatureTable, build_features, fit_params
from dmp_ml.hashing import sha256_text
from dmp_ml.identity import ANON_PREFIX, resolve_identity
from dmp_ml.links import LinkIndex
from dmp_ml.models.base import ProfileUpdate
from dmp_ml.settings import ContractSettings, RefreshSettings, Settings

if TYPE_CHECKING:
    from dmp_ml.bundle import ModelBundle
    from dmp_ml.mapping import ColumnMapping

logger = logging.getLogger(__name__)

REFRESHED_FILE = "refresh/refreshed.parquet"
MAX_BATCH_ROWS = 1_000_000
_DAY = pd.Timedelta(days=1)


# --------------------------------------------------------------------------- report


@dataclass(frozen=True)
class RefreshReport:
    """What one batch did. Row counts add up: received = accepted + quarantined + erased."""

    batch: str | None
    rows_received: int
    rows_accepted: int
    rows_quarantined: int
    quarantined_by_reason: dict[str, int]
    rows_erased: int
    stored_path: str | None
    quarantine_path: str | None
    features_as_of: str | None
    profiles_updated: int
    profiles_created: int
    profiles_removed: int
    profiles_held_back: int
    created_ids: list[str]
    bundle_version: str | None
    seconds: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {k: (dict(v) if isinstance(v, dict) else v) for k, v in self.__dict__.items()}


# --------------------------------------------------------------------------- validation


def as_text_frame(events: pd.DataFrame) -> pd.DataFrame:
    """A frame whose columns the contract parses like a file's (times as ISO text)."""
    out = pd.DataFrame(index=range(len(events)))
    for column in events.columns:
        col = events[column].reset_index(drop=True)
        if isinstance(col.dtype, pd.DatetimeTZDtype):
            text = col.dt.tz_convert("UTC").dt.strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")
            out[str(column)] = text.astype("string")
        elif pd.api.types.is_datetime64_any_dtype(col):
            out[str(column)] = col.dt.strftime("%Y-%m-%dT%H:%M:%S.%f").astype("string")
        elif str(column) == "value" and pd.api.types.is_numeric_dtype(col):
            out[str(column)] = col.astype("float64")
        else:
            values = [None if _missing(v) else str(v) for v in col.tolist()]
            out[str(column)] = pd.array(values, dtype="string")
    return out


def _missing(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def validate_events(
    events: pd.DataFrame | Sequence[Mapping[str, Any]] | str | Path,
    mapping: ColumnMapping | str | Path | None = None,
    settings: ContractSettings | None = None,
) -> LoadResult:
    """Run a batch through the data contract: a file, a frame or a list of records.

    Frames and records are checked exactly like a file (each value as text), so an HTTP batch
    and a file get the same reasons; ``row_number`` in the quarantine is 1-based in the batch.
    """
    if isinstance(events, str | Path):
        return load_events(events, mapping=mapping, settings=settings)
    if not isinstance(events, pd.DataFrame):
        if isinstance(events, Mapping) or not isinstance(events, Sequence):
            raise RequestError("events", "expected a list of event records")
        bad = next((i for i, r in enumerate(events) if not isinstance(r, Mapping)), None)
        if bad is not None:
            raise RequestError(f"events[{bad}]", "each event must be an object")
        events = pd.DataFrame.from_records(list(events))
    if len(events) == 0:
        raise RequestError("events", "the batch is empty")
    if len(events) > MAX_BATCH_ROWS:
        raise RequestError("events", f"at most {MAX_BATCH_ROWS} events per batch")
    with tempfile.TemporaryDirectory(prefix="dmp-batch-") as tmp:
        path = Path(tmp) / "batch.parquet"
        as_text_frame(events).to_parquet(path, index=False)
        result = load_events(path, mapping=mapping, settings=settings)
    return replace(result, report=replace(result.report, path="<batch>"))


# --------------------------------------------------------------------------- consent state


def write_consent_state(
    bundle_dir: str | Path, consent: pd.DataFrame | None, settings: Settings
) -> Path | None:
    """Write the withdrawn ids (SHA-256 of ``p:<profile>`` / ``c:<cookie>``) into a bundle.

    For the pipeline's features step, so that a refresh never brings back a profile or cookie
    whose consent was withdrawn. Only hashes are stored. None without consent records.
    """
    from dmp_ml.identity import latest_consent

    if consent is None:
        return None
    profiles, cookies = latest_consent(consent, settings.features.consent_purpose)
    keys = pd.Series([f"p:{p}" for p in profiles] + [f"c:{c}" for c in cookies], dtype="string")
    frame = pd.DataFrame({"key_sha256": sha256_text(keys)})
    path = Path(bundle_dir) / layout.CONSENT_STATE_FILE
    frame.to_parquet(path, index=False)
    return path


def _consent_records(
    bundle: ModelBundle, subset: pd.DataFrame, settings: Settings
) -> pd.DataFrame | None:
    path = bundle.file(layout.CONSENT_STATE_FILE)
    if not path.exists():
        return None
    withdrawn = set(pd.read_parquet(path)["key_sha256"].astype(str))
    if not withdrawn:
        return None
    profiles = pd.Series(subset["profile_id"].dropna().unique(), dtype="string")
    cookies = pd.Series(subset["cookie_id"].dropna().unique(), dtype="string")
    p_hit = profiles[sha256_text("p:" + profiles).isin(withdrawn).to_numpy(bool)]
    c_hit = cookies[sha256_text("c:" + cookies).isin(withdrawn).to_numpy(bool)]
    n = len(p_hit) + len(c_hit)
    return pd.DataFrame(
        {
            "profile_id": pd.array([*p_hit, *([pd.NA] * len(c_hit))], dtype="string"),
            "cookie_id": pd.array([*([pd.NA] * len(p_hit)), *c_hit], dtype="string"),
            "purpose": pd.array([settings.features.consent_purpose] * n, dtype="string"),
            "granted": np.zeros(n, dtype=bool),
            "updated_at": pd.to_datetime(np.zeros(n, dtype=np.int64), utc=True),
        }
    )


# --------------------------------------------------------------------------- model edits


# --------------------------------------------------------------------------- the refresher


def _event_columns(fs: Any, as_of: pd.Timestamp, spec: Any) -> set[str]:
    """Names of the event-derived columns of ``spec`` (the rest are profile attributes)."""
    params = fit_params(as_of, fs, {}, {}, {}, reference=spec)
    return set(params.columns())


class Refresher:
    """Applies event batches to a workdir's live bundle; keeps its state between batches.

    Not thread-safe by itself: one per process (or per service worker), calls serialised by
    the caller; separate processes serialise on the workdir lock and re-read the live bundle
    whenever another writer (train, forget, another refresher) published since.
    """

    def __init__(
        self,
        workdir: str | Path,
        n_threads: int | None = 1,
        contract: ContractSettings | None = None,
        refresh: RefreshSettings | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.n_threads = n_threads
        self.contract = contract or ContractSettings()
        self.refresh = refresh or RefreshSettings()
        self._bundle: ModelBundle | None = None
        self._ranked: np.ndarray | None = None
        self._erasure_stamp: tuple[int, int, int] | None = None
        self._pending: pd.DataFrame | None = None
        self._links: LinkIndex | None = None  # the bundle's cookie links, with the batches'

    # ------------------------------------------------------------------ state
    def _stamp(self) -> tuple[int, int, int] | None:
        return erasure_stamp(self.workdir)

    def _sync(self) -> ModelBundle:
        live = live_bundle_path(self.workdir)
        stamp = self._stamp()
        current = self._bundle
        if current is None or Path(current.path).resolve() != live or stamp != self._erasure_stamp:
            self._bundle = load_bundle(live, n_threads=self.n_threads, lazy=True)
            self._ranked = None
            self._links = None
            if current is not None:
                gc.collect()  # the old bundle's mappings go (see ``Worker._load``)
            store.history_files(self.workdir)  # refuses a workdir without the history
            self._erasure_stamp = stamp
            # stored batches the live bundle does not reflect (stored while a train ran, or
            # by a refresh that failed before publishing) are re-applied with the next batch;
            # that is idempotent, affected profiles are recomputed from the whole history
            last = self._bundle.manifest.get("refresh", {}).get("last_batch")
            pending = [
                store.read_events_file(p)
                for p in store.unmerged_batches(self.workdir)
                if last is None or p.stem > last
            ]
            self._pending = pd.concat(pending, ignore_index=True) if pending else None
        assert self._bundle is not None
        return self._bundle

    def _settings_of(self, bundle: ModelBundle) -> Settings:
        """The settings the bundle was trained with (cached per bundle version)."""
        cached = getattr(self, "_settings", None)
        if cached is None or cached[0] != bundle.version:
            settings = Settings.model_validate(bundle.manifest.get("settings", {}))
            self._settings = (bundle.version, settings)
        return self._settings[1]

    def _raws(self, bundle: ModelBundle, rows: np.ndarray) -> np.ndarray:
        """The raw score (log-odds) of the feature table's ``rows``: stored with the scores
        (train stores them; each delta carries its profiles'), so a batch does not score the
        population again; a profile without one (older bundles) is scored from its features."""
        assert bundle.propensity is not None
        table, scores = bundle.features, bundle.scores
        raw = np.full(len(rows), np.nan)
        if scores is not None and "raw" in scores.columns:
            if scores.index is table.profile_ids:  # the table's rows
                at = np.asarray(rows, dtype=np.int64)
            elif scores.index.is_unique:
                at = scores.index.get_indexer(table.profile_ids[rows])
            else:
                at = np.full(len(rows), -1, dtype=np.int64)
            found = at >= 0
            raw[found] = scores["raw"].to_numpy(dtype=np.float64)[at[found]]
        missing = np.isnan(raw)
        if missing.any():
            raw[missing] = bundle.propensity.predict_raw(table.take(rows[missing]))
        return raw

    def _rescored(self, bundle: ModelBundle, change: ProfileUpdate) -> pd.DataFrame:
        """The scores of the profiles ``change`` touched (the bundle's score columns), each
        ranked by binary search among the other profiles' raw scores; those stay sorted
        between batches (:attr:`_ranked`: sorted once per loaded bundle, then the batch's old
        scores taken out and its new ones put in at their places)."""
        assert bundle.propensity is not None and bundle.scores is not None
        table = bundle.features
        if self._ranked is None:
            self._ranked = np.sort(self._raws(bundle, np.arange(len(table), dtype=np.int64)))
        ranked = self._ranked
        held = table.rows(change.profile_ids.union(change.removed))
        replaced = np.sort(self._raws(bundle, held[held >= 0]))
        fresh = bundle.propensity.rescore(change.features, ranked, replaced)
        # the multiset of raw scores after the batch, still sorted: the replaced ones out (the
        # k-th of equal values at the k-th place they sort to), the new ones in
        first = np.searchsorted(ranked, replaced, side="left")
        kth = np.arange(len(replaced)) - np.searchsorted(replaced, replaced, side="left")
        kept = np.delete(ranked, first + kth)
        new = np.sort(fresh["raw"].to_numpy())
        self._ranked = np.insert(kept, np.searchsorted(kept, new, side="left"), new)
        return fresh[list(bundle.scores.columns)]

    # ------------------------------------------------------------------ compaction
    def compaction_due(self) -> bool:
        """Whether the live bundle's deltas passed ``refresh.max_deltas`` or
        ``refresh.max_delta_bytes`` (as of this refresher's last batch)."""
        bundle = self._bundle
        if bundle is None:
            return False
        info = bundle.manifest.get(DELTA_KEY) or {}
        return (
            len(bundle.deltas) > self.refresh.max_deltas
            or int(info.get("bytes", 0)) > self.refresh.max_delta_bytes
        )

    def compact_if_due(self) -> str | None:
        """:func:`compact` the workdir when :meth:`compaction_due`: the new live version, or
        None when nothing was folded."""
        return compact(self.workdir) if self.compaction_due() else None

    # ------------------------------------------------------------------ apply
    @storage_errors_in(lambda self, *_, **__: self.workdir)
    def apply(
        self,
        events: pd.DataFrame | Sequence[Mapping[str, Any]] | str | Path,
        *,
        mapping: ColumnMapping | str | Path | None = None,
        profiles: pd.DataFrame | None = None,
    ) -> RefreshReport:
        """Validate, store and apply one batch; see the module doc.

        ``profiles`` optionally gives attributes (``timezone``, ...) of profiles new to the
        bundle; existing profiles keep theirs.
        """
        clock = time.perf_counter()
        seconds: dict[str, float] = {}

        def lap(name: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            seconds[name] = round(now - clock, 4)
            clock = now

        loaded = validate_events(events, mapping, self.contract)
        lap("validate")
        with store.workdir_lock(self.workdir):
            bundle = self._sync()
            lap("sync")
            try:
                return self._apply_locked(bundle, loaded, profiles, seconds, lap)
            except BaseException:
                self._bundle = self._links = None  # half-edited: reload from disk next time
                raise

    @storage_errors_in(lambda self, *_, **__: self.workdir)
    def catch_up(self) -> RefreshReport | None:
        """Re-apply the stored batches a bundle fresh from ``train`` does not reflect yet.

        (Batches stored while the training ran.) ``apply`` does it with the next batch; call
        this after a train to have them visible at once. None when nothing is pending.
        """
        from dmp_ml.contract import EVENT_COLUMNS, LoadReport

        with store.workdir_lock(self.workdir):
            bundle = self._sync()
            if self._pending is None:
                return None
            empty = LoadResult(
                frame=store.contract_frame(pd.DataFrame(columns=EVENT_COLUMNS)),
                quarantine=pd.DataFrame({"reason": pd.Series([], dtype="string")}),
                report=LoadReport("<pending>", "events", 0, 0, 0, {}),
            )
            try:
                return self._apply_locked(bundle, empty, None, {}, lambda _: None)
            except BaseException:
                self._bundle = self._links = None
                raise

    def _apply_locked(
        self,
        bundle: ModelBundle,
        loaded: LoadResult,
        profiles: pd.DataFrame | None,
        seconds: dict[str, float],
        lap: Any,
    ) -> RefreshReport:
        settings = self._settings_of(bundle)
        fs = settings.features
        warnings: list[str] = []
        recorded = store.history_version(self.workdir)
        if recorded is not None and recorded != store.training_version(bundle.manifest):
            warnings.append(
                f"the event history was recorded for training {recorded}, the live bundle comes "
                f"from {store.training_version(bundle.manifest)}: refreshed profiles may miss "
                "events until the next train"
            )
        received = loaded.report.rows_read
        batch = store.contract_frame(loaded.frame)
        erased = read_erasure_list(self.workdir)
        erased_rows = store.purge_mask(batch, erased) if erased else np.zeros(len(batch), bool)
        batch = batch.loc[~erased_rows].reset_index(drop=True)

        # the affected closure over history + batch (+ batches not yet in a train bundle), read
        # from the event store with filters: the profiles the batch names and those sharing a
        # cookie with it, then every cookie of theirs, then all their events
        ids_from = batch if self._pending is None else pd.concat([batch, self._pending])
        p0 = pd.Index(ids_from["profile_id"].dropna().unique(), dtype="string")
        c0 = pd.Index(ids_from["cookie_id"].dropna().unique(), dtype="string")
        links = ["profile_id", "cookie_id"]
        files = store.history_files(self.workdir)
        read = {"files": files, "index": ensure_index(self.workdir)}
        p1 = store.history_of(self.workdir, cookies=c0, columns=links, **read)["profile_id"]
        known = p0.union(pd.Index(p1.dropna().unique(), dtype="string"))
        theirs = store.history_of(self.workdir, profiles=known, columns=links, **read)
        cookies = pd.Index(theirs["cookie_id"].dropna().unique(), dtype="string").union(c0)
        past = store.history_of(self.workdir, profiles=known, cookies=cookies, **read)

        # exact re-sends of stored events are duplicates (a retried request changes nothing)
        duplicate = store.repeated_rows(batch, past) if len(past) else None
        quarantine = loaded.quarantine
        if duplicate is not None and duplicate.any():
            dupes = batch.loc[duplicate].copy()
            for column in dupes.columns:
                dupes[column] = (
                    dupes[column].dt.strftime("%Y-%m-%dT%H:%M:%S%z").astype("string")
                    if column == "event_time"
                    else dupes[column].astype("string")
                )
            dupes["row_number"] = pd.array([pd.NA] * len(dupes), dtype="Int64")
            dupes["reason"] = pd.array(["duplicate_event"] * len(dupes), dtype="string")
            quarantine = pd.concat([quarantine, dupes], ignore_index=True)
            batch = batch.loc[~duplicate].reset_index(drop=True)
        by_reason = (
            {str(k): int(v) for k, v in quarantine["reason"].value_counts().sort_index().items()}
            if len(quarantine)
            else {}
        )
        name = store.new_batch_name(pd.Timestamp.now(tz="UTC"))
        q_path = None
        if len(quarantine):
            q_path = store.write_parquet_atomic(
                quarantine, layout.events_quarantine_dir(self.workdir) / f"{name}.parquet"
            )
        stored = None
        if len(batch):
            stored = store.write_parquet_atomic(
                batch, layout.incoming_dir(self.workdir) / f"{name}.parquet"
            )
        lap("store")

        def report(**kw: Any) -> RefreshReport:
            base = dict(
                batch=name,
                rows_received=int(received),
                rows_accepted=len(batch),
                rows_quarantined=len(quarantine),
                quarantined_by_reason=by_reason,
                rows_erased=int(erased_rows.sum()),
                stored_path=str(stored) if stored else None,
                quarantine_path=str(q_path) if q_path else None,
                features_as_of=None,
                profiles_updated=0,
                profiles_created=0,
                profiles_removed=0,
                profiles_held_back=0,
                created_ids=[],
                bundle_version=str(bundle.version),
                seconds=seconds,
                warnings=warnings,
            )
            base.update(kw)
            return RefreshReport(**base)

        pending = self._pending
        if batch.empty and pending is None:
            return report()
        self._pending = None
        work = batch if pending is None else pd.concat([batch, pending], ignore_index=True)

        # features of the affected profiles as of the new cutoff
        refresh_meta = dict(bundle.manifest.get("refresh", {}))
        previous = pd.Timestamp(refresh_meta.get("features_as_of", bundle.as_of))
        # events past the wall clock (stored by older versions) never move the clock
        limit = clock_limit(self.contract)
        current = work.loc[(work["event_time"] < limit).to_numpy(bool)]
        as_of = max(previous, data_end(current, limit)) if len(current) else previous
        subset = pd.concat([past, batch], ignore_index=True)
        consent = _consent_records(bundle, subset, settings)
        affected = known.union(pd.Index([f"{ANON_PREFIX}{c}" for c in c0], dtype="string"))
        timezones = _timezones(bundle.features, affected, profiles)
        tz_frame = (
            pd.DataFrame({"profile_id": timezones.index, "timezone": timezones.to_numpy()})
            if timezones is not None
            else None
        )
        spec = bundle.features.spec
        table = build_features(
            subset, as_of, tz_frame, consent, settings, erased=erased, reference=spec
        )
        lap("features")
        out = table.frame.index[members(table.frame.index, affected)]
        in_bundle = bundle.features.ids.contains(out)  # binary search in the bundle's id index
        if consent is None and "consent" in bundle.manifest.get("inputs", {}):
            # no withdrawn-id list in this bundle: a profile that had events before but is
            # not in the bundle may have withdrawn consent; it waits for the next train
            seen = _seen_before(past, out)
            held = out[~in_bundle & seen]
            if len(held):
                warnings.append(
                    f"{len(held)} profiles with earlier events are not in the bundle; without "
                    "the consent state (consent_state.parquet) they wait for the next train"
                )
            kept = ~out.isin(held)
            out, in_bundle = out[kept], in_bundle[kept]
        else:
            held = out[:0]
        rows = _new_rows(table, out, bundle, spec, fs, as_of, profiles)
        # the affected profiles the bundle holds that the batch's table no longer has, in the
        # bundle's row order (found in its id index, not by a pass over the population)
        held_rows = bundle.features.rows(affected)
        removed = bundle.features.profile_ids[
            np.sort(held_rows[(held_rows >= 0) & ~members(affected, out)])
        ]
        created, updated = out[~in_bundle], out[in_bundle]

        # what every model is handed: the touched profiles, their features and history
        resolved = resolve_identity(subset, as_of, fs, consent=consent, erased=erased).events
        touched = members(resolved["profile_id"], out)
        change = ProfileUpdate(
            as_of=as_of,
            profile_ids=out,
            removed=removed,
            features=rows.frame,
            events=resolved.loc[touched].assign(
                profile_id=resolved.loc[touched, "profile_id"].astype("string")
            ),
            timezones=timezones,
        )
        links = table.cookie_map
        if links is not None:
            links = links[members(links, rows.frame.index)]
        if self._links is None and bundle.features.links is not None:
            self._links = _link_index(bundle)  # once per loaded bundle
        relinked, redone = _held_ids(bundle.features, self._links, out, links, affected, cookies)
        if timezones is not None:
            change = replace(change, timezones=timezones[members(timezones.index, relinked)])
        delta = Delta(
            change=change,
            hour_of_week=rows.hour_of_week,
            scores=None,
            cookie_map=links,
            relinked=relinked,
            cookies=redone,
        )
        if bundle.scores is not None and bundle.propensity is not None:
            delta = replace(delta, scores=self._rescored(bundle, change))
        lap("scores")

        # the features and scores merged over the mapped tables; send-time curves, lookalike
        # vectors, affinity counts: each model's update recomputes the touched profiles from
        # their history. The refresher loads models lazily: one not loaded only records the
        # change and replays it if it loads; a delta is published from the change itself, so
        # a batch never copies their arrays
        bundle.overlay(delta)
        if self._links is not None:
            self._links.change(delta.cookies, delta.relinked, delta.cookie_map)
        lap("models")

        # publish: always a delta, so what the batch waits for grows with the batch; folding
        # the chain into a new base (:meth:`compact_if_due`) comes after it is live
        refreshed = _refreshed_frame(bundle, out, removed, as_of)
        refresh_meta.update(
            features_as_of=as_of.isoformat(),
            batches=int(refresh_meta.get("batches", 0)) + 1,
            last_batch=name,
            profiles_refreshed=int(len(refreshed)),
            last_applied_at=pd.Timestamp.now(tz="UTC").isoformat(),
        )
        store.publish_delta(
            bundle,
            self.workdir,
            delta,
            tag="refresh",
            manifest_update={"refresh": refresh_meta},
            extra_files={REFRESHED_FILE: lambda p: refreshed.to_parquet(p, index=False)},
        )
        lap("publish")
        logger.info(
            "refresh %s: %d events, %d profiles updated, %d new, %d removed -> bundle %s",
            name,
            len(batch),
            len(updated),
            len(created),
            len(removed),
            bundle.version,
        )
        return report(
            features_as_of=as_of.isoformat(),
            profiles_updated=int(len(updated)),
            profiles_created=int(len(created)),
            profiles_removed=int(len(removed)),
            profiles_held_back=int(len(held)),
            created_ids=[str(c) for c in created[:100]],
            bundle_version=str(bundle.version),
        )


def compact(workdir: str | Path) -> str | None:
    """Fold the live bundle's deltas into a new base version (published like any version).

    Returns the live version afterwards, or None when there was nothing to fold: no deltas,
    another process compacting, or a writer that replaced the base meanwhile (a ``train``, a
    ``forget``). Answers do not change: the new base holds what base and deltas gave together,
    without the rows a delta removed, and less any profile on the erasure list that a delta
    still holds (a ``forget`` killed after listing it): that one is forgotten first
    (:func:`dmp_ml.erasure.apply_erasure_list`, which compacts), never folded into the new
    base.

    The population's files are written without the workdir lock, so batches keep being
    applied meanwhile; the deltas they publish are published again over the new base
    (:func:`dmp_ml.store.rebase_deltas`) when it goes live. An erasure listed meanwhile drops
    the new base: the ``forget`` compacts by itself.
    """
    workdir = Path(workdir)
    with store.compaction_lock(workdir) as mine:
        if not mine:
            return None
        with store.workdir_lock(workdir):
            live = live_bundle_path(workdir)
            stamp = erasure_stamp(workdir)
            listed = read_erasure_list(workdir)
        bundle = load_bundle(live)  # a published version never changes: no lock needed
        if erased_in(bundle, listed):  # a forget killed after listing them: finish it first
            scrubbed = apply_erasure_list(workdir)  # (it folds the deltas itself)
            return None if scrubbed is None else scrubbed.bundle_version
        if not bundle.deltas:
            return None
        held = bundle.features.ids
        gone = removed_ids(bundle.deltas)
        version = store.new_version("compact")
        with bundle_io.staged_bundle(workdir, version) as staged:
            store.write_bundle_files(
                bundle,
                staged.path,
                version=version,
                manifest_update={},
                drop_ids=gone[~held.contains(gone)],
            )
            staged.verify()  # the population's files hashed before the lock, not under it
            with store.workdir_lock(workdir):
                newer = store.deltas_since(live_bundle_path(workdir), bundle)
                if newer is None or erasure_stamp(workdir) != stamp:
                    logger.info("compaction dropped: the live bundle changed while it wrote")
                    return None
                base = staged.publish(live=not newer)
                live = store.rebase_deltas(workdir, base, newer)
    logger.info(
        "compacted %d deltas into bundle %s (%d newer deltas over it)",
        len(bundle.deltas),
        base.name,
        len(newer),
    )
    return live.name


def apply_events(
    target: ModelBundle | str | Path,
    events: pd.DataFrame | Sequence[Mapping[str, Any]] | str | Path,
    *,
    mapping: ColumnMapping | str | Path | None = None,
    profiles: pd.DataFrame | None = None,
    contract: ContractSettings | None = None,
    refresh: RefreshSettings | None = None,
) -> RefreshReport:
    """Apply one batch to the live bundle of a workdir (or of a loaded bundle's workdir),
    then fold the deltas into a new base when they pass the refresh settings
    (:meth:`Refresher.compact_if_due`, after the batch is live; a failed fold is logged and
    leaves the deltas for the next one: the batch was applied either way).

    A given loaded bundle is not modified: reload (``load_bundle`` / the service's reload)
    to see the new version named in the report.
    """
    workdir = target if isinstance(target, str | Path) else store.bundle_workdir(target)
    refresher = Refresher(workdir, contract=contract, refresh=refresh)
    report = refresher.apply(events, mapping=mapping, profiles=profiles)
    try:
        refresher.compact_if_due()
    except (DmpMlError, OSError) as exc:
        logger.warning("folding the deltas failed (they stay; the batch is live): %s", exc)
    return report


# --------------------------------------------------------------------------- helpers


def _timezones(
    current: FeatureTable, ids: pd.Index, profiles: pd.DataFrame | None
) -> pd.Series | None:
    """Known time zone per affected profile: the bundle's attribute, else ``profiles``."""
    parts = []
    if "timezone" in current.columns:
        rows = current.rows(ids)
        mine = current.take(np.sort(rows[rows >= 0]))["timezone"].astype("string")
        parts.append(mine)
    if profiles is not None and "timezone" in profiles.columns and "profile_id" in profiles:
        given = profiles.set_index(profiles["profile_id"].astype("string"))["timezone"]
        given = given.astype("string")
        given = given[members(given.index, ids) & ~current.ids.contains(given.index)]
        parts.append(given)
    if not parts:
        return None
    out = pd.concat(parts)
    out = out[~out.index.duplicated(keep="first")]
    out.index = pd.Index(out.index, dtype="string", name="profile_id")
    return out


def _link_index(bundle: ModelBundle) -> LinkIndex:
    """The cookie links of ``bundle``: its base's index (mapped) with each delta's changes
    applied, or one built from the whole map of a base written without an index."""
    index = LinkIndex.read(Path(bundle.base_path) / FEATURES_DIR)
    if index is None:
        assert bundle.features.cookie_map is not None
        return LinkIndex.build(bundle.features.cookie_map)
    for link in bundle.deltas:
        index.change(*read_link_change(Path(link) / layout.DELTA_DIR))
    return index


def _held_ids(
    current: FeatureTable,
    held_links: LinkIndex | None,
    out: pd.Index,
    links: pd.Series | None,
    affected: pd.Index,
    cookies: pd.Index,
) -> tuple[pd.Index, pd.Index]:
    """The affected profiles and cookies a delta records (to redo their cookie links): only
    those the bundle holds before or after the batch (``held_links``: its links before it,
    ``links``: the batch's). A batch may name profiles without consent (or their devices);
    their ids are never written into a bundle file, and leaving them out changes nothing,
    since the bundle holds no link of theirs to redo."""
    held = current.ids.contains(affected) | members(affected, out)
    in_links = np.zeros(len(cookies), dtype=bool)
    if held_links is not None:
        held |= held_links.targeted(affected)
        in_links |= held_links.linked(cookies)
    if links is not None:
        in_links |= members(cookies, links.index)
    return affected[held], cookies[in_links]


def _seen_before(past: pd.DataFrame, ids: pd.Index) -> np.ndarray:
    profiles = set(past["profile_id"].dropna().astype(str))
    cookies = set(past["cookie_id"].dropna().astype(str))
    return np.array(
        [
            (i[len(ANON_PREFIX) :] in cookies) if i.startswith(ANON_PREFIX) else (i in profiles)
            for i in ids.astype(str)
        ],
        dtype=bool,
    )


def _new_rows(
    table: FeatureTable,
    ids: pd.Index,
    bundle: ModelBundle,
    spec: Any,
    fs: Any,
    as_of: pd.Timestamp,
    profiles: pd.DataFrame | None,
) -> FeatureTable:
    """The refreshed rows: event features from ``table``, the bundle's population prior for
    the smoothed e-mail rates, attributes from the bundle (or ``profiles`` for new ones)."""
    pos = table.frame.index.get_indexer(ids)
    frame = table.frame.iloc[pos].copy()
    how = table.hour_of_week[pos]
    k = float(spec.params.get("rate_prior_strength", fs.rate_prior_strength))
    longest = max(int(w) for w in spec.params.get("windows_days", fs.windows_days))
    sends_col = f"email_send_count_{longest}d"
    for kind in ("open", "click"):
        col = f"email_{kind}_rate_smoothed"
        key = f"email_{kind}_rate_population"
        if col in frame.columns and sends_col in frame.columns and key in spec.params:
            local = float(table.spec.params.get(key, 0.0))
            sends = frame[sends_col].to_numpy(dtype=np.float64)
            frame[col] = frame[col].to_numpy() + k * (float(spec.params[key]) - local) / (sends + k)
    event_cols = _event_columns(fs, as_of, spec)
    given = None
    if profiles is not None and "profile_id" in profiles.columns:
        given = profiles.drop_duplicates("profile_id", keep="first")
        given = given.set_index(pd.Index(given["profile_id"].astype("string")))
    at = bundle.features.rows(ids)  # binary search, no hash table over the population
    is_new = at < 0
    base = bundle.features.take(at[~is_new])  # the rows the bundle holds of them
    for col in base.columns:
        if col in event_cols:
            continue
        dtype = base[col].dtype
        values = np.full(len(ids), None, dtype=object)
        values[~is_new] = base[col].astype(object).to_numpy(na_value=None)
        if given is not None and col in given.columns and is_new.any():
            supplied = given[col].reindex(ids[is_new]).astype(object).to_numpy()
            values[is_new] = [None if _missing(v) else v for v in supplied]
        if isinstance(dtype, pd.CategoricalDtype):
            text = [None if v is None else str(v) for v in values]
            frame[col] = pd.Categorical(text, categories=dtype.categories)
        else:
            frame[col] = pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").to_numpy(
                dtype=np.float64
            )
    frame = frame[list(base.columns)]
    frame.index = pd.Index(frame.index, dtype="string", name="profile_id")
    return replace(table, data=frame, hour_of_week=how)


def _refreshed_frame(
    bundle: ModelBundle, ids: pd.Index, removed: pd.Index, as_of: pd.Timestamp
) -> pd.DataFrame:
    path = bundle.file(REFRESHED_FILE)
    previous = (
        pd.read_parquet(path)
        if path.exists()
        else pd.DataFrame(
            {
                "profile_id": pd.Series([], dtype="string"),
                "features_as_of": pd.Series([], dtype="datetime64[ns, UTC]"),
            }
        )
    )
    previous["profile_id"] = previous["profile_id"].astype("string")
    previous = previous[~members(previous["profile_id"], ids.union(removed))]
    fresh = pd.DataFrame(
        {
            "profile_id": pd.array(ids.to_numpy(dtype=object), dtype="string"),
            "features_as_of": pd.Series([as_of] * len(ids), dtype="datetime64[ns, UTC]"),
        }
    )
    out = pd.concat([previous, fresh], ignore_index=True)
    live = bundle.features.ids.contains(out["profile_id"])
    return out[live].sort_values("profile_id", ignore_index=True)
