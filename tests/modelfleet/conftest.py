"""Fixtures the client and output tests share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.tfserving_standin import TFServingStandIn


@pytest.fixture(scope="module")
def server() -> Iterator[TFServingStandIn]:
    """A TF Serving stand-in for one test module; each test sets the models it needs (``reset``, ``set_model``)."""
    with TFServingStandIn() as tfs:
        yield tfs
