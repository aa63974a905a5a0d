"""Activation exports: any audience as a CSV or Parquet file a destination can ingest.

An audience is a segment (a rule or a saved segment name), a lookalike expansion, a propensity
threshold, or plain profile ids. The export has one row per profile, in the audience's order:

* ``profile_id``;
* ``email_sha256``: SHA-256 (hex) of the trimmed, lower-cased e-mail address, when the
  training's profiles table had ``email`` (the bundle carries only these hashes, in
  ``contacts.parquet``; never an address). Missing when the profile has no address;
* ``propensity_score`` and ``propensity_percentile`` when the bundle has a propensity model;
* ``lookalike_score`` and ``rank`` for a lookalike audience, ``rank`` for a score threshold;
* ``send_at`` (UTC) from the send-time model when asked for, for e-mail schedulers.

Exports never contain a profile outside the bundle (no consent, expired, unknown), nor one on
the workdir's erasure list or forgotten since the bundle was loaded: the dropped counts are in
the :class:`ExportReport`.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from dmp_ml.csv_output import write_csv
from dmp_ml.errors import RequestError
from dmp_ml.hashing import sha256_text

if TYPE_CHECKING:
    from dmp_ml.bundle import ModelBundle

logger = logging.getLogger(__name__)

CONTACTS_FILE = "contacts.parquet"
FORMATS = ("csv", "parquet")


# --------------------------------------------------------------------------- hashed e-mails


def normalise_email(emails: pd.Series) -> pd.Series:
    """Trimmed, lower-cased addresses; empty ones become missing."""
    text = emails.astype("string").str.strip().str.lower()
    return text.mask(text == "")


def hash_emails(profiles: pd.DataFrame, email_column: str = "email") -> pd.DataFrame:
    """``profile_id, email_sha256`` for every profile with an address (first row per id).

    ``email_sha256`` is the hex SHA-256 of the UTF-8 bytes of the trimmed, lower-cased address,
    the form ad platforms and e-mail tools match on. Profiles without an address are left out.
    """
    if "profile_id" not in profiles.columns or email_column not in profiles.columns:
        return pd.DataFrame(
            {
                "profile_id": pd.Series([], dtype="string"),
                "email_sha256": pd.Series([], dtype="string"),
            }
        )
    frame = pd.DataFrame(
        {
            "profile_id": profiles["profile_id"].astype("string"),
            "email": normalise_email(profiles[email_column]),
        }
    )
    frame = frame.dropna().drop_duplicates("profile_id", keep="first")
    return pd.DataFrame(
        {
            "profile_id": pd.array(frame["profile_id"].to_numpy(), dtype="string"),
            "email_sha256": pd.array(sha256_text(frame["email"]).to_numpy(), dtype="string"),
        }
    )


def write_contacts(
    bundle_dir: str | Path, profiles: pd.DataFrame | None, eligible: Iterable[str]
) -> Path | None:
    """Write ``contacts.parquet`` (hashed e-mails of the eligible profiles) into a bundle.

    For the pipeline's features step; does nothing (returns None) without an ``email`` column.
    """
    if profiles is None or "email" not in profiles.columns:
        return None
    contacts = hash_emails(profiles)
    keep = contacts["profile_id"].isin(pd.Index(list(eligible), dtype="string"))
    path = Path(bundle_dir) / CONTACTS_FILE
    contacts.loc[keep].reset_index(drop=True).to_parquet(path, index=False)
    return path


def read_contacts(bundle: ModelBundle) -> pd.Series | None:
    """``profile_id -> email_sha256`` of the bundle, or None when it carries no contacts."""
    path = bundle.file(CONTACTS_FILE)
    if not path.exists():
        return None
    frame = pd.read_parquet(path)
    return pd.Series(
        pd.array(frame["email_sha256"].to_numpy(), dtype="string"),
        index=pd.Index(frame["profile_id"].astype("string"), name="profile_id"),
        name="email_sha256",
    )


# --------------------------------------------------------------------------- audiences


def segment_audience(bundle: ModelBundle, rule: Any) -> pd.DataFrame:
    """A segment as an audience: a rule (dict / JSON / YAML / parsed) or a saved name.

    A plain string that names a saved segment of the bundle's workdir is that segment.
    """
    from dmp_ml.segments import Clause, Group, evaluate, load_segment, saved_names, workdir_of

    if isinstance(rule, str) and rule.strip() in saved_names(workdir_of(bundle)):
        rule = load_segment(workdir_of(bundle), rule.strip())
    elif not isinstance(rule, Clause | Group | Mapping | str | bytes):
        raise RequestError("rule", f"expected a rule or a segment name, got {type(rule).__name__}")
    ids = evaluate(rule, bundle)
    return pd.DataFrame({"profile_id": pd.array(ids.to_numpy(), dtype="string")})


def score_audience(
    bundle: ModelBundle,
    min_score: float | None = None,
    min_percentile: float | None = None,
    top: int | None = None,
) -> pd.DataFrame:
    """Profiles by propensity, best first, above ``min_score`` / ``min_percentile``; ``top`` caps.

    Returns ``profile_id, rank``.
    """
    if bundle.scores is None:
        raise RequestError("min_score", f"bundle {bundle.version} has no propensity scores")
    scores = bundle.scores
    keep = np.ones(len(scores), dtype=bool)
    if min_score is not None:
        if not 0.0 <= float(min_score) <= 1.0:
            raise RequestError("min_score", f"must be within [0, 1], got {min_score}")
        keep &= scores["score"].to_numpy() >= float(min_score)
    if min_percentile is not None:
        if not 0.0 <= float(min_percentile) <= 100.0:
            raise RequestError("min_percentile", f"must be within [0, 100], got {min_percentile}")
        keep &= scores["percentile"].to_numpy() >= float(min_percentile)
    if top is not None and (isinstance(top, bool) or not isinstance(top, int) or top <= 0):
        raise RequestError("top", f"must be a positive whole number, got {top!r}")
    chosen = scores.loc[keep].sort_values(["percentile", "score"], ascending=False, kind="stable")
    ids = pd.Index(chosen.index.astype("string"))
    from dmp_ml.segments import excluded_ids

    gone = excluded_ids(bundle)
    if gone:
        ids = ids[~ids.isin(list(gone))]
    if top is not None:
        ids = ids[:top]
    return pd.DataFrame(
        {
            "profile_id": pd.array(ids.to_numpy(), dtype="string"),
            "rank": np.arange(1, len(ids) + 1, dtype=np.int64),
        }
    )


def lookalike_audience(audience: Any) -> pd.DataFrame:
    """A :class:`dmp_ml.models.lookalike.Audience` as ``profile_id, lookalike_score, rank``."""
    frame = audience.frame if hasattr(audience, "frame") else audience
    return pd.DataFrame(
        {
            "profile_id": pd.array(frame["profile_id"].to_numpy(), dtype="string"),
            "lookalike_score": frame["score"].to_numpy(dtype=np.float64),
            "rank": frame["rank"].to_numpy(dtype=np.int64),
        }
    )


def _as_frame(audience: Any) -> pd.DataFrame:
    if hasattr(audience, "diagnostics") and hasattr(audience, "frame"):
        return lookalike_audience(audience)
    if isinstance(audience, pd.DataFrame):
        if "profile_id" not in audience.columns:
            raise RequestError("audience", "an audience frame needs a profile_id column")
        return audience.reset_index(drop=True)
    if isinstance(audience, str):
        raise RequestError("audience", "expected profile ids, got one string")
    ids = [str(p) for p in audience]
    return pd.DataFrame({"profile_id": pd.array(ids, dtype="string")})


# --------------------------------------------------------------------------- export


@dataclass(frozen=True)
class SendTimeOptions:
    """Window for ``send_at``: see :meth:`dmp_ml.bundle.ModelBundle.send_time`."""

    window_start: pd.Timestamp | str | None = None
    window_hours: int = 24
    quiet_hours: tuple[int, int] | None = None
    timezone: str | None = None


@dataclass(frozen=True)
class ExportReport:
    """What an export wrote and what it left out (and why)."""

    path: Path | None
    format: str
    rows: int
    columns: list[str]
    requested: int
    dropped_not_eligible: int
    dropped_erased: int
    dropped_without_email: int = 0
    with_email: int = 0
    send_at_missing: int = 0
    bundle_version: str = ""
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path) if self.path is not None else None,
            "format": self.format,
            "rows": self.rows,
            "columns": list(self.columns),
            "requested": self.requested,
            "dropped_not_eligible": self.dropped_not_eligible,
            "dropped_erased": self.dropped_erased,
            "dropped_without_email": self.dropped_without_email,
            "with_email": self.with_email,
            "send_at_missing": self.send_at_missing,
            "bundle_version": self.bundle_version,
            "warnings": list(self.warnings),
        }


def export_frame(
    bundle: ModelBundle,
    audience: Any,
    *,
    send_time: SendTimeOptions | bool = False,
    require_email: bool = False,
    affinity: bool = False,
) -> tuple[pd.DataFrame, ExportReport]:
    """The export table of ``audience`` (see the module doc) and its report.

    Parameters
    ----------
    audience : a frame with ``profile_id`` (extra columns kept), a lookalike ``Audience``, or
        an iterable of ids.
    send_time : add ``send_at``; True uses a 24-hour window from the bundle's ``as_of``.
    require_email : drop profiles without a hashed e-mail (for e-mail and CRM destinations).
    affinity : add ``top_categories`` (``|``-joined) and ``preferred_channel`` for display
        platforms (see :mod:`dmp_ml.models.affinity`).
    """
    from dmp_ml.segments import excluded_ids

    frame = _as_frame(audience)
    frame = frame.assign(profile_id=frame["profile_id"].astype("string"))
    frame = frame.drop_duplicates("profile_id", keep="first").reset_index(drop=True)
    requested = len(frame)
    eligible = frame["profile_id"].isin(bundle.features.profile_ids).to_numpy(dtype=bool)
    gone = excluded_ids(bundle)
    erased = (
        frame["profile_id"].isin(list(gone)).to_numpy(dtype=bool)
        if gone
        else np.zeros(len(frame), dtype=bool)
    )
    dropped_not_eligible = int((~eligible & ~erased).sum())
    dropped_erased = int(erased.sum())
    frame = frame.loc[eligible & ~erased].reset_index(drop=True)
    warnings: list[str] = []
    columns: dict[str, Any] = {"profile_id": frame["profile_id"]}
    contacts = read_contacts(bundle)
    with_email = 0
    if contacts is not None:
        hashed = contacts.reindex(frame["profile_id"]).to_numpy(dtype=object, na_value=None)
        columns["email_sha256"] = pd.array(hashed, dtype="string")
        with_email = int(pd.notna(columns["email_sha256"]).sum())
    elif require_email:
        raise RequestError(
            "require_email",
            f"bundle {bundle.version} carries no hashed e-mails (the profiles table had no email)",
        )
    else:
        warnings.append("no hashed e-mails in this bundle: the profiles table had no email")
    if bundle.scores is not None:
        scores = bundle.scores.reindex(frame["profile_id"])
        columns["propensity_score"] = scores["score"].to_numpy(dtype=np.float64)
        columns["propensity_percentile"] = scores["percentile"].to_numpy(dtype=np.float64)
    for extra in frame.columns:
        if extra != "profile_id" and extra not in columns:
            columns[extra] = frame[extra].to_numpy()
    out = pd.DataFrame(columns)
    send_missing = 0
    if send_time:
        options = send_time if isinstance(send_time, SendTimeOptions) else SendTimeOptions()
        send_at = pd.Series(pd.NaT, index=out.index, dtype="datetime64[ns, UTC]")
        if len(out) and bundle.send_time_model is not None:
            try:
                decision = bundle.send_time(
                    out["profile_id"].tolist(),
                    window_start=options.window_start,
                    window_hours=options.window_hours,
                    quiet_hours=options.quiet_hours,
                    timezone=options.timezone,
                )
                found = decision.frame.set_index("profile_id")["send_at"]
                values = found.reindex(out["profile_id"]).to_numpy()
                send_at = pd.Series(pd.to_datetime(values, utc=True), index=out.index)
            except Exception as exc:
                from dmp_ml.errors import UnknownProfileError

                if not isinstance(exc, UnknownProfileError):
                    raise
        elif bundle.send_time_model is None:
            warnings.append("the bundle has no send-time model: send_at is empty")
        out["send_at"] = send_at
        send_missing = int(send_at.isna().sum())
    if affinity:
        from dmp_ml.models.affinity import affinity_columns

        extra = affinity_columns(bundle, out["profile_id"].tolist())
        for column in extra.columns:
            out[column] = extra[column].reindex(out["profile_id"]).to_numpy()
    dropped_without_email = 0
    if require_email and "email_sha256" in out.columns:
        has = out["email_sha256"].notna().to_numpy(dtype=bool)
        dropped_without_email = int((~has).sum())
        out = out.loc[has].reset_index(drop=True)
        with_email = int(has.sum())
    report = ExportReport(
        path=None,
        format="frame",
        rows=len(out),
        columns=[str(c) for c in out.columns],
        requested=requested,
        dropped_not_eligible=dropped_not_eligible,
        dropped_erased=dropped_erased,
        dropped_without_email=dropped_without_email,
        with_email=with_email,
        send_at_missing=send_missing,
        bundle_version=str(bundle.version),
        warnings=warnings,
    )
    return out, report


def _format_of(path: Path, format: str | None) -> str:
    if format is not None:
        if format not in FORMATS:
            raise RequestError("format", f"must be one of {', '.join(FORMATS)}, got {format!r}")
        return format
    name = path.name.lower()
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith(".csv"):
        return "csv"
    raise RequestError("out", f"{path.name}: unknown file type (expected .csv or .parquet)")


def write_export(frame: pd.DataFrame, path: str | Path, format: str | None = None) -> Path:
    """Write an export table atomically (temporary file, then rename)."""
    path = Path(path)
    fmt = _format_of(path, format)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        if fmt == "csv":
            write_csv(frame, tmp, date_format="%Y-%m-%dT%H:%M:%SZ")
        else:
            frame.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def export_audience(
    bundle: ModelBundle,
    audience: Any,
    path: str | Path,
    *,
    format: str | None = None,
    send_time: SendTimeOptions | bool = False,
    require_email: bool = False,
    affinity: bool = False,
) -> ExportReport:
    """Write ``audience`` to ``path`` (CSV or Parquet by suffix or ``format``); see export_frame."""
    path = Path(path)
    fmt = _format_of(path, format)
    frame, report = export_frame(
        bundle, audience, send_time=send_time, require_email=require_email, affinity=affinity
    )
    write_export(frame, path, fmt)
    logger.info(
        "exported %d profiles to %s (%d not eligible, %d erased left out)",
        report.rows,
        path,
        report.dropped_not_eligible,
        report.dropped_erased,
    )
    return ExportReport(**{**report.__dict__, "path": path, "format": fmt})


def resolve_audience(
    bundle: ModelBundle,
    *,
    segment: Any = None,
    seed_ids: Sequence[str] | None = None,
    size: int | None = None,
    reach: float | None = None,
    min_score: float | None = None,
    min_percentile: float | None = None,
    top: int | None = None,
    profile_ids: Sequence[str] | None = None,
) -> pd.DataFrame:
    """One audience from exactly one source: a segment, a lookalike seed, a score threshold,
    or explicit ids (for the CLI and the service)."""
    sources = {
        "segment": segment is not None,
        "seed_ids": seed_ids is not None,
        "min_score": min_score is not None or min_percentile is not None or top is not None,
        "profile_ids": profile_ids is not None,
    }
    chosen = [k for k, v in sources.items() if v]
    if len(chosen) != 1:
        raise RequestError(
            "audience",
            "give exactly one of a segment, lookalike seed ids, a score threshold (min_score / "
            f"min_percentile / top) or profile ids; got {chosen or 'none'}",
        )
    if segment is not None:
        return segment_audience(bundle, segment)
    if seed_ids is not None:
        return lookalike_audience(bundle.lookalike(seed_ids, size=size, reach=reach))
    if profile_ids is not None:
        return _as_frame(profile_ids)
    return score_audience(bundle, min_score=min_score, min_percentile=min_percentile, top=top)


AUDIENCE_KEYS = ("rule", "segment", "seed_ids", "profile_ids", "retarget")


def audience_from_spec(bundle: ModelBundle, spec: Mapping[str, Any]) -> pd.DataFrame:
    """An audience from a JSON-style spec with exactly one of ``rule`` (a segment rule),
    ``segment`` (a saved name), ``seed_ids`` (lookalike, with ``size`` or ``reach``),
    ``profile_ids`` or ``retarget`` (a template name, with ``params``), for the service and
    campaigns. Returns at least ``profile_id``."""
    if not isinstance(spec, Mapping):
        raise RequestError("audience", "expected an object")
    given = [k for k in AUDIENCE_KEYS if spec.get(k) is not None]
    if len(given) != 1:
        raise RequestError(
            "audience", f"give exactly one of {', '.join(AUDIENCE_KEYS)}; got {given or 'none'}"
        )
    key = given[0]
    if key == "rule":
        return segment_audience(bundle, spec["rule"])
    if key == "segment":
        from dmp_ml.segments import load_segment, workdir_of

        if not isinstance(spec["segment"], str):
            raise RequestError("segment", "must be a saved segment's name")
        return segment_audience(bundle, load_segment(workdir_of(bundle), spec["segment"]))
    if key == "retarget":
        from dmp_ml.retargeting import retarget

        return retarget(bundle, spec["retarget"], spec.get("params"))
    if key == "seed_ids":
        size, reach = spec.get("size"), spec.get("reach")
        if size is None and reach is None:
            size = 1000
        from dmp_ml.errors import UnknownProfileError

        try:
            audience = bundle.lookalike(list(spec["seed_ids"]), size=size, reach=reach)
        except UnknownProfileError as exc:
            raise RequestError("seed_ids", str(exc)) from exc
        return lookalike_audience(audience)
    ids = spec["profile_ids"]
    if isinstance(ids, str) or not isinstance(ids, list):
        raise RequestError("profile_ids", "expected a list of ids")
    return _as_frame(ids)
