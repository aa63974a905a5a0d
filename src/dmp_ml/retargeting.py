"""Retargeting audiences: built-in, parameterised templates over the event history.

Every template is evaluated at a cutoff ``as_of`` (default: the bundle's data cutoff, moved on
by fresh events) on the workdir's event store (the training events plus stored refresh
batches), only counting events before ``as_of``. An event belongs to a profile through its
``profile_id``, or, for a cookie-only event, through the bundle's identity graph
(``cookie -> profile``). Only eligible profiles are returned: consented, not expired, not
erased and not forgotten (the bundle's feature table minus the erasure list).

Templates (``W`` = ``days``, the window; ``B`` = ``exclude_buyers_days``, default ``W``;
"recent buyers", with a purchase in ``[as_of - B, as_of)``, are always left out):

``viewed_not_bought``
    a ``product_view`` in ``[as_of - W, as_of)`` (of one of ``categories`` when given), and no
    purchase within the last ``B`` days: viewed and did not buy.
``cart_abandoners``
    an ``add_to_cart`` in ``[as_of - W, as_of)`` and no purchase within the last ``B`` days.
``email_clickers``
    an ``email_click`` in ``[as_of - W, as_of)`` and no purchase within the last ``B`` days.
``lapsed_buyers``
    last purchase in ``[as_of - W, as_of)`` (default ``W`` 180 days) and more than
    ``lapse_factor`` times the profile's usual inter-purchase time ago. The usual time is the
    median gap between the profile's distinct purchase days (whole history before ``as_of``);
    a one-purchase customer has no gap of its own and gets the population's: the median of
    the repeat buyers' usual gaps. ``B`` defaults to 0 (the lapse itself excludes recent
    buyers).

Exposure filters from ``ad_impression`` events, for every template:

``max_impressions`` with ``impression_days``
    frequency cap: leave out profiles shown an ad ``max_impressions`` times or more in the
    last ``impression_days`` days;
``min_hours_since_impression``
    recency of exposure: leave out profiles shown an ad in the last that many hours.

``rank_by_propensity`` orders the audience by the propensity score, best first.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from dmp_ml.errors import BundleError, RequestError
from dmp_ml.times import utc

if TYPE_CHECKING:
    from dmp_ml.bundle import ModelBundle

logger = logging.getLogger(__name__)

TEMPLATES: dict[str, str] = {
    "viewed_not_bought": "viewed a product (of the categories) and did not buy",
    "cart_abandoners": "added to cart and did not buy",
    "lapsed_buyers": "bought before and lapsed beyond their usual inter-purchase time",
    "email_clickers": "clicked an e-mail and did not buy",
}
_TRIGGER = {
    "viewed_not_bought": "product_view",
    "cart_abandoners": "add_to_cart",
    "email_clickers": "email_click",
}
_DEFAULT_DAYS = {"lapsed_buyers": 180}
PURCHASE = "purchase"
IMPRESSION = "ad_impression"
_DAY = pd.Timedelta(days=1)
_KEYS = (
    "days",
    "categories",
    "exclude_buyers_days",
    "lapse_factor",
    "max_impressions",
    "impression_days",
    "min_hours_since_impression",
)


@dataclass(frozen=True)
class TemplateParams:
    """A template's parameters, checked (see the module doc)."""

    days: int
    categories: tuple[str, ...] = ()
    exclude_buyers_days: int = 0
    lapse_factor: float = 1.5
    max_impressions: int | None = None
    impression_days: int = 7
    min_hours_since_impression: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["categories"] = list(self.categories)
        return out


def _whole(value: Any, where: str, low: int, high: int) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise RequestError(where, f"must be a whole number in [{low}, {high}], got {value!r}")
    return value


