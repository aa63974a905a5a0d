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
  ``/metrics`` adds the service's own (:mod:`dmp_ml.service_metrics`)
- ``GET  /`` the API page, ``/openapi.json`` and ``/docs.json`` one schema (never need the token:
  they describe the API, every route of which still needs it)

Routes are FastAPI views on the BentoML service class (``@bentoml.asgi_app``): that gives
``GET /info``, full control of error bodies and the OpenAPI schema, served at both schema
paths. Every client error is a 4xx JSON ``{"error": ..., "field": ...}`` naming the
offending field; request bodies are never logged (counts only), nor echoed in logs. Bodies
over ``service.max_request_bytes`` get 413; a full workdir disk 507, an unwritable one 503.

Swapping bundles is one reference assignment: a request reads ``self._bundle`` once and
finishes on that object even if a reload lands meanwhile. Every worker also polls the pointer
(``service.reload_poll_seconds``), so all workers converge on a new bundle without a restart.

Thread counts: OpenMP/BLAS variables are set from ``service.threads_per_worker`` before
LightGBM or FAISS load (they read them once), and the loaded models get the same value, so
``workers x threads_per_worker`` threads share the cores instead of each worker taking all.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import math
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from dmp_ml.settings import Settings, load_settings

_SETTINGS: Settings = load_settings()
_THREADS = str(_SETTINGS.service.threads_per_worker)
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    # Before lightgbm/faiss/sklearn load libgomp (they are imported lazily below).
    os.environ.setdefault(_var, _THREADS)

import anyio  # noqa: E402
import bentoml  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from fastapi import Depends, FastAPI, Request  # noqa: E402
from fastapi.exceptions import RequestValidationError  # noqa: E402
from fastapi.responses import JSONResponse  # noqa: E402
from fastapi.security import HTTPBearer  # noqa: E402
from pydantic import (  # noqa: E402
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
)
from starlette.exceptions import HTTPException  # noqa: E402

from dmp_ml.errors import (  # noqa: E402
    BundleError,
    DataContractError,
    RequestError,
    StorageError,
    StorageFullError,
    UnknownProfileError,
    storage_error,
)
from dmp_ml.service_metrics import RequestMetricsMiddleware, service_metrics  # noqa: E402

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

logger = logging.getLogger(__name__)

SERVICE_IMPORT = "dmp_ml.service:DmpMlService"
OPEN_PATHS = frozenset({"/livez", "/readyz", "/healthz", "/metrics"})
DOC_PATHS = frozenset({"/", "/docs.json", "/openapi.json"})
DOC_ASSETS = "/static_content/"  # the API page's scripts and styles (BentoML's Swagger UI)
HEAVY_NICENESS = 10  # added to lookalike threads' nice value
_SVC = _SETTINGS.service
_MAX_REACH = float(getattr(_SETTINGS.lookalike, "max_reach", 0.5))

# ---------------------------------------------------------------------------------- requests

ProfileId = Annotated[str, StringConstraints(min_length=1, max_length=256)]


