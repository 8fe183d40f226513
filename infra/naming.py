"""How the stacks name what they create: one rule on both clouds, as plain functions (tests: test_naming.py).

- A stack's components are named ``mf-<stack slug>-<part>`` (``component_name``), parts from ``PARTS`` (plus the
  fleet roles): ``mf-staging-store``, ``mf-aws-prod-lb``.
- A component's children are named ``<component>-<child>`` (``child_name``): ``mf-staging-lb-hc``. Where the cloud
  limits a name's length and Pulumi's autonaming appends ``AUTONAME_SUFFIX`` characters (AWS load balancers and
  target groups: 32), the component part is shortened with a hash of it, so two components still never collide.
- Labels (GCP) and tags (AWS) carry the stack and the fleet role under ``STACK_LABEL`` and ``ROLE_LABEL``.

Renaming a resource makes Pulumi replace it. The stacks pass the names a component had before (``renamed_from``)
as aliases, so an existing stack keeps its resources (see docs/gcp.md and docs/aws.md, "Names").

One stack, one set of cloud names: the slug of a stack name that is already a cloud name (lowercase letters,
digits, '-') is the name itself, so two such stacks never share a slug (long ones are cut with a hash of the whole
name). A name that is not (``prod_eu``, ``Prod``) shares its slug with the one that is (``prod-eu``, ``prod``:
``canonical_stack_name``). On GCP the service account ids and the default bucket name come from the slug, so the
second of two such stacks would fail with 409: ``infra.stack.check_deployable`` refuses the name before any cloud
call and says how to rename the stack without renaming anything in the cloud. A suffix that made such names unique
was not chosen: an existing stack with such a name would get new account ids and a new, empty bucket. AWS autonames
every name two such stacks could share (Pulumi's random suffix, S3's bucket prefix) and keeps the exact stack name in
IAM paths and tags, so there they are accepted.
"""

from __future__ import annotations

import hashlib
import re

import pulumi

from infra.config import PROJECT

NAME_PREFIX = "mf"
STACK_SLUG_MAX = 20  # keeps every GCP name of the stack within the provider's limits (the template's name_prefix)
AUTONAME_SUFFIX = 8  # Pulumi's autonaming appends "-" and 7 random characters
STACK_LABEL = f"{PROJECT}-stack"
ROLE_LABEL = f"{PROJECT}-role"

# The parts a stack is made of (each a component); the two fleets are named after their roles (stable, canary).
STORE, IAM, NETWORK, LOAD_BALANCER = "store", "iam", "net", "lb"
PARTS = (STORE, IAM, NETWORK, LOAD_BALANCER)

_NOT_NAME = re.compile(r"[^a-z0-9-]+")


def normalize(text: str) -> str:
    """Lowercase letters, digits and single '-' runs in place of anything else; no '-' at either end."""
    return _NOT_NAME.sub("-", text.lower()).strip("-")


def shorten(text: str, limit: int, seed: str | None = None) -> str:
    """``text`` if it fits in ``limit`` characters, else its head and 4 hex digits of a hash of ``seed`` (``text``).

    Deterministic (the same input always gives the same name) and distinct for inputs with the same head.
    """
    if limit < 6:
        raise ValueError(f"cannot shorten a name to {limit} characters (at least 6: head, '-', 4 hash digits)")
    if len(text) <= limit:
        return text
    tag = hashlib.sha256((text if seed is None else seed).encode()).hexdigest()[:4]
    return f"{text[: limit - 5].rstrip('-')}-{tag}"


def slug(text: str, limit: int = STACK_SLUG_MAX) -> str:
    """``text`` (a stack name) as a name fragment: ``normalize``d, at most ``limit`` characters."""
    return shorten(normalize(text) or "stack", limit, seed=text)


def canonical_stack_name(stack: str) -> str:
    """The stack name that is its own slug and that ``stack`` shares its slug with: ``Prod`` -> ``prod``."""
    return normalize(stack) or "stack"


def stack_prefix(stack: str) -> str:
    """``mf-<stack slug>``: what every component name of the stack starts with."""
    return f"{NAME_PREFIX}-{slug(stack)}"


def component_name(stack: str, part: str) -> str:
    """A stack's component: ``mf-<stack slug>-<part>``."""
    return f"{stack_prefix(stack)}-{part}"


def child_name(component: str, part: str, limit: int | None = None) -> str:
    """A component's child: ``<component>-<part>``.

    ``limit``: the cloud's limit on the child's physical name, which Pulumi's autonaming derives from this one by
    appending ``AUTONAME_SUFFIX`` characters; the component part is shortened so the whole fits.
    """
    name = f"{component}-{part}"
    if limit is None:
        return name
    room = limit - AUTONAME_SUFFIX - len(part) - 1
    return f"{shorten(component, room)}-{part}"


def renamed_from(opts: pulumi.ResourceOptions | None) -> list[str]:
    """The earlier names in ``opts``' aliases (``pulumi.Alias(name=...)``), for children a component renames."""
    aliases = (opts.aliases if opts is not None else None) or []
    return [a.name for a in aliases if isinstance(a, pulumi.Alias) and isinstance(a.name, str)]


def child_aliases(component: str, part: str, child: str, opts: pulumi.ResourceOptions | None) -> list[pulumi.Alias]:
    """Aliases for a child whose name does not start with its component's (``child_name`` shortened it).

    Pulumi carries a component's aliases over to children named ``<component>-...`` by itself; a shortened child
    needs its earlier name ``<earlier component name>-<part>`` spelled out.
    """
    if child.startswith(f"{component}-"):
        return []
    return [pulumi.Alias(name=f"{earlier}-{part}") for earlier in renamed_from(opts)]
