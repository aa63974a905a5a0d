"""The HTTP service: a thin BentoML shell around :func:`dmp_ml.bundle.load_bundle`.

Each worker loads the live model bundle of ``DMP_ML_WORKDIR`` once (or, with
``service.bento_model``, the bundle ``dmp-ml promote`` stored as a BentoML model) and answers:

- ``POST /score``      propensity scores (and reasons) for up to ``max_score_ids`` profiles
- ``POST /lookalike``  seed expansion by ``size`` or ``reach``
- ``POST /send_time``  best send hour in a window, respecting quiet hours
- ``POST /affinity``, ``POST /segments/affinity``  channel and content affinity, per profile
  and per segment; ``POST /retarget`` retargeting templates; ``POST /campaigns``,
  ``GET /campaigns/{name}`` campaigns with a holdout and their lift readout
- ``GET  /info``       the live bundle: version, path, as_of, manifest (versions, metrics)
- ``POST /reload``     load the bundle the ``bundle`` pointer names now; a corrupt one is refused
- ``POST /events``     accept fresh events (202 once spooled durably; applied in the background)
- ``GET  /events/{batch}``  queued (with an estimate) or applied (visible, and after how long)
- ``POST /forget``     erasure everywhere; 503 ``status: incomplete`` if a store is not scrubbed
- ``GET  /livez``, ``/readyz``, ``/healthz``, ``/metrics`` (BentoML; never need the token);
  ``/metrics`` adds the service's own (:mod:`dmp_ml.service.metrics`)
- ``GET  /`` the API page, ``/openapi.json`` and ``/docs.json`` one schema (never need the token:
  they describe the API, every route of which still needs it)

Routes are FastAPI views mounted on the BentoML service (:mod:`~dmp_ml.service.routes`): that
gives ``GET /info``, full control of error bodies and the OpenAPI schema, served at both schema
paths. Every client error is a 4xx JSON ``{"error": ..., "field": ...}`` naming the offending
field; request bodies are never logged (counts only). Bodies over
``service.max_request_bytes`` get 413; a full workdir disk 507, an unwritable one 503.

Nothing is configured at import: :func:`~dmp_ml.service.app.build_service` builds the service
from a settings object, and ``DmpMlService`` (what the bentofile and ``bentoml serve`` name) is
built from the environment's settings the first time it is looked up, after the OpenMP/BLAS
thread counts of ``service.threads_per_worker`` are in the environment.

Modules: ``app`` (the factory), ``routes``, ``schemas`` (request/response bodies), ``worker``
(live bundle, reloads, background threads), ``middleware``, ``responses`` (JSON shaping),
``metrics`` (Prometheus), ``launch`` (the ``bentoml serve`` command).
"""

from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING, Any

from dmp_ml.service.launch import (
    SERVICE_IMPORT,
    example_profile_ids,
    serve,
    serve_command,
    thread_environment,
)

if TYPE_CHECKING:
    import bentoml

__all__ = [
    "SERVICE_IMPORT",
    "DmpMlService",
    "build_service",
    "example_profile_ids",
    "serve",
    "serve_command",
]


@functools.cache
def _environment_service() -> bentoml.Service[Any]:
    """The service of the environment's settings, built once per process."""
    from dmp_ml.settings import load_settings

    settings = load_settings()
    for name, value in thread_environment(settings).items():
        # before lightgbm/faiss/numpy load their thread pools (they read these once)
        os.environ.setdefault(name, value)
    from dmp_ml.service.app import build_service

    return build_service(settings)


def __getattr__(name: str) -> Any:
    if name == "DmpMlService":
        return _environment_service()
    if name == "build_service":
        from dmp_ml.service.app import build_service

        return build_service
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