def _whole_number(value: Any) -> Any:
    """JSON Schema counts 24.0 as an integer; strict mode still refuses "24" and true."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


WholeNumber = Annotated[int, BeforeValidator(_whole_number)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ScoreRequest(_Body):
    profile_ids: list[ProfileId] = Field(min_length=1, max_length=_SVC.max_score_ids)
    explain: bool = Field(False, description="Add the top reasons (SHAP) per profile.")


class LookalikeRequest(_Body):
    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [  # exactly one of size and reach
                {
                    "required": ["size"],
                    "properties": {"size": {"type": "integer"}, "reach": {"type": "null"}},
                },
                {
                    "required": ["reach"],
                    "properties": {"reach": {"type": "number"}, "size": {"type": "null"}},
                },
            ]
        }
    )

    seed_ids: list[ProfileId] = Field(min_length=1, max_length=_SVC.max_seed_ids)
    size: WholeNumber | None = Field(None, gt=0, description="Audience size; or give `reach`.")
    reach: float | None = Field(
        None, gt=0, le=_MAX_REACH, description="Share of the eligible population; or `size`."
    )
    exclude_ids: list[ProfileId] = Field(default_factory=list, max_length=_SVC.max_seed_ids)
    explain: bool = Field(False, description="Add the features that set the seed apart.")


class QuietHours(_Body):
    start: WholeNumber = Field(ge=0, le=23, description="First quiet local hour.")
    end: WholeNumber = Field(
        ge=0, le=23, description="First allowed local hour after the quiet ones."
    )


class SendTimeRequest(_Body):
    profile_ids: list[ProfileId] = Field(min_length=1, max_length=_SVC.max_send_time_ids)
    window_start: datetime | None = Field(
        None, strict=False, description="ISO 8601; naive means UTC; null: the bundle's as_of."
    )
    window_hours: WholeNumber = Field(24, ge=1, le=168)
    quiet_hours: QuietHours | None = Field(None, description="Local hours [start, end) to avoid.")
    timezone: str | None = Field(
        None, max_length=64, description="IANA zone replacing every recipient's zone."
    )

    @field_validator("window_start")
    @classmethod
    def _plausible(cls, value: datetime | None) -> datetime | None:
        if value is not None and not 2000 <= value.year <= 2100:
            raise ValueError("must be between the years 2000 and 2100")
        return value


# --------------------------------------------------------------------------------- responses


class SegmentPreviewRequest(_Body):
    rule: dict[str, Any] = Field(
        description='Segment rule, e.g. {"all": [{"feature": "purchase_count_30d", "op": ">=", '
        '"value": 1}]}; {"segment": "<saved name>"} previews a saved segment.'
    )
    sample: WholeNumber = Field(20, ge=0, le=1000, description="Sample ids returned.")


class ForgetRequest(_Body):
    profile_ids: list[ProfileId] = Field(min_length=1, max_length=_SVC.max_score_ids)


class EventsRequest(BaseModel):
    # not strict: event values arrive as text or numbers and go through the data contract
    model_config = ConfigDict(extra="forbid")
    events: list[dict[str, Any]] = Field(min_length=1, max_length=100_000)


class ScoreItem(BaseModel):
    profile_id: str
    score: float | None
    percentile: float | None
    history_days: int | None = Field(None, description="First event to the bundle's as_of.")
    events_used: int | None = Field(None, description="Events the features rest on.")
    days_since_last_event: int | None = None
    reasons: list[dict[str, Any]] | None = None


_SCORE_BASIS = ("history_days", "events_used", "days_since_last_event")


class ScoreResponse(BaseModel):
    model_version: str
    as_of: str | None
    results: list[ScoreItem]
    unknown_ids: list[str]


class AudienceItem(BaseModel):
    profile_id: str
    score: float | None


class LookalikeResponse(BaseModel):
    model_version: str
    audience: list[AudienceItem]
    diagnostics: dict[str, Any]
    unknown_seed_ids: list[str] = Field(description="The first 100; the count is in diagnostics.")


class SendTimeItem(BaseModel):
    profile_id: str
    send_at: str | None = Field(description="UTC; null when the window is all quiet hours.")
    hour_of_week: int | None
    probability: float | None
    basis: str | None
    timezone: str | None = None
    timezone_source: str | None = None
    local_send_at: str | None = None
    alternatives: list[dict[str, Any]]


class SendTimeResponse(BaseModel):
    model_version: str
    window_start: str | None
    window_hours: int
    results: list[SendTimeItem]
    unknown_ids: list[str]


class ErrorResponse(BaseModel):
    error: str
    field: str | None = None


class ReloadResponse(BaseModel):
    reloaded: bool
    version: str
    previous_version: str | None
    path: str


_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "Missing or wrong bearer token."},
    413: {"model": ErrorResponse, "description": "Body over `service.max_request_bytes`."},
    422: {"model": ErrorResponse, "description": "Invalid request; `field` names the field."},
}
_WRITES: dict[int | str, dict[str, Any]] = {
    403: {"model": ErrorResponse, "description": "No API token set."},
    503: {"model": ErrorResponse, "description": "The workdir cannot be written (read-only)."},
    507: {"model": ErrorResponse, "description": "No space left where the workdir is."},
}

# -------------------------------------------------------------------------------- JSON shaping


def _iso(value: Any) -> str | None:
    if value is None or value is pd.NaT:
        return None
    if isinstance(value, datetime):  # Timestamp included; the common case, kept fast
        text = value.isoformat()
        return text[:-6] + "Z" if text.endswith("+00:00") else text
    if not isinstance(value, str) and pd.isna(value):
        return None
    return _iso(pd.Timestamp(value))


def _plain(value: Any) -> Any:
    """A JSON-ready copy of ``value``: NaN/NA -> None, timestamps -> ISO text, numpy -> Python."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_plain(v) for v in value]
    if isinstance(value, datetime):
        return _iso(value)
    if isinstance(value, np.generic):
        return _plain(value.item())
    if value is pd.NA:
        return None
    return value


def _column(series: pd.Series) -> list[Any]:
    """One frame column as JSON-ready Python values, vectorised where the dtype allows."""
    if isinstance(series.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_any_dtype(series):
        return [_iso(v) for v in series]
    if pd.api.types.is_float_dtype(series.dtype) and not pd.api.types.is_extension_array_dtype(
        series.dtype
    ):
        arr = series.to_numpy(dtype=np.float64)
        out: list[Any] = arr.tolist()
        bad = np.flatnonzero(~np.isfinite(arr))
        for i in bad:
            out[i] = None
        return out
    if pd.api.types.is_string_dtype(series.dtype) or pd.api.types.is_extension_array_dtype(
        series.dtype
    ):
        values = series.astype(object)
        return [None if v is pd.NA or v is None else _plain(v) for v in values]
    return [_plain(v) for v in series.tolist()]


def _records(frame: pd.DataFrame, columns: Sequence[str]) -> list[dict[str, Any]]:
    present = [c for c in columns if c in frame.columns]
    cols = [_column(frame[c]) for c in present]
    return [dict(zip(present, row, strict=True)) for row in zip(*cols, strict=True)]


def _json(payload: dict[str, Any], status: int = 200) -> JSONResponse:
    return JSONResponse(payload, status_code=status)


def _error(status: int, message: str, field: str | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, "field": field, **extra}, status_code=status)


def _storage_failure(what: str, exc: StorageError | OSError) -> JSONResponse:
    """507 when the workdir's disk is full, 503 when it cannot be written (read-only, ...)."""
    error = exc if isinstance(exc, StorageError) else storage_error(exc)
    status = 507 if isinstance(error, StorageFullError) else 503
    logger.error("%s: the workdir cannot be written: %s", what, error)
    return _error(status, f"the workdir cannot be written: {error}", "workdir")


def _log_failure(what: str, exc: BaseException) -> None:
    """Log an unexpected failure without its message (it may quote profile ids)."""
    frames = "".join(traceback.format_tb(exc.__traceback__))
    logger.error("%s failed with %s\n%s", what, type(exc).__name__, frames)


# ------------------------------------------------------------------------------------ auth


def _open_path(path: str) -> bool:
    """Health, metrics and the API's documentation: answered without the token."""
    return path in OPEN_PATHS or path in DOC_PATHS or path.startswith(DOC_ASSETS)


