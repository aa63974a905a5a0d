"""The HTTP routes of the service: parse (the request models), call the library, shape the
answer. Every route reads the live bundle once from its worker and finishes on it.

No ``from __future__ import annotations`` here: the request bodies are built per service
(:func:`dmp_ml.service.schemas.request_models`), and FastAPI reads them from the annotations
of the route functions defined in :func:`add_routes`.
"""

import logging
import os
import time
from pathlib import Path
from typing import Annotated, Any

import anyio
import pandas as pd
from bentoml import get_current_service as current_worker
from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse

from dmp_ml.errors import BundleError, UnknownProfileError
from dmp_ml.service.responses import (
    error_response,
    iso,
    json_response,
    log_failure,
    plain,
    records,
)
from dmp_ml.service.schemas import (
    ERRORS,
    SCORE_BASIS,
    WRITES,
    ErrorResponse,
    EventsRequest,
    LookalikeResponse,
    ReloadResponse,
    RequestModels,
    RetargetRequest,
    ScoreResponse,
    SegmentPreviewRequest,
    SendTimeResponse,
    audience_spec,
    max_reach,
)
from dmp_ml.service.worker import ServiceWorker

logger = logging.getLogger(__name__)

Worker = Annotated[ServiceWorker, Depends(current_worker)]
"""The worker answering a request: the BentoML service instance of this process."""


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


