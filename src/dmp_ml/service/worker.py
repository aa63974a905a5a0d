"""One service worker: the live bundle, its reloads, erasures, and the background threads.

Swapping bundles is one reference assignment: a request takes the live bundle once
(:meth:`ServiceWorker.current_bundle`) and finishes on that object even if a reload lands
meanwhile. Every worker also watches the pointer (at once on a local disk, and at least every
``service.reload_poll_seconds``), so all workers converge on a new bundle without a restart;
a second thread applies spooled event batches (``POST /events``).

Thread counts: the loaded models and this process's OpenMP/BLAS pools get
``service.threads_per_worker`` threads, so ``workers x threads_per_worker`` threads share the
cores instead of each worker taking all.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio
import bentoml
import pandas as pd
from fastapi.responses import JSONResponse

from dmp_ml.errors import BundleError, DataContractError, RequestError, StorageError
from dmp_ml.service.metrics import service_metrics
from dmp_ml.service.responses import error_response, iso, log_failure, storage_failure
from dmp_ml.settings import Settings

logger = logging.getLogger(__name__)

HEAVY_NICENESS = 10  # added to lookalike threads' nice value


def _lower_priority() -> None:
    """Thread initializer: raise this thread's niceness (Linux: threads are tasks)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), HEAVY_NICENESS)


def _erasure_stamp(workdir: Path) -> tuple[int, int, int] | None:
    """Changes whenever any worker forgets someone (see :func:`dmp_ml.erasure.erasure_stamp`)."""
    from dmp_ml.erasure import erasure_stamp

    return erasure_stamp(workdir)


