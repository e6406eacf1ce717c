"""The result contract (issue 27): every public evidence and claim function that returns more than a tensor returns
a frozen dataclass whose name ends in ``Result`` (or a name DESIGN.md fixes), with ``.to_frame()`` giving a
pandas DataFrame, ``_repr_html_`` for notebooks, and ``save``/``load`` as a pair where it has either. The test walks
``probes._EXPORTS``, so a new export that breaks the contract fails here."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import typing

import pandas as pd
import pytest

import probes

# Result types whose names DESIGN.md's contract fixes (or that describe a structure, not a measurement).
NAMED_BY_CONTRACT = {"EdgeScores", "CircuitGraph", "LayerTypes"}
# Dataclasses exported functions return that are inputs to other functions, not results.
NOT_RESULTS = {"Target"}  # a probe target (antecedent_gender, ...): what probe() reads, not what it found
STAGES = ("probes.evidence", "probes.claims")


def _exports() -> list[tuple[str, object]]:
    return [(name, getattr(probes, name)) for name in probes._EXPORTS]


def _returned(function) -> object:
    """The class a function is annotated to return (through the wrappers such as frozen_model)."""
    inner = inspect.unwrap(function)
    return typing.get_type_hints(inner, vars(importlib.import_module(inner.__module__))).get("return")


def _stage_functions() -> list[tuple[str, object]]:
    return [(name, obj) for name, obj in _exports()
            if inspect.isfunction(obj) and inspect.unwrap(obj).__module__.startswith(STAGES)]


def _result_classes() -> dict[str, type]:
    """Every exported class named as a result, and every dataclass an exported stage function returns."""
    found = {obj.__name__: obj for _, obj in _exports() if inspect.isclass(obj) and obj.__name__.endswith("Result")}
    for _, function in _stage_functions():
        returned = _returned(function)
        if dataclasses.is_dataclass(returned) and returned.__name__ not in NOT_RESULTS:
            found[returned.__name__] = returned
    return found


def test_the_walk_finds_the_results_the_contract_names():
    found = _result_classes()
    assert {"ClaimResult", "PatchingResult", "PathsResult", "PositionContentResult", "RotaryBandsResult",
            "ProbeResult", "ScreeningResult", "BehaviourResult"} <= set(found)


@pytest.mark.parametrize("name", sorted(_result_classes()))
def test_each_result_keeps_the_contract(name):
    cls = _result_classes()[name]
    assert name.endswith("Result") or name in NAMED_BY_CONTRACT, f"{name}: a result's name ends in Result"
    assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen, f"{name} is not a frozen dataclass"
    assert typing.get_type_hints(cls.to_frame, vars(importlib.import_module(cls.__module__)))["return"] is pd.DataFrame
    assert callable(getattr(cls, "_repr_html_", None)), f"{name} has no _repr_html_"
    # the class's own methods: nnsight (a bench dependency) mounts a `save` on every object once imported
    defines = {method: any(method in vars(k) for k in cls.__mro__[:-1]) for method in ("save", "load")}
    assert defines["save"] == defines["load"], f"{name}: save and load come as a pair"


def test_stage_functions_return_results_or_tensors_not_bare_tables():
    bare = [name for name, function in _stage_functions() if _returned(function) is pd.DataFrame]
    assert not bare, f"return a ...Result with .to_frame(), not a bare DataFrame: {bare}"


def test_old_names_are_the_result_classes():
    """Names used before the contract still work, as the same classes."""
    assert probes.PositionContent is probes.PositionContentResult
    assert probes.RotaryBands is probes.RotaryBandsResult
    assert probes.Screening is probes.ScreeningResult


def test_verdicts_are_the_literal_outcomes():
    from probes.claims.verdicts import VERDICTS

    outcomes = set(typing.get_args(probes.Verdict))
    assert set(VERDICTS) <= outcomes
    assert {"insufficient", "incomplete", "not applicable"} <= outcomes
