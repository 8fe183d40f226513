"""Test-only lookups on an offline `Plan` (`infra.offline`): each raises AssertionError naming what it found."""

from __future__ import annotations

from infra.offline import Plan, PlannedResource


def one(plan: Plan, type_: str, name: str | None = None) -> PlannedResource:
    """The only resource of ``type_`` (named ``name``, if given)."""
    found = [r for r in plan.of_type(type_) if name is None or r.name == name]
    if len(found) != 1:
        names = [r.name for r in plan.of_type(type_)]
        raise AssertionError(f"expected one {type_}{' ' + name if name else ''}, found {names}")
    return found[0]


def named(plan: Plan, name: str) -> PlannedResource:
    """The only resource named ``name``, of any type."""
    found = [r for r in plan.resources if r.name == name]
    if len(found) != 1:
        raise AssertionError(f"expected one resource named {name}, found {len(found)}")
    return found[0]


def parent_type(resource: PlannedResource) -> str | None:
    """The type of the resource's direct parent (from its URN's type chain)."""
    return None if resource.parent is None else resource.parent.split("::")[2].split("$")[-1]
