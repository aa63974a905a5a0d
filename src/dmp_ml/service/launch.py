"""Starting the service: the ``bentoml serve`` command line for a workdir (``dmp-ml serve``).

Kept free of numpy, LightGBM and FAISS: the OpenMP/BLAS thread counts must be in the
environment before those load (they read them once).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, Literal

from dmp_ml.errors import RequestError
from dmp_ml.settings import Settings, load_settings

logger = logging.getLogger(__name__)

SERVICE_IMPORT = "dmp_ml.service:DmpMlService"
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def thread_environment(settings: Settings) -> dict[str, str]:
    """The OpenMP/BLAS thread counts of one worker (``service.threads_per_worker``)."""
    threads = str(settings.service.threads_per_worker)
    return dict.fromkeys(THREAD_VARIABLES, threads)


def example_profile_ids(bundle_dir: Path, n: int = 2) -> list[str]:
    """A few profile ids of the bundle in ``bundle_dir`` for example requests: known profiles
    before anonymous devices (``anon:...``), without loading the bundle."""
    from dmp_ml.bundle import read_features_index

    index = read_features_index(bundle_dir)
    known = index[~index.str.startswith("anon:")]
    return [str(i) for i in (known if len(known) >= n else index)[:n]]


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
            **thread_environment(s),
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
    bento_model: str | None = None,
    settings: Settings | None = None,
    mode: Literal["exec", "wait"] = "exec",
    **listen: Any,
) -> int:
    """Serve the live bundle of ``workdir`` (or the promoted ``bento_model``) over HTTP;
    ``listen`` (``port``, ``host``, ``workers``) as in :func:`serve_command`.

    Checks first that the bundle is readable (BundleError otherwise), then runs
    ``bentoml serve``: ``mode="exec"`` replaces this process (signals reach the server
    directly; the right choice for a CLI), ``"wait"`` runs it as a child and returns its exit
    code.
    """
    from dmp_ml.bundle import read_manifest, served_bundle_path

    tag = bento_model or (settings or load_settings()).service.bento_model
    read_manifest(served_bundle_path(workdir, tag), verify=False)
    argv, env = serve_command(workdir, bento_model=tag, settings=settings, **listen)
    logger.info("starting %s on %s:%s", SERVICE_IMPORT, argv[-1], argv[-3])
    if mode == "exec":
        os.execve(argv[0], argv, env)
    import subprocess

    return subprocess.call(argv, env=env)
