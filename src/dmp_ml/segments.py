"""Segments: audiences defined by rules over features and scores, and named saved segments.

The rule language (JSON or YAML; the same structure either way)::

    {"all":  [{"feature": "purchase_count_30d", "op": ">=", "value": 1},
              {"score": "propensity", "op": ">", "value": 0.7}],
     "none": [{"segment": "recent_buyers"}]}

* A **group** has any of ``all`` (every rule holds), ``any`` (at least one holds) and ``none``
  (no rule holds), each a non-empty list of rules; the group holds when all of its parts
  hold. Groups nest.
* A **clause** tests one of

  - ``feature``: a column of the bundle's feature table (``purchase_count_30d``,
    ``days_since_last_event``, ``loyalty_tier``, ...);
  - ``score``: ``propensity`` (the calibrated probability, 0..1) or ``propensity_percentile``
    (0..100, 100 = most likely);
  - ``segment``: membership of a saved segment (``{"segment": "recent_buyers"}``, no ``op``);
  - ``retarget``: a retargeting template over the event history, with ``params`` and no
    ``op`` (``{"retarget": "cart_abandoners", "params": {"days": 7}}``; see
    :mod:`dmp_ml.retargeting`).

  with ``op`` one of ``== != < <= > >=`` (a number, or text for ``==``/``!=`` on a text
  feature), ``in`` / ``not_in`` (a non-empty list), ``between`` (``[low, high]``, both
  inclusive) or ``exists`` (``value`` true, the default, or false).
* **Missing values** (``days_since_purchase`` of someone who never bought, an unknown
  attribute) satisfy no comparison, ``not_in`` included; test them with ``exists``.

A rule that cannot be used raises :class:`SegmentError`, whose ``field`` is the path of the
offending part (``all[1].feature``) and whose message names the unknown feature, operator or
segment with the closest valid name.

Saved segments live in ``<workdir>/segments/<name>.json``; they may reference each other but
never in a cycle. Evaluation only ever returns profiles of the bundle (eligible: consented, not
erased, not expired) minus any forgotten since it was loaded.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import os
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import yaml

from dmp_ml import layout
from dmp_ml.errors import RequestError, storage_errors_in

if TYPE_CHECKING:
    from dmp_ml.bundle import ModelBundle

logger = logging.getLogger(__name__)

OPERATORS = ("==", "!=", "<", "<=", ">", ">=", "in", "not_in", "between", "exists")
ORDER_OPS = ("<", "<=", ">", ">=")
TEXT_OPS = ("==", "!=", "in", "not_in", "exists")
SCORES = {"propensity": "score", "propensity_percentile": "percentile"}
SCORE_RANGE = {"propensity": (0.0, 1.0), "propensity_percentile": (0.0, 100.0)}
HEADLINE_FEATURES = (
    "purchase_count_30d",
    "event_count_30d",
    "days_since_last_event",
    "value_sum_90d",
)
MAX_DEPTH = 12
MAX_CLAUSES = 500
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_GROUP_KEYS = ("all", "any", "none")
_CLAUSE_KINDS = ("feature", "score", "segment", "retarget")
_CLAUSE_KEYS = (*_CLAUSE_KINDS, "op", "value", "params")


class SegmentError(RequestError):
    """A rule or segment that cannot be used; ``field`` is the path of the offending part."""


def _closest(word: str, options: Iterable[str]) -> str:
    match = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.6)
    return f"; did you mean {match[0]!r}?" if match else ""


def _at(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# --------------------------------------------------------------------------- the rule tree


@dataclass(frozen=True)
class Clause:
    """One test: ``kind`` is feature / score / segment, ``name`` what it tests."""

    path: str
    kind: Literal["feature", "score", "segment", "retarget"]
    name: str
    op: str | None = None
    value: Any = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {self.kind: self.name}
        if self.kind == "retarget":
            return {**out, "params": dict(self.value)}
        if self.op is not None:
            out["op"] = self.op
            if self.op != "exists" or self.value is not True:
                out["value"] = list(self.value) if isinstance(self.value, tuple) else self.value
        return out


@dataclass(frozen=True)
class Group:
    """``all`` / ``any`` / ``none`` of sub-rules."""

    path: str
    all: tuple[Rule, ...] = ()
    any: tuple[Rule, ...] = ()
    none: tuple[Rule, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            key: [r.to_dict() for r in getattr(self, key)]
            for key in _GROUP_KEYS
            if getattr(self, key)
        }


Rule = Clause | Group


def clauses(rule: Rule) -> list[Clause]:
    """Every clause of ``rule``, in reading order."""
    if isinstance(rule, Clause):
        return [rule]
    return [c for key in _GROUP_KEYS for sub in getattr(rule, key) for c in clauses(sub)]


def referenced_segments(rule: Rule) -> list[str]:
    """Names of the saved segments ``rule`` uses directly."""
    return list(dict.fromkeys(c.name for c in clauses(rule) if c.kind == "segment"))


# --------------------------------------------------------------------------- parsing


def _decode(data: Any) -> Any:
    if isinstance(data, bytes):
        data = data.decode("utf-8")
    if not isinstance(data, str):
        return data
    try:
        return json.loads(data)
    except json.JSONDecodeError:
        pass
    try:
        return yaml.safe_load(data)
    except yaml.YAMLError as exc:
        raise SegmentError("rule", f"not valid JSON or YAML: {exc}") from exc


def parse_rule(data: Any, bundle: ModelBundle | None = None) -> Rule:
    """Parse a rule from a dict, or JSON / YAML text; with ``bundle``, also check it against it.

    Structure, operators and value types are always checked; with a ``bundle``, feature names
    and types, score availability and the saved segments referenced (in the bundle's workdir,
    no cycles) are checked too.

    Raises
    ------
    SegmentError
        ``field`` is the path of the offending part, e.g. ``all[1].feature``.
    """
    data = _decode(data)
    if (
        isinstance(data, Mapping)
        and "rule" in data
        and set(data) <= {"rule", "name", "description"}
    ):
        data = data["rule"]  # a saved segment file
    counter = [0]
    rule = _parse(data, "", 0, counter)
    if bundle is not None:
        check_rule(rule, bundle)
    return rule


def load_rule_file(path: str | Path, bundle: ModelBundle | None = None) -> Rule:
    """Parse the rule in a JSON or YAML file (see :func:`parse_rule`)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SegmentError("rule", f"cannot read {path}: {exc.strerror or exc}") from exc
    return parse_rule(text, bundle)