class ServiceWorker:
    """One worker of the service, configured by ``settings`` (its ``workdir`` and ``service``).

    Parameters
    ----------
    settings : Settings
        The settings this worker serves with; nothing is read from module state.
    """

    def __init__(self, settings: Settings) -> None:
        logging.getLogger("dmp_ml.service").setLevel(logging.INFO)  # BentoML's root: WARNING
        self.settings = settings
        self.workdir = Path(settings.workdir)
        self.threads = settings.service.threads_per_worker
        self._limit_threads()
        self._reload_lock = threading.Lock()
        self._failed_path: Path | None = None
        self.last_error: str | None = None
        # Lookalike expansions (seconds of LightGBM) run in their own small pool of threads at
        # a lower OS priority, so /score and /send_time never queue behind them for a core.
        self._heavy = ThreadPoolExecutor(
            max_workers=settings.service.max_concurrent_lookalikes,
            thread_name_prefix="lookalike",
            initializer=_lower_priority,
        )
        self._bundle: Any = None
        self.loaded_at: str | None = None
        self._refresher: Any = None  # dmp_ml.refresh.Refresher, created on the first batch
        self._compaction: subprocess.Popen[bytes] | None = None  # folding deltas (a process)
        self._spooled = threading.Event()  # set when this worker spools a batch
        self._erasure_stamp: tuple[int, int, int] | None = None
        self._scrub_pending = False  # a forget could not rewrite the live bundle on disk
        self._load(self._pointer())
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        if settings.service.reload_poll_seconds > 0:
            self._watcher = threading.Thread(target=self._watch, name="bundle-watch", daemon=True)
            self._watcher.start()
        self._applier: threading.Thread | None = None
        if not settings.service.bento_model:
            self._applier = threading.Thread(
                target=self._apply_spool, name="events-apply", daemon=True
            )
            self._applier.start()

    # ------------------------------------------------------------------ lifecycle

    @property
    def live(self) -> Any:
        """The live bundle, as it is (see :meth:`current_bundle` for requests)."""
        return self._bundle

    def _limit_threads(self) -> None:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=self.threads)

    def _pointer(self) -> Path:
        """The bundle to serve: the promoted BentoML model's (re-resolved: ``:latest`` moves
        with each promote), else the workdir's ``bundle`` pointer."""
        from dmp_ml.bundle import served_bundle_path

        return served_bundle_path(self.workdir, self.settings.service.bento_model)

    def _load(self, path: Path) -> Any:
        """Load ``path`` and make it live; raise BundleError (old bundle stays) if it is bad."""
        from dmp_ml.bundle import DELTA_KEY, load_bundle, read_manifest
        from dmp_ml.erasure import erased_in, read_erasure_list

        started = time.perf_counter()
        try:
            # a refresh's delta over the live bundle: overlaid on copies of it, not reloaded
            live = self._bundle
            extended = None
            # only a delta version (small) is verified here; a full one is verified by loading
            if live is not None and read_manifest(path, verify=False).get(DELTA_KEY):
                extended = live.extended(path, read_manifest(path, verify=True))
            bundle = extended if extended is not None else load_bundle(path, n_threads=self.threads)
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
        if not first:
            # the old bundle maps its version's files until it is freed; parts of it in
            # reference cycles would keep a version deleted since (by forget or pruning) on disk
            gc.collect()
        service_metrics().bundle_loaded(
            str(bundle.version), dict(bundle.manifest).get("created_at"), first=first
        )
        if erased and not self.settings.service.bento_model and erased_in(bundle, erased):
            # its files still hold listed ids (e.g. a forget found it unreadable): scrub now
            self._scrub()
        self.loaded_at = iso(pd.Timestamp.now(tz="UTC"))
        self._failed_path = None
        logger.info(
            "worker %d: bundle %s live (%d profiles, %.1f s)",
            os.getpid(),
            bundle.version,
            len(bundle.features),
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
                self.last_error = str(exc)
                service_metrics().reload_failed()
                logger.warning("bundle refused, %s stays live: %s", previous.version, exc)
                raise
            self.last_error = None
            return True, previous, current

    def reload_quietly(self, *_: Any) -> None:
        """Reload if the pointer moved; a refused bundle is logged and the old one stays."""
        with contextlib.suppress(BundleError):
            self.reload_bundle()

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

    def _wakeups(self, interval: float) -> Iterator[bool]:
        """Yield True soon after an entry of the workdir changes (the ``bundle`` pointer swapped
        by ``train``, ``events`` or ``forget``), False after ``interval`` seconds without one.

        The timed wake-ups stay: a volume mounted from another host reports no changes, and a
        promoted model's tag moves in BentoML's store, not in the workdir. Without a workdir
        to watch (or if watching fails) it only waits.
        """
        if self.workdir.is_dir():
            import watchfiles

            try:
                for changes in watchfiles.watch(
                    self.workdir,
                    watch_filter=None,  # a filtered-out change would restart the timeout
                    recursive=False,
                    debounce=50,
                    step=50,
                    rust_timeout=max(1, int(interval * 1000)),
                    yield_on_timeout=True,
                    stop_event=self._stop,
                    raise_interrupt=False,
                ):
                    yield bool(changes)
            except Exception as exc:  # e.g. the workdir was removed: keep the timed checks
                logger.warning(
                    "watching %s failed (%s); checking every %g s",
                    self.workdir,
                    type(exc).__name__,
                    interval,
                )
        while not self._stop.wait(interval):
            yield False

    def _watch(self) -> None:
        """Check the pointer whenever the workdir changes and at least every
        ``reload_poll_seconds``; load a new target once (a refused one is retried only by
        /reload). While a forget could not scrub the live bundle, retry each period once it
        reads again."""
        from dmp_ml.bundle import read_manifest

        interval = self.settings.service.reload_poll_seconds
        next_period = time.monotonic() + interval
        for _ in self._wakeups(interval):
            if time.monotonic() >= next_period:
                next_period = time.monotonic() + interval
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
                if str(exc) != self.last_error:
                    logger.warning("bundle source unavailable, the live bundle stays: %s", exc)
                    self.last_error = str(exc)
                continue
            if target in (Path(self._bundle.path).resolve(), self._failed_path):
                continue
            try:
                self.reload_bundle()
            except BundleError:
                continue  # logged by reload_bundle; the old bundle keeps serving
            except Exception as exc:  # the watcher must never die
                log_failure("bundle watch", exc)

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
                        self.workdir,
                        n_threads=self.threads,
                        contract=self.settings.contract,
                        refresh=self.settings.refresh,
                    )
                # loaded here before any batch is reported applied; other workers: the poll
                drained = drain(self.workdir, self._refresher, on_applied=self.reload_quietly)
            except Exception as exc:  # kept spooled; retried after a pause
                logger.error("applying spooled events failed (retried): %s", exc)
                self._stop.wait(5.0)
                continue
            if drained is None:  # another worker applies: its refresher knows the chain
                continue
            try:
                self._compact_when_due()
            except OSError as exc:  # no process to be had: the deltas stay, tried again later
                logger.error("starting a compaction failed (tried after the next batch): %s", exc)

    def _compact_when_due(self) -> None:
        """Fold the deltas into a new base once they pass the refresh settings, in a process of
        its own (lower priority): batches keep being applied and answered meanwhile, and the
        population's copy it writes from never sits in a worker's memory. The new base is
        picked up by the pointer poll."""
        running = self._compaction is not None and self._compaction.poll() is None
        if running or self._stop.is_set() or not self._refresher.compaction_due():
            return
        command = [sys.executable, "-m", "dmp_ml.cli", "compact", "--workdir", str(self.workdir)]
        self._compaction = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        with contextlib.suppress(OSError):  # it may have finished already
            os.setpriority(os.PRIO_PROCESS, self._compaction.pid, HEAVY_NICENESS)
        threading.Thread(
            target=_report_compaction, args=(self._compaction,), name="compaction", daemon=True
        ).start()

    def events_spooled(self) -> None:
        """Wake this worker's applier: a batch was just spooled."""
        self._spooled.set()

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        """Stop the watcher, the applier and a compaction; drop queued lookalike work."""
        self._stop.set()
        self._spooled.set()
        if self._compaction is not None and self._compaction.poll() is None:
            self._compaction.terminate()  # its new base is not published: the deltas stay
        self._heavy.shutdown(wait=False, cancel_futures=True)

    def __is_ready__(self) -> bool:
        return self._bundle is not None

    # ------------------------------------------------------------------ requests

    def current_bundle(self) -> Any:
        """The live bundle, after applying erasures other workers made since (one stat call):
        a POST /forget on one worker empties every worker's answers at once, not at the next
        pointer poll. Every endpoint takes its bundle here."""
        from dmp_ml.erasure import read_erasure_list

        bundle = self._bundle
        stamp = _erasure_stamp(self.workdir)
        if stamp != self._erasure_stamp:
            bundle.forget(read_erasure_list(self.workdir))
            self._erasure_stamp = stamp
        return bundle

    def forgotten(self, *, complete: bool) -> None:
        """After ``forget`` on this worker: note the erasure, load the re-published bundle;
        when a store could not be scrubbed (``complete`` false), retry at each poll."""
        self._erasure_stamp = _erasure_stamp(self.workdir)
        self.reload_quietly()
        if not complete:
            self._scrub_pending = True

    def require_token(self, what: str) -> JSONResponse | None:
        """403 for a route that changes data when no API token is set; None otherwise."""
        if self.settings.api_token:
            return None  # BearerTokenMiddleware has checked it
        return error_response(
            403, f"{what} changes data: set DMP_ML_API_TOKEN on the server", "Authorization"
        )

    async def run(self, what: str, func: Callable[[], JSONResponse], heavy: bool = False) -> Any:
        """Run ``func`` off the event loop (heavy work in the low-priority pool); turn typed
        errors into their 4xx/5xx answer."""
        try:
            if heavy:
                return await asyncio.get_running_loop().run_in_executor(self._heavy, func)
            return await anyio.to_thread.run_sync(func)
        except RequestError as exc:
            logger.info("%s rejected: invalid %s", what, exc.field)
            return error_response(422, exc.message, exc.field)
        except DataContractError as exc:
            logger.info("%s rejected: %s", what, type(exc).__name__)
            return error_response(422, str(exc))
        except BundleError as exc:
            logger.error("%s: the live bundle cannot answer: %s", what, exc)
            return error_response(503, str(exc))
        except (StorageError, OSError) as exc:
            return storage_failure(what, exc)
        except Exception as exc:
            log_failure(what, exc)
            return error_response(500, "internal error; see the server log")


def _report_compaction(process: subprocess.Popen[bytes]) -> None:
    """Wait for a compaction process; log what it said last (its error if it failed: the
    deltas stay)."""
    _, err = process.communicate()
    lines = err.decode("utf-8", "replace").strip().splitlines()
    last = lines[-1] if lines else ""
    if process.returncode == 0:
        logger.info("compaction finished: %s", last)
    elif process.returncode != -15:  # -15: stopped with the worker
        logger.error("compaction failed (%s): %s", process.returncode, last)
