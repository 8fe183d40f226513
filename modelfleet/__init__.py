"""modelfleet's apps: the on-VM ``agent``, the predict ``client``, the ``cli`` and the ``demo``.

The library training jobs import is :mod:`model_export` (export, publish, versions, the store); this package builds
on it and never the other way round.
"""

from __future__ import annotations

# The one home of the release number: pyproject.toml reads it (`[tool.setuptools.dynamic]`), `modelfleet --version`
# prints it.
__version__ = "0.2.0"
