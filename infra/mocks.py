"""Evaluate the Pulumi program offline under the SDK's mocks: for `modelfleet plan` and for the infra tests.

No Pulumi CLI, provider plugin or credentials are involved. Each resource the program registers is recorded with
its inputs (camelCase wire names, as providers receive them) and the URN that shows its parent chain. The mocks
return the inputs as the resource's state plus the computed attributes the program reads (ids, names, ARNs, self
links); cloud-specific invoke results live beside each cloud (`infra/<cloud>/mock_calls.py`).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pulumi
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime import rpc
from pulumi.runtime.sync_await import _sync_await

PROJECT = "modelfleet"
Fake = Callable[[str, Mapping[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class PlannedResource:
    urn: str
    type: str
    name: str
    inputs: dict[str, Any]
    custom: bool
    parent: str | None  # the parent's URN; None for the stack itself

    @property
    def parent_type(self) -> str | None:
        """The type of the direct parent (from its URN's type chain)."""
        return None if self.parent is None else self.parent.split("::")[2].split("$")[-1]

    @property
    def parent_name(self) -> str | None:
        return None if self.parent is None else self.parent.split("::")[-1]


@dataclass
class Plan:
    stack: str
    resources: list[PlannedResource] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)

    def of_type(self, type_: str) -> list[PlannedResource]:
        return [r for r in self.resources if r.type == type_]

    def one(self, type_: str, name: str | None = None) -> PlannedResource:
        found = [r for r in self.of_type(type_) if name is None or r.name == name]
        if len(found) != 1:
            names = [r.name for r in self.of_type(type_)]
            raise AssertionError(f"expected one {type_}{' ' + name if name else ''}, found {names}")
        return found[0]

    def named(self, name: str) -> PlannedResource:
        found = [r for r in self.resources if r.name == name]
        if len(found) != 1:
            raise AssertionError(f"expected one resource named {name}, found {len(found)}")
        return found[0]


def _digest(*parts: str) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:12]


class RecordingMocks(pulumi.runtime.Mocks):
    def __init__(self, project: str, stack: str, state: Mapping[str, Fake], calls: Mapping[str, Fake]) -> None:
        self.project, self.stack = project, stack
        self.state, self.calls = state, calls

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str | None, dict[str, Any]]:
        inputs = dict(args.inputs)
        if not args.custom:
            return None, {}
        rid = f"{args.name}-{_digest(args.typ, args.name)}"
        out: dict[str, Any] = {"name": args.name, **inputs, "id": rid}
        extra = self.state.get(args.typ)
        if extra is not None:
            out.update(extra(args.name, inputs))
        return rid, out

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]]]:
        fake = self.calls.get(args.token)
        if fake is None:
            raise NotImplementedError(f"no offline answer for invoke {args.token}; add one to mock_calls.py")
        return fake(args.token, dict(args.args)), []


class RecordingMonitor(pulumi_mocks.MockMonitor):
    """The SDK's mock monitor, also keeping each registration's inputs and parent, in order."""

    def __init__(self, mocks: RecordingMocks) -> None:
        super().__init__(mocks)
        self.recorded: list[PlannedResource] = []
        self._lock = threading.Lock()

    def RegisterResource(self, request: Any) -> Any:
        response = super().RegisterResource(request)  # type: ignore[no-untyped-call]
        if request.type != "pulumi:pulumi:Stack":
            inputs = rpc.deserialize_properties(request.object)
            with self._lock:
                self.recorded.append(
                    PlannedResource(
                        response.urn,
                        request.type,
                        request.name,
                        dict(inputs),
                        bool(request.custom),
                        request.parent or None,
                    )
                )
        return response


def evaluate(
    stack: str,
    program: Callable[[], Mapping[str, Any]],
    *,
    state: Mapping[str, Fake] | None = None,
    calls: Mapping[str, Fake] | None = None,
) -> Plan:
    """Run ``program`` (which registers resources and returns the stack outputs) under mocks, fully resolved."""
    mocks = RecordingMocks(PROJECT, stack, state or {}, calls or {})
    monitor = RecordingMonitor(mocks)
    pulumi.runtime.reset_options()
    pulumi.runtime.set_mocks(mocks, project=PROJECT, stack=stack, preview=False, monitor=monitor)
    outputs: dict[str, Any] = {}

    def run() -> Any:
        result = program()
        return pulumi.Output.from_input(dict(result)).apply(outputs.update)

    _sync_await(pulumi.runtime.stack.run_pulumi_func(lambda: _sync_await(pulumi.Output.from_input(run()).future())))
    # Registration order depends on thread scheduling; sort so plans are stable.
    return Plan(stack, resources=sorted(monitor.recorded, key=lambda r: r.urn), outputs=outputs)
