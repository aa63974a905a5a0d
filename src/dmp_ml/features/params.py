"""The vocabularies and windows a build uses: :class:`FeatureParams`, chosen by :func:`fit_params`.

Vocabularies are chosen globally (over all eligible events, before any partitioning), so any
engine and any partitioning of the profiles gives the same columns.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from dmp_ml import identity
from dmp_ml.contract import SOURCES, WELL_KNOWN_EVENT_TYPES
from dmp_ml.errors import DataContractError
from dmp_ml.features.table import FeatureSpec
from dmp_ml.settings import FeatureSettings

OTHER_EVENT = "other_event"
INTERNAL_COLUMNS = ["_email_sends", "_email_opens", "_email_clicks"]
"""Raw email counts :func:`~dmp_ml.features.aggregate` leaves for the population-smoothed rates."""
DAY_NS = 86_400 * 10**9


@dataclass(frozen=True)
class FeatureParams:
    """Everything a partition needs besides its events: vocabularies, windows, cutoff.

    Vocabularies are chosen globally (over all eligible events) so that any partitioning of
    the profiles gives the same columns and values.
    """

    as_of_ns: int
    windows: tuple[int, ...]
    half_life_days: float
    event_types: tuple[str, ...]  # column order; last is OTHER_EVENT
    passive: tuple[bool, ...]  # per event type: not engagement
    channels: tuple[str, ...]
    categories: tuple[str, ...]
    type_slugs: tuple[str, ...]
    channel_slugs: tuple[str, ...]
    category_slugs: tuple[str, ...]

    @property
    def open_index(self) -> int:
        return self.event_types.index("email_open")

    @property
    def click_index(self) -> int:
        return self.event_types.index("email_click")

    @property
    def send_index(self) -> int:
        return self.event_types.index("email_send")

    def columns(self) -> list[str]:
        """Float columns, in order (public first, then the internal ``_email_*`` counts)."""
        w = self.windows
        cols = ["is_anonymous", "n_cookies", "n_shared_devices", "tenure_days"]
        cols += ["days_since_last_event", "event_count_total"]
        cols += [f"event_count_{d}d" for d in w]
        cols += [f"active_days_{d}d" for d in w]
        cols += ["activity_decayed"]
        for s in self.type_slugs:
            cols += [f"{s}_count_{d}d" for d in w]
            cols += [f"{s}_count_total", f"{s}_days_total", f"days_since_{s}", f"{s}_decayed"]
            cols += [f"{s}_tenure_days", f"{s}_mean_gap_days"]
        cols += [f"value_sum_{d}d" for d in w] + ["value_sum_total", "value_mean"]
        cols += [f"category_share_{s}" for s in self.category_slugs] + ["category_share_other"]
        cols += [f"channel_share_{s}" for s in self.channel_slugs] + ["channel_share_other"]
        cols += [f"source_share_{s}" for s in SOURCES]
        cols += ["email_open_rate_smoothed", "email_click_rate_smoothed"]
        return cols + INTERNAL_COLUMNS

    def to_dict(self) -> dict[str, Any]:
        return {"windows_days": list(self.windows), "half_life_days": self.half_life_days}


def slug(text: str) -> str:
    """``text`` as a column-safe name part (ASCII, lower case, ``_`` between words)."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "_", ascii_text.lower()).strip("_")


def _slugs(names: Sequence[str], fallback: str, taken: Iterable[str] = ()) -> tuple[str, ...]:
    """Column-safe, unique slugs (collisions get ``_2``, ``_3`` ...)."""
    used = set(taken)
    out = []
    for i, name in enumerate(names):
        base = slug(name) or f"{fallback}{i}"
        name_slug, k = base, 2
        while name_slug in used:
            name_slug, k = f"{base}_{k}", k + 1
        used.add(name_slug)
        out.append(name_slug)
    return tuple(out)


def _frequent(counts: dict[str, int], min_share: float, max_n: int) -> list[str]:
    """Names with at least ``min_share`` of the total, the ``max_n`` largest, sorted by name."""
    total = sum(counts.values())
    if total == 0 or max_n == 0:
        return []
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return sorted(k for k, v in ranked[:max_n] if v > 0 and v / total >= min_share)