def _parse(data: Any, path: str, depth: int, counter: list[int]) -> Rule:
    where = path or "rule"
    if depth > MAX_DEPTH:
        raise SegmentError(where, f"rules nest deeper than {MAX_DEPTH} levels")
    if not isinstance(data, Mapping):
        raise SegmentError(
            where, f"expected an object (a group or a clause), got {type(data).__name__}"
        )
    keys = [str(k) for k in data]
    if not keys:
        raise SegmentError(
            where, "empty rule: give all/any/none or a feature/score/segment/retarget"
        )
    group_keys = [k for k in keys if k in _GROUP_KEYS]
    kinds = [k for k in keys if k in _CLAUSE_KINDS]
    if group_keys and (kinds or set(keys) - set(_GROUP_KEYS)):
        other = [k for k in keys if k not in _GROUP_KEYS]
        raise SegmentError(
            _at(path, other[0]),
            f"a group holds only all/any/none; put {other[0]!r} in a clause inside it",
        )
    if group_keys:
        parts: dict[str, tuple[Rule, ...]] = {}
        for key in group_keys:
            items = data[key]
            if not isinstance(items, list) or not items:
                raise SegmentError(_at(path, key), "must be a non-empty list of rules")
            parts[key] = tuple(
                _parse(item, f"{_at(path, key)}[{i}]", depth + 1, counter)
                for i, item in enumerate(items)
            )
        return Group(path=path, **parts)
    unknown = [k for k in keys if k not in _CLAUSE_KEYS]
    if unknown:
        raise SegmentError(
            _at(path, unknown[0]),
            f"unknown key {unknown[0]!r}{_closest(unknown[0], (*_CLAUSE_KEYS, *_GROUP_KEYS))} "
            "(a clause has feature, score or segment, then op and value; a group has "
            "all, any, none)",
        )
    if len(kinds) != 1:
        raise SegmentError(
            where,
            "a clause tests exactly one of feature, score, segment, retarget"
            + (f"; got {kinds}" if kinds else ""),
        )
    counter[0] += 1
    if counter[0] > MAX_CLAUSES:
        raise SegmentError(where, f"more than {MAX_CLAUSES} clauses")
    kind = kinds[0]
    name = data[kind]
    if not isinstance(name, str) or not name.strip():
        raise SegmentError(_at(path, kind), f"must be a non-empty name, got {name!r}")
    name = name.strip()
    if kind == "retarget":  # a retargeting template (dmp_ml.retargeting)
        from dmp_ml.retargeting import check_template, parse_params

        if "op" in data or "value" in data:
            raise SegmentError(
                _at(path, "op" if "op" in data else "value"),
                "a retarget clause takes params, no op or value",
            )
        try:  # checked here, kept as given
            check_template(name, _at(path, "retarget"))
            parse_params(name, data.get("params"), _at(path, "params"))
        except RequestError as exc:
            raise SegmentError(exc.field, exc.message) from None
        return Clause(path=path, kind="retarget", name=name, value=dict(data.get("params") or {}))
    if "params" in data:
        raise SegmentError(_at(path, "params"), "only a retarget clause takes params")
    if kind == "segment":
        if "op" in data or "value" in data:
            raise SegmentError(
                _at(path, "op" if "op" in data else "value"),
                "a segment clause takes no op or value; use none: [...] to exclude a segment",
            )
        _check_name(name, _at(path, "segment"))
        return Clause(path=path, kind="segment", name=name)
    if kind == "score" and name not in SCORES:
        raise SegmentError(
            _at(path, "score"),
            f"unknown score {name!r}{_closest(name, SCORES)} (known: {', '.join(SCORES)})",
        )
    if "op" not in data:
        raise SegmentError(_at(path, "op"), f"missing; one of {', '.join(OPERATORS)}")
    op = data["op"]
    if not isinstance(op, str) or op not in OPERATORS:
        hint = _closest(str(op), OPERATORS) if isinstance(op, str) else ""
        raise SegmentError(
            _at(path, "op"), f"unknown operator {op!r}{hint} (known: {', '.join(OPERATORS)})"
        )
    value = _parse_value(op, data, _at(path, "value"))
    if kind == "score":
        _check_score_value(name, op, value, _at(path, "value"))
    return Clause(path=path, kind=kind, name=name, op=op, value=value)


