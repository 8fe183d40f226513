"""model_export.layout: every store key, built and parsed in one place."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_export import layout
from model_export.manifest import MODEL_RE
from model_export.publish import publish
from model_export.store import open_store


def test_keys_of_a_model() -> None:
    assert layout.manifest_key("digits") == "digits/manifest.json"
    assert layout.version_prefix("digits", 7) == "digits/7"
    assert layout.pending_prefix("digits") == "digits/_pending/"
    assert layout.pending_key("digits", 7) == "digits/_pending/7.json"
    assert layout.model_prefix("digits") == "digits/"


@pytest.mark.parametrize(
    ("key", "version"),
    [
        ("m/3/saved_model.pb", 3),
        ("m/12/variables/variables.index", 12),
        ("m/3", None),  # not a file under the version directory
        ("m/3/", None),
        ("m/manifest.json", None),
        ("m/_pending/3.json", None),
        ("m2/3/saved_model.pb", None),  # another model
        ("m/x3/saved_model.pb", None),
        ("m/\u00b2/x", None),  # "²".isdigit(), and int() refuses it: once a traceback in prune and versions
        ("m/\u0663/x", None),  # Arabic-Indic three: int() reads 3
    ],
)
def test_version_of_file(key: str, version: int | None) -> None:
    assert layout.version_of_file("m", key) == version


@pytest.mark.parametrize(
    ("key", "version"),
    [
        ("m/_pending/3.json", 3),
        ("m/_pending/3.tmp", None),
        ("m/_pending/x/3.json", None),
        ("m/_pending/.json", None),
        ("m/3/saved_model.pb", None),
        ("m2/_pending/3.json", None),
        ("m/_pending/\u00b2.json", None),
        ("m/_pending/\u0663.json", None),
    ],
)
def test_reserved_version(key: str, version: int | None) -> None:
    assert layout.reserved_version("m", key) == version


def test_parsers_invert_the_builders() -> None:
    assert layout.reserved_version("m.v2", layout.pending_key("m.v2", 41)) == 41
    assert layout.version_of_file("m.v2", f"{layout.version_prefix('m.v2', 41)}/a/b") == 41


def test_agent_wheel_key() -> None:
    sha = "ab" * 32
    wheel = "modelfleet-0.1.0-py3-none-any.whl"
    assert layout.agent_wheel_key(sha, wheel) == f"_agent/{sha}/{wheel}"
    assert layout.agent_wheel_key(sha, wheel, "prod/models") == f"prod/models/_agent/{sha}/{wheel}"


def test_reserved_prefixes_never_name_a_model() -> None:
    for prefix in (layout.AGENT_PREFIX, layout.PENDING_DIR):
        assert prefix.startswith("_")
        assert not MODEL_RE.match(prefix)


def test_a_publish_writes_only_layout_keys(savedmodels: dict[str, Path], tmp_path: Path) -> None:
    uri = f"file://{tmp_path}"
    publish(savedmodels["v1"], uri, "m")
    keys = [o.key for o in open_store(uri).list(layout.model_prefix("m"))]
    assert layout.manifest_key("m") in keys
    others = [k for k in keys if k != layout.manifest_key("m")]
    assert others and all(layout.version_of_file("m", k) == 1 for k in others)
