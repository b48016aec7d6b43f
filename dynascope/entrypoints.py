"""A team's own code in server jobs: functions in installed packages, named `module:function` and allowed by the
operator's list of module prefixes (DYNASCOPE_ENTRYPOINTS). Code never comes over HTTP: a spec only names it.

Checking a name against the list imports nothing (the API calls it); `resolve` imports the module (the worker
calls it), and `call` runs the function so that whatever it raises becomes an EntryPointError that says which
entry point, what it raised and where."""

import importlib
import re
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"


class EntryPointError(Exception):
    """An entry point that is not allowed, cannot be imported, raised, or returned the wrong thing."""


@dataclass(frozen=True)
class DataDescription:
    """What a model entry point is told of the data it will train on."""

    input_shape: tuple[int, ...]  # one example's (a sequence's: its length)
    outputs: int  # scores per example (per position for text): the classes, or the regression's targets
    classes: int | None  # None: a regression
    modality: str  # "tabular", "image" (C, H, W) or "text" (token ids)
    vocab: str | None = None  # text: token id → character, when the data has one


@dataclass
class Arrays:
    """What a data entry point may return (besides a 4-tuple or a pair of Datasets): the sets as tensors or arrays,
    with what cannot be inferred from them."""

    x_train: Any
    y_train: Any
    x_val: Any
    y_val: Any
    classes: int | None = None  # (default: 1 + the largest integer target; None for float targets)
    modality: str | None = None  # (default: "image" for (C, H, W) examples, "text" for sequences of classes)
    vocab: str | None = None


def prefixes(setting: str) -> list[str]:
    """The operator's comma-separated module prefixes (empty: no entry point is allowed)."""
    return [p.strip() for p in setting.split(",") if p.strip()]


def allowed(reference: str, allow: list[str]) -> bool:
    """Whether `module:function`'s module is under one of the prefixes: `mylab.` admits mylab.models; `lab_models`
    admits lab_models and its submodules, not lab_models_x."""
    if not re.fullmatch(PATTERN, reference):
        return False
    module = reference.split(":")[0]
    return any(module == p.rstrip(".") or module.startswith(p if p.endswith(".") else f"{p}.") for p in allow)


def refusal(reference: str, allow: list[str]) -> str | None:
    """Why the reference may not run here, or None."""
    if allowed(reference, allow):
        return None
    listed = ", ".join(allow) if allow else "nothing (it is empty)"
    return f"{reference.split(':')[0]} is not under the modules the operator allows: DYNASCOPE_ENTRYPOINTS lists {listed}"


def resolve(reference: str, allow: list[str]) -> Callable[..., Any]:
    """The function, imported (only when allowed)."""
    if (reason := refusal(reference, allow)) is not None:
        raise EntryPointError(reason)
    module_name, function_name = reference.split(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise EntryPointError(f"cannot import {module_name}: {type(exc).__name__}: {exc}") from exc
    function = getattr(module, function_name, None)
    if not callable(function):
        raise EntryPointError(f"{module_name} has no function {function_name}")
    return function


def call(reference: str, allow: list[str], *args: Any, **kwargs: Any) -> Any:
    """Run the entry point; an exception in it becomes an EntryPointError naming it, the exception's last line and
    the place in the team's code it came from."""
    function = resolve(reference, allow)
    try:
        return function(*args, **kwargs)
    except Exception as exc:
        frames = traceback.extract_tb(exc.__traceback__)
        where = f" (at {frames[-1].filename}:{frames[-1].lineno}, in {frames[-1].name})" if frames else ""
        raise EntryPointError(f"{reference} raised {type(exc).__name__}: {exc}{where}") from exc