def _top_k(counts: dict[str, int], k: int) -> list[str]:
    ranked = sorted(((n, v) for n, v in counts.items() if v > 0), key=lambda kv: (-kv[1], kv[0]))
    return [n for n, _ in ranked[:k]]


def fit_params(
    as_of: pd.Timestamp,
    fs: FeatureSettings,
    type_counts: dict[str, int],
    channel_counts: dict[str, int],
    category_counts: dict[str, int],
    categories: Sequence[str] | None = None,
    reference: FeatureSpec | None = None,
) -> FeatureParams:
    """Choose the vocabularies from global counts over the eligible events (or a reference)."""
    windows = tuple(sorted({int(w) for w in fs.windows_days}))
    if not windows or windows[0] <= 0:
        raise DataContractError(f"features.windows_days must be positive, got {fs.windows_days}")
    if reference is not None and reference.event_types:
        types = [t for t in reference.event_types if t != OTHER_EVENT]
        channels = list(reference.channels)
        cats = list(reference.categories) if categories is None else list(categories)
    else:
        extra = {k: v for k, v in type_counts.items() if k not in WELL_KNOWN_EVENT_TYPES}
        total = sum(type_counts.values())
        min_n = fs.vocab_min_share * total
        frequent = _frequent(extra, 0.0, fs.vocab_max_extra)
        types = [*WELL_KNOWN_EVENT_TYPES, *[t for t in frequent if extra[t] >= min_n]]
        channels = _frequent(channel_counts, fs.vocab_min_share, fs.vocab_max_extra)
        cats = (
            _top_k(category_counts, fs.top_k_categories) if categories is None else list(categories)
        )
    types = [*types, OTHER_EVENT]
    type_slugs = _slugs(types, "event_type_", taken={"event", "activity"})
    return FeatureParams(
        as_of_ns=int(as_of.value),
        windows=windows,
        half_life_days=float(fs.half_life_days),
        event_types=tuple(types),
        passive=tuple(t in set(fs.passive_event_types) for t in types),
        channels=tuple(channels),
        categories=tuple(cats),
        type_slugs=type_slugs,
        channel_slugs=_slugs(channels, "channel_", taken={"other"}),
        category_slugs=_slugs(cats, "category_", taken={"other"}),
    )


def params_from_codes(
    codes: identity.IdCodes,
    rows: np.ndarray,
    as_of: pd.Timestamp,
    fs: FeatureSettings,
    categories: Sequence[str] | None,
    reference: FeatureSpec | None,
) -> FeatureParams:
    """Global vocabularies from the encoded columns of the eligible rows."""
    type_counts, channel_counts, category_counts = _counts(
        [codes.columns[name] for name in ("event_type", "channel", "category")], rows
    )
    return fit_params(
        as_of,
        fs,
        type_counts,
        channel_counts,
        category_counts,
        categories=categories,
        reference=reference,
    )


def vocab_lut(dictionary: pa.Array, vocab: Sequence[str], other: int, null: int) -> np.ndarray:
    """Map codes of ``dictionary`` to indices of ``vocab``; index with ``codes`` (-1 -> null).

    Codes not in ``vocab`` map to ``other``, the null code (-1, the last entry) to ``null``.
    """
    idx = identity.lookup(dictionary, pa.array(list(vocab), type=pa.string()))
    return np.append(np.where(idx >= 0, idx, other), null).astype(np.int64)


def _counts(
    columns: Sequence[tuple[np.ndarray, pa.Array]], rows: np.ndarray
) -> list[dict[str, int]]:
    """Rows per distinct value among ``rows`` (nulls left out), for each (codes, dictionary)
    column; on a big log the two halves of the rows are counted side by side."""

    def count(slices: list[slice]) -> list[np.ndarray]:
        acc = [np.zeros(len(dictionary) + 1, dtype=np.int64) for _, dictionary in columns]
        for sl in slices:
            picked = rows[sl]
            for total, (codes, dictionary) in zip(acc, columns, strict=True):
                total += np.bincount(codes[picked] + 1, minlength=len(dictionary) + 1)
        return acc

    halves = identity.in_two(count, list(identity.chunks(len(rows))))
    out = []
    for i, (_, dictionary) in enumerate(columns):
        acc = np.sum([half[i] for half in halves], axis=0)
        names = dictionary.to_pylist()
        out.append({str(names[j]): int(v) for j, v in enumerate(acc[1:]) if v > 0})
    return out
