"""Offline answers for this cloud's provider invokes and computed resource attributes, used by `infra/mocks.py`
(for `modelfleet plan` and the tests). Keep each answer shaped like the real provider's."""

from __future__ import annotations

from infra.mocks import Fake

# invoke token -> fake(token, args) -> result
CALLS: dict[str, Fake] = {}
# resource type token -> fake(name, inputs) -> extra computed state (ids, ARNs, self links, ...)
STATE: dict[str, Fake] = {}
