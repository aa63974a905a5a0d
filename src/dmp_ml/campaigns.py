"""Campaigns: a stored audience with a random, reproducible holdout, and a lift readout.

A campaign lives in ``<workdir>/campaigns/<name>/``: ``campaign.json`` (launch time, target
event, horizon, holdout share, where the audience came from, the bundle it was built on) and
``members.parquet`` (``profile_id``, ``group`` = ``treated`` / ``holdout``, the propensity
score at creation). The audience is frozen at creation; the holdout is decided by a hash of
campaign name and profile id (``sha256(name + "/" + id)`` read as a number in [0, 1) below
``holdout``), so the same campaign always holds out the same people, independent of order or
of who else is in the audience. Exports of a campaign hold the treated group only. An erasure
(:func:`dmp_ml.erasure.forget`) removes the profiles from every stored campaign.

The readout (:func:`campaign_report`) counts, for each member, whether a ``target_event``
happened in ``[launch, launch + horizon_days)`` (only events seen so far, up to ``as_of``),
attributed by ``profile_id`` or, for cookie-only events, through the bundle's identity graph.
It reports treated and holdout conversion, the absolute lift (difference of proportions) with
a 95% Newcombe hybrid score interval (from the two Wilson intervals), the relative lift
(ratio - 1) with a 95% interval from the delta method on the log ratio (Katz), the minimum
detectable absolute effect at the current sample (two-sided 5% test, 80% power, at the holdout
rate), a verdict ("too early to tell" while the interval covers zero and the horizon is not
over) and, when every bin holds at least ``campaigns.min_per_bin`` holdout profiles, the lift
by propensity decile (fewer, equal-count bins when the sample is smaller).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from dmp_ml import layout
from dmp_ml.errors import RequestError
from dmp_ml.times import utc

if TYPE_CHECKING:
    from dmp_ml.bundle import ModelBundle
    from dmp_ml.settings import Settings

logger = logging.getLogger(__name__)

META_FILE = "campaign.json"
MEMBERS_FILE = "members.parquet"
TREATED, HOLDOUT = "treated", "holdout"
Z95 = 1.959963984540054
Z80 = 0.8416212335729143
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_DAY = pd.Timedelta(days=1)


@dataclass(frozen=True)
class Campaign:
    """A stored campaign: its settings and members (``profile_id, group, propensity_score``)."""

    name: str
    meta: dict[str, Any]
    members: pd.DataFrame

    @property
    def launch(self) -> pd.Timestamp:
        return pd.Timestamp(self.meta["launch"])

    @property
    def treated_ids(self) -> list[str]:
        return self.members.loc[self.members["group"] == TREATED, "profile_id"].astype(str).tolist()

    @property
    def holdout_ids(self) -> list[str]:
        return self.members.loc[self.members["group"] == HOLDOUT, "profile_id"].astype(str).tolist()

    def to_dict(self) -> dict[str, Any]:
        counts = self.members["group"].value_counts()
        return {
            **self.meta,
            "treated": int(counts.get(TREATED, 0)),
            "holdout_profiles": int(counts.get(HOLDOUT, 0)),
        }


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise RequestError(
            "name",
            f"invalid campaign name {name!r}: letters, digits, '_', '-', '.', at most 64, "
            "starting with a letter or digit",
        )
    return name


def holdout_draw(name: str, profile_ids: Iterable[str]) -> np.ndarray:
    """A uniform number in [0, 1) per profile from ``sha256(name/profile_id)``: reproducible."""
    out = [
        int.from_bytes(hashlib.sha256(f"{name}/{p}".encode()).digest()[:8], "big") / 2.0**64
        for p in profile_ids
    ]
    return np.asarray(out, dtype=np.float64)


def campaign_dir(workdir: str | Path, name: str) -> Path:
    return layout.campaigns_dir(workdir) / check_name(name)


def create_campaign(
    bundle: ModelBundle,
    name: str,
    audience: pd.DataFrame | Iterable[str],
    *,
    workdir: str | Path,
    settings: Settings | None = None,
    holdout: float | None = None,
    target_event: str | None = None,
    horizon_days: int | None = None,
    launch: pd.Timestamp | str | None = None,
    source: Mapping[str, Any] | None = None,
) -> Campaign:
    """Store a campaign on ``audience`` (eligible profiles of ``bundle`` only) with a holdout.

    ``launch`` defaults to the bundle's data cutoff; ``holdout``, ``target_event`` and
    ``horizon_days`` to ``settings.campaigns``. An existing campaign of that name is an error
    (its holdout must never move).
    """
    from dmp_ml.retargeting import default_as_of
    from dmp_ml.segments import excluded_ids
    from dmp_ml.settings import load_settings

    check_name(name)
    cfg = (settings or load_settings()).campaigns
    holdout = cfg.holdout if holdout is None else holdout
    if isinstance(holdout, bool) or not isinstance(holdout, int | float) or not 0 < holdout < 1:
        raise RequestError("holdout", f"must be a share in (0, 1), got {holdout!r}")
    horizon = cfg.horizon_days if horizon_days is None else horizon_days
    if isinstance(horizon, bool) or not isinstance(horizon, int) or not 1 <= horizon <= 3650:
        raise RequestError("horizon_days", f"must be a whole number in [1, 3650], got {horizon!r}")
    target = cfg.target_event if target_event is None else target_event
    if not isinstance(target, str) or not target.strip():
        raise RequestError("target_event", f"must be an event type, got {target!r}")
    start = default_as_of(bundle) if launch is None else utc(launch, "launch")
    folder = campaign_dir(workdir, name)
    if folder.exists():
        raise RequestError("name", f"campaign {name!r} exists; pick another name")
    if isinstance(audience, pd.DataFrame):
        ids = audience["profile_id"].astype(str).tolist()
    else:
        if isinstance(audience, str):
            raise RequestError("audience", "expected profile ids, got one string")
        ids = [str(p) for p in audience]
    ids = list(dict.fromkeys(ids))
    gone = excluded_ids(bundle)
    index = bundle.features.profile_ids
    ids = [p for p in ids if p not in gone and index.get_indexer([p])[0] >= 0]
    if not ids:
        raise RequestError("audience", "no eligible profile in the audience")
    draw = holdout_draw(name, ids)
    score = (
        bundle.scores["score"].reindex(ids).to_numpy(dtype=np.float64)
        if bundle.scores is not None
        else np.full(len(ids), np.nan)
    )
    members = pd.DataFrame(
        {
            "profile_id": pd.array(ids, dtype="string"),
            "group": pd.array(np.where(draw < holdout, HOLDOUT, TREATED), dtype="string"),
            "propensity_score": score,
        }
    )
    meta = {
        "name": name,
        "created_at": pd.Timestamp.now(tz="UTC").isoformat(),
        "launch": start.isoformat(),
        "target_event": target.strip(),
        "horizon_days": int(horizon),
        "holdout": float(holdout),
        "bundle_version": str(bundle.version),
        "audience": dict(source or {"source": "profile_ids"}),
        "audience_size": len(ids),
    }
    _write(folder, meta, members)
    logger.info("campaign %s: %d profiles, holdout %.2f", name, len(ids), holdout)
    return Campaign(name, meta, members)


def _write(folder: Path, meta: dict[str, Any], members: pd.DataFrame) -> None:
    """Write both files into a temporary directory, then rename it into place."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        members.to_parquet(tmp / MEMBERS_FILE, index=False)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True), encoding="utf-8")
        os.rename(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_campaign(workdir: str | Path, name: str) -> Campaign:
    """A stored campaign; RequestError (field ``name``) when there is none by that name."""
    folder = campaign_dir(workdir, name)
    if not (folder / META_FILE).exists():
        known = list_campaigns(workdir)
        import difflib

        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise RequestError("name", f"unknown campaign {name!r}{hint}")
    meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    members = pd.read_parquet(folder / MEMBERS_FILE)
    members["profile_id"] = members["profile_id"].astype("string")
    return Campaign(name, meta, members)


def list_campaigns(workdir: str | Path) -> list[str]:
    folder = layout.campaigns_dir(workdir)
    if not folder.exists():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and _NAME.match(p.name))