def _positive(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RequestError(where, f"must be a number, got {value!r}")
    if value <= 0:
        raise RequestError(where, f"must be above 0, got {value!r}")
    return float(value)


def check_template(template: Any, where: str = "template") -> str:
    """The template name, or RequestError listing the known ones."""
    if not isinstance(template, str) or template not in TEMPLATES:
        import difflib

        close = difflib.get_close_matches(str(template), list(TEMPLATES), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise RequestError(
            where, f"unknown template {template!r}{hint} (known: {', '.join(TEMPLATES)})"
        )
    return template


def parse_params(
    template: str, params: Mapping[str, Any] | None, where: str = "params"
) -> TemplateParams:
    """Checked parameters of ``template``; a bad one is a RequestError naming it."""
    template = check_template(template)
    if params is not None and not isinstance(params, Mapping):
        raise RequestError(where, f"must be an object, got {type(params).__name__}")
    params = dict(params or {})
    unknown = [k for k in params if k not in _KEYS]
    if unknown:
        raise RequestError(
            f"{where}.{unknown[0]}", f"unknown parameter (known: {', '.join(_KEYS)})"
        )
    days = _whole(params.get("days", _DEFAULT_DAYS.get(template, 7)), f"{where}.days", 1, 3650)
    categories: tuple[str, ...] = ()
    if "categories" in params:
        if template != "viewed_not_bought":
            raise RequestError(f"{where}.categories", "only viewed_not_bought takes categories")
        cats = params["categories"]
        if not isinstance(cats, list) or not cats or not all(isinstance(c, str) for c in cats):
            raise RequestError(f"{where}.categories", f"must be a list of names, got {cats!r}")
        categories = tuple(cats)
    default_b = 0 if template == "lapsed_buyers" else days
    buyers = _whole(
        params.get("exclude_buyers_days", default_b), f"{where}.exclude_buyers_days", 0, 3650
    )
    factor = _positive(params.get("lapse_factor", 1.5), f"{where}.lapse_factor")
    if "lapse_factor" in params and template != "lapsed_buyers":
        raise RequestError(f"{where}.lapse_factor", "only lapsed_buyers takes lapse_factor")
    cap = params.get("max_impressions")
    if cap is not None:
        cap = _whole(cap, f"{where}.max_impressions", 1, 1_000_000)
    imp_days = _whole(params.get("impression_days", 7), f"{where}.impression_days", 1, 3650)
    recency = params.get("min_hours_since_impression")
    if recency is not None:
        recency = _positive(recency, f"{where}.min_hours_since_impression")
    return TemplateParams(days, categories, buyers, factor, cap, imp_days, recency)


# --------------------------------------------------------------------------- evaluation


def attribute(
    events: pd.DataFrame, eligible: pd.Index, cookie_map: pd.Series | None
) -> pd.DataFrame:
    """``profile_id, event_time, event_type, category`` of the events of ``eligible``
    profiles: by ``profile_id``, else a cookie-only event through ``cookie_map``."""
    pid = events["profile_id"].astype("string")
    if cookie_map is not None and "cookie_id" in events.columns:
        lookup = cookie_map.astype("string")
        via_cookie = pd.Series(
            lookup.reindex(events["cookie_id"].astype("string")).to_numpy(), index=events.index
        )
        pid = pid.fillna(via_cookie.astype("string"))
    keep = pid.isin(eligible).to_numpy(bool, na_value=False)
    return pd.DataFrame(
        {
            "profile_id": pid[keep].to_numpy(dtype=object),
            "event_time": events["event_time"][keep].to_numpy(),
            "event_type": events["event_type"].astype("string")[keep].to_numpy(dtype=object),
            "category": events["category"].astype("string")[keep].to_numpy(dtype=object),
        }
    )


def template_ids(
    events: pd.DataFrame, template: str, params: TemplateParams, as_of: pd.Timestamp
) -> pd.Index:
    """Profiles of attributed ``events`` (see :func:`attribute`) the template selects at
    ``as_of``, sorted; exposure filters applied."""
    as_of = pd.Timestamp(as_of)
    ev = events[events["event_time"] < as_of]
    since = ev["event_time"] >= as_of - params.days * _DAY
    kind = ev["event_type"]
    buys = ev[kind == PURCHASE]
    if template in _TRIGGER:
        hit = since & (kind == _TRIGGER[template])
        if params.categories:
            hit &= ev["category"].isin(params.categories)
        chosen = set(ev.loc[hit, "profile_id"])
    else:
        chosen = _lapsed(buys, params, as_of)
    if params.exclude_buyers_days:
        recent = buys["event_time"] >= as_of - params.exclude_buyers_days * _DAY
        chosen -= set(buys.loc[recent, "profile_id"])
    shown = ev[kind == IMPRESSION]
    if params.max_impressions is not None:
        window = shown[shown["event_time"] >= as_of - params.impression_days * _DAY]
        counts = window["profile_id"].value_counts()
        chosen -= set(counts.index[counts >= params.max_impressions])
    if params.min_hours_since_impression is not None:
        cut = as_of - pd.Timedelta(hours=params.min_hours_since_impression)
        chosen -= set(shown.loc[shown["event_time"] >= cut, "profile_id"])
    return pd.Index(sorted(chosen), dtype="string", name="profile_id")


def _lapsed(buys: pd.DataFrame, params: TemplateParams, as_of: pd.Timestamp) -> set[str]:
    if buys.empty:
        return set()
    days = pd.DataFrame(
        {"profile_id": buys["profile_id"].to_numpy(), "day": buys["event_time"].dt.floor("D")}
    ).drop_duplicates()
    days = days.sort_values(["profile_id", "day"], kind="stable")
    gap = days.groupby("profile_id", sort=False)["day"].diff() / _DAY
    usual = gap.groupby(days["profile_id"].to_numpy()).median()  # NaN for one-purchase buyers
    population = float(usual.dropna().median()) if usual.notna().any() else math.nan
    usual = usual.fillna(population)
    last = buys.groupby("profile_id")["event_time"].max()
    since = (as_of - last) / _DAY
    usual = usual.reindex(last.index)
    ok = (last >= as_of - params.days * _DAY) & (since > params.lapse_factor * usual)
    return set(last.index[ok.to_numpy(bool, na_value=False)])


def default_as_of(bundle: ModelBundle) -> pd.Timestamp:
    """The bundle's data cutoff: its ``as_of``, or later when fresh events moved it on."""
    refreshed = bundle.manifest.get("refresh", {}).get("features_as_of")
    return pd.Timestamp(refreshed) if refreshed else pd.Timestamp(bundle.as_of)


def bundle_events(bundle: ModelBundle) -> pd.DataFrame:
    """The event history of the bundle's workdir (training events plus stored batches)."""
    from dmp_ml.segments import workdir_of
    from dmp_ml.store import history_events

    workdir: Path = workdir_of(bundle)
    return history_events(workdir)


def retarget(
    bundle: ModelBundle,
    template: str,
    params: Mapping[str, Any] | TemplateParams | None = None,
    *,
    as_of: pd.Timestamp | str | None = None,
    events: pd.DataFrame | None = None,
    rank_by_propensity: bool = False,
) -> pd.DataFrame:
    """The template's audience: ``profile_id`` (and ``propensity_score``, ``rank`` when ranked
    by propensity, best first), eligible profiles only.

    ``events`` default to the workdir's event history; ``as_of`` to :func:`default_as_of`.
    """
    from dmp_ml.segments import excluded_ids

    template = check_template(template)
    checked = params if isinstance(params, TemplateParams) else parse_params(template, params)
    cutoff = utc(as_of, "as_of") if as_of is not None else default_as_of(bundle)
    if events is None:
        events = bundle_events(bundle)
    eligible = bundle.features.profile_ids
    gone = excluded_ids(bundle)
    if gone:
        eligible = eligible[~eligible.isin(list(gone))]
    attributed = attribute(events, eligible, bundle.features.cookie_map)
    ids = template_ids(attributed, template, checked, cutoff)
    out = pd.DataFrame({"profile_id": pd.array(ids.to_numpy(), dtype="string")})
    if rank_by_propensity:
        if bundle.scores is None:
            raise RequestError("rank_by_propensity", f"bundle {bundle.version} has no scores")
        score = bundle.scores["score"].reindex(out["profile_id"]).to_numpy(dtype=np.float64)
        out["propensity_score"] = score
        out = out.sort_values(
            ["propensity_score", "profile_id"], ascending=[False, True], kind="stable"
        ).reset_index(drop=True)
        out["rank"] = np.arange(1, len(out) + 1, dtype=np.int64)
    logger.info("retarget %s: %d profiles", template, len(out))
    return out


def describe() -> list[dict[str, Any]]:
    """The templates and their parameters with defaults, for listings."""
    return [
        {
            "template": name,
            "description": text,
            "defaults": parse_params(name, {}).to_dict(),
        }
        for name, text in TEMPLATES.items()
    ]


def ids_for_rule(bundle: ModelBundle, template: str, params: Mapping[str, Any]) -> pd.Index:
    """Profile ids of a template clause in a segment rule (see :mod:`dmp_ml.segments`)."""
    try:
        frame = retarget(bundle, template, params)
    except BundleError as exc:
        raise RequestError("retarget", f"needs the workdir's event history: {exc}") from exc
    return pd.Index(frame["profile_id"])


def template_names() -> Sequence[str]:
    return tuple(TEMPLATES)