def _finite(value: int | float) -> bool:
    """True for a number a float holds: not inf/NaN, and no integer beyond float range."""
    try:
        return math.isfinite(float(value))
    except OverflowError:  # e.g. 10**400
        return False


def _scalar(value: Any) -> bool:
    return isinstance(value, str | bool) or (isinstance(value, int | float) and _finite(value))


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and _finite(value)


def _show(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters (a 400-digit number stays readable)."""
    try:
        text = repr(value)
    except ValueError:  # an integer too long to print
        return "a number too large to print"
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _parse_value(op: str, data: Mapping[str, Any], where: str) -> Any:
    if op == "exists":
        value = data.get("value", True)
        if not isinstance(value, bool):
            raise SegmentError(where, f"exists takes true or false, got {_show(value)}")
        return value
    if "value" not in data:
        raise SegmentError(where, f"missing: {op} needs a value")
    value = data["value"]
    if op in ("in", "not_in"):
        if not isinstance(value, list) or not value:
            raise SegmentError(where, f"{op} needs a non-empty list, got {_show(value)}")
        bad = [v for v in value if not _scalar(v)]
        if bad:
            raise SegmentError(
                where, f"{op} list items must be numbers or text, got {_show(bad[0])}"
            )
        return tuple(value)
    if op == "between":
        if not isinstance(value, list) or len(value) != 2 or not all(map(_number, value)):
            raise SegmentError(
                where, f"between needs [low, high] (two numbers), got {_show(value)}"
            )
        if value[0] > value[1]:
            raise SegmentError(where, f"between: low {value[0]} is above high {value[1]}")
        return (float(value[0]), float(value[1]))
    if op in ORDER_OPS:
        if not _number(value):
            raise SegmentError(
                where, f"{op} needs a finite number within float range, got {_show(value)}"
            )
        return float(value)
    if not _scalar(value):
        raise SegmentError(where, f"{op} needs a number or text, got {_show(value)}")
    return value


def _check_score_value(name: str, op: str, value: Any, where: str) -> None:
    low, high = SCORE_RANGE[name]
    numbers: Sequence[Any]
    if op == "exists":
        return
    numbers = value if isinstance(value, tuple) else (value,)
    for v in numbers:
        if not _number(v):
            raise SegmentError(where, f"score {name} compares with numbers, got {v!r}")
        if not low <= float(v) <= high:
            hint = (
                "; for percentiles use score 'propensity_percentile'"
                if name == "propensity" and 1.0 < float(v) <= 100.0
                else ""
            )
            raise SegmentError(where, f"{name} is within [{low:g}, {high:g}], got {v}{hint}")


def _check_name(name: str, where: str) -> None:
    if not _NAME.match(name):
        raise SegmentError(
            where,
            f"invalid segment name {name!r}: letters, digits, '_', '-', '.', at most 64, "
            "starting with a letter or digit",
        )


# --------------------------------------------------------------------------- checking


def check_rule(
    rule: Rule,
    bundle: ModelBundle,
    workdir: str | Path | None = None,
    _stack: tuple[str, ...] = (),
) -> None:
    """Check ``rule`` against the bundle's features and scores and the saved segments.

    Raises SegmentError naming the clause, with the closest valid name.
    """
    frame = bundle.features.frame
    workdir = workdir_of(bundle) if workdir is None else Path(workdir)
    for clause in clauses(rule):
        where = _at(clause.path, clause.kind)
        if clause.kind == "feature":
            if clause.name not in frame.columns:
                raise SegmentError(
                    where,
                    f"unknown feature {clause.name!r}"
                    f"{_closest(clause.name, map(str, frame.columns))}",
                )
            _check_feature_value(clause, frame[clause.name])
        elif clause.kind == "score":
            if bundle.scores is None:
                raise SegmentError(
                    where, f"bundle {bundle.version} has no propensity scores to test"
                )
        elif clause.kind == "segment":
            _check_segment_ref(clause, workdir, bundle, _stack)


def _check_feature_value(clause: Clause, column: pd.Series) -> None:
    where = _at(clause.path, "value")
    if clause.op == "exists":
        return
    values = clause.value if isinstance(clause.value, tuple) else (clause.value,)
    if isinstance(column.dtype, pd.CategoricalDtype) or pd.api.types.is_string_dtype(column.dtype):
        if clause.op not in TEXT_OPS:
            raise SegmentError(
                _at(clause.path, "op"),
                f"{clause.name} is text: use one of {', '.join(TEXT_OPS)}, not {clause.op}",
            )
        levels = (
            [str(c) for c in column.cat.categories]
            if isinstance(column.dtype, pd.CategoricalDtype)
            else [str(v) for v in column.dropna().unique()[:10_000]]
        )
        for v in values:
            if not isinstance(v, str):
                raise SegmentError(where, f"{clause.name} is text, got {v!r}")
            if levels and v not in levels:
                raise SegmentError(
                    where,
                    f"{clause.name} has no value {v!r}{_closest(v, levels)} "
                    f"(values: {', '.join(levels[:20])})",
                )
        return
    for v in values:
        if not _number(v):
            raise SegmentError(where, f"{clause.name} is numeric, got {v!r}")


def _check_segment_ref(
    clause: Clause, workdir: Path, bundle: ModelBundle, stack: tuple[str, ...]
) -> None:
    where = _at(clause.path, "segment")
    if clause.name in stack:
        cycle = " -> ".join([*stack[stack.index(clause.name) :], clause.name])
        raise SegmentError(where, f"segments reference each other in a cycle: {cycle}")
    saved = saved_names(workdir)
    if clause.name not in saved:
        raise SegmentError(where, f"unknown segment {clause.name!r}{_closest(clause.name, saved)}")
    inner = load_segment(workdir, clause.name)
    try:
        check_rule(inner, bundle, workdir, (*stack, clause.name))
    except SegmentError as exc:
        if "cycle" in exc.message:
            raise SegmentError(where, exc.message) from None
        raise SegmentError(
            where, f"saved segment {clause.name!r} no longer fits this bundle: {exc}"
        ) from None


# --------------------------------------------------------------------------- evaluating


def workdir_of(bundle: ModelBundle) -> Path:
    """The workdir whose segments and erasure list apply to ``bundle`` (for a bundle outside
    a workdir's versions, the directory it is in)."""
    from dmp_ml.store import bundle_workdir

    try:
        return bundle_workdir(bundle)
    except Exception:
        return Path(bundle.path).parent


def excluded_ids(bundle: ModelBundle) -> set[str]:
    """Profiles no output may contain: forgotten in memory or on the workdir's erasure list."""
    from dmp_ml.erasure import read_erasure_list

    gone = set(getattr(bundle, "_forgotten", set()))
    try:
        gone |= set(read_erasure_list(workdir_of(bundle)))
    except OSError:  # pragma: no cover - unreadable list: the in-memory one still applies
        logger.warning("erasure list of %s is unreadable", bundle.path)
    return gone


def evaluate(rule: Rule | Mapping[str, Any] | str, bundle: ModelBundle) -> pd.Index:
    """Profile ids matching ``rule`` (sorted as in the feature table), never a forgotten one."""
    rule = rule if isinstance(rule, Clause | Group) else parse_rule(rule)
    workdir = workdir_of(bundle)
    check_rule(rule, bundle, workdir)
    mask = _mask(rule, bundle, workdir, {})
    index = bundle.features.profile_ids
    gone = excluded_ids(bundle)
    if gone:
        mask &= ~index.isin(list(gone))
    return pd.Index(index[mask], name="profile_id")


def _mask(
    rule: Rule, bundle: ModelBundle, workdir: Path, memo: dict[str, np.ndarray]
) -> np.ndarray:
    n = len(bundle.features)
    if isinstance(rule, Group):
        out = np.ones(n, dtype=bool)
        for sub in rule.all:
            out &= _mask(sub, bundle, workdir, memo)
        if rule.any:
            either = np.zeros(n, dtype=bool)
            for sub in rule.any:
                either |= _mask(sub, bundle, workdir, memo)
            out &= either
        for sub in rule.none:
            out &= ~_mask(sub, bundle, workdir, memo)
        return out
    if rule.kind == "segment":
        if rule.name not in memo:
            memo[rule.name] = _mask(load_segment(workdir, rule.name), bundle, workdir, memo)
        return memo[rule.name]
    if rule.kind == "retarget":
        from dmp_ml.retargeting import ids_for_rule

        return bundle.features.profile_ids.isin(ids_for_rule(bundle, rule.name, rule.value))
    if rule.kind == "score":
        assert bundle.scores is not None
        column = bundle.scores[SCORES[rule.name]].reindex(bundle.features.profile_ids)
    else:
        column = bundle.features.frame[rule.name]
    return _compare(column, rule.op or "exists", rule.value)


def _compare(column: pd.Series, op: str, value: Any) -> np.ndarray:
    present = column.notna().to_numpy(dtype=bool)
    if op == "exists":
        return present if value else ~present
    if isinstance(column.dtype, pd.CategoricalDtype) or pd.api.types.is_string_dtype(column.dtype):
        text = column.astype("string")
        if op in ("in", "not_in"):
            hit = text.isin([str(v) for v in value]).fillna(False).to_numpy(dtype=bool)
        else:
            hit = (text == str(value)).fillna(False).to_numpy(dtype=bool)
        negate = op in ("!=", "not_in")
        return present & (~hit if negate else hit)
    x = column.to_numpy(dtype=np.float64, na_value=np.nan)
    with np.errstate(invalid="ignore"):
        if op == "==":
            out = x == float(value)
        elif op == "!=":
            out = x != float(value)
        elif op == "<":
            out = x < value
        elif op == "<=":
            out = x <= value
        elif op == ">":
            out = x > value
        elif op == ">=":
            out = x >= value
        elif op == "between":
            out = (x >= value[0]) & (x <= value[1])
        elif op in ("in", "not_in"):
            hit = np.isin(x, np.asarray([float(v) for v in value]))
            out = ~hit if op == "not_in" else hit
        else:  # pragma: no cover - parse_rule refuses it
            raise SegmentError("op", f"unknown operator {op!r}")
    return present & out


# --------------------------------------------------------------------------- preview


def _numeric_summary(values: pd.Series, population: pd.Series) -> dict[str, Any]:
    x = values.to_numpy(dtype=np.float64, na_value=np.nan)
    ok = x[~np.isnan(x)]
    pop = population.to_numpy(dtype=np.float64, na_value=np.nan)
    pop = pop[~np.isnan(pop)]

    def num(v: float) -> float | None:
        return round(float(v), 6) if np.isfinite(v) else None

    out: dict[str, Any] = {
        "kind": "numeric",
        "count": int(len(ok)),
        "missing": int(len(x) - len(ok)),
    }
    if len(ok):
        q = np.quantile(ok, [0.1, 0.25, 0.5, 0.75, 0.9])
        out.update(
            mean=num(ok.mean()),
            median=num(q[2]),
            p10=num(q[0]),
            p25=num(q[1]),
            p75=num(q[3]),
            p90=num(q[4]),
            min=num(ok.min()),
            max=num(ok.max()),
        )
    else:
        out.update(mean=None, median=None, p10=None, p25=None, p75=None, p90=None)
        out.update(min=None, max=None)
    out["population_mean"] = num(pop.mean()) if len(pop) else None
    out["population_median"] = num(np.median(pop)) if len(pop) else None
    return out


def _text_summary(values: pd.Series, population: pd.Series, top: int = 5) -> dict[str, Any]:
    counts = values.astype("string").value_counts(dropna=True)
    pop = population.astype("string").value_counts(dropna=True, normalize=True)
    total = max(1, int(counts.sum()))
    return {
        "kind": "categorical",
        "count": int(counts.sum()),
        "missing": int(values.isna().sum()),
        "top": [
            {
                "value": str(level),
                "share": round(int(n) / total, 6),
                "population_share": round(float(pop.get(level, 0.0)), 6),
            }
            for level, n in counts.head(top).items()
        ],
    }


def preview(
    rule: Rule | Mapping[str, Any] | str,
    bundle: ModelBundle,
    sample: int = 20,
    seed: int = 0,
    features: Sequence[str] | None = None,
) -> dict[str, Any]:
    """What a campaign manager sees before using a segment: size, share, sample, distributions.

    Returns a JSON-ready dict: ``bundle_version``, ``as_of``, ``rule`` (normalised), ``size``,
    ``population`` (eligible profiles), ``share``, ``sample_ids`` (up to ``sample``, a seeded
    random draw), ``distribution``: per key feature (the rule's features, ``features`` and the
    headline ones present, plus ``propensity_score``) the segment's count, missing, mean,
    median, quantiles (p10..p90), min, max and the population's mean and median (text features:
    top values with their share in the segment and in the population).
    """
    if isinstance(sample, bool) or not isinstance(sample, int) or not 0 <= sample <= 10_000:
        raise RequestError("sample", f"must be a whole number in [0, 10000], got {sample!r}")
    rule = rule if isinstance(rule, Clause | Group) else parse_rule(rule)
    ids = evaluate(rule, bundle)
    frame = bundle.features.frame
    gone = excluded_ids(bundle)
    population_index = frame.index[~frame.index.isin(list(gone))] if gone else frame.index
    rng = np.random.default_rng(seed)
    picked = (
        np.sort(rng.choice(len(ids), size=min(sample, len(ids)), replace=False))
        if len(ids)
        else np.zeros(0, dtype=np.int64)
    )
    wanted = [c.name for c in clauses(rule) if c.kind == "feature"]
    wanted += [f for f in (features or ()) if f in frame.columns]
    wanted += [f for f in HEADLINE_FEATURES if f in frame.columns]
    distribution: dict[str, Any] = {}
    in_segment = frame.loc[ids]
    population = frame.loc[population_index]
    for name in dict.fromkeys(wanted):
        column = frame[name]
        if isinstance(column.dtype, pd.CategoricalDtype) or pd.api.types.is_string_dtype(
            column.dtype
        ):
            distribution[name] = _text_summary(in_segment[name], population[name])
        else:
            distribution[name] = _numeric_summary(in_segment[name], population[name])
    if bundle.scores is not None:
        scores = bundle.scores["score"]
        distribution["propensity_score"] = _numeric_summary(
            scores.reindex(ids), scores.reindex(population_index)
        )
    return {
        "bundle_version": str(bundle.version),
        "as_of": pd.Timestamp(bundle.as_of).isoformat(),
        "rule": rule.to_dict(),
        "size": int(len(ids)),
        "population": int(len(population_index)),
        "share": round(len(ids) / len(population_index), 6) if len(population_index) else 0.0,
        "sample_ids": [str(ids[i]) for i in picked],
        "distribution": distribution,
    }


# --------------------------------------------------------------------------- saved segments


@dataclass(frozen=True)
class SavedSegment:
    """A named rule in ``<workdir>/segments/<name>.json``."""

    name: str
    rule: Rule
    description: str = ""
    references: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "rule": self.rule.to_dict(),
            "references": list(self.references),
        }


def saved_names(workdir: str | Path) -> list[str]:
    """The names of the segments saved in ``workdir``, sorted."""
    folder = layout.segments_dir(workdir)
    if not folder.exists():
        return []
    return sorted(p.stem for p in folder.glob("*.json") if _NAME.match(p.stem))


def _read_segment_file(workdir: str | Path, name: str) -> dict[str, Any]:
    path = layout.segments_dir(workdir) / f"{name}.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SegmentError(
            "segment", f"unknown segment {name!r}{_closest(name, saved_names(workdir))}"
        ) from None
    except (OSError, json.JSONDecodeError) as exc:
        raise SegmentError("segment", f"saved segment {name!r} is unreadable: {exc}") from exc


