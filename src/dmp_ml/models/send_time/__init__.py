"""Send-time optimisation: per-profile 168-hour engagement curves and the best-send-time decision.

The model
---------
Every profile gets a curve over the 168 hours of the week. Internally the curve lives in the
profile's *local* hour of week (its known time zone, else the apparent time zone of its
behaviour, else UTC), so that daylight-saving shifts are handled by real time-zone conversion;
:attr:`SendTimeModel.curve_` re-expresses it in UTC hour of week (hour 0 = Monday 00:00 UTC) at
the model's ``as_of``.

The curve is ``P(engage | send at h) = rate_p * s_p(h)`` where ``s_p`` is a relative intensity
(mean 1 over the week) and ``rate_p`` the profile's response rate per email send, shrunk to the
population's. ``s_p`` is a Gamma-Poisson posterior that combines two kinds of evidence:

- email: each send (deduplicated per campaign) is an exposure at its send hour, its response
  (any open or click, credited to the hour the email was *sent*) a success; a response within
  ``machine_open_seconds`` of the send is likely a machine open (mail privacy proxies, link
  scanners) and counts ``machine_open_weight`` only;
- activity: every other engagement event (and every human open or click, at its own hour), one per
  profile and clock hour, with a weight relative to a response; this gives a personal curve to
  profiles that never received an email.

Evidence is smoothed circularly over neighbouring hours (Gaussian bandwidth) and pooled over the
same hour on other days (day pooling). It is shrunk hierarchically: profile -> cohort (its time
zone) -> global (the population's local-time curve). A profile left in UTC takes as prior a
mixture of the zone cohorts, weighted by how well its activity fits each zone. The shrinkage
strengths, day pooling, bandwidth, activity weight and a contrast calibration (the posterior
curve raised to a power, "sharpness") are chosen from candidate lists on a held-out period at
the end of the training data (the last ``holdout_days`` before ``as_of``) by the held-out
log-likelihood of engagement hours (coordinate ascent).

The guard then compares the fitted curves with plain baselines (the profile's most frequent
hour of day, its most frequent hour of week, one global hour, its cohort's curve) on the last
``guard_windows`` held-out periods, refitting the curves before each: a baseline whose pooled
hit rate (+-1 h, each profile's next engagement) beats the curves' by more than chance is what
the model serves, ``basis`` naming it (``served_``, ``guard_``; see ``baselines``).

The probability is then calibrated (Platt scaling on the held-out email sends: a monotone map,
so no ranking changes) because ``rate_p * s_p(h)`` inherits the contrast of *activity* and the
level of the past. When the training data hold no email sends the curve is the probability of
being active in that hour, ``1 - exp(-r_p * s_p(h))`` (``probability_kind_ == "activity"``).
:attr:`SendTimeModel.timing_` (``s_p`` normalised over the week) says *when* a profile engages;
it is what the offline evaluation scores.

Where it lives
--------------
``model`` (:class:`SendTimeModel`: settings, fit, save / load, update, forget), ``curves``
(evidence, counts, smoothing kernel, pooling, shrinkage, probability and calibration),
``zones`` (UTC <-> local hours, zone inference), ``selection`` (hyper-parameters and
calibration on the internal held-out period), ``decision`` (:class:`SendTimeDecision`, the
best send time in a window), ``baselines`` (the guard: plain baselines on the held-out
period, the served winner) and ``evaluate`` (offline evaluation against baselines, held-out
views for the charts).
"""

from dmp_ml.models.send_time.curves import BASES, HOURS_PER_WEEK
from dmp_ml.models.send_time.decision import SendTimeDecision, best_send_time
from dmp_ml.models.send_time.evaluate import HeldOut, evaluate_send_time, held_out
from dmp_ml.models.send_time.model import SendTimeModel
from dmp_ml.models.send_time.zones import TIMEZONE_SOURCES

__all__ = [
    "BASES",
    "HOURS_PER_WEEK",
    "TIMEZONE_SOURCES",
    "HeldOut",
    "SendTimeDecision",
    "SendTimeModel",
    "best_send_time",
    "evaluate_send_time",
    "held_out",
]
