"""The Dask client every scale-out stage runs on: given, reached by address, or started locally."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from dmp_ml.errors import ConfigError

logger = logging.getLogger(__name__)


def require_dask() -> Any:
    """``dask.dataframe``, or a :class:`ConfigError` saying which extra to install."""
    try:
        import dask.dataframe as dd
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigError(
            "the dask engine needs the optional 'scale' extra: pip install 'dmp-ml[scale]'"
        ) from exc
    return dd


@contextlib.contextmanager
def client_for(scheduler: Any) -> Iterator[Any]:
    """A ``distributed.Client`` for ``scheduler`` (a client, a cluster, an address such as
    ``tcp://scheduler:8786``, or None: a local in-process cluster), closed after unless given."""
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigError(
            "the dask engine needs 'distributed': pip install 'dmp-ml[scale]'"
        ) from exc
    if isinstance(scheduler, Client):
        yield scheduler
        return
    if scheduler is None:
        with (
            LocalCluster(
                n_workers=1,
                threads_per_worker=os.cpu_count() or 1,
                processes=False,
                dashboard_address=":0",
            ) as cluster,
            Client(cluster) as client,
        ):
            yield client
        return
    address = getattr(scheduler, "scheduler_address", scheduler)
    try:
        client = Client(address, timeout="30s")
    except OSError as exc:
        raise ConfigError(f"cannot reach the dask scheduler at {address}: {exc}") from exc
    with client:
        yield client


class Session:
    """One client for a series of Dask calls: ``with engine:`` holds it open (a local cluster
    is then started once, not per call; blocks nest); outside such a block each call opens
    its own."""

    scheduler: Any = None

    def __init__(self, scheduler: Any = None) -> None:
        self.scheduler = scheduler
        self._stack: contextlib.ExitStack | None = None
        self._client: Any = None
        self._depth = 0

    def __enter__(self) -> Session:
        if self._stack is None:
            self._stack = contextlib.ExitStack()
            self._client = self._stack.enter_context(client_for(self.scheduler))
        self._depth += 1
        return self

    def __exit__(self, *exc: object) -> None:
        self._depth = max(0, self._depth - 1)
        if self._depth == 0:
            self.close()

    @property
    def held(self) -> bool:
        """Whether a ``with`` block holds the client open."""
        return self._client is not None

    def close(self) -> None:
        """Close the held client (and its local cluster, if one was started)."""
        if self._stack is not None:
            stack, self._stack, self._client, self._depth = self._stack, None, None, 0
            stack.close()

    @contextlib.contextmanager
    def client(self) -> Iterator[Any]:
        """The held client, or one opened for this call."""
        if self._client is not None:
            yield self._client
            return
        with client_for(self.scheduler) as client:
            yield client


def map_parts(client: Any, func: Any, *per_part: list[Any], shared: tuple = ()) -> list[Any]:
    """``func(a_i, b_i, ..., *shared)`` for each i over the lists ``per_part`` (futures or
    values), as futures; ``shared`` is sent to the workers once. (Not ``client.map`` with
    keyword arguments: it names a large keyword's data after the keyword, so two calls with
    the same keyword can collide.)"""
    sent = client.scatter(list(shared), broadcast=True, hash=False) if shared else []
    return [client.submit(func, *args, *sent, pure=False) for args in zip(*per_part, strict=True)]


def range_bounds(n: int, nparts: int) -> np.ndarray:
    """Bounds of at most ``nparts`` contiguous, non-empty ranges of ``0..n`` (as even as can
    be): range ``i`` is ``bounds[i]..bounds[i + 1] - 1``."""
    return np.unique(np.linspace(0, n, max(1, min(nparts, n)) + 1).astype(np.int64))


class PartitionedStage:
    """A stage run on the client of ``session`` over ``npartitions`` partitions.

    Parameters
    ----------
    session : a :class:`Session` (e.g. the ``DaskEngine`` of a train).
    npartitions : how many partitions the stage's input is split into.
    """

    def __init__(self, session: Any, npartitions: int = 8) -> None:
        self.session = session
        self.npartitions = npartitions
