"""The input files of a run, loaded side by side: the event log, and its profiles and consent.

``dmp-ml features`` and ``train`` both start here. Profiles and consent are small next to the
events; they are loaded in a helper thread while the events load in the calling thread (whose
Parquet decoding and Arrow work release the GIL), so they add little to the wall time. Each
load is timed on its own: :attr:`Inputs.seconds` says how long each took, not how long the
caller waited for it.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from dmp_ml.contract import LoadResult, load_consent, load_events, load_profiles
from dmp_ml.mapping import ColumnMapping
from dmp_ml.settings import ContractSettings

MappingArg = ColumnMapping | str | Path | None


@dataclass(frozen=True)
class Inputs:
    """What :func:`load_inputs` loaded (None for a file not given).

    ``seconds`` maps each loaded kind (``events``, ``profiles``, ``consent``) to the wall
    seconds its own load took; profiles and consent ran beside the events, so the seconds add
    up to more than the time the whole load took.
    """

    events: LoadResult | None
    profiles: LoadResult | None = None
    consent: LoadResult | None = None
    seconds: dict[str, float] = field(default_factory=dict)


def load_inputs(
    events: str | Path | None,
    profiles: str | Path | None = None,
    consent: str | Path | None = None,
    *,
    mapping: MappingArg = None,
    profiles_mapping: MappingArg = None,
    consent_mapping: MappingArg = None,
    settings: ContractSettings | None = None,
    dictionaries: bool = False,
) -> Inputs:
    """Load and validate the given files against the data contract, the events in this thread
    and profiles and consent (one after the other) in a helper thread beside them.

    Parameters
    ----------
    events, profiles, consent : paths of the files (CSV or Parquet); None: not loaded.
    mapping, profiles_mapping, consent_mapping : each file's column mapping (see
        :func:`dmp_ml.contract.load_events`).
    settings : the contract settings every load uses.
    dictionaries : keep the events' Parquet text columns as dictionaries
        (:func:`dmp_ml.contract.load_events`), for a feature build or a training.
    """
    seconds: dict[str, float] = {}

    def timed(
        kind: str, load: Callable[..., LoadResult], path: str | Path, how: MappingArg
    ) -> LoadResult:
        clock = time.perf_counter()
        result = load(path, mapping=how, settings=settings)
        seconds[kind] = time.perf_counter() - clock
        return result

    beside = [
        (kind, load, path, how)
        for kind, load, path, how in (
            ("profiles", load_profiles, profiles, profiles_mapping),
            ("consent", load_consent, consent, consent_mapping),
        )
        if path is not None
    ]
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="dmp-ml-inputs") as side:
        pending = {kind: side.submit(timed, kind, *rest) for kind, *rest in beside}
        load = functools.partial(load_events, dictionaries=dictionaries)
        loaded = None if events is None else timed("events", load, events, mapping)
        done = {kind: future.result() for kind, future in pending.items()}
    order = ("events", "profiles", "consent")
    return Inputs(
        events=loaded,
        profiles=done.get("profiles"),
        consent=done.get("consent"),
        seconds={kind: seconds[kind] for kind in order if kind in seconds},
    )
