"""Offline evaluation of the Pulumi program: what `modelfleet plan` runs, and what the infra tests inspect.

No Pulumi CLI, provider plugin or credentials are involved: the program runs under the SDK's own test harness
(`pulumi.runtime.set_mocks` + `pulumi.runtime.test`). Each resource the program registers is recorded with its inputs
(camelCase wire names, as providers receive them), the state the offline provider answered with, and the URN that
shows its parent chain. What a cloud's provider would compute (ids, self links, ARNs, invoke results) comes from that
cloud's offline answers (`infra/offline/gcp.py`, `infra/offline/aws.py`), built fresh for every evaluation: nothing is
kept between runs.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import pulumi
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime import rpc

from infra.config import PROJECT

# One offline answer: (logical name or invoke token, inputs or invoke args) -> computed attributes / invoke result.
Answer = Callable[[str, Mapping[str, Any]], dict[str, Any]]


class Placeholders(set[str]):
    """The values an evaluation's offline answers made up (see ``Answers.placeholders``)."""

    def made_up(self, value: str) -> str:
        """``value``, recorded as made up."""
        self.add(value)
        return value


@dataclass(frozen=True)
class Answers:
    """One evaluation's offline provider answers (camelCase keys, shaped like the real provider's)."""

    resources: Mapping[str, Answer]  # resource type token -> answer(name, inputs) -> computed attributes
    invokes: Mapping[str, Answer]  # invoke token -> answer(token, args) -> result
    # The values these answers made up where the real provider's can't be known before it runs (an IP address, an
    # account id, an AMI, a generated suffix): the plan marks whatever contains one as "known after deploy".
    placeholders: Placeholders = field(default_factory=Placeholders)


def _gcp_answers() -> Answers:
    from infra.offline import gcp

    return gcp.answers()


def _aws_answers() -> Answers:
    from infra.offline import aws

    return aws.answers()


# cloud -> a fresh set of that cloud's answers (imported only for the cloud evaluated).
ANSWERS: Mapping[str, Callable[[], Answers]] = {"gcp": _gcp_answers, "aws": _aws_answers}


@dataclass(frozen=True)
class PlannedResource:
    urn: str
    type: str
    name: str
    inputs: dict[str, Any]
    custom: bool
    parent: str | None  # the parent's URN; None for the stack itself
    state: dict[str, Any] = field(default_factory=dict)  # what the offline provider answered (inputs + computed)
    # Earlier names this resource answers to (`aliases=[pulumi.Alias(name=...)]`): what keeps an existing stack's
    # resource through a rename instead of replacing it.
    aliases: tuple[str, ...] = ()
    # Pulumi's `protect` and `retain_on_delete` as the registration carries them (stack transformations included).
    protect: bool = False
    retain_on_delete: bool = False

    @property
    def parent_name(self) -> str | None:
        return None if self.parent is None else self.parent.split("::")[-1]


@dataclass
class Plan:
    stack: str
    resources: list[PlannedResource] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)
    placeholders: frozenset[str] = frozenset()  # `Answers.placeholders` of the evaluation

    def of_type(self, type_: str) -> list[PlannedResource]:
        return [r for r in self.resources if r.type == type_]

    def after_deploy(self, value: Any) -> bool:
        """Whether ``value`` holds something only the real provider can tell (an offline placeholder)."""
        if isinstance(value, str):
            return any(p in value for p in self.placeholders)
        if isinstance(value, dict):
            return any(self.after_deploy(v) for v in value.values())
        if isinstance(value, list | tuple):
            return any(self.after_deploy(v) for v in value)
        return False


def _digest(*parts: str) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:12]


class OfflineProvider(pulumi.runtime.Mocks):
    """Answers resource registrations and invokes the way the cloud's provider would, from ``answers``."""

    def __init__(self, answers: Answers) -> None:
        self.answers = answers

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str | None, dict[str, Any]]:
        inputs = dict(args.inputs)
        if not args.custom:
            return None, {}
        rid = self.answers.placeholders.made_up(f"{args.name}-{_digest(args.typ, args.name)}")  # providers assign ids
        out: dict[str, Any] = {"name": args.name, **inputs, "id": rid}
        answer = self.answers.resources.get(args.typ)
        if answer is not None:
            out.update(answer(args.name, inputs))
        return rid, out

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]]]:
        answer = self.answers.invokes.get(args.token)
        if answer is None:
            raise NotImplementedError(f"no offline answer for invoke {args.token}; add one to infra/offline/")
        return answer(args.token, dict(args.args)), []


class RecordingMonitor(pulumi_mocks.MockMonitor):
    """The SDK's mock monitor, also keeping each registration's inputs, state, parent and options, in order."""

    def __init__(self, provider: OfflineProvider) -> None:
        super().__init__(provider)
        self.recorded: list[PlannedResource] = []
        self._lock = threading.Lock()

    def RegisterResource(self, request: Any) -> Any:
        response = super().RegisterResource(request)  # type: ignore[no-untyped-call]
        if request.type != "pulumi:pulumi:Stack":
            inputs = rpc.deserialize_properties(request.object)
            state = rpc.deserialize_properties(response.object)
            with self._lock:
                self.recorded.append(
                    PlannedResource(
                        response.urn,
                        request.type,
                        request.name,
                        dict(inputs),
                        bool(request.custom),
                        request.parent or None,
                        dict(state),
                        _alias_names(request),
                        bool(request.protect),
                        bool(request.retainOnDelete),
                    )
                )
        return response


def _alias_names(request: Any) -> tuple[str, ...]:
    """The names a registration's aliases give (alias specs carry a name; alias URNs end with one)."""
    names = [a.spec.name if a.HasField("spec") else a.urn.rsplit("::", 1)[-1] for a in request.aliases]
    names += [urn.rsplit("::", 1)[-1] for urn in request.aliasURNs]
    return tuple(name for name in names if name)


# `pulumi.runtime.test` is the SDK's public way to run a program in a stack without the engine: it waits for the
# returned output and every registration (pulumi/pulumi `sdk/python/lib/pulumi/runtime/mocks.py`). It is untyped.
_run_in_stack = cast(Callable[[Callable[[], Any]], Callable[[], None]], pulumi.runtime.test)


def evaluate(stack: str, program: Callable[[], Mapping[str, Any]], *, cloud: str | None = None) -> Plan:
    """Run ``program`` (which registers resources and returns the stack outputs) offline, fully resolved.

    ``cloud`` picks the provider answers (`ANSWERS`); None answers nothing beyond the inputs (component-only programs).
    """
    answers = Answers(resources={}, invokes={}) if cloud is None else ANSWERS[cloud]()
    provider = OfflineProvider(answers)
    monitor = RecordingMonitor(provider)
    pulumi.runtime.reset_options()
    pulumi.runtime.set_mocks(provider, project=PROJECT, stack=stack, preview=False, monitor=monitor)
    outputs: dict[str, Any] = {}
    _run_in_stack(lambda: pulumi.Output.from_input(dict(program())).apply(outputs.update))()
    # Registration order depends on thread scheduling; sort so plans are stable.
    return Plan(
        stack,
        resources=sorted(monitor.recorded, key=lambda r: r.urn),
        outputs=outputs,
        placeholders=frozenset(answers.placeholders),
    )