def load_segment(workdir: str | Path, name: str) -> Rule:
    """The rule of a saved segment (SegmentError when there is none by that name)."""
    _check_name(name, "segment")
    data = _read_segment_file(workdir, name)
    try:
        return parse_rule(data.get("rule"))
    except SegmentError as exc:
        raise SegmentError(exc.field, f"saved segment {name!r}: {exc.message}") from None


def list_segments(workdir: str | Path) -> list[SavedSegment]:
    """Every saved segment of the workdir, by name."""
    out = []
    for name in saved_names(workdir):
        data = _read_segment_file(workdir, name)
        rule = parse_rule(data.get("rule"))
        out.append(
            SavedSegment(
                name=name,
                rule=rule,
                description=str(data.get("description", "")),
                references=referenced_segments(rule),
            )
        )
    return out


def _cycle(workdir: str | Path, name: str, rule: Rule) -> list[str] | None:
    """A reference path from ``name`` back to itself if saving ``rule`` under it closes one."""

    def refs(seg: str) -> list[str]:
        if seg == name:
            return referenced_segments(rule)
        if seg not in saved_names(workdir):
            return []
        return referenced_segments(load_segment(workdir, seg))

    stack: list[tuple[str, list[str]]] = [(name, [name])]
    seen: set[str] = set()
    while stack:
        seg, trail = stack.pop()
        for ref in refs(seg):
            if ref == name:
                return [*trail, ref]
            if ref not in seen:
                seen.add(ref)
                stack.append((ref, [*trail, ref]))
    return None


