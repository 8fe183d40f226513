"""Wait, inside `pulumi up`, for a fleet's managed instance group to have healthy VMs (``FleetHealthy``).

Nothing in the Google provider waits for a regional MIG's VMs when only its autoscaler changes (the MIG's
``wait_for_instances`` runs when the MIG itself is created or updated), and weighted backend services do not fail
over: a URL map that gives a starting canary its weight at once sends that share to a fleet with no VM.
``FleetHealthy`` is a Pulumi dynamic resource whose ``create`` and ``update`` poll the Compute API
(``regionInstanceGroupManagers.listManagedInstances``) until the group has ``min_healthy`` instances that are
RUNNING, have no current action (``NONE``: not being created, verified, recreated, deleted) and are HEALTHY per the
group's autohealing check (liveness: 200 once the VM has been ready), within ``timeout_seconds``. The stack makes it
depend on the canary's autoscaler and the serving URL map depend on it while the canary runs (docs/gcp.md "Canary on
and off"), so the weight changes only once the canary serves.

When it waits (``must_wait``): on an update that raises ``min_healthy`` (the canary starts: 0 to canaryMinReplicas, or
its minimum grows) or points at another group. Never on create: a new stack's store is created by the same `pulumi
up`, so no model can be served and nothing would become healthy (and nothing serves clients yet either). Any other
change (the canary stops: ``min_healthy`` 0; a new timeout) updates the recorded inputs without waiting, so the next
start waits again.
A wait that fails fails the update, and Pulumi keeps the previous state: the next `pulumi up` waits again.

The provider is pickled by the SDK (dill) into the resource's ``__provider`` input and unpickled in the engine's
Python dynamic-provider process (``python -m pulumi.dynamic``, run in the project directory with the project's
virtualenv). A class of an importable module is pickled by reference, so that process imports this module: it imports
only the standard library and ``pulumi`` at module level (no other ``infra`` module, no side effects), and
``google.auth`` (installed with google-cloud-storage) inside the methods. Credentials: Application Default Credentials
(``google.auth.default()``), as the README's deployment steps set up; the identity needs
``compute.instanceGroupManagers.get`` on the group (the deployer's roles include it).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import pulumi
import pulumi.dynamic

COMPUTE_API = "https://compute.googleapis.com/compute/v1"
SCOPES = ("https://www.googleapis.com/auth/compute.readonly",)
POLL_SECONDS = 15.0
REQUEST_TIMEOUT_SECONDS = 30.0
# Beyond the boot grace (healthCheckInitialDelaySeconds: image pull, model download, warmup): creating the VM before
# its boot, autohealing's healthy threshold, a retried creation.
WAIT_MARGIN_SECONDS = 600
# What identifies the group; a change of any of these is another group, which is waited for.
GROUP_KEYS = ("project", "region", "group")
# The inputs the state records (diff compares them; the serialized provider is not one of them).
INPUT_KEYS = (*GROUP_KEYS, "min_healthy", "timeout_seconds")
# Answers worth another poll: rate limits and the API's own failures. Other 4xx fail at once.
RETRIED_STATUS = frozenset({429, 500, 502, 503, 504})


def healthy_wait_seconds(health_check_initial_delay_seconds: int) -> int:
    """How long a start may take: the VMs' boot grace plus ``WAIT_MARGIN_SECONDS``."""
    return health_check_initial_delay_seconds + WAIT_MARGIN_SECONDS


class FleetNotHealthy(RuntimeError):
    """The group did not get its healthy instances in time, or the Compute API refused to say."""


class _Retry(Exception):
    """A poll that failed in a way worth trying again (its text is what the timeout reports)."""


class Response(Protocol):
    @property
    def status_code(self) -> int: ...

    @property
    def text(self) -> str: ...

    def json(self) -> Any: ...


class Session(Protocol):
    """What the provider needs of ``google.auth.transport.requests.AuthorizedSession`` (a ``requests.Session``)."""

    def post(self, url: str, *, params: Mapping[str, str] | None = ..., timeout: float = ...) -> Response: ...


def is_healthy(instance: Mapping[str, Any]) -> bool:
    """A managed instance that serves: RUNNING, no current action, and HEALTHY on every health check that reports on
    it (the group's autohealing check); no health state yet is not healthy."""
    health = instance.get("instanceHealth") or []
    return (
        instance.get("currentAction") == "NONE"
        and instance.get("instanceStatus") == "RUNNING"
        and bool(health)
        and all(h.get("detailedHealthState") == "HEALTHY" for h in health)
    )