def forget_in_campaigns(workdir: str | Path, profile_ids: Iterable[str]) -> dict[str, int]:
    """Remove profiles from every stored campaign; rows removed per campaign."""
    ids = pd.Index([str(p) for p in profile_ids], dtype="string")
    removed: dict[str, int] = {}
    for name in list_campaigns(workdir):
        path = campaign_dir(workdir, name) / MEMBERS_FILE
        if not path.exists():
            continue
        members = pd.read_parquet(path)
        hit = members["profile_id"].astype("string").isin(ids).to_numpy(bool)
        if hit.any():
            tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
            members.loc[~hit].reset_index(drop=True).to_parquet(tmp, index=False)
            os.replace(tmp, path)
            removed[name] = int(hit.sum())
    return removed


# --------------------------------------------------------------------------- statistics


def wilson(x: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``x / n``."""
    if n == 0:
        return (0.0, 1.0)
    p = x / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def difference_interval(x1: int, n1: int, x2: int, n2: int) -> tuple[float, float]:
    """95% Newcombe hybrid score interval of ``x1/n1 - x2/n2`` (his method 10)."""
    p1, p2 = x1 / n1, x2 / n2
    l1, u1 = wilson(x1, n1)
    l2, u2 = wilson(x2, n2)
    d = p1 - p2
    return (
        d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2),
        d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2),
    )


def ratio_interval(x1: int, n1: int, x2: int, n2: int) -> tuple[float, float] | None:
    """95% interval of ``(x1/n1) / (x2/n2)`` by the delta method on the log (Katz); None
    when either group has no conversion."""
    if x1 == 0 or x2 == 0:
        return None
    ratio = (x1 / n1) / (x2 / n2)
    se = math.sqrt(1 / x1 - 1 / n1 + 1 / x2 - 1 / n2)
    return (ratio * math.exp(-Z95 * se), ratio * math.exp(Z95 * se))


def minimum_detectable_effect(rate: float, n1: int, n2: int) -> float:
    """Smallest absolute difference a two-sided 5% test detects with 80% power."""
    rate = min(max(rate, 1e-9), 1 - 1e-9)
    return (Z95 + Z80) * math.sqrt(rate * (1 - rate) * (1 / n1 + 1 / n2))


def _arm(x: int, n: int) -> dict[str, Any]:
    low, high = wilson(x, n)
    return {
        "profiles": n,
        "converted": x,
        "rate": _r(x / n if n else float("nan")),
        "interval_95": [_r(low), _r(high)],
    }


def _r(value: float | None, digits: int = 5) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), digits)


def lift(x_t: int, n_t: int, x_h: int, n_h: int) -> dict[str, Any]:
    """Treated vs holdout: rates, absolute and relative lift with 95% intervals, the MDE."""
    if n_t == 0 or n_h == 0:
        return {"treated": _arm(x_t, n_t), "holdout": _arm(x_h, n_h), "absolute_lift": None}
    p_t, p_h = x_t / n_t, x_h / n_h
    low, high = difference_interval(x_t, n_t, x_h, n_h)
    ratio = ratio_interval(x_t, n_t, x_h, n_h)
    base = p_h if 0 < p_h < 1 else (x_t + x_h) / (n_t + n_h)
    mde = minimum_detectable_effect(base, n_t, n_h)
    return {
        "treated": _arm(x_t, n_t),
        "holdout": _arm(x_h, n_h),
        "absolute_lift": {
            "estimate": _r(p_t - p_h),
            "interval_95": [_r(low), _r(high)],
            "method": "Newcombe hybrid score (Wilson)",
        },
        "relative_lift": {
            "estimate": _r(p_t / p_h - 1) if p_h > 0 else None,
            "interval_95": [_r(ratio[0] - 1), _r(ratio[1] - 1)] if ratio else None,
            "method": "delta method on the log ratio (Katz)",
        },
        "minimum_detectable_effect": {
            "absolute": _r(mde),
            "relative": _r(mde / p_h) if p_h > 0 else None,
            "power": 0.8,
            "alpha": 0.05,
        },
        "_interval": (low, high),
    }


# --------------------------------------------------------------------------- the readout


def conversions(
    campaign: Campaign,
    events: pd.DataFrame,
    until: pd.Timestamp,
    cookie_map: pd.Series | None = None,
) -> pd.Series:
    """Whether each member had a target event in ``[launch, min(launch + horizon, until))``;
    boolean Series indexed by ``profile_id`` in member order."""
    from dmp_ml.retargeting import attribute

    start = campaign.launch
    end = min(start + campaign.meta["horizon_days"] * _DAY, until)
    ids = pd.Index(campaign.members["profile_id"].astype("string"))
    hit = events["event_type"].astype("string") == campaign.meta["target_event"]
    hit &= (events["event_time"] >= start) & (events["event_time"] < end)
    rows = attribute(events.loc[hit.to_numpy(bool, na_value=False)], ids, cookie_map)
    return pd.Series(ids.isin(set(rows["profile_id"])), index=ids, name="converted")


def campaign_report(
    workdir: str | Path,
    name: str,
    *,
    events: pd.DataFrame | None = None,
    as_of: pd.Timestamp | str | None = None,
    bundle: ModelBundle | None = None,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """The readout of a stored campaign (see the module doc), JSON-ready.

    ``events`` default to the workdir's event history (training events and stored batches);
    ``as_of`` (how far the data goes) to the UTC midnight after the last event; ``bundle``
    (for cookie-only events) to none.
    """
    from dmp_ml.contract import data_end
    from dmp_ml.settings import load_settings
    from dmp_ml.store import history_events

    cfg = (settings or load_settings()).campaigns
    campaign = load_campaign(workdir, name)
    if events is None:
        events = history_events(workdir)
    if as_of is None:
        # the midnight after the last event, like train's "end"
        until = data_end(events) if len(events) else campaign.launch.floor("D") + _DAY
    else:
        until = utc(as_of, "as_of")
    horizon = int(campaign.meta["horizon_days"])
    cookie_map = bundle.features.cookie_map if bundle is not None else None
    converted = conversions(campaign, events, until, cookie_map)
    members = campaign.members.assign(converted=converted.to_numpy())
    treated = members["group"] == TREATED
    x_t, n_t = int(members.loc[treated, "converted"].sum()), int(treated.sum())
    x_h, n_h = int(members.loc[~treated, "converted"].sum()), int((~treated).sum())
    days = max(0.0, (min(until, campaign.launch + horizon * _DAY) - campaign.launch) / _DAY)
    result = lift(x_t, n_t, x_h, n_h)
    low, high = result.pop("_interval", (float("nan"), float("nan")))
    complete = days >= horizon
    if result.get("absolute_lift") is None:
        verdict = "no holdout or no treated profiles: nothing to compare"
    elif low > 0:
        verdict = "treated converted more than holdout"
    elif high < 0:
        verdict = "treated converted less than holdout"
    elif not complete:
        verdict = "too early to tell"
    else:
        verdict = "no detectable effect"
    report = {
        "campaign": campaign.name,
        "launch": campaign.launch.isoformat(),
        "target_event": campaign.meta["target_event"],
        "horizon_days": horizon,
        "days_so_far": round(days, 2),
        "horizon_complete": bool(complete),
        "data_until": until.isoformat(),
        **result,
        "verdict": verdict,
        "by_propensity": _by_propensity(members, cfg.min_per_bin),
    }
    return report


def _by_propensity(members: pd.DataFrame, min_per_bin: int) -> dict[str, Any]:
    scored = members[members["propensity_score"].notna()]
    n_h = int((scored["group"] == HOLDOUT).sum())
    bins = min(10, n_h // min_per_bin)
    if bins < 2:
        return {
            "available": False,
            "reason": f"{n_h} scored holdout profiles: at least {2 * min_per_bin} are needed "
            f"for two bins of {min_per_bin}",
        }
    rank = scored["propensity_score"].rank(method="first")
    codes = pd.qcut(rank, bins, labels=False)
    out = []
    for b in range(bins):
        part = scored[codes == b]
        t = part["group"] == TREATED
        x_t, n_t = int(part.loc[t, "converted"].sum()), int(t.sum())
        x_h, n_h_b = int(part.loc[~t, "converted"].sum()), int((~t).sum())
        row: dict[str, Any] = {
            "bin": b + 1,
            "score_range": [
                _r(part["propensity_score"].min(), 4),
                _r(part["propensity_score"].max(), 4),
            ],
            "treated_rate": _r(x_t / n_t) if n_t else None,
            "holdout_rate": _r(x_h / n_h_b) if n_h_b else None,
            "treated": n_t,
            "holdout": n_h_b,
        }
        if n_t and n_h_b:
            low, high = difference_interval(x_t, n_t, x_h, n_h_b)
            row["absolute_lift"] = _r(x_t / n_t - x_h / n_h_b)
            row["interval_95"] = [_r(low), _r(high)]
        out.append(row)
    return {"available": True, "bins": bins, "rows": out}


def export_campaign(
    bundle: ModelBundle, workdir: str | Path, name: str, path: str | Path, **options: Any
) -> Any:
    """Write the campaign's treated profiles (never the holdout) as an activation export."""
    from dmp_ml.activation import export_audience

    campaign = load_campaign(workdir, name)
    return export_audience(bundle, campaign.treated_ids, path, **options)


def plot_readout(
    readouts: Mapping[str, Mapping[str, Any]],
    truths: Mapping[str, float] | None = None,
    title: str = "Campaign readout",
) -> Any:
    """Treated and holdout conversion (95% Wilson intervals) and the absolute lift with its
    95% interval, one row per readout (e.g. ``{"planted +x": report, "no effect": report}``);
    ``truths`` marks a known true lift per readout (simulations)."""
    from matplotlib.figure import Figure

    truths = dict(truths or {})
    names = list(readouts)
    fig = Figure(figsize=(9, 1.4 + 0.9 * len(names)))
    rates_ax, lift_ax = fig.subplots(1, 2)
    y = np.arange(len(names))[::-1].astype(float)
    for offset, arm, color in ((0.15, TREATED, "C0"), (-0.15, HOLDOUT, "C7")):
        rate = [readouts[n][arm]["rate"] for n in names]
        low = [readouts[n][arm]["interval_95"][0] for n in names]
        high = [readouts[n][arm]["interval_95"][1] for n in names]
        err = [np.subtract(rate, low), np.subtract(high, rate)]
        rates_ax.errorbar(rate, y + offset, xerr=err, fmt="o", color=color, capsize=3, label=arm)
    for ax in (rates_ax, lift_ax):
        ax.set_ylim(-0.6, len(names) - 0.4)
    rates_ax.set_yticks(y, names)
    rates_ax.set_xlabel("conversion rate")
    rates_ax.set_title("Treated vs holdout (95% intervals)")
    rates_ax.legend(fontsize=8, loc="upper left")
    for yi, name in zip(y, names, strict=True):
        lift = readouts[name]["absolute_lift"]
        low, high = lift["interval_95"]
        est = lift["estimate"]
        lift_ax.errorbar(
            [est], [yi], xerr=[[est - low], [high - est]], fmt="o", color="C0", capsize=3
        )
        lift_ax.annotate(readouts[name]["verdict"], (high, yi), xytext=(6, -3),
                         textcoords="offset points", fontsize=7)  # fmt: skip
        if name in truths:
            lift_ax.scatter([truths[name]], [yi], marker="x", color="C3", s=60, zorder=3)
    if truths:
        lift_ax.scatter([], [], marker="x", color="C3", label="planted true lift")
        lift_ax.legend(fontsize=8, loc="upper left")
    lift_ax.axvline(0.0, color="grey", linestyle="--", linewidth=1)
    lift_ax.set_yticks(y, [""] * len(names))
    lift_ax.set_xlabel("absolute lift (treated - holdout)")
    lift_ax.set_title("Lift, 95% Newcombe interval")
    lo, hi = lift_ax.get_xlim()
    lift_ax.set_xlim(lo, hi + 0.6 * (hi - lo))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
