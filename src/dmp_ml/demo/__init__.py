"""Synthetic worlds with planted truth, for ``make run``, the tests and the evaluations.

:mod:`~dmp_ml.demo.world` generates the DMP demo world (events, profiles, consent, truth) from
:mod:`~dmp_ml.demo.catalogue` (its vocabulary), :mod:`~dmp_ml.demo.personas` (people, devices,
cookies) and :mod:`~dmp_ml.demo.events` (what they do); :mod:`~dmp_ml.demo.truth` reads the
planted truth back and gives exact purchase probabilities; :mod:`~dmp_ml.demo.uplift` plants a
campaign effect; :mod:`~dmp_ml.demo.retail` generates a sparse customer-keyed purchase log.
"""

from __future__ import annotations

from dmp_ml.demo.catalogue import (
    CATEGORIES,
    CATEGORY_PRICE,
    EVENT_COLUMNS,
    GROUP_CORE,
    INTEREST_GROUPS,
    TIMEZONES,
)
from dmp_ml.demo.retail import generate_retail_world
from dmp_ml.demo.truth import TRUTH_COLUMNS, read_truth, true_purchase_probability
from dmp_ml.demo.uplift import PlantedUplift, plant_uplift
from dmp_ml.demo.world import DemoWorld, generate_demo_world, write_demo_world

__all__ = [
    "CATEGORIES",
    "CATEGORY_PRICE",
    "EVENT_COLUMNS",
    "GROUP_CORE",
    "INTEREST_GROUPS",
    "TIMEZONES",
    "TRUTH_COLUMNS",
    "DemoWorld",
    "PlantedUplift",
    "generate_demo_world",
    "generate_retail_world",
    "plant_uplift",
    "read_truth",
    "true_purchase_probability",
    "write_demo_world",
]
