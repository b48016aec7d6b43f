"""Sweeps: one spec with `sweep: {dotted.path: [values]}` expands into the grid of ordinary job specs."""

import copy
import itertools
from typing import Any

from pydantic import ValidationError

from backend.spec import JobSpec, field_errors


class SweepError(ValueError):
    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors))
        self.errors = errors


def _set(tree: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    for key in parents:
        node = tree.get(key)
        if not isinstance(node, dict):
            node = tree[key] = {}
        tree = node
    tree[leaf] = value


def _label(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def expand(raw: dict[str, Any], max_jobs: int) -> list[tuple[dict[str, Any], JobSpec]]:
    """[(the values this child takes, its validated spec)] in grid order; SweepError names what is wrong."""
    grid = raw.get("sweep")
    if not isinstance(grid, dict) or not grid:
        raise SweepError([{"loc": ["sweep"], "msg": "give a mapping of dotted spec paths to lists of values", "type": "sweep"}])
    for path, values in grid.items():
        if not isinstance(values, list) or not values:
            raise SweepError([{"loc": ["sweep", path], "msg": "must be a non-empty list of values", "type": "sweep"}])
    size = 1
    for values in grid.values():
        size *= len(values)
    if size > max_jobs:
        raise SweepError([{"loc": ["sweep"], "msg": f"{size} jobs, over the limit of {max_jobs}", "type": "sweep"}])
    base = {k: v for k, v in raw.items() if k != "sweep"}
    name = str(base.get("name", "sweep"))
    children = []
    for combo in itertools.product(*grid.values()):
        params = dict(zip(grid, combo, strict=True))
        child = copy.deepcopy(base)
        for path, value in params.items():
            _set(child, path, value)
        label = ",".join(f"{path.rsplit('.', 1)[-1]}={_label(v)}" for path, v in params.items())
        child["name"] = f"{name}[{label}]"[:200]
        try:
            children.append((params, JobSpec.model_validate(child)))
        except ValidationError as exc:
            errors = []
            for err in field_errors(exc, child):
                dotted = ".".join(map(str, err["loc"]))
                if dotted in params:
                    errors.append({**err, "loc": ["sweep", dotted], "msg": f"{err['msg']} (value {params[dotted]!r})"})
                else:
                    errors.append(err)
            raise SweepError(errors) from None
    return children
