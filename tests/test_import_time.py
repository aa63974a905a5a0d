"""No module reads the settings when it is imported: a broken configuration in the
environment must not break ``import``, only the code that loads settings when it runs."""

from __future__ import annotations

import os
import subprocess
import sys

CHECK = """
import importlib, pkgutil
import dmp_ml
walk = pkgutil.walk_packages(dmp_ml.__path__, "dmp_ml.")
names = [m.name for m in walk if not m.name.endswith("__main__")]  # __main__ runs the CLI
for name in names:
    importlib.import_module(name)
import dmp_ml.service as service
try:
    service.DmpMlService
except Exception as exc:
    print("lookup:", type(exc).__name__)
print("imported", len(names))
"""


def test_importing_every_module_reads_no_settings() -> None:
    env = {**os.environ, "DMP_ML_SERVICE__WORKERS": "not-a-number"}
    result = subprocess.run(
        [sys.executable, "-c", CHECK], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.split()
    assert int(lines[-1]) > 20  # every module of the package was imported
    # the service itself is built (and its settings loaded) only when it is looked up
    assert "lookup: ConfigError" in result.stdout, result.stdout
