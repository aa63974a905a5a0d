"""One real server for every test under tests/service: a small demo world, trained once.

The session fixture trains a ~1500-profile demo world with :func:`dmp_ml.pipeline.train`,
starts ``bentoml serve dmp_ml.service:DmpMlService`` in a subprocess (exactly what
``dmp-ml serve`` runs) on a free port (from ``DMP_ML_TEST_PORTS`` when set, see tests/ports.py),
waits for ``/readyz`` and stops the whole process group at the end. Caps are lowered so
oversize requests stay small.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from ports import free_port

TOKEN = "test-token-3f9a"
CAPS = {
    "max_score_ids": 50,
    "max_send_time_ids": 50,
    "max_seed_ids": 600,
    "max_request_bytes": 200_000,
}


@dataclass(frozen=True)
class Server:
    url: str
    token: str
    workdir: Path
    log: Path
    withdrawn: list[str]  # profiles whose latest marketing consent (at as_of) is a withdrawal
    consented: list[str]  # profiles with consent and events (some of them)
    as_of: pd.Timestamp

    def client(self, token: str | None = TOKEN) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)


def _withdrawn(consent: pd.DataFrame, as_of: pd.Timestamp) -> list[str]:
    rows = consent[(consent["purpose"] == "marketing") & (consent["updated_at"] <= as_of)]
    latest = rows.sort_values("updated_at").groupby("profile_id").tail(1)
    return sorted(latest.loc[~latest["granted"].astype(bool), "profile_id"].astype(str))


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, pd.Timestamp, dict]:
    """A workdir with a published bundle trained on a small demo world."""
    from dmp_ml.demo import generate_demo_world, write_demo_world
    from dmp_ml.pipeline import train

    root = tmp_path_factory.mktemp("service")
    world = generate_demo_world(n_profiles=1500, days=90, seed=11)
    paths = write_demo_world(world, root / "demo")
    workdir = root / "W"
    as_of = world.end
    train(
        events=paths["events"],
        profiles=paths["profiles"],
        consent=paths["consent"],
        as_of=as_of,
        workdir=workdir,
    )
    facts = {
        "withdrawn": _withdrawn(world.consent, as_of),
        "with_events": sorted(world.events["profile_id"].dropna().astype(str).unique()),
    }
    return workdir, root / "demo", as_of, facts


def start_server(workdir: Path, **env_extra: str) -> tuple[subprocess.Popen, str, Path]:
    """Start ``dmp-ml serve`` on ``workdir`` (caps lowered, token set); wait until ready.

    Returns the process (stop it with :func:`stop_server`), the base URL and the log file.
    """
    from dmp_ml.service import serve_command

    port = free_port()
    argv, env = serve_command(workdir, port=port, host="127.0.0.1", workers=1)
    env.update({f"DMP_ML_SERVICE__{k.upper()}": str(v) for k, v in CAPS.items()})
    env["DMP_ML_API_TOKEN"] = TOKEN
    env["DMP_ML_SERVICE__RELOAD_POLL_SECONDS"] = "0.5"
    env.update(env_extra)
    log = workdir.parent / f"server-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return proc, url, log
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            stop_server(proc)
            pytest.fail(f"server not ready after 90 s:\n{log.read_text()[-3000:]}")
        time.sleep(0.25)


@pytest.fixture(scope="session")
def server(trained: tuple[Path, Path, pd.Timestamp, dict]) -> Iterator[Server]:
    workdir, _, as_of, facts = trained
    proc, url, log = start_server(workdir)
    try:
        withdrawn = set(facts["withdrawn"])
        consented = [p for p in facts["with_events"] if p not in withdrawn]
        yield Server(url, TOKEN, workdir, log, sorted(withdrawn), consented, as_of)
    finally:
        stop_server(proc)


def stop_server(proc: subprocess.Popen) -> None:
    """Stop the server and its workers (its own process group) by the id we started."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


def copy_bundle(workdir: Path, name: str) -> Path:
    """A copy of the live bundle under ``bundles/<name>`` with its own version in the manifest."""
    import json

    from dmp_ml.bundle import live_bundle_path

    source = live_bundle_path(workdir)
    target = workdir / "bundles" / name
    shutil.copytree(source, target)
    manifest_path = target / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["bundle_version"] = name  # the manifest is not among its own checksums
    manifest_path.write_text(json.dumps(manifest))
    return target


def point_to(workdir: Path, target: Path) -> None:
    """Swap the ``bundle`` pointer atomically, as ``train`` does."""
    tmp = workdir / f".bundle-test-{os.getpid()}"
    if tmp.is_symlink():
        tmp.unlink()
    os.symlink(Path("bundles") / target.name, tmp)
    os.replace(tmp, workdir / "bundle")


def wait_applied(http: httpx.Client, status_url: str, timeout: float = 120) -> dict[str, Any]:
    """Poll an accepted batch until it is applied (visible to /score on this worker)."""
    deadline = time.monotonic() + timeout
    while True:
        response = http.get(status_url)
        assert response.status_code == 200, response.text
        status = response.json()
        if status["status"] == "applied":
            return status
        assert status["status"] == "queued", status
        assert time.monotonic() < deadline, f"batch not applied after {timeout} s: {status}"
        time.sleep(0.2)