def describe(instances: Sequence[Mapping[str, Any]]) -> str:
    """What a poll saw, on one line: the instances counted by currentAction/instanceStatus/health ("-": none yet),
    and the first error of a failed creation (a quota, a bad template)."""
    if not instances:
        return "no instances"
    states = Counter(
        "/".join(
            (
                str(i.get("currentAction", "-")),
                str(i.get("instanceStatus", "-")),  # none yet while the VM is being created
                ",".join(str(h.get("detailedHealthState", "-")) for h in i.get("instanceHealth") or []) or "-",
            )
        )
        for i in instances
    )
    seen = ", ".join(f"{n} {state}" for state, n in sorted(states.items()))
    errors = [
        " ".join(str(e.get("message") or e.get("code")).split())
        for i in instances
        for e in ((i.get("lastAttempt") or {}).get("errors") or {}).get("errors") or []
    ]
    return f"{len(instances)} instance{'s' if len(instances) != 1 else ''} ({seen})" + (
        f"; last creation error: {errors[0]}" if errors else ""
    )


def must_wait(olds: Mapping[str, Any] | None, news: Mapping[str, Any]) -> bool:
    """Whether an update waits (a create, ``olds`` None, never does): the group must have VMs, and either it is
    another group or it must have more than before (0 before: the canary starts)."""
    need = int(news.get("min_healthy") or 0)
    if need <= 0 or olds is None:
        # Created: a new stack (its store was created by this very `pulumi up`, so no model can be served yet and
        # nothing would ever become healthy) or the first `up` of this version (the canary ran before): no wait.
        return False
    if any(olds.get(k) != news.get(k) for k in GROUP_KEYS):
        return True
    return need > int(olds.get("min_healthy") or 0)


def _error_text(response: Response) -> str:
    """The API's error message (``{"error": {"message": ...}}``), else the start of the body, on one line."""
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text[:200]
    return " ".join(str(message).split())


