"""A write whose reply is lost after it landed (the SDK then retries it and gets 412) is recognised as our own:
publish, label and promote report success exactly once, and a retried publish with the same idempotency key returns
the version the first run published. The reply is dropped by a proxy in front of the real S3 server (moto)."""

from __future__ import annotations

from pathlib import Path

from model_export.manifest import load_manifest
from model_export.publish import publish
from model_export.store import Store
from model_export.versions import promote, set_label
from tests.support.proxy import Proxy, conditional_manifest_put


def test_publish_whose_commit_reply_is_lost_succeeds_once(
    proxied: tuple[Proxy, Store, Store], savedmodels: dict[str, Path]
) -> None:
    proxy, st, direct = proxied
    proxy.drop_reply(conditional_manifest_put)
    result = publish(savedmodels["v1"], st, "m", label="canary")
    assert len(proxy.dropped) == 1, "the fault must have been injected"
    assert (result.version, result.labels, result.reused) == (1, ["canary"], False)
    manifest, _ = load_manifest(direct, "m")
    assert sorted(manifest.versions) == [1]
    assert [(h.label, h.to_version) for h in manifest.history] == [("canary", 1)]
    assert list(direct.list("m/_pending/")) == [], "the reservation is released after a recognised commit"


def test_label_and_promote_whose_reply_is_lost_succeed_once(
    proxied: tuple[Proxy, Store, Store], savedmodels: dict[str, Path]
) -> None:
    proxy, st, direct = proxied
    publish(savedmodels["v1"], direct, "m", label="stable")
    publish(savedmodels["v2"], direct, "m")

    proxy.drop_reply(conditional_manifest_put)
    assert set_label(st, "m", "canary", 2).labels == {"stable": 1, "canary": 2}
    proxy.drop_reply(conditional_manifest_put)
    assert promote(st, "m").labels == {"stable": 2}
    assert len(proxy.dropped) == 2

    manifest, _ = load_manifest(direct, "m")
    assert manifest.labels == {"stable": 2}
    moves = [(h.label, h.from_version, h.to_version, h.action) for h in manifest.history]
    assert moves == [
        ("stable", None, 1, "publish"),
        ("canary", None, 2, "label"),
        ("stable", 1, 2, "promote"),
        ("canary", 2, None, "promote"),
    ]


def test_lost_reply_to_a_version_file_is_recognised_as_our_own_object(
    proxied: tuple[Proxy, Store, Store], savedmodels: dict[str, Path]
) -> None:
    proxy, st, direct = proxied
    proxy.drop_reply(lambda r: r.method == "PUT" and r.path.split("?")[0].endswith("/m/1/saved_model.pb"))
    result = publish(savedmodels["v1"], st, "m")
    assert len(proxy.dropped) == 1
    assert result.version == 1
    manifest, _ = load_manifest(direct, "m")
    assert sorted(manifest.versions) == [1]


def test_retry_with_the_same_idempotency_key_returns_the_first_version(
    proxied: tuple[Proxy, Store, Store], savedmodels: dict[str, Path]
) -> None:
    proxy, st, direct = proxied
    proxy.drop_reply(conditional_manifest_put)
    first = publish(savedmodels["v1"], st, "m", idempotency_key="train-42")
    again = publish(savedmodels["v1"], st, "m", idempotency_key="train-42")
    other = publish(savedmodels["v1"], st, "m", idempotency_key="train-43")
    assert (first.version, first.reused) == (1, False)
    assert (again.version, again.reused) == (1, True)
    assert (other.version, other.reused) == (2, False)
    manifest, _ = load_manifest(direct, "m")
    assert sorted(manifest.versions) == [1, 2]
    assert manifest.get(1).idempotency_key == "train-42"
