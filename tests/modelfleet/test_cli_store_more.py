"""`models`, `history`, "did you mean" for unknown models, and MODELFLEET_STORE / MODELFLEET_MODEL as defaults."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model_export import versions as ops
from model_export.store import open_store
from tests.support.cli import run_cli as run


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.delenv("MODELFLEET_STORE", raising=False)
    monkeypatch.delenv("MODELFLEET_MODEL", raising=False)
    monkeypatch.setenv("MODELFLEET_ACTOR", "ci@test")
    (tmp_path / "s").mkdir()
    return f"file://{tmp_path / 's'}"


def publish(capsys: pytest.CaptureFixture[str], sm: Path, store: str, model: str, *extra: str) -> None:
    code, _, err = run(capsys, "publish", str(sm), "--store", store, "--model", model, *extra)
    assert (code, err) == (0, ""), err


@pytest.fixture
def two_models(capsys: pytest.CaptureFixture[str], store: str, savedmodels: dict[str, Path]) -> str:
    """iris: v1 stable, v2 canary; wine: v1 unlabelled. Plus non-model objects a `models` listing must skip."""
    publish(capsys, savedmodels["v1"], store, "iris", "--label", "stable")
    publish(capsys, savedmodels["v2"], store, "iris", "--label", "canary")
    publish(capsys, savedmodels["v1"], store, "wine")
    st = open_store(store)
    st.write("_agent/abc/modelfleet-1.0-py3-none-any.whl", b"wheel")
    st.write("_fleet/stable/status/vm-1.json", b"{}")
    st.write("notamodel/readme.txt", b"no manifest here")
    return store


def test_models_text_and_json(capsys: pytest.CaptureFixture[str], two_models: str) -> None:
    code, out, err = run(capsys, "models", "--store", two_models)
    assert (code, err) == (0, "")
    assert [line.split() for line in out.splitlines()] == [
        ["MODEL", "LABELS", "LATEST", "VERSIONS"],
        ["iris", "canary=v2,stable=v1", "2", "2"],
        ["wine", "-", "1", "1"],
    ]

    code, out, err = run(capsys, "models", "--store", two_models, "--json")
    assert (code, err) == (0, "")
    assert json.loads(out) == {
        "store": two_models,
        "models": [
            {"model": "iris", "labels": {"canary": 2, "stable": 1}, "latest_version": 2, "versions": 2},
            {"model": "wine", "labels": {}, "latest_version": 1, "versions": 1},
        ],
    }
    assert [m.model for m in ops.list_models(two_models)] == ["iris", "wine"]


def test_models_of_an_empty_store(capsys: pytest.CaptureFixture[str], store: str) -> None:
    assert run(capsys, "models", "--store", store) == (0, f"no models in {store}\n", "")
    code, out, _ = run(capsys, "models", "--store", store, "--json")
    assert (code, json.loads(out)) == (0, {"store": store, "models": []})


def test_models_takes_no_model_option(capsys: pytest.CaptureFixture[str], store: str) -> None:
    code, out, err = run(capsys, "models", "--store", store, "--model", "iris")
    assert (code, out) == (2, "")
    assert err == "modelfleet: error: unrecognized arguments: --model iris (see `modelfleet --help`)\n"


def test_history_text_and_json(capsys: pytest.CaptureFixture[str], two_models: str) -> None:
    assert run(capsys, "promote", "--store", two_models, "--model", "iris")[0] == 0
    code, out, err = run(capsys, "history", "--store", two_models, "--model", "iris")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == "model iris"
    assert lines[1].split() == ["TIME", "LABEL", "FROM", "TO", "ACTION", "BY", "REASON"]
    # time, label, from, to, action, by: newest last.
    assert [line.split()[1:] for line in lines[2:]] == [
        ["stable", "-", "v1", "publish", "ci@test"],
        ["canary", "-", "v2", "publish", "ci@test"],
        ["stable", "v1", "v2", "promote", "ci@test"],
        ["canary", "v2", "-", "promote", "ci@test"],
    ]

    code, out, err = run(capsys, "history", "--store", two_models, "--model", "iris", "--json")
    assert (code, err) == (0, "")
    doc = json.loads(out)
    manifest = json.loads(open_store(two_models).read("iris/manifest.json").data)
    assert doc == {"model": "iris", "history": manifest["history"]}
    assert [(h["label"], h["from"], h["to"], h["action"]) for h in doc["history"]][-1] == ("canary", 2, None, "promote")


def test_history_shows_a_decisions_reason_and_json_keeps_its_evidence(
    capsys: pytest.CaptureFixture[str], two_models: str
) -> None:
    from model_export.manifest import update_manifest

    st = open_store(two_models)
    evidence = {"requests": 1200, "p_value": 0.41}
    update_manifest(
        st,
        "iris",
        lambda m: m.record_decision("canary", "canary-inconclusive", "ci@test", "too few errors to tell", evidence),
        action="canary-inconclusive",
    )
    code, out, _ = run(capsys, "history", "--store", two_models, "--model", "iris")
    assert code == 0
    assert out.splitlines()[-1].split()[1:] == [
        "canary",
        "v2",
        "v2",
        "canary-inconclusive",
        "ci@test",
        "too",
        "few",
        "errors",
        "to",
        "tell",
    ]
    code, out, _ = run(capsys, "history", "--store", two_models, "--model", "iris", "--json")
    last = json.loads(out)["history"][-1]
    assert (last["reason"], last["evidence"]) == ("too few errors to tell", evidence)


def test_history_of_an_unknown_model(capsys: pytest.CaptureFixture[str], store: str) -> None:
    assert run(capsys, "history", "--store", store, "--model", "iris") == (
        2,
        "",
        f"modelfleet: error: no model 'iris' in {store} (nothing published under that name)\n",
    )


@pytest.mark.parametrize(
    ("command", "model", "hint"),
    [
        ("versions", "irsi", "; did you mean 'iris'?"),
        ("history", "Wine", "; did you mean 'wine'?"),
        ("promote", "iris2", "; did you mean 'iris'?"),
        ("versions", "mnist", ""),
    ],
)
def test_unknown_model_lists_the_models_and_suggests_a_close_one(
    capsys: pytest.CaptureFixture[str], two_models: str, command: str, model: str, hint: str
) -> None:
    code, out, err = run(capsys, command, "--store", two_models, "--model", model)
    assert (code, out) == (2, "")
    assert err == f"modelfleet: error: no model {model!r} in {two_models} (models: iris, wine{hint})\n"


def test_store_and_model_from_the_environment(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, two_models: str
) -> None:
    monkeypatch.setenv("MODELFLEET_STORE", two_models)
    code, out, _ = run(capsys, "models", "--json")
    assert code == 0 and [m["model"] for m in json.loads(out)["models"]] == ["iris", "wine"]
    code, out, _ = run(capsys, "versions", "--model", "wine", "--json")
    assert code == 0 and json.loads(out)["model"] == "wine"

    monkeypatch.setenv("MODELFLEET_MODEL", "iris")
    code, out, _ = run(capsys, "versions", "--json")
    assert code == 0 and json.loads(out)["labels"] == {"canary": 2, "stable": 1}
    # The flags win over the variables.
    code, out, _ = run(capsys, "versions", "--model", "wine", "--json")
    assert code == 0 and json.loads(out)["model"] == "wine"
    monkeypatch.setenv("MODELFLEET_STORE", f"{two_models}/absent")
    code, out, _ = run(capsys, "versions", "--store", two_models, "--json")
    assert code == 0 and json.loads(out)["model"] == "iris"


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (
            ["models"],
            {},
            "modelfleet models: error: argument --store: missing: pass --store URI or set MODELFLEET_STORE",
        ),
        (
            ["versions", "--model", "iris"],
            {},
            "modelfleet versions: error: argument --store: missing: pass --store URI or set MODELFLEET_STORE",
        ),
        (
            ["versions", "--model", "iris"],
            {"MODELFLEET_STORE": ""},
            "modelfleet versions: error: argument --store: missing: pass --store URI or set MODELFLEET_STORE",
        ),
        (
            ["history", "--store", "file:///nowhere"],
            {},
            "modelfleet history: error: argument --model: missing: pass --model NAME or set MODELFLEET_MODEL",
        ),
    ],
)
def test_missing_store_or_model_names_the_flag_and_the_variable(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    store: str,
    argv: list[str],
    env: dict[str, str],
    message: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    command = argv[0]
    assert run(capsys, *argv) == (2, "", f"{message} (see `modelfleet {command} --help`)\n")


def test_help_names_the_variables(capsys: pytest.CaptureFixture[str], store: str) -> None:
    code, out, _ = run(capsys, "history", "--help")
    assert code == 0
    assert "$MODELFLEET_STORE" in out and "$MODELFLEET_MODEL" in out


# -- a label one typo away from one the model has --------------------------------------------------------------------


def test_a_label_typo_is_refused_with_a_suggestion_and_moves_nothing(
    capsys: pytest.CaptureFixture[str], two_models: str, savedmodels: dict[str, Path]
) -> None:
    """`label stabel 2` used to create a label "stabel": no fleet serves it, and the user believed stable moved."""
    before = open_store(two_models).read("iris/manifest.json").data
    assert run(capsys, "label", "--store", two_models, "--model", "iris", "stabel", "2") == (
        2,
        "",
        "modelfleet: error: model 'iris': label 'stabel' is new to this model; did you mean 'stable'? "
        "(--new-label creates it)\n",
    )
    code, _, err = run(
        capsys, "publish", str(savedmodels["v2"]), "--store", two_models, "--model", "iris", "--label", "canry"
    )
    assert code == 2 and "did you mean 'canary'?" in err and "nothing uploaded" in err
    assert open_store(two_models).read("iris/manifest.json").data == before
    assert not [o.key for o in open_store(two_models).list("iris/3/")]  # nothing uploaded for a version 3
    code, _, err = run(capsys, "label", "--store", two_models, "--model", "iris", "stabel", "--clear")
    assert code == 2 and err.rstrip().endswith("(labels: canary, stable); did you mean 'stable'?")

    # A label like no other needs no flag; one that looks like a typo does, and then it exists.
    assert run(capsys, "label", "--store", two_models, "--model", "iris", "experiment_b", "1")[0] == 0
    assert run(capsys, "label", "--store", two_models, "--model", "iris", "stabel", "2", "--new-label")[0] == 0
    assert ops.get_manifest(two_models, "iris").labels == {"canary": 2, "experiment_b": 1, "stabel": 2, "stable": 1}
    # A first publish to a new model may name a fleet's role without the flag.
    publish(capsys, savedmodels["v1"], two_models, "fresh", "--label", "canary")
