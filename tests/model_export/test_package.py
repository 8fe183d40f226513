"""``import model_export``: the library's public names, without TensorFlow until ``export_model`` is used."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.support import REPO_ROOT

_PROBE = """
import inspect, json, sys
import model_export
from model_export import promote, publish
print(json.dumps({
    "tensorflow": sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras")),
    "publish": inspect.isfunction(model_export.publish) and publish.__module__ == "model_export.publish",
    "promote": inspect.isfunction(promote) and promote.__module__ == "model_export.versions",
    "lazy": "export_model" in model_export.__all__ and "model_export.export" not in sys.modules,
}))
"""


def test_importing_the_library_does_not_import_tensorflow() -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"tensorflow": [], "publish": True, "promote": True, "lazy": True}
