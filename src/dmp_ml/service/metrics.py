"""The service's own Prometheus metrics, exposed on BentoML's ``/metrics`` beside its defaults.

- ``dmp_ml_bundle_info{version}``: 1 for the bundle version a worker serves (0 once replaced)
- ``dmp_ml_bundle_age_seconds``: seconds since the served bundle was trained (its manifest's
  ``created_at``), refreshed on every request and every pointer poll
- ``dmp_ml_bundle_reloads_total``, ``dmp_ml_bundle_reload_failures_total``: bundles made live
  after the first one, and bundles refused (the old one kept serving)
- ``dmp_ml_requests_total{endpoint, outcome}``: requests per route and ``ok`` (2xx/3xx),
  ``client_error`` (4xx) or ``server_error`` (5xx)

BentoML runs ``prometheus_client`` in multiprocess mode: each worker writes its values to
files under ``PROMETHEUS_MULTIPROC_DIR`` (set for the workers by ``bentoml serve``) and
``/metrics`` merges them. ``prometheus_client`` reads that variable when it is first imported,
so the metrics are created in the worker (:func:`service_metrics`), never at import time.
Counters add up over workers; gauges take the maximum over live workers (``livemax``): the
age is the oldest bundle any worker still serves.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["RequestMetricsMiddleware", "ServiceMetrics", "service_metrics"]

UNTRACKED_PATHS = frozenset({"/livez", "/readyz", "/healthz", "/metrics"})
"""Probes and scrapes: not counted as requests."""


class ServiceMetrics:
    """The metric objects of one worker process, and the updates the service makes."""

    def __init__(self) -> None:
        # deferred: PROMETHEUS_MULTIPROC_DIR must be set before prometheus_client is imported
        from prometheus_client import Counter, Gauge

        # registry=None: in multiprocess mode the values live in files that BentoML's
        # /metrics collects; registering them in this process's registry would add nothing
        self.bundle_info = Gauge(
            "dmp_ml_bundle_info",
            "1 for the model bundle version served (0 once replaced).",
            ["version"],
            registry=None,
            multiprocess_mode="livemax",
        )
        self.bundle_age = Gauge(
            "dmp_ml_bundle_age_seconds",
            "Seconds since the served bundle was trained (manifest created_at).",
            registry=None,
            multiprocess_mode="livemax",
        )
        self.reloads = Counter(
            "dmp_ml_bundle_reloads",
            "Bundles made live after a worker's first one.",
            registry=None,
        )
        self.reload_failures = Counter(
            "dmp_ml_bundle_reload_failures",
            "Bundles refused on reload; the previous one kept serving.",
            registry=None,
        )
        self.requests = Counter(
            "dmp_ml_requests",
            "Requests by endpoint and outcome (ok, client_error, server_error).",
            ["endpoint", "outcome"],
            registry=None,
        )
        self._version: str | None = None
        self._created: float | None = None

    def bundle_loaded(self, version: str, created_at: Any, *, first: bool) -> None:
        """A bundle went live (``first``: the worker's initial load, not a reload)."""
        if self._version is not None and self._version != version:
            self.bundle_info.labels(version=self._version).set(0)
        self.bundle_info.labels(version=version).set(1)
        self._version = version
        try:
            self._created = pd.Timestamp(created_at).timestamp()
        except (TypeError, ValueError):
            self._created = None
        self.refresh_age()
        if not first:
            self.reloads.inc()

    def reload_failed(self) -> None:
        """A bundle was refused; the live one stays."""
        self.reload_failures.inc()

    def refresh_age(self) -> None:
        """Set the age gauge from the live bundle's training time."""
        if self._created is not None:
            self.bundle_age.set(max(0.0, time.time() - self._created))

    def request(self, endpoint: str, status: int) -> None:
        """Count one answered request."""
        outcome = "ok" if status < 400 else "client_error" if status < 500 else "server_error"
        self.requests.labels(endpoint=endpoint, outcome=outcome).inc()
        self.refresh_age()


@functools.cache
def service_metrics() -> ServiceMetrics:
    """This process's metrics, created on first use (in the worker, after BentoML set it up)."""
    return ServiceMetrics()


class RequestMetricsMiddleware:
    """Count every HTTP request but probes and scrapes by route and outcome.

    ``routes`` returns the paths the app serves; any other path counts as ``other`` so that
    a scan of random URLs cannot create unbounded label values.
    """

    def __init__(self, app: ASGIApp, routes: Callable[[], Iterable[str]]) -> None:
        self.app = app
        self._routes = routes
        self._known: frozenset[str] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path in UNTRACKED_PATHS:
            await self.app(scope, receive, send)
            return
        if self._known is None:
            self._known = frozenset(self._routes())
        endpoint = path if path in self._known else "other"
        status = 500

        async def record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            service_metrics().request(endpoint, status)