def add_routes(app: FastAPI, requests: RequestModels) -> None:
    """Add every API route to ``app``, with the request bodies ``requests``.

    Each route gets the worker serving it from BentoML (the service instance of this process).
    """

    @app.post(
        "/score",
        response_model=ScoreResponse,
        responses=ERRORS,
        summary="Propensity scores of known profiles; unknown ids are listed, not fatal.",
    )
    async def score(body: requests.score, worker: Worker) -> Any:
        bundle = worker.current_bundle()

        def work() -> JSONResponse:
            started = time.perf_counter()
            try:
                result = bundle.score(body.profile_ids, explain=body.explain)
                frame, unknown = result.frame, list(result.unknown_ids)
            except UnknownProfileError:
                frame, unknown = pd.DataFrame(), list(dict.fromkeys(body.profile_ids))
            columns = ["profile_id", "score", "percentile", *SCORE_BASIS]
            columns += ["reasons"] if body.explain else []
            payload = {
                "model_version": str(bundle.version),
                "as_of": iso(bundle.as_of),
                "results": records(frame, columns),
                "unknown_ids": [str(u) for u in unknown],
            }
            logger.debug(
                "score: %d ids, %d unknown, %.1f ms",
                len(body.profile_ids),
                len(unknown),
                1e3 * (time.perf_counter() - started),
            )
            return json_response(payload)

        return await worker.run("score", work)

    @app.post(
        "/lookalike",
        response_model=LookalikeResponse,
        responses=ERRORS,
        summary="Profiles most like the seed, best first; give `size` or `reach`.",
    )
    async def lookalike(body: requests.lookalike, worker: Worker) -> Any:
        if body.size is None and body.reach is None:
            return error_response(422, "give the audience size or reach", "size")
        if body.size is not None and body.reach is not None:
            return error_response(422, "give size or reach, not both", "reach")
        bundle = worker.current_bundle()

        def work() -> JSONResponse:
            started = time.perf_counter()
            try:
                audience = bundle.lookalike(
                    body.seed_ids, size=body.size, reach=body.reach, exclude_ids=body.exclude_ids
                )
            except UnknownProfileError as exc:
                return error_response(422, str(exc), "seed_ids")
            diagnostics = plain(dict(audience.diagnostics))
            unknown = diagnostics.get("unknown_seed_ids") or []
            if not body.explain:
                diagnostics.pop("distinguishing_features", None)
            payload = {
                "model_version": str(bundle.version),
                "audience": records(audience.frame, ["profile_id", "score"]),
                "diagnostics": diagnostics,
                "unknown_seed_ids": [str(u) for u in unknown],
            }
            logger.debug(
                "lookalike: %d seeds, %d returned, %.1f ms",
                len(body.seed_ids),
                len(audience.frame),
                1e3 * (time.perf_counter() - started),
            )
            return json_response(payload)

        return await worker.run("lookalike", work, heavy=True)

    @app.post(
        "/send_time",
        response_model=SendTimeResponse,
        responses=ERRORS,
        summary="Best send hour per profile inside the window, outside quiet hours.",
    )
    async def send_time(body: requests.send_time, worker: Worker) -> Any:
        bundle = worker.current_bundle()
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
                "window_start": iso(start),
                "window_hours": int(hours),
                "results": records(frame, columns),
                "unknown_ids": [str(u) for u in unknown],
            }
            logger.debug("send_time: %d ids, %d unknown", len(body.profile_ids), len(unknown))
            return json_response(payload)

        return await worker.run("send_time", work)

    @app.post(
        "/segments/preview",
        responses=ERRORS,
        summary="Size, share, sample ids and key feature distributions of a segment rule.",
    )
    async def segments_preview(body: SegmentPreviewRequest, worker: Worker) -> Any:
        bundle = worker.current_bundle()

        def work() -> JSONResponse:
            from dmp_ml.segments import preview

            # a bad rule raises SegmentError (a RequestError): 422 with field "all[1].feature"
            return json_response(plain(preview(body.rule, bundle, sample=body.sample)))

        return await worker.run("segments_preview", work)

    @app.post(
        "/forget",
        responses={**ERRORS, **WRITES},
        summary="Forget profiles everywhere: erasure list, live bundle (re-published), events.",
    )
    async def forget(body: requests.forget, worker: Worker) -> Any:
        refused = worker.require_token("POST /forget")
        if refused is not None:
            return refused
        bundle = worker.current_bundle()

        def work() -> JSONResponse:
            from dmp_ml.erasure import forget

            # this worker stops answering for them before forget() returns; the others on
            # their next request (current_bundle); all then load the re-published bundle
            report = forget(worker.workdir, body.profile_ids, bundle=bundle)
            worker.forgotten(complete=report.complete)
            logger.info(
                "forget: %d ids, %d new on the erasure list, bundle %s, %s",
                report.requested,
                report.newly_erased,
                report.bundle_version,
                "complete" if report.complete else f"not scrubbed: {list(report.not_scrubbed)}",
            )
            payload = plain(report.to_dict())  # counts and paths only, never the ids
            if not report.complete:
                # on the erasure list and out of every answer, but bytes remain: say so
                stores = ", ".join(report.not_scrubbed)
                payload["error"] = (
                    f"erasure recorded and applied to every answer, but {stores} could not "
                    "be scrubbed; it is scrubbed at the next successful load"
                )
                payload["field"] = "bundle"
                return json_response(payload, status=503)
            return json_response(payload)

        return await worker.run("forget", work)

    @app.post(
        "/events",
        status_code=202,
        responses={
            **ERRORS,
            **WRITES,
            409: {"model": ErrorResponse, "description": "A promoted model is served."},
        },
        summary="Accept new events (data contract): stored durably now, applied in the background.",
    )
    async def events(body: EventsRequest, worker: Worker) -> Any:
        """202 once the batch is on disk (fsynced); ``GET /events/{batch}`` says when it is
        visible. Batches queued together are applied as one refresh (one re-publish)."""
        refused = worker.require_token("POST /events")
        if refused is not None:
            return refused
        if worker.settings.service.bento_model:
            return error_response(
                409,
                f"this service serves the promoted model {worker.settings.service.bento_model}; "
                "events refresh the workdir's bundle: serve the workdir, or promote again",
                "events",
            )

        def work() -> JSONResponse:
            from dmp_ml.spool import accept

            receipt = accept(worker.workdir, body.events)  # durable before the answer
            worker.events_spooled()  # wake this worker's applier
            logger.info(
                "events: batch of %d accepted (%d valid), %d queued",
                receipt.rows_received,
                receipt.rows_valid,
                receipt.queued_batches,
            )
            payload = receipt.to_dict()
            payload["status_url"] = f"/events/{receipt.batch}"
            return json_response(plain(payload), status=202)

        return await worker.run("events", work)

    @app.get(
        "/events/{batch}",
        responses={
            401: ERRORS[401],
            404: {"model": ErrorResponse, "description": "No such batch."},
            422: ERRORS[422],
        },
        summary="Where an accepted batch is: queued (with an estimate) or applied (visible).",
    )
    async def event_batch(batch: str, worker: Worker) -> Any:
        def work() -> JSONResponse:
            from dmp_ml.spool import batch_status

            status = batch_status(worker.workdir, batch)
            if status["status"] == "unknown":
                return error_response(
                    404, f"no batch {batch} (unknown, or older than a week)", "batch"
                )
            return json_response(plain(status))

        return await worker.run("event_batch", work)

    @app.get("/info", responses={401: ERRORS[401]}, summary="The live bundle and its manifest.")
    async def info(worker: Worker) -> Any:
        bundle = worker.live

        def work() -> JSONResponse:
            manifest = {k: v for k, v in dict(bundle.manifest).items() if k != "files"}
            manifest.pop("settings", None)  # operational detail; the workdir has it
            svc = worker.settings.service
            payload = {
                "live": {
                    "version": str(bundle.version),
                    "source": _source(svc.bento_model, Path(bundle.path)),
                    "path": str(bundle.path),
                    "as_of": iso(bundle.as_of),
                    "loaded_at": worker.loaded_at,
                    "profiles": len(bundle.features),
                    "models": {
                        "propensity": getattr(bundle, "propensity", None) is not None,
                        "send_time": getattr(bundle, "send_time_model", None) is not None,
                        "lookalike": getattr(bundle, "lookalike_model", None) is not None,
                    },
                    # what each model's guard chose to serve, and the held-out comparison
                    "served": {
                        step: {"served": done["served"], "comparison": done.get("comparison")}
                        for step, done in dict(bundle.manifest).get("steps", {}).items()
                        if isinstance(done, dict) and done.get("served")
                    },
                },
                "manifest": plain(manifest),
                "worker": {
                    "pid": os.getpid(),
                    "threads_per_worker": worker.threads,
                    "threadpools": _worker_threads(),
                    "last_reload_error": worker.last_error,
                },
                "limits": {
                    "max_score_ids": svc.max_score_ids,
                    "max_send_time_ids": svc.max_send_time_ids,
                    "max_seed_ids": svc.max_seed_ids,
                    "max_reach": max_reach(worker.settings),
                    "max_request_bytes": svc.max_request_bytes,
                },
            }
            return json_response(payload)

        return await worker.run("info", work)

    @app.post(
        "/reload",
        response_model=ReloadResponse,
        responses={
            401: ERRORS[401],
            409: {"model": ErrorResponse, "description": "Bundle refused; the old one serves."},
        },
        summary="Serve the bundle the `bundle` pointer names now (this worker; others poll).",
    )
    async def reload(worker: Worker) -> Any:
        try:
            reloaded, previous, current = await anyio.to_thread.run_sync(worker.reload_bundle)
        except BundleError as exc:
            live = worker.live
            return error_response(409, str(exc), "bundle", live_version=str(live.version))
        except Exception as exc:
            log_failure("reload", exc)
            return error_response(500, "internal error; see the server log")
        return json_response(
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
        responses=ERRORS,
        summary="Preferred channels and top content categories per profile.",
    )
    async def affinity(body: requests.affinity, worker: Worker) -> Any:
        bundle = worker.current_bundle()

        def work() -> JSONResponse:
            from dmp_ml.models.affinity import profile_affinity

            frame, unknown = profile_affinity(bundle, body.profile_ids, top=body.top)
            columns = ["profile_id", "preferred_channel", "channels", "top_categories"]
            payload = {
                "model_version": str(bundle.version),
                "results": records(frame, columns),
                "unknown_ids": unknown,
            }
            return json_response(plain(payload))

        return await worker.run("affinity", work)

    @app.post(
        "/segments/affinity",
        responses=ERRORS,
        summary="A segment's channel mix, top categories (lift) and best display hours.",
    )
    async def segments_affinity(body: requests.segment_affinity, worker: Worker) -> Any:
        bundle = worker.current_bundle()

        def work() -> JSONResponse:
            from dmp_ml.activation import audience_from_spec
            from dmp_ml.models.affinity import segment_affinity

            audience = audience_from_spec(bundle, audience_spec(body))
            summary = segment_affinity(bundle, audience["profile_id"], top=body.top)
            return json_response(plain({"model_version": str(bundle.version), **summary}))

        return await worker.run("segments_affinity", work, heavy=body.seed_ids is not None)

    @app.post(
        "/retarget",
        responses=ERRORS,
        summary="A retargeting audience from a template (size and profile ids).",
    )
    async def retarget(body: RetargetRequest, worker: Worker) -> Any:
        bundle = worker.current_bundle()

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
                "results": records(frame.head(body.limit), columns),
            }
            return json_response(plain(payload))

        return await worker.run("retarget", work)

    @app.post(
        "/campaigns",
        responses={**ERRORS, 403: {"model": ErrorResponse, "description": "No API token set."}},
        summary="Store a campaign: its audience now and a reproducible holdout.",
    )
    async def create_campaign(body: requests.campaign, worker: Worker) -> Any:
        refused = worker.require_token("POST /campaigns")
        if refused is not None:
            return refused
        bundle = worker.current_bundle()

        def work() -> JSONResponse:
            from dmp_ml.activation import audience_from_spec
            from dmp_ml.campaigns import create_campaign

            spec = audience_spec(body.audience)
            source = {k: v for k, v in spec.items() if k not in ("profile_ids", "seed_ids")}
            for key in ("profile_ids", "seed_ids"):
                if key in spec:
                    source[key] = len(spec[key])  # counts only: ids stay in members.parquet
            campaign = create_campaign(
                bundle,
                body.name,
                audience_from_spec(bundle, spec),
                workdir=worker.workdir,
                settings=worker.settings,
                holdout=body.holdout,
                target_event=body.target_event,
                horizon_days=body.horizon_days,
                launch=body.launch,
                source=source,
            )
            return json_response(plain(campaign.to_dict()), status=201)

        return await worker.run("create_campaign", work)

    @app.get(
        "/campaigns/{name}",
        responses={**ERRORS, 404: {"model": ErrorResponse, "description": "No such campaign."}},
        summary="Readout: treated vs holdout conversion, lift with 95% intervals, MDE.",
    )
    async def campaign_report(name: str, worker: Worker) -> Any:
        bundle = worker.current_bundle()

        def work() -> JSONResponse:
            from dmp_ml.campaigns import campaign_report, check_name, list_campaigns

            if check_name(name) not in list_campaigns(worker.workdir):
                return error_response(404, f"unknown campaign {name!r}", "name")
            report = campaign_report(worker.workdir, name, bundle=bundle, settings=worker.settings)
            return json_response(plain(report))

        return await worker.run("campaign_report", work)