class BearerTokenMiddleware:
    """Require ``Authorization: Bearer <token>`` on every path but health, metrics and docs."""

    def __init__(self, app: ASGIApp, token: str | None = None) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.expected is None or scope["type"] != "http" or _open_path(scope["path"]):
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or []).get(b"authorization", b"")
        if hmac.compare_digest(given, self.expected):
            await self.app(scope, receive, send)
            return
        response = JSONResponse(
            {"error": "missing or wrong bearer token", "field": "Authorization"},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )
        await response(scope, receive, send)


class OpenApiMiddleware:
    """Answer ``GET /docs.json`` (BentoML's schema path, which its API page at ``/`` reads) with
    the FastAPI schema of ``/openapi.json``: one description of the API, not two."""

    def __init__(self, app: ASGIApp, schema: Callable[[], dict[str, Any]]) -> None:
        self.app = app
        self.schema = schema

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/docs.json":
            await JSONResponse(self.schema())(scope, receive, send)
            return
        await self.app(scope, receive, send)


class NameInPathMiddleware:
    """A campaign name in the path with a line break never reaches the router (BentoML's outer
    mount does not match it and answers a plain-text 404): answer the 422 naming the field."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path.startswith("/campaigns/") and ("\n" in path or "\r" in path):
            response = JSONResponse(
                {"error": "a campaign name has no line breaks", "field": "name"}, status_code=422
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """Refuse a request body over ``limit`` bytes with 413, declared or streamed (chunked).

    The body is read here (up to the limit) and handed on in one piece; a declared
    ``Content-Length`` over the limit is refused before anything is read.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                await self.app(scope, _replay([message], receive), send)
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await self._refuse(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        whole = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replay([whole], receive), send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        logger.info("%s rejected: body over %d bytes", scope.get("path"), self.limit)
        response = JSONResponse(
            {
                "error": f"request body larger than {self.limit} bytes "
                "(service.max_request_bytes); send smaller batches",
                "field": "body",
            },
            status_code=413,
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)


def _replay(messages: list[dict[str, Any]], receive: Receive) -> Receive:
    """A ``receive`` that returns ``messages`` first, then defers to the real one."""
    pending = list(messages)

    async def replay() -> Any:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay


# ---------------------------------------------------------------------------------- the app


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dmp-ml")
    except PackageNotFoundError:  # running from a source tree
        import dmp_ml

        return dmp_ml.__version__


# Documents the bearer scheme in the OpenAPI schema; BearerTokenMiddleware enforces it.
_bearer = HTTPBearer(auto_error=False, description="Required when DMP_ML_API_TOKEN is set.")

app = FastAPI(
    title="dmp-ml",
    version=_package_version(),
    summary="Propensity scores, lookalike audiences and send times from the live model bundle.",
    docs_url=None,
    redoc_url=None,
    openapi_url="/openapi.json",
    dependencies=[Depends(_bearer)],
)


@app.exception_handler(HTTPException)
async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    """FastAPI's own errors (unparsable body, wrong method) in the service's error shape."""
    if exc.status_code == 400:  # the body is not even text: same answer as malformed JSON
        return _error(422, f"body: {exc.detail}", "body")
    return JSONResponse(
        {"error": str(exc.detail), "field": None},
        status_code=exc.status_code,
        headers=getattr(exc, "headers", None),
    )


@app.exception_handler(RequestValidationError)
async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
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
    return _error(422, message, field, detail=detail)


def _lower_priority() -> None:
    """Thread initializer: raise this thread's niceness (Linux: threads are tasks)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), HEAVY_NICENESS)


def _worker_threads() -> dict[str, Any]:
    """OpenMP/BLAS thread counts as seen from a request thread."""
    try:
        from threadpoolctl import threadpool_info

        return {f"{i['user_api']}:{i['internal_api']}": i["num_threads"] for i in threadpool_info()}
    except Exception:  # pragma: no cover - diagnostic only
        return {}


def _source(bento_model: str | None, path: Path) -> str:
    """Where the live bundle comes from: the workdir, or the resolved promoted model's tag."""
    if not bento_model:
        return "workdir"
    model_dir = path.parent  # <store>/<name>/<version>/bundle
    return f"bento model {model_dir.parent.name}:{model_dir.name} (configured {bento_model})"


def _erasure_stamp(workdir: Path) -> tuple[int, int, int] | None:
    """Changes whenever any worker forgets someone (see :func:`dmp_ml.erasure.erasure_stamp`)."""
    from dmp_ml.erasure import erasure_stamp

    return erasure_stamp(workdir)


# ---------------------------------------------- display, retargeting and campaigns: requests


class AffinityRequest(_Body):
    profile_ids: list[ProfileId] = Field(min_length=1, max_length=_SVC.max_score_ids)
    top: WholeNumber = Field(3, ge=1, le=50, description="Top categories per profile.")


class AudienceSpec(_Body):
    """Exactly one of rule, segment, seed_ids (+ size / reach), profile_ids, retarget."""

    rule: dict[str, Any] | None = Field(None, description="A segment rule.")
    segment: str | None = Field(None, description="A saved segment's name.")
    seed_ids: list[ProfileId] | None = Field(
        None, max_length=_SVC.max_seed_ids, description="Lookalike seed ids."
    )
    size: WholeNumber | None = Field(None, gt=0, description="Lookalike size (default 1000).")
    reach: float | None = Field(None, gt=0, le=_MAX_REACH)
    profile_ids: list[ProfileId] | None = Field(None, max_length=_SVC.max_seed_ids)
    retarget: str | None = Field(None, description="A retargeting template's name.")
    params: dict[str, Any] | None = Field(None, description="The template's parameters.")


class SegmentAffinityRequest(AudienceSpec):
    top: WholeNumber = Field(5, ge=1, le=50, description="Top categories of the segment.")


class RetargetRequest(_Body):
    template: str = Field(description="viewed_not_bought, cart_abandoners, lapsed_buyers, ...")
    params: dict[str, Any] | None = None
    rank_by_propensity: bool = False
    limit: WholeNumber = Field(1000, ge=0, le=100_000, description="Profiles returned at most.")


class CampaignRequest(_Body):
    name: str = Field(min_length=1, max_length=64)
    audience: AudienceSpec
    holdout: float | None = Field(None, gt=0, lt=1)
    target_event: str | None = None
    horizon_days: WholeNumber | None = Field(None, ge=1, le=3650)
    launch: datetime | None = Field(
        None, strict=False, description="ISO 8601; naive means UTC; null: the data cutoff."
    )

    @field_validator("launch")
    @classmethod
    def _plausible(cls, value: datetime | None) -> datetime | None:
        if value is not None and not 2000 <= value.year <= 2100:
            raise ValueError("must be between the years 2000 and 2100")
        return value


def _spec(body: AudienceSpec) -> dict[str, Any]:
    return {k: v for k, v in body.model_dump(exclude={"top"}).items() if v is not None}


@bentoml.service(
    name="dmp_ml",
    workers=_SVC.workers,
    traffic={"timeout": 300},
    http={"port": _SVC.port},
)
@bentoml.asgi_app(app, path="/")
class DmpMlService:
    """One worker: the live bundle, request limiters, and a pointer watcher."""

    if _SVC.bento_model:
        # A model reference: `bentoml build` with DMP_ML_SERVICE__BENTO_MODEL set packs the
        # promoted bundle into the Bento. Serving still resolves the tag on every poll
        # (_pointer), so a new promote goes live without a restart.
        bundle_model = bentoml.models.BentoModel(_SVC.bento_model)

    def __init__(self) -> None:
        logging.getLogger(__name__).setLevel(logging.INFO)  # BentoML's root level is WARNING
        self.settings = _SETTINGS
        self.workdir = Path(self.settings.workdir)
        self._threads = self.settings.service.threads_per_worker
        self._limit_threads()
        self._reload_lock = threading.Lock()
        self._failed_path: Path | None = None
        self._last_error: str | None = None
        # Lookalike expansions (seconds of LightGBM) run in their own small pool of threads at
        # a lower OS priority, so /score and /send_time never queue behind them for a core.
        self._heavy = ThreadPoolExecutor(
            max_workers=self.settings.service.max_concurrent_lookalikes,
            thread_name_prefix="lookalike",
            initializer=_lower_priority,
        )
        self._bundle: Any = None
        self._loaded_at: str | None = None
        self._refresher: Any = None  # dmp_ml.refresh.Refresher, created on the first batch
        self._spooled = threading.Event()  # set when this worker spools a batch
        self._erasure_stamp: tuple[int, int, int] | None = None
        self._scrub_pending = False  # a forget could not rewrite the live bundle on disk
        self._load(self._pointer())
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        if self.settings.service.reload_poll_seconds > 0:
            self._watcher = threading.Thread(target=self._watch, name="bundle-watch", daemon=True)
            self._watcher.start()
        self._applier: threading.Thread | None = None
        if not self.settings.service.bento_model:
            self._applier = threading.Thread(
                target=self._apply_spool, name="events-apply", daemon=True
            )
            self._applier.start()

    # ------------------------------------------------------------------ lifecycle

    def _limit_threads(self) -> None:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=self._threads)

    def _pointer(self) -> Path:
        """The bundle to serve: the promoted BentoML model's (re-resolved: ``:latest`` moves
        with each promote), else the workdir's ``bundle`` pointer."""
        from dmp_ml.bundle import served_bundle_path

        return served_bundle_path(self.workdir, self.settings.service.bento_model)

    def _load(self, path: Path) -> Any:
        """Load ``path`` and make it live; raise BundleError (old bundle stays) if it is bad."""
        from dmp_ml.bundle import load_bundle
        from dmp_ml.erasure import erased_in, read_erasure_list

        started = time.perf_counter()
        try:
            bundle = load_bundle(path, n_threads=self._threads)
        except BundleError:
            raise
        except Exception as exc:  # whatever a damaged file raises, the old bundle stays
            raise BundleError(f"bundle {path} cannot be loaded: {type(exc).__name__}") from exc
        erased = read_erasure_list(self.workdir)
        if erased:
            bundle.forget(erased)  # the bundle may predate later erasures
        self._erasure_stamp = _erasure_stamp(self.workdir)
        first = self._bundle is None
        self._bundle = bundle  # the swap: one reference assignment
        service_metrics().bundle_loaded(
            str(bundle.version), dict(bundle.manifest).get("created_at"), first=first
        )
        if erased and not self.settings.service.bento_model and erased_in(bundle, erased):
            # its files still hold listed ids (e.g. a forget found it unreadable): scrub now
            self._scrub()
        self._loaded_at = _iso(pd.Timestamp.now(tz="UTC"))
        self._failed_path = None
        logger.info(
            "worker %d: bundle %s live (%d profiles, %.1f s)",
            os.getpid(),
            bundle.version,
            len(bundle.features.frame),
            time.perf_counter() - started,
        )
        return bundle

    def reload_bundle(self) -> tuple[bool, Any, Any]:
        """Load what the pointer names if it differs from the live bundle.

        Returns (reloaded, previous, current). Raises BundleError and keeps the old bundle.
        """
        with self._reload_lock:
            previous = self._bundle
            target: Path | None = None
            try:
                target = self._pointer()
                if previous is not None and Path(previous.path).resolve() == target:
                    return False, previous, previous
                current = self._load(target)
            except BundleError as exc:
                self._failed_path = target
                self._last_error = str(exc)
                service_metrics().reload_failed()
                logger.warning("bundle refused, %s stays live: %s", previous.version, exc)
                raise
            self._last_error = None
            return True, previous, current

    def _scrub(self) -> None:
        """Rewrite the live bundle without every listed id it still holds (if it is readable)."""
        from dmp_ml.erasure import apply_erasure_list
        from dmp_ml.errors import DmpMlError

        try:
            report = apply_erasure_list(self.workdir)
        except (DmpMlError, OSError) as exc:
            logger.warning("scrubbing the live bundle failed, retried later: %s", exc)
            return
        self._scrub_pending = False
        if report is not None:
            logger.info("live bundle scrubbed of listed ids: %s", report.bundle_version)

    def _watch(self) -> None:
        """Poll the pointer; load a new target once (a refused one is retried only by /reload).

        While a forget could not scrub the live bundle, retry each poll once it reads again."""
        from dmp_ml.bundle import read_manifest

        interval = self.settings.service.reload_poll_seconds
        while not self._stop.wait(interval):
            service_metrics().refresh_age()
            if self._scrub_pending:
                try:
                    read_manifest(self._pointer(), verify=True)
                except BundleError:
                    pass
                else:
                    self._scrub()
            try:
                target = self._pointer()
            except BundleError as exc:  # e.g. a pinned model a forget replaced: say so once
                if str(exc) != self._last_error:
                    logger.warning("bundle source unavailable, the live bundle stays: %s", exc)
                    self._last_error = str(exc)
                continue
            if target in (Path(self._bundle.path).resolve(), self._failed_path):
                continue
            try:
                self.reload_bundle()
            except BundleError:
                continue  # logged by reload_bundle; the old bundle keeps serving
            except Exception as exc:  # the watcher must never die
                _log_failure("bundle watch", exc)

    @bentoml.on_shutdown
    def _shutdown(self) -> None:
        self._stop.set()
        self._spooled.set()
        self._heavy.shutdown(wait=False, cancel_futures=True)

    def __is_ready__(self) -> bool:
        return self._bundle is not None

    async def _run(self, what: str, func: Callable[[], JSONResponse], heavy: bool = False) -> Any:
        """Run ``func`` off the event loop; heavy work in the low-priority pool."""
        try:
            if heavy:
                return await asyncio.get_running_loop().run_in_executor(self._heavy, func)
            return await anyio.to_thread.run_sync(func)
        except RequestError as exc:
            logger.info("%s rejected: invalid %s", what, exc.field)
            return _error(422, exc.message, exc.field)
        except DataContractError as exc:
            logger.info("%s rejected: %s", what, type(exc).__name__)
            return _error(422, str(exc))
        except BundleError as exc:
            logger.error("%s: the live bundle cannot answer: %s", what, exc)
            return _error(503, str(exc))
        except (StorageError, OSError) as exc:
            return _storage_failure(what, exc)
        except Exception as exc:
            _log_failure(what, exc)
            return _error(500, "internal error; see the server log")

    # ---------------------------------------------------------------------- endpoints

    @app.post(
        "/score",
        response_model=ScoreResponse,
        responses=_ERRORS,
        summary="Propensity scores of known profiles; unknown ids are listed, not fatal.",
    )
    async def score(self, body: ScoreRequest) -> Any:
        bundle = self._honour_erasures()

        def work() -> JSONResponse:
            started = time.perf_counter()
            try:
                result = bundle.score(body.profile_ids, explain=body.explain)
                frame, unknown = result.frame, list(result.unknown_ids)
            except UnknownProfileError:
                frame, unknown = pd.DataFrame(), list(dict.fromkeys(body.profile_ids))
            columns = ["profile_id", "score", "percentile", *_SCORE_BASIS]
            columns += ["reasons"] if body.explain else []
            payload = {
                "model_version": str(bundle.version),
                "as_of": _iso(bundle.as_of),
                "results": _records(frame, columns),
                "unknown_ids": [str(u) for u in unknown],
            }
            logger.debug(
                "score: %d ids, %d unknown, %.1f ms",
                len(body.profile_ids),
                len(unknown),
                1e3 * (time.perf_counter() - started),
            )
            return _json(payload)

        return await self._run("score", work)

    @app.post(
        "/lookalike",
        response_model=LookalikeResponse,
        responses=_ERRORS,
        summary="Profiles most like the seed, best first; give `size` or `reach`.",
    )
    async def lookalike(self, body: LookalikeRequest) -> Any:
        if body.size is None and body.reach is None:
            return _error(422, "give the audience size or reach", "size")
        if body.size is not None and body.reach is not None:
            return _error(422, "give size or reach, not both", "reach")
        bundle = self._honour_erasures()

        def work() -> JSONResponse:
            started = time.perf_counter()
            try:
                audience = bundle.lookalike(
                    body.seed_ids, size=body.size, reach=body.reach, exclude_ids=body.exclude_ids
                )
            except UnknownProfileError as exc:
                return _error(422, str(exc), "seed_ids")
            diagnostics = _plain(dict(audience.diagnostics))
            unknown = diagnostics.get("unknown_seed_ids") or []
            if not body.explain:
                diagnostics.pop("distinguishing_features", None)
            payload = {
                "model_version": str(bundle.version),
                "audience": _records(audience.frame, ["profile_id", "score"]),
                "diagnostics": diagnostics,
                "unknown_seed_ids": [str(u) for u in unknown],
            }
            logger.debug(
                "lookalike: %d seeds, %d returned, %.1f ms",
                len(body.seed_ids),
                len(audience.frame),
                1e3 * (time.perf_counter() - started),
            )
            return _json(payload)

        return await self._run("lookalike", work, heavy=True)

    @app.post(
        "/send_time",
        response_model=SendTimeResponse,
        responses=_ERRORS,
        summary="Best send hour per profile inside the window, outside quiet hours.",
    )
    async def send_time(self, body: SendTimeRequest) -> Any:
        bundle = self._honour_erasures()
        quiet = (body.quiet_hours.start, body.quiet_hours.end) if body.quiet_hours else None

        def work() -> JSONResponse:
            try:
                decision = bundle.send_time(
                    body.profile_ids,
                    window_start=body.window_start,
                    window_hours=body.window_hours,
                    quiet_hours=quiet,
                    timezone=body.timezone,
                )
                frame, unknown = decision.frame, list(decision.unknown_ids)
                start = getattr(decision, "window_start", body.window_start)
                hours = getattr(decision, "window_hours", body.window_hours)
            except UnknownProfileError:
                frame, unknown = pd.DataFrame(), list(dict.fromkeys(body.profile_ids))
                start, hours = body.window_start, body.window_hours
            columns = [
                "profile_id",
                "send_at",
                "hour_of_week",
                "probability",
                "basis",
                "timezone",
                "timezone_source",
                "local_send_at",
                "alternatives",
            ]
            payload = {
                "model_version": str(bundle.version),
                "window_start": _iso(start),
                "window_hours": int(hours),
                "results": _records(frame, columns),
                "unknown_ids": [str(u) for u in unknown],
            }
            logger.debug("send_time: %d ids, %d unknown", len(body.profile_ids), len(unknown))
            return _json(payload)

        return await self._run("send_time", work)

    def _honour_erasures(self) -> Any:
        """The live bundle, after applying erasures other workers made since (one stat call):
        a POST /forget on one worker empties every worker's answers at once, not at the next
        pointer poll. Call it first in every endpoint instead of reading self._bundle."""
        from dmp_ml.erasure import read_erasure_list

        bundle = self._bundle
        stamp = _erasure_stamp(self.workdir)
        if stamp != self._erasure_stamp:
            bundle.forget(read_erasure_list(self.workdir))
            self._erasure_stamp = stamp
        return bundle

    def _require_token(self, what: str) -> JSONResponse | None:
        if self.settings.api_token:
            return None  # BearerTokenMiddleware has checked it
        return _error(
            403, f"{what} changes data: set DMP_ML_API_TOKEN on the server", "Authorization"
        )

    @app.post(
        "/segments/preview",
        responses=_ERRORS,
        summary="Size, share, sample ids and key feature distributions of a segment rule.",
    )
    async def segments_preview(self, body: SegmentPreviewRequest) -> Any:
        bundle = self._honour_erasures()

        def work() -> JSONResponse:
            from dmp_ml.segments import preview

            # a bad rule raises SegmentError (a RequestError): 422 with field "all[1].feature"
            return _json(_plain(preview(body.rule, bundle, sample=body.sample)))

        return await self._run("segments_preview", work)

    @app.post(
        "/forget",
        responses={**_ERRORS, **_WRITES},
        summary="Forget profiles everywhere: erasure list, live bundle (re-published), events.",
    )
    async def forget(self, body: ForgetRequest) -> Any:
        refused = self._require_token("POST /forget")
        if refused is not None:
            return refused
        bundle = self._honour_erasures()

        def work() -> JSONResponse:
            from dmp_ml.erasure import forget

            # this worker stops answering for them before forget() returns; the others on
            # their next request (_honour_erasures); all then load the re-published bundle
            report = forget(self.workdir, body.profile_ids, bundle=bundle)
            self._erasure_stamp = _erasure_stamp(self.workdir)
            with contextlib.suppress(BundleError):
                self.reload_bundle()
            logger.info(
                "forget: %d ids, %d new on the erasure list, bundle %s, %s",
                report.requested,
                report.newly_erased,
                report.bundle_version,
                "complete" if report.complete else f"not scrubbed: {list(report.not_scrubbed)}",
            )
            payload = _plain(report.to_dict())  # counts and paths only, never the ids
            if not report.complete:
                # on the erasure list and out of every answer, but bytes remain: say so
                self._scrub_pending = True
                stores = ", ".join(report.not_scrubbed)
                payload["error"] = (
                    f"erasure recorded and applied to every answer, but {stores} could not "
                    "be scrubbed; it is scrubbed at the next successful load"
                )
                payload["field"] = "bundle"
                return _json(payload, status=503)
            return _json(payload)

        return await self._run("forget", work)

    @app.post(
        "/events",
        status_code=202,
        responses={
            **_ERRORS,
            **_WRITES,
            409: {"model": ErrorResponse, "description": "A promoted model is served."},
        },
        summary="Accept new events (data contract): stored durably now, applied in the background.",
    )
    async def events(self, body: EventsRequest) -> Any:
        """202 once the batch is on disk (fsynced); ``GET /events/{batch}`` says when it is
        visible. Batches queued together are applied as one refresh (one re-publish)."""
        refused = self._require_token("POST /events")
        if refused is not None:
            return refused
        if self.settings.service.bento_model:
            return _error(
                409,
                f"this service serves the promoted model {self.settings.service.bento_model}; "
                "events refresh the workdir's bundle: serve the workdir, or promote again",
                "events",
            )

        def work() -> JSONResponse:
            from dmp_ml.spool import accept

            receipt = accept(self.workdir, body.events)  # durable before the answer
            self._spooled.set()  # wake this worker's applier
            logger.info(
                "events: batch of %d accepted (%d valid), %d queued",
                receipt.rows_received,
                receipt.rows_valid,
                receipt.queued_batches,
            )
            payload = receipt.to_dict()
            payload["status_url"] = f"/events/{receipt.batch}"
            return _json(_plain(payload), status=202)

        return await self._run("events", work)

    @app.get(
        "/events/{batch}",
        responses={
            401: _ERRORS[401],
            404: {"model": ErrorResponse, "description": "No such batch."},
            422: _ERRORS[422],
        },
        summary="Where an accepted batch is: queued (with an estimate) or applied (visible).",
    )
    async def event_batch(self, batch: str) -> Any:
        def work() -> JSONResponse:
            from dmp_ml.spool import batch_status

            status = batch_status(self.workdir, batch)
            if status["status"] == "unknown":
                return _error(404, f"no batch {batch} (unknown, or older than a week)", "batch")
            return _json(_plain(status))

        return await self._run("event_batch", work)

    def _apply_spool(self) -> None:
        """Background applier: apply spooled batches together; one process at a time."""
        from dmp_ml.refresh import Refresher
        from dmp_ml.spool import drain, pending

        interval = max(0.2, min(self.settings.service.reload_poll_seconds or 1.0, 1.0))
        while not self._stop.is_set():
            self._spooled.wait(interval)
            self._spooled.clear()
            if not pending(self.workdir):
                continue
            try:
                if self._refresher is None:
                    self._refresher = Refresher(
                        self.workdir, n_threads=self._threads, contract=self.settings.contract
                    )
                # loaded here before any batch is reported applied; other workers: the poll
                drain(self.workdir, self._refresher, on_applied=self._reload_quietly)
            except Exception as exc:  # kept spooled; retried after a pause
                logger.error("applying spooled events failed (retried): %s", exc)
                self._stop.wait(5.0)

    def _reload_quietly(self, *_: Any) -> None:
        with contextlib.suppress(BundleError):
            self.reload_bundle()

    @app.get("/info", responses={401: _ERRORS[401]}, summary="The live bundle and its manifest.")
    async def info(self) -> Any:
        bundle = self._bundle

        def work() -> JSONResponse:
            manifest = {k: v for k, v in dict(bundle.manifest).items() if k != "files"}
            manifest.pop("settings", None)  # operational detail; the workdir has it
            svc = self.settings.service
            payload = {
                "live": {
                    "version": str(bundle.version),
                    "source": _source(svc.bento_model, Path(bundle.path)),
                    "path": str(bundle.path),
                    "as_of": _iso(bundle.as_of),
                    "loaded_at": self._loaded_at,
                    "profiles": len(bundle.features.frame),
                    "models": {
                        "propensity": getattr(bundle, "propensity", None) is not None,
                        "send_time": getattr(bundle, "send_time_model", None) is not None,
                        "lookalike": getattr(bundle, "lookalike_model", None) is not None,
                    },
                },
                "manifest": _plain(manifest),
                "worker": {
                    "pid": os.getpid(),
                    "threads_per_worker": self._threads,
                    "threadpools": _worker_threads(),
                    "last_reload_error": self._last_error,
                },
                "limits": {
                    "max_score_ids": svc.max_score_ids,
                    "max_send_time_ids": svc.max_send_time_ids,
                    "max_seed_ids": svc.max_seed_ids,
                    "max_reach": _MAX_REACH,
                    "max_request_bytes": svc.max_request_bytes,
                },
            }
            return _json(payload)

        return await self._run("info", work)

    @app.post(
        "/reload",
        response_model=ReloadResponse,
        responses={
            401: _ERRORS[401],
            409: {"model": ErrorResponse, "description": "Bundle refused; the old one serves."},
        },
        summary="Serve the bundle the `bundle` pointer names now (this worker; others poll).",
    )
    async def reload(self) -> Any:
        try:
            reloaded, previous, current = await anyio.to_thread.run_sync(self.reload_bundle)
        except BundleError as exc:
            live = self._bundle
            return _error(409, str(exc), "bundle", live_version=str(live.version))
        except Exception as exc:
            _log_failure("reload", exc)
            return _error(500, "internal error; see the server log")
        return _json(
            {
                "reloaded": reloaded,
                "version": str(current.version),
                "previous_version": str(previous.version) if previous is not None else None,
                "path": str(current.path),
            }
        )

    # ------------------------------------------ display, retargeting and campaigns: endpoints

    @app.post(
        "/affinity",
        responses=_ERRORS,
        summary="Preferred channels and top content categories per profile.",
    )
    async def affinity(self, body: AffinityRequest) -> Any:
        bundle = self._honour_erasures()

        def work() -> JSONResponse:
            from dmp_ml.models.affinity import profile_affinity

            frame, unknown = profile_affinity(bundle, body.profile_ids, top=body.top)
            columns = ["profile_id", "preferred_channel", "channels", "top_categories"]
            payload = {
                "model_version": str(bundle.version),
                "results": _records(frame, columns),
                "unknown_ids": unknown,
            }
            return _json(_plain(payload))

        return await self._run("affinity", work)

    @app.post(
        "/segments/affinity",
        responses=_ERRORS,
        summary="A segment's channel mix, top categories (lift) and best display hours.",
    )
    async def segments_affinity(self, body: SegmentAffinityRequest) -> Any:
        bundle = self._honour_erasures()

        def work() -> JSONResponse:
            from dmp_ml.activation import audience_from_spec
            from dmp_ml.models.affinity import segment_affinity

            audience = audience_from_spec(bundle, _spec(body))
            summary = segment_affinity(bundle, audience["profile_id"], top=body.top)
            return _json(_plain({"model_version": str(bundle.version), **summary}))

        return await self._run("segments_affinity", work, heavy=body.seed_ids is not None)

    @app.post(
        "/retarget",
        responses=_ERRORS,
        summary="A retargeting audience from a template (size and profile ids).",
    )
    async def retarget(self, body: RetargetRequest) -> Any:
        bundle = self._honour_erasures()

        def work() -> JSONResponse:
            from dmp_ml.retargeting import retarget

            frame = retarget(
                bundle, body.template, body.params, rank_by_propensity=body.rank_by_propensity
            )
            columns = [c for c in ("profile_id", "propensity_score", "rank") if c in frame]
            payload = {
                "model_version": str(bundle.version),
                "template": body.template,
                "size": len(frame),
                "results": _records(frame.head(body.limit), columns),
            }
            return _json(_plain(payload))

        return await self._run("retarget", work)

    @app.post(
        "/campaigns",
        responses={**_ERRORS, 403: {"model": ErrorResponse, "description": "No API token set."}},
        summary="Store a campaign: its audience now and a reproducible holdout.",
    )
    async def create_campaign(self, body: CampaignRequest) -> Any:
        refused = self._require_token("POST /campaigns")
        if refused is not None:
            return refused
        bundle = self._honour_erasures()

        def work() -> JSONResponse:
            from dmp_ml.activation import audience_from_spec
            from dmp_ml.campaigns import create_campaign

            spec = _spec(body.audience)
            source = {k: v for k, v in spec.items() if k not in ("profile_ids", "seed_ids")}
            for key in ("profile_ids", "seed_ids"):
                if key in spec:
                    source[key] = len(spec[key])  # counts only: ids stay in members.parquet
            campaign = create_campaign(
                bundle,
                body.name,
                audience_from_spec(bundle, spec),
                workdir=self.workdir,
                settings=self.settings,
                holdout=body.holdout,
                target_event=body.target_event,
                horizon_days=body.horizon_days,
                launch=body.launch,
                source=source,
            )
            return _json(_plain(campaign.to_dict()), status=201)

        return await self._run("create_campaign", work)

    @app.get(
        "/campaigns/{name}",
        responses={**_ERRORS, 404: {"model": ErrorResponse, "description": "No such campaign."}},
        summary="Readout: treated vs holdout conversion, lift with 95% intervals, MDE.",
    )
    async def campaign_report(self, name: str) -> Any:
        bundle = self._honour_erasures()

        def work() -> JSONResponse:
            from dmp_ml.campaigns import campaign_report, check_name, list_campaigns

            if check_name(name) not in list_campaigns(self.workdir):
                return _error(404, f"unknown campaign {name!r}", "name")
            report = campaign_report(self.workdir, name, bundle=bundle, settings=self.settings)
            return _json(_plain(report))

        return await self._run("campaign_report", work)


