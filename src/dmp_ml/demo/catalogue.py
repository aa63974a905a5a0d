"""The demo world's vocabulary: interest groups, categories, zones, event codes and shares."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from dmp_ml.contract import EVENT_COLUMNS as CONTRACT_EVENT_COLUMNS
from dmp_ml.contract import WELL_KNOWN_EVENT_TYPES

EVENT_COLUMNS: tuple[str, ...] = tuple(CONTRACT_EVENT_COLUMNS)
INTEREST_GROUPS: tuple[str, ...] = ("outdoor", "fashion", "home", "tech", "beauty", "kids")
CATEGORIES: tuple[str, ...] = (
    "hiking",
    "camping",
    "cycling",
    "running",
    "womenswear",
    "menswear",
    "shoes",
    "accessories",
    "furniture",
    "kitchen",
    "garden",
    "decor",
    "phones",
    "laptops",
    "audio",
    "gaming",
    "skincare",
    "makeup",
    "fragrance",
    "toys",
    "baby",
    "kidswear",
)
TIMEZONES: tuple[str, ...] = (
    "Europe/London",
    "Europe/Berlin",
    "America/New_York",
    "America/Los_Angeles",
    "Asia/Tokyo",
    "Australia/Sydney",
)
EVENT_TYPES = WELL_KNOWN_EVENT_TYPES  # the order the codes below rely on
PV, PRV, ATC, BUY, SEND, OPEN, CLICK, IMP, ADCLICK = range(len(EVENT_TYPES))
CHANNELS = ("web", "app", "email", "display", "partner")
WEB, APP, EMAIL, DISPLAY, PARTNER = range(len(CHANNELS))
SOURCES = ("first_party", "second_party", "third_party")
FIRST, SECOND, THIRD = range(len(SOURCES))
GROUP_SHARE = np.array([0.18, 0.2, 0.18, 0.16, 0.14, 0.14])
GROUP_PURCHASE_FACTOR = np.array([1.0, 1.25, 0.9, 0.8, 1.15, 1.05])
GROUP_AGE = np.array([40.0, 31.0, 45.0, 34.0, 32.0, 37.0])
GROUP_CORE: dict[str, dict[str, float]] = {
    "outdoor": {"hiking": 0.3, "camping": 0.22, "cycling": 0.16, "running": 0.14, "shoes": 0.06},
    "fashion": {"womenswear": 0.3, "menswear": 0.2, "shoes": 0.18, "accessories": 0.16},
    "home": {"furniture": 0.25, "kitchen": 0.25, "decor": 0.2, "garden": 0.16},
    "tech": {"phones": 0.26, "laptops": 0.22, "audio": 0.2, "gaming": 0.2},
    "beauty": {"skincare": 0.34, "makeup": 0.28, "fragrance": 0.2, "accessories": 0.06},
    "kids": {"toys": 0.32, "baby": 0.24, "kidswear": 0.24, "gaming": 0.05},
}
CATEGORY_PRICE = {
    "hiking": 60.0,
    "camping": 90.0,
    "cycling": 120.0,
    "running": 70.0,
    "womenswear": 55.0,
    "menswear": 50.0,
    "shoes": 80.0,
    "accessories": 35.0,
    "furniture": 250.0,
    "kitchen": 45.0,
    "garden": 40.0,
    "decor": 30.0,
    "phones": 400.0,
    "laptops": 900.0,
    "audio": 120.0,
    "gaming": 60.0,
    "skincare": 30.0,
    "makeup": 25.0,
    "fragrance": 60.0,
    "toys": 30.0,
    "baby": 35.0,
    "kidswear": 25.0,
}
ZONE_SHARE = np.array([0.2, 0.2, 0.22, 0.15, 0.13, 0.1])
COUNTRIES = ("GB", "DE", "US", "JP", "AU")
ZONE_COUNTRY = np.array([0, 1, 2, 2, 3, 4])  # index into COUNTRIES per TIMEZONES entry
# Relative activity by local hour for the "background" part of everyone's day.
DAILY_PROFILE = np.array(
    [0.3, 0.2, 0.15, 0.1, 0.1, 0.2, 0.5, 1.0, 1.4, 1.3, 1.2, 1.3]
    + [1.5, 1.3, 1.2, 1.2, 1.3, 1.5, 1.8, 2.0, 2.1, 1.9, 1.4, 0.8]
)
DAILY_PROFILE = DAILY_PROFILE / DAILY_PROFILE.sum()
DAY = 86_400.0
HOUR = 3_600.0


def _category_mix() -> np.ndarray:
    """Category probabilities per interest group, shape (n_groups, n_categories)."""
    mix = np.full((len(INTEREST_GROUPS), len(CATEGORIES)), 0.01)
    for g, name in enumerate(INTEREST_GROUPS):
        for cat, w in GROUP_CORE[name].items():
            mix[g, CATEGORIES.index(cat)] += w
    return mix / mix.sum(axis=1, keepdims=True)


CUM_MIX = np.cumsum(_category_mix(), axis=1)


def strings(codes: np.ndarray, names: Sequence[str] | np.ndarray) -> pd.Series:
    """A pandas "string" column from integer codes (-1 = missing) into ``names``."""
    cat = pd.Categorical.from_codes(codes, categories=pd.Index(list(names), dtype=object))
    return pd.Series(cat).astype("string")
