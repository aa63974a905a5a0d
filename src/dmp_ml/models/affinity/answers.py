"""Affinity answers over a loaded bundle: per profile, per segment, export columns, charts.

Only eligible profiles are answered: ids not in the bundle's features or excluded (withdrawn,
erased, forgotten) are reported as unknown / not eligible, never scored.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from dmp_ml.errors import BundleError, RequestError

if TYPE_CHECKING:
    from dmp_ml.bundle import ModelBundle
    from dmp_ml.models.affinity.model import AffinityModel

__all__ = [
    "MAX_TOP",
    "affinity_columns",
    "plot_segment_affinity",
    "profile_affinity",
    "segment_affinity",
]

MAX_TOP = 50
"""Most categories one answer lists."""


def _model(bundle: ModelBundle) -> AffinityModel:
    model = getattr(bundle, "affinity_model", None)
    if model is None:
        raise BundleError(
            f"bundle {bundle.version} has no affinity model: retrain with this version"
        )
    return model


def _check_top(top: object) -> int:
    if isinstance(top, bool) or not isinstance(top, int) or not 1 <= top <= MAX_TOP:
        raise RequestError("top", f"must be a whole number in [1, {MAX_TOP}], got {top!r}")
    return top


def profile_affinity(
    bundle: ModelBundle, profile_ids: Iterable[str], top: int = 3
) -> tuple[pd.DataFrame, list[str]]:
    """Affinity of eligible profiles (see :meth:`AffinityModel.profile_frame`) and the ids
    unknown to the bundle (never eligible, withdrawn, erased or forgotten)."""
    from dmp_ml.segments import excluded_ids

    top = _check_top(top)
    model = _model(bundle)
    ids = pd.Index(list(dict.fromkeys(str(p) for p in profile_ids)), dtype="string")
    ok = ids[ids.isin(bundle.features.profile_ids) & ~ids.isin(list(excluded_ids(bundle)))]
    frame = model.profile_frame(ok, top=top)
    known = set(frame["profile_id"].astype(str))
    return frame, [str(p) for p in ids if p not in known]


def segment_affinity(
    bundle: ModelBundle,
    profile_ids: Iterable[str],
    top: int = 5,
    hours: int = 3,
) -> dict[str, Any]:
    """Channel mix, top categories (lift, members behind each) and best display hours of the
    eligible members of ``profile_ids``."""
    from dmp_ml.segments import excluded_ids

    top = _check_top(top)
    model = _model(bundle)
    ids = pd.Index(list(dict.fromkeys(str(p) for p in profile_ids)), dtype="string")
    gone = excluded_ids(bundle)
    ok = ids[ids.isin(bundle.features.profile_ids) & ~ids.isin(list(gone))]
    out = model.segment_summary(ok, top=top, send_time=bundle.send_time_model, hours=hours)
    out["requested"] = int(len(ids))
    out["not_eligible"] = int(len(ids) - len(ok))
    return out


def affinity_columns(bundle: ModelBundle, profile_ids: Sequence[str], top: int = 3) -> pd.DataFrame:
    """Export columns for display platforms: ``top_categories`` (``|``-joined, best first)
    and ``preferred_channel``, indexed by ``profile_id`` (missing for unknown ids)."""
    frame, _ = profile_affinity(bundle, profile_ids, top=top)
    cats = ["|".join(c["category"] for c in cs) for cs in frame["top_categories"]]
    return pd.DataFrame(
        {
            "top_categories": pd.array(cats, dtype="string"),
            "preferred_channel": pd.array(frame["preferred_channel"].tolist(), dtype="string"),
        },
        index=pd.Index(frame["profile_id"], name="profile_id"),
    )


def plot_segment_affinity(
    summaries: Mapping[str, Mapping[str, Any]], title: str = "Segment affinity"
) -> Any:
    """One panel per segment with its top categories' lift over the population (members
    behind each in the label), and a last panel with every segment's channel mix."""
    from matplotlib.figure import Figure

    names = list(summaries)
    fig = Figure(figsize=(3.2 * (len(names) + 1), 3.8))
    axes = np.atleast_1d(fig.subplots(1, len(names) + 1))
    for ax, name in zip(axes, names, strict=False):
        cats = list(summaries[name]["top_categories"])[::-1]
        ax.barh(
            [f"{c['category']} ({c['profiles']})" for c in cats],
            [c["lift"] for c in cats],
            color="C0",
        )
        ax.axvline(1.0, color="grey", linestyle="--", linewidth=1)
        ax.set_title(f"{name} ({summaries[name]['size']:,} profiles)", fontsize=9)
        ax.set_xlabel("lift over population")
        ax.tick_params(labelsize=8)
    mix_ax = axes[-1]
    channels = [c["channel"] for c in next(iter(summaries.values()))["channels"]]
    rows = {
        "population": {
            c["channel"]: c["population_share"] for c in next(iter(summaries.values()))["channels"]
        }
    }
    rows.update({n: {c["channel"]: c["share"] for c in summaries[n]["channels"]} for n in names})
    left = np.zeros(len(rows))
    for i, channel in enumerate(channels):
        width = np.array([rows[r].get(channel) or 0.0 for r in rows])
        mix_ax.barh(list(rows), width, left=left, label=channel, color=f"C{i}")
        left += width
    mix_ax.set_xlim(0, 1)
    mix_ax.set_xlabel("share of engagement")
    mix_ax.set_title("Channel mix", fontsize=9)
    mix_ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=3)
    mix_ax.tick_params(labelsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
