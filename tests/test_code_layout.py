"""The shape of the house: modules stay small, private names stay home, every model registered."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

from dmp_ml.models import REGISTRY, model_class, train_step

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "dmp_ml"
MAX_LINES = 900


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_no_module_is_over_the_size_limit() -> None:
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in _modules()
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not long, f"split these modules by concept: {long}"


def test_no_private_name_is_imported_or_reached_across_modules() -> None:
    crossings = []
    for path in _modules():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dmp_ml"):
                for alias in node.names:
                    name = alias.asname or alias.name
                    imported.add(name)
                    # a private module (``_readers``) is fine; a private name from one is not
                    if alias.name.startswith("_") and not (
                        alias.name.startswith("__") or (PACKAGE / f"{alias.name}.py").exists()
                    ):
                        crossings.append(f"{path.name}:{node.lineno} imports {alias.name}")
            elif isinstance(node, ast.Import):
                imported.update(
                    (a.asname or a.name).split(".")[0] for a in node.names if "dmp_ml" in a.name
                )
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and isinstance(node.value, ast.Name)
                and node.value.id in imported
            ):
                crossings.append(f"{path.name}:{node.lineno} reaches {node.value.id}.{node.attr}")
    assert not crossings, crossings


def test_every_registered_model_keeps_the_bundle_model_protocol() -> None:
    for name in REGISTRY:
        cls = model_class(name)
        assert cls.name == name
        for method in ("from_settings", "save", "load", "update", "forget", "fit"):
            assert callable(getattr(cls, method, None)), (name, method)


def test_every_registered_model_has_its_train_step_and_the_pipeline_names_none() -> None:
    from dmp_ml import pipeline

    steps = dict(pipeline.STEPS)
    assert list(steps) == ["features", *REGISTRY]  # features first, then the registry's order
    for name in REGISTRY:
        assert steps[name] is train_step(name)
        assert steps[name].__module__ == f"dmp_ml.models.{name}.step"
        assert list(inspect.signature(steps[name]).parameters) == ["ctx"]
    source = (PACKAGE / "pipeline.py").read_text(encoding="utf-8").lower()
    for name in REGISTRY:
        spellings = {name, name.replace("_", " "), name.replace("_", "-"), name.replace("_", "")}
        named = sorted(s for s in spellings if s in source)
        assert not named, f"pipeline.py names the model {name!r}: {named}"
