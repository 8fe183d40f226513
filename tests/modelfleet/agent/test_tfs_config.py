"""The config text, checked by TF Serving's own protos (which import TensorFlow: fine here, never in the agent)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from modelfleet.agent.durable import write_atomic
from modelfleet.agent.tfs_config import ModelEntry, render


def parse(text: str) -> object:
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    return text_format.Parse(text, model_server_config_pb2.ModelServerConfig())


def test_rendered_config_parses_with_the_official_protos() -> None:
    pytest.importorskip("tensorflow_serving")
    odd_path = '/srv/mödels/with "quotes" and \\ back\tslash/digits'
    text = render(
        [
            ModelEntry("digits", odd_path, (3, 4), {"stable": 3}),
            ModelEntry("iris.v2", "/srv/models/iris.v2", (7,), {"stable": 7, "canary": 7}),
        ]
    )
    msg = parse(text)
    configs = {c.name: c for c in msg.model_config_list.config}  # type: ignore[attr-defined]
    assert set(configs) == {"digits", "iris.v2"}
    digits = configs["digits"]
    assert digits.base_path == odd_path
    assert digits.model_platform == "tensorflow"
    assert digits.model_version_policy.WhichOneof("policy_choice") == "specific"
    assert list(digits.model_version_policy.specific.versions) == [3, 4]
    assert dict(digits.version_labels) == {"stable": 3}
    assert dict(configs["iris.v2"].version_labels) == {"stable": 7, "canary": 7}


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (lambda: ModelEntry("m", "/r/m", (1,), {"stable": 2}), "points at 2, which is not loaded"),
        (lambda: ModelEntry("m", "/r/m", (1,), {"sta-ble": 1}), "is not \\[A-Za-z0-9_\\]\\+"),
        (lambda: ModelEntry("m", "/r/m", ()), "distinct positive integers"),
        (lambda: ModelEntry("m", "/r/m", (0,)), "distinct positive integers"),
        (lambda: ModelEntry("m", "/r/m", (2, 2)), "distinct positive integers"),
        (lambda: ModelEntry("bad name", "/r/m", (1,)), "not valid"),
    ],
)
def test_invalid_entries_are_refused(entry: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        entry()  # type: ignore[operator]


def test_repeated_model_names_are_refused() -> None:
    with pytest.raises(ValueError, match="repeat"):
        render([ModelEntry("m", "/a", (1,)), ModelEntry("m", "/b", (2,))])


def test_write_is_atomic_and_skips_unchanged_content(tmp_path: Path) -> None:
    path = tmp_path / "models.config"
    one = render([ModelEntry("m", "/r/m", (1,), {"stable": 1})])
    assert write_atomic(path, one)
    first = path.stat()
    assert stat.S_IMODE(first.st_mode) == 0o644  # readable by a TF Serving container running as another user
    assert not write_atomic(path, one)
    assert path.stat().st_ino == first.st_ino  # untouched
    two = render([ModelEntry("m", "/r/m", (1, 2), {"stable": 1})])
    assert write_atomic(path, two)
    assert path.stat().st_ino != first.st_ino  # replaced by rename, never rewritten in place
    assert path.read_text() == two
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models.config"]
