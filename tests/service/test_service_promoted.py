"""The service on a promoted model (``dmp-ml promote``) instead of the workdir's live bundle."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pandas as pd

from dmp_ml.bundle import BENTO_MODEL_NAME
from dmp_ml.promotion import promote
from dmp_ml.settings import load_settings

from .conftest import TOKEN, copy_bundle, point_to, start_server, stop_server


def test_a_promoted_model_is_served_and_forgetting_reaches_it(
    trained: tuple[Path, Path, pd.Timestamp, dict],
    tmp_path: Path,
    copy_workdir: Callable[[Path, Path], Path],
) -> None:
    workdir = copy_workdir(trained[0], tmp_path / "W")
    promotion = promote(workdir, settings=load_settings().model_copy(update={"workdir": workdir}))
    # the workdir moves on to another bundle: the service must keep serving the promoted one
    point_to(workdir, copy_bundle(workdir, "20990101T000000-newer"))
    withdrawn = set(trained[3]["withdrawn"])
    people = [p for p in trained[3]["with_events"] if p not in withdrawn][:5]

    latest = f"{BENTO_MODEL_NAME}:latest"
    proc, url, _ = start_server(workdir, DMP_ML_SERVICE__BENTO_MODEL=latest)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    try:
        with httpx.Client(base_url=url, headers=headers, timeout=60) as http:
            live = http.get("/info").json()["live"]
            assert live["source"] == f"bento model {promotion.tag} (configured {latest})"
            assert live["version"] == promotion.bundle_version

            scored = http.post("/score", json={"profile_ids": people}).json()
            assert {r["profile_id"] for r in scored["results"]} == set(people)

            refused = http.post("/events", json={"events": [{"profile_id": people[0]}]})
            assert refused.status_code == 409
            assert refused.json()["field"] == "events"

            forgotten = http.post("/forget", json={"profile_ids": [people[0]]})
            assert forgotten.status_code == 200, forgotten.text
            scrubbed = forgotten.json()["bento_models_replaced"][promotion.tag]
            again = http.post("/score", json={"profile_ids": people}).json()
            assert again["unknown_ids"] == [people[0]]
            source = http.get("/info").json()["live"]["source"]
            assert source == f"bento model {scrubbed} (configured {latest})"
    finally:
        stop_server(proc)


def test_a_bento_built_for_a_promoted_model_carries_it(
    trained: tuple[Path, Path, pd.Timestamp, dict],
    tmp_path: Path,
    copy_workdir: Callable[[Path, Path], Path],
) -> None:
    """The promoted bundle is a model reference of the service: `bentoml build` packs it."""
    import os
    import subprocess
    import sys

    import bentoml

    workdir = copy_workdir(trained[0], tmp_path / "W")
    promotion = promote(workdir, settings=load_settings().model_copy(update={"workdir": workdir}))
    context = tmp_path / "ctx"
    context.mkdir()
    # the repository's bentofile installs the dmp-ml wheel (`make bento`); this one needs none
    (context / "bentofile.yaml").write_text(
        'service: "dmp_ml.service:DmpMlService"\nname: dmp-ml-promoted-test\n'
        "python:\n  packages: []\n  lock_packages: false\n"
    )
    env = {
        **os.environ,
        "DMP_ML_WORKDIR": str(workdir),
        "DMP_ML_SERVICE__BENTO_MODEL": f"{BENTO_MODEL_NAME}:latest",
        "BENTOML_DO_NOT_TRACK": "True",
    }
    build = subprocess.run(
        [sys.executable, "-m", "bentoml", "build", ".", "--output", "tag"],
        cwd=context,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    bento = bentoml.bentos.get("dmp-ml-promoted-test:latest")
    (service,) = bento.info.services  # BentoML 1.4 records models per service
    assert [str(m.tag) for m in service.models] == [promotion.tag]  # `latest`, resolved
