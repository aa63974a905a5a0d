"""The service built from a settings object: the FastAPI app, its middlewares, the BentoML
service around it.

:func:`build_service` is the one place where settings meet the service: the request caps in
the schema, the body limit, the token, the worker count and the port all come from the
``settings`` it is given. ``dmp_ml.service:DmpMlService`` (what ``bentoml serve``, the
bentofile and ``dmp-ml serve`` name) is ``build_service()`` with the settings of the
environment, built when BentoML first looks it up.
"""

from __future__ import annotations

import logging
from typing import Any

import bentoml
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from starlette.exceptions import HTTPException

from dmp_ml.service.metrics import RequestMetricsMiddleware
from dmp_ml.service.middleware import (
    DOC_PATHS,
    BearerTokenMiddleware,
    BodyLimitMiddleware,
    NameInPathMiddleware,
    OpenApiMiddleware,
)
from dmp_ml.service.responses import error_response
from dmp_ml.service.routes import add_routes
from dmp_ml.service.schemas import RequestModels, request_models
from dmp_ml.service.worker import ServiceWorker
from dmp_ml.settings import Settings, load_settings

logger = logging.getLogger(__name__)

SERVICE_NAME = "dmp_ml"


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dmp-ml")
    except PackageNotFoundError:  # running from a source tree
        import dmp_ml

        return dmp_ml.__version__


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    """FastAPI's own errors (unparsable body, wrong method) in the service's error shape."""
    if exc.status_code == 400:  # the body is not even text: same answer as malformed JSON
        return error_response(422, f"body: {exc.detail}", "body")
    return JSONResponse(
        {"error": str(exc.detail), "field": None},
        status_code=exc.status_code,
        headers=getattr(exc, "headers", None),
    )


async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    """A request the models refuse: 422 naming the first offending field."""
    errors = exc.errors()
    detail = [
        {"loc": [str(p) for p in e.get("loc", ())], "msg": e.get("msg"), "type": e.get("type")}
        for e in errors
    ]
    first = detail[0]["loc"] if detail else []
    parts = first[1:] if first[:1] == ["body"] else first
    field = ".".join(p for p in parts if not p.isdigit()) or "body"
    message = f"{field}: {detail[0]['msg']}" if detail else "invalid request"
    content_type = request.headers.get("content-type", "")
    if field == "body" and content_type and "json" not in content_type:
        message = f"send a JSON object with Content-Type: application/json, not {content_type}"
    logger.info("%s rejected: %d invalid field(s), first %s", request.url.path, len(detail), field)
    return error_response(422, message, field, detail=detail)


def create_app(requests: RequestModels) -> FastAPI:
    """The FastAPI app of the service: every route, its error shapes and its OpenAPI schema."""
    # Documents the bearer scheme in the OpenAPI schema; BearerTokenMiddleware enforces it.
    bearer = HTTPBearer(auto_error=False, description="Required when DMP_ML_API_TOKEN is set.")
    app = FastAPI(
        title="dmp-ml",
        version=_package_version(),
        summary="Propensity scores, lookalike audiences and send times from the live model bundle.",
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
        dependencies=[Depends(bearer)],
    )
    app.add_exception_handler(HTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _invalid_request)  # type: ignore[arg-type]
    add_routes(app, requests)
    return app


def build_service(settings: Settings | None = None) -> bentoml.Service[Any]:
    """The BentoML service configured by ``settings`` (default: :func:`load_settings`).

    Its workers load ``settings.workdir``'s live bundle (or the promoted
    ``service.bento_model``) when they start. The service can be served by ``bentoml serve``
    (through ``dmp_ml.service:DmpMlService``) or in this process (``service.to_asgi()``).
    """
    settings = settings if settings is not None else load_settings()
    svc = settings.service
    app = create_app(request_models(settings))

    class DmpMlService(ServiceWorker):
        """One worker serving with the settings the service was built with."""

        if svc.bento_model:
            # A model reference: `bentoml build` with DMP_ML_SERVICE__BENTO_MODEL set packs
            # the promoted bundle into the Bento. Serving still resolves the tag on every
            # poll, so a new promote goes live without a restart.
            bundle_model = bentoml.models.BentoModel(svc.bento_model)

        def __init__(self) -> None:
            super().__init__(settings)

    service = bentoml.service(
        name=SERVICE_NAME,
        workers=svc.workers,
        traffic={"timeout": 300},
        http={"port": svc.port},
    )(DmpMlService)
    service.mount_asgi_app(app, path="/")
    # outermost first: requests are counted (401s and 413s included) before anything refuses
    service.add_asgi_middleware(
        RequestMetricsMiddleware, routes=lambda: [*app.openapi()["paths"], *DOC_PATHS]
    )
    service.add_asgi_middleware(BodyLimitMiddleware, limit=svc.max_request_bytes)
    service.add_asgi_middleware(BearerTokenMiddleware, token=settings.api_token or None)
    service.add_asgi_middleware(OpenApiMiddleware, schema=app.openapi)
    service.add_asgi_middleware(NameInPathMiddleware)
    return service
