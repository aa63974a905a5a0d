"""The synthetic demo DMP world: events, profiles, consent, and the ground truth planted in them.

``make run``, the tests and the evaluations all use this world. It is generated with vectorised
numpy draws from one ``np.random.default_rng(seed)``, so a seed always gives the same world.

What is planted (and written to ``truth.parquet``, one row per person):

- an interest group (outdoor, fashion, home, tech, beauty, kids; 30% also have a secondary
  group) with its own mix over 22 product categories;
- a lognormal engagement that drives web/app sessions and purchases;
- an active period ``[active_from, active_until)``: 15% activate late, 20% churn. Purchases are a
  Poisson process with a constant daily rate inside that period and none outside it, so the
  probability of at least one purchase in any window is known exactly
  (:func:`true_purchase_probability`);
- a preferred local hour of day (sessions cluster around it; email opens are likelier when the
  send lands near it) and the true IANA time zone (missing from ``profiles.timezone`` for ~10%);
- machine openers (~5%: an open seconds after every send), households (~4% of people share a
  device they both log into), and the final marketing-consent state (~3% withdrawn).

Identity is realistic: each person has 1-3 devices whose cookie rotates after 30-90 days; only
some sessions are logged in (about 90% of a person's cookies get at least one logged-in event);
third-party ad impressions land mostly on anonymous cookies that never log in.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from dmp_ml.demo.events import (
    anonymous_ads,
    assemble_events,
    email_events,
    session_events,
    sessions,
)
from dmp_ml.demo.personas import (
    consent_frame,
    draw_devices,
    draw_people,
    profiles_frame,
    utc_offsets,
)
from dmp_ml.demo.truth import truth_frame
from dmp_ml.times import utc

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class DemoWorld:
    """A generated demo world: canonical input frames plus the planted truth.

    Attributes
    ----------
    events : DataFrame
        Canonical event log (columns :data:`EVENT_COLUMNS`), sorted by ``event_time``.
    profiles : DataFrame
        One row per person: profile_id, timezone, country, email, age, loyalty_tier.
    consent : DataFrame
        profile_id, cookie_id, purpose, granted, updated_at; the latest record per id wins.
    truth : DataFrame
        One row per person with what was planted (columns :data:`TRUTH_COLUMNS`).
    start, end : Timestamp
        UTC bounds of the event log, ``[start, end)``.
    """

    events: pd.DataFrame
    profiles: pd.DataFrame
    consent: pd.DataFrame
    truth: pd.DataFrame
    start: pd.Timestamp
    end: pd.Timestamp

    def summary(self) -> dict[str, int]:
        """Row counts worth printing: events by type, profiles, cookies, consent records."""
        out = {
            "profiles": len(self.profiles),
            "events": len(self.events),
            "cookies": int(self.events["cookie_id"].nunique()),
            "consent_records": len(self.consent),
            "consent_withdrawn": int(self.truth["consent_withdrawn"].sum()),
        }
        counts = self.events["event_type"].value_counts()
        out.update({str(k): int(v) for k, v in counts.items()})
        return out


def generate_demo_world(
    n_profiles: int = 20_000,
    days: int = 120,
    seed: int = 0,
    start: str | pd.Timestamp = "2026-01-05",
) -> DemoWorld:
    """Generate the synthetic DMP world.

    Parameters
    ----------
    n_profiles : int
        Number of people (>= 10). About 55 events per person for 120 days.
    days : int
        Length of the event log in days (>= 14).
    seed : int
        Seed of ``np.random.default_rng``; the same arguments always give the same world.
    start : str or Timestamp
        First day of the log; naive means UTC; truncated to UTC midnight.

    Returns
    -------
    DemoWorld
    """
    if isinstance(n_profiles, bool) or not isinstance(n_profiles, (int, np.integer)):
        raise ValueError(f"n_profiles must be an integer, got {n_profiles!r}")
    if isinstance(days, bool) or not isinstance(days, (int, np.integer)):
        raise ValueError(f"days must be an integer, got {days!r}")
    if n_profiles < 10:
        raise ValueError(f"n_profiles must be at least 10, got {n_profiles}")
    if days < 14:
        raise ValueError(f"days must be at least 14 (two weekly campaigns), got {days}")
    n, days = int(n_profiles), int(days)
    start_ts = utc(start, "start").normalize()
    rng = np.random.default_rng(seed)
    offsets = utc_offsets(start_ts, days)

    ppl = draw_people(rng, n, days)
    dev = draw_devices(rng, ppl)
    ppl["n_devices"] = dev["n_dev"] + (ppl["household"] >= 0)
    emails, clicks = email_events(rng, ppl, offsets, start_ts, days)
    sess = sessions(rng, ppl, dev, offsets, days, clicks)
    parts = [emails, *session_events(rng, ppl, dev, sess)]
    parts.append(anonymous_ads(rng, n, dev["n_keys"], offsets, days))

    events = assemble_events(rng, parts, ppl, start_ts, days)
    profiles = profiles_frame(rng, ppl)
    consent = consent_frame(ppl, start_ts)
    truth = truth_frame(ppl, start_ts)
    end_ts = start_ts + pd.Timedelta(days=days)
    logger.info(
        "demo world: %d profiles, %d days, %d events, %d cookies",
        n,
        days,
        len(events),
        events["cookie_id"].nunique(),
    )
    return DemoWorld(events, profiles, consent, truth, start_ts, end_ts)


def write_demo_world(world: DemoWorld, out_dir: str | Path) -> dict[str, Path]:
    """Write the world as Parquet files in ``out_dir`` (created if missing).

    Each file is written to a temporary name and renamed into place, so a crash never leaves a
    half-written file under the final name.

    Returns
    -------
    dict
        ``{"events", "profiles", "consent", "truth"}`` -> path of the written file.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frames = {
        "events": world.events,
        "profiles": world.profiles,
        "consent": world.consent,
        "truth": world.truth,
    }
    paths: dict[str, Path] = {}
    for name, frame in frames.items():
        final = out / f"{name}.parquet"
        tmp = out / f".{name}.parquet.tmp"
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, final)
        paths[name] = final
    logger.info("wrote demo world to %s", out)
    return paths