# outermost first: requests are counted (401s and 413s included) before anything refuses them
DmpMlService.add_asgi_middleware(
    RequestMetricsMiddleware, routes=lambda: [*app.openapi()["paths"], *DOC_PATHS]
)
DmpMlService.add_asgi_middleware(BodyLimitMiddleware, limit=_SVC.max_request_bytes)
DmpMlService.add_asgi_middleware(BearerTokenMiddleware, token=_SETTINGS.api_token or None)
DmpMlService.add_asgi_middleware(OpenApiMiddleware, schema=app.openapi)
DmpMlService.add_asgi_middleware(NameInPathMiddleware)


# ---------------------------------------------------------------------------- starting it


def serve_command(
    workdir: str | Path,
    *,
    port: int | None = None,
    host: str | None = None,
    workers: int | None = None,
    bento_model: str | None = None,
    settings: Settings | None = None,
) -> tuple[list[str], dict[str, str]]:
    """The argv and environment that start the service on ``workdir`` (for a subprocess).

    ``port``/``host``/``workers``/``bento_model`` default to ``settings.service``. The
    environment carries ``DMP_ML_WORKDIR``, the worker count, the promoted model to serve (if
    any) and the per-worker OpenMP/BLAS thread counts.
    """
    s = settings if settings is not None else load_settings()
    svc = s.service
    port = svc.port if port is None else int(port)
    host = svc.host if host is None else host
    workers = svc.workers if workers is None else int(workers)
    bento_model = svc.bento_model if bento_model is None else bento_model
    if not 0 < port < 65536:
        raise RequestError("port", f"must be 1..65535, got {port}")
    if workers < 1:
        raise RequestError("workers", f"must be at least 1, got {workers}")
    env = dict(os.environ)
    env.update(
        {
            "DMP_ML_WORKDIR": str(Path(workdir).resolve()),
            "DMP_ML_SERVICE__WORKERS": str(workers),
            "DMP_ML_SERVICE__PORT": str(port),
            "OMP_NUM_THREADS": str(svc.threads_per_worker),
            "OPENBLAS_NUM_THREADS": str(svc.threads_per_worker),
            "MKL_NUM_THREADS": str(svc.threads_per_worker),
            "BENTOML_DO_NOT_TRACK": "True",
        }
    )
    if bento_model:
        env["DMP_ML_SERVICE__BENTO_MODEL"] = bento_model
    argv = [
        sys.executable,
        "-m",
        "bentoml",
        "serve",
        SERVICE_IMPORT,
        "--port",
        str(port),
        "--host",
        host,
    ]
    return argv, env


def serve(
    workdir: str | Path,
    *,
    port: int | None = None,
    host: str | None = None,
    workers: int | None = None,
    bento_model: str | None = None,
    settings: Settings | None = None,
    mode: Literal["exec", "wait"] = "exec",
) -> int:
    """Serve the live bundle of ``workdir`` (or the promoted ``bento_model``) over HTTP.

    Checks first that the bundle is readable (BundleError otherwise), then runs
    ``bentoml serve``: ``mode="exec"`` replaces this process (signals reach the server
    directly; the right choice for a CLI), ``"wait"`` runs it as a child and returns its exit
    code.
    """
    from dmp_ml.bundle import read_manifest, served_bundle_path

    tag = bento_model or (settings or load_settings()).service.bento_model
    read_manifest(served_bundle_path(workdir, tag), verify=False)
    argv, env = serve_command(
        workdir, port=port, host=host, workers=workers, bento_model=tag, settings=settings
    )
    logger.info("starting %s on %s:%s", SERVICE_IMPORT, argv[-1], argv[-3])
    if mode == "exec":
        os.execve(argv[0], argv, env)
    import subprocess

    return subprocess.call(argv, env=env)