@storage_errors_in(lambda workdir, *_, **__: workdir)
def save_segment(
    workdir: str | Path,
    name: str,
    rule: Rule | Mapping[str, Any] | str,
    description: str = "",
    bundle: ModelBundle | None = None,
) -> Path:
    """Save (or replace) a named segment; references must exist and form no cycle.

    With ``bundle``, the rule is also checked against its features and scores.
    """
    _check_name(name, "name")
    rule = rule if isinstance(rule, Clause | Group) else parse_rule(rule)
    saved = saved_names(workdir)
    for clause in clauses(rule):
        if clause.kind == "segment" and clause.name not in saved and clause.name != name:
            raise SegmentError(
                _at(clause.path, "segment"),
                f"unknown segment {clause.name!r}{_closest(clause.name, saved)}",
            )
    cycle = _cycle(workdir, name, rule)
    if cycle:
        where = next(
            _at(c.path, "segment")
            for c in clauses(rule)
            if c.kind == "segment" and c.name == cycle[1]
        )
        raise SegmentError(
            where, f"segments would reference each other in a cycle: {' -> '.join(cycle)}"
        )
    if bundle is not None:
        for clause in clauses(rule):
            if clause.kind != "segment":
                check_rule(clause, bundle, workdir)
    folder = layout.segments_dir(workdir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    tmp = folder / f".{name}.{uuid.uuid4().hex[:8]}.tmp"
    payload = {"name": name, "description": str(description), "rule": rule.to_dict()}
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)
    logger.info("saved segment %s", name)
    return path


def delete_segment(workdir: str | Path, name: str) -> None:
    """Delete a saved segment; refused while another saved segment references it."""
    _check_name(name, "name")
    users = [s.name for s in list_segments(workdir) if name in s.references and s.name != name]
    if users:
        raise SegmentError("name", f"segment {name!r} is used by {', '.join(users)}")
    path = layout.segments_dir(workdir) / f"{name}.json"
    if not path.exists():
        raise SegmentError(
            "name", f"unknown segment {name!r}{_closest(name, saved_names(workdir))}"
        )
    path.unlink()