class FleetHealthyProvider(pulumi.dynamic.ResourceProvider):
    """Create and update wait for the group's healthy instances (``must_wait``); delete and read change nothing."""

    # It holds no secret (the API address and poll interval): its pickled form need not be encrypted in the state.
    serialize_as_secret_always = False

    def __init__(
        self, api: str = COMPUTE_API, poll_seconds: float = POLL_SECONDS, session: Session | None = None
    ) -> None:
        super().__init__()
        self.api = api
        self.poll_seconds = poll_seconds
        self.session = session  # None: Application Default Credentials, at the first wait

    def create(self, props: dict[str, Any]) -> pulumi.dynamic.CreateResult:
        outs = self._settle(None, props)
        return pulumi.dynamic.CreateResult(f"{props['project']}/{props['region']}/{props['group']}", outs)

    def diff(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> pulumi.dynamic.DiffResult:
        """``olds`` are the recorded outputs (``INPUT_KEYS`` and ``healthy``). Any recorded input that changed is an
        update (so a stop's ``min_healthy`` 0 is recorded and the next start waits again); whether the update waits
        is ``must_wait``'s. Never a replacement: there is nothing in the cloud to replace."""
        changed = [k for k in INPUT_KEYS if olds.get(k) != news.get(k)]
        return pulumi.dynamic.DiffResult(changes=bool(changed), replaces=[], delete_before_replace=False)

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> pulumi.dynamic.UpdateResult:
        return pulumi.dynamic.UpdateResult(self._settle(olds, news))

    def _settle(self, olds: Mapping[str, Any] | None, news: Mapping[str, Any]) -> dict[str, Any]:
        outs = {k: news.get(k) for k in INPUT_KEYS}
        outs["healthy"] = self.wait(news) if must_wait(olds, news) else None
        return outs

    def wait(self, props: Mapping[str, Any]) -> int:
        """Poll until the group has ``min_healthy`` healthy instances; returns how many it had. Raises
        ``FleetNotHealthy`` on timeout (naming the group and what the last poll saw) or on a refused request."""
        need, timeout = int(props["min_healthy"]), float(props["timeout_seconds"])
        where = f"{props['group']} (project {props['project']}, region {props['region']})"
        url = (
            f"{self.api}/projects/{props['project']}/regions/{props['region']}"
            f"/instanceGroupManagers/{props['group']}/listManagedInstances"
        )
        session = self.session if self.session is not None else _default_session(where)
        deadline = time.monotonic() + timeout
        seen = "nothing yet"
        while True:
            try:
                instances = _list_instances(session, url, where)
                healthy = sum(1 for i in instances if is_healthy(i))
                if healthy >= need:
                    return healthy
                seen = f"{healthy} healthy of {describe(instances)}"
            except _Retry as e:
                seen = str(e)
            left = deadline - time.monotonic()
            if left <= 0:
                raise FleetNotHealthy(
                    f"managed instance group {where} did not get {need} healthy instance{'s' if need != 1 else ''} "
                    f"(RUNNING, no current action, HEALTHY on its autohealing check) within {timeout:g} s; last seen: "
                    f"{seen}. The URL map was not changed (no traffic moved); fix the fleet (its VMs' serial console, "
                    "`gcloud compute instance-groups managed list-instances`) and run `pulumi up` again"
                )
            time.sleep(min(self.poll_seconds, left))


def _default_session(where: str) -> Session:
    """An ``AuthorizedSession`` on Application Default Credentials."""
    import google.auth
    import google.auth.exceptions
    from google.auth.transport.requests import AuthorizedSession, Request

    try:
        credentials, _ = google.auth.default(scopes=list(SCOPES))
        credentials.refresh(Request())  # type: ignore[no-untyped-call]  # fails here, on one line, not in a poll
    except google.auth.exceptions.GoogleAuthError as e:
        raise FleetNotHealthy(
            f"cannot check managed instance group {where}: no usable Application Default Credentials "
            f"(`gcloud auth application-default login`, or GOOGLE_APPLICATION_CREDENTIALS): {' '.join(str(e).split())}"
        ) from None
    session: Session = AuthorizedSession(credentials)  # type: ignore[no-untyped-call]
    return session


def _list_instances(session: Session, url: str, where: str) -> list[dict[str, Any]]:
    """Every managed instance of the group (following ``nextPageToken`` when the group pages its list)."""
    instances: list[dict[str, Any]] = []
    params: dict[str, str] = {}
    while True:
        try:
            response = session.post(url, params=params or None, timeout=REQUEST_TIMEOUT_SECONDS)
        except OSError as e:  # requests' ConnectionError and Timeout are OSErrors
            raise _Retry(f"the Compute API did not answer: {e}") from None
        if response.status_code in RETRIED_STATUS:
            raise _Retry(f"the Compute API answered {response.status_code}: {_error_text(response)}")
        if response.status_code != 200:
            hint = (
                " (the deploying identity needs compute.instanceGroupManagers.get on it, e.g. roles/compute.viewer)"
                if response.status_code == 403
                else ""
            )
            raise FleetNotHealthy(
                f"cannot list the instances of managed instance group {where}: the Compute API answered "
                f"{response.status_code}: {_error_text(response)}{hint}"
            )
        try:
            body = response.json()
        except ValueError:  # requests' JSONDecodeError
            raise _Retry(f"the Compute API answered 200 with no JSON: {response.text[:200]!r}") from None
        instances += body.get("managedInstances") or []
        token = body.get("nextPageToken")
        if not token:
            return instances
        params = {"pageToken": str(token)}


@dataclass(frozen=True)
class FleetHealthyArgs:
    project: pulumi.Input[str]
    region: pulumi.Input[str]
    group: pulumi.Input[str]  # the regional MIG's name (an Output: the wait starts once the MIG exists)
    min_healthy: int  # 0: nothing to wait for (the fleet does not run)
    timeout_seconds: int  # healthy_wait_seconds(healthCheckInitialDelaySeconds)


class FleetHealthy(pulumi.dynamic.Resource, module="modelfleet", name="FleetHealthy"):
    """``pulumi-python:dynamic/modelfleet:FleetHealthy``: done once the group has ``min_healthy`` healthy VMs (see the
    module's docstring for when it waits). Give it ``depends_on`` the resource that sizes the group (its autoscaler),
    and make what sends traffic to the group depend on it."""

    project: pulumi.Output[str]
    region: pulumi.Output[str]
    group: pulumi.Output[str]
    min_healthy: pulumi.Output[int]
    timeout_seconds: pulumi.Output[int]
    healthy: pulumi.Output[int | None]  # healthy instances when the last wait ended; None: it did not wait

    def __init__(
        self,
        name: str,
        args: FleetHealthyArgs,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        if args.min_healthy < 0 or args.timeout_seconds <= 0:
            raise ValueError(f"{name}: min_healthy must be >= 0 and timeout_seconds > 0, got {args}")
        props: dict[str, Any] = {
            "project": args.project,
            "region": args.region,
            "group": args.group,
            "min_healthy": args.min_healthy,
            "timeout_seconds": args.timeout_seconds,
            "healthy": None,
        }
        super().__init__(FleetHealthyProvider(), name, props, opts)
