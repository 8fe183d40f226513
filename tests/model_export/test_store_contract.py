"""One contract, three backends: a local directory, a real S3 API server (moto) and a real GCS API server."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from model_export.errors import InvalidStoreURI, ObjectNotFound, PreconditionFailed, StoreNotFound
from model_export.store import open_store, parse_uri


def test_create_only_write_refuses_an_existing_object(store_uri: str) -> None:
    st = open_store(store_uri)
    st.write("m/manifest.json", b"first", if_absent=True)
    with pytest.raises(PreconditionFailed):
        st.write("m/manifest.json", b"second", if_absent=True)
    assert st.read("m/manifest.json").data == b"first"


def test_compare_and_swap_refuses_a_stale_token(store_uri: str) -> None:
    st = open_store(store_uri)
    t1 = st.write("k", b"one")
    t2 = st.write("k", b"two", if_token=t1)
    assert t2 != t1
    with pytest.raises(PreconditionFailed):
        st.write("k", b"three", if_token=t1)
    blob = st.read("k")
    assert (blob.data, blob.token) == (b"two", t2)


def test_read_if_changed_is_none_only_for_the_current_token(store_uri: str) -> None:
    st = open_store(store_uri)
    old = st.write("k", b"one")
    new = st.write("k", b"two")
    assert st.read_if_changed("k", new) is None
    changed = st.read_if_changed("k", old)
    assert changed is not None and changed.data == b"two" and changed.token == new
    first = st.read_if_changed("k", None)
    assert first is not None and first.data == b"two"


def test_put_file_is_create_only_and_reports_the_stored_bytes(store_uri: str, tmp_path: Path) -> None:
    st = open_store(store_uri)
    src = tmp_path / "w.bin"
    payload = os.urandom(300_000)
    src.write_bytes(payload)
    sent: list[int] = []
    stored = st.put_file("m/1/w.bin", src, progress=sent.append)
    back = tmp_path / "back.bin"
    st.download_file("m/1/w.bin", back)
    assert (stored.sha256, stored.size) == (hashlib.sha256(back.read_bytes()).hexdigest(), len(payload))
    assert sum(sent) == len(payload)
    # The same bytes again (a retry whose first reply was lost) succeed; other bytes never replace the object.
    assert st.put_file("m/1/w.bin", src).sha256 == stored.sha256
    src.write_bytes(os.urandom(300_000))
    with pytest.raises(PreconditionFailed):
        st.put_file("m/1/w.bin", src)
    st.download_file("m/1/w.bin", back)
    assert back.read_bytes() == payload


def test_missing_object(store_uri: str) -> None:
    st = open_store(store_uri)
    with pytest.raises(ObjectNotFound):
        st.read("nope/manifest.json")
    with pytest.raises(ObjectNotFound):
        st.read_if_changed("nope", "123")


def test_files_list_and_delete(store_uri: str, tmp_path: Path) -> None:
    st = open_store(store_uri)
    src = tmp_path / "w.bin"
    payload = bytes(range(256)) * 4096 + b"tail"
    src.write_bytes(payload)
    st.put_file("m/1/variables/w.bin", src)
    st.write("m/1/saved_model.pb", b"pb")
    st.write("other/x", b"x")
    listed = {o.key: o.size for o in st.list("m/")}
    assert listed == {"m/1/variables/w.bin": len(payload), "m/1/saved_model.pb": 2}
    assert all(o.modified.tzinfo is not None for o in st.list("m/"))
    dest = tmp_path / "back.bin"
    st.download_file("m/1/variables/w.bin", dest)
    assert dest.read_bytes() == payload
    st.delete(["m/1/variables/w.bin", "m/1/saved_model.pb", "m/1/never-existed"])
    assert list(st.list("m/")) == []
    assert [o.key for o in st.list("")] == ["other/x"]


def test_prefix_listing_is_by_key_prefix_not_directory(store_uri: str) -> None:
    st = open_store(store_uri)
    for key in ("m/1/a", "m/10/a", "m/2/a"):
        st.write(key, b"x")
    assert sorted(o.key for o in st.list("m/1/")) == ["m/1/a"]
    assert sorted(o.key for o in st.list("m/1")) == ["m/1/a", "m/10/a"]


@pytest.mark.parametrize("kind", ["s3", "gcs", "file"])
def test_missing_bucket_is_store_not_found(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    if kind == "file":
        uri = f"file://{tmp_path}/absent"
    else:
        request.getfixturevalue(f"{kind}_server")
        uri = f"{'s3' if kind == 's3' else 'gs'}://no-such-bucket-mf/prefix"
    with pytest.raises(StoreNotFound, match=r"does not exist|not an existing directory"):
        open_store(uri).check()


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("/plain/path", "unknown scheme ''"),
        ("file://relative/path", "not an absolute file URI"),
        ("s3://", "no valid bucket name"),
        ("gs://UPPER/x", "no valid bucket name"),
        ("gs://bucket/a//b", "empty or relative path segment"),
        ("s3://bucket/../x", "empty or relative path segment"),
        ("azure://c/x", "unknown scheme 'azure'"),
    ],
)
def test_bad_uris_name_the_valid_forms(uri: str, message: str) -> None:
    with pytest.raises(InvalidStoreURI, match=message) as exc:
        parse_uri(uri)
    assert "file:///absolute/path, gs://bucket/prefix or s3://bucket/prefix" in str(exc.value)


def test_uri_parts() -> None:
    assert parse_uri("s3://b-1/a/b/") == ("s3", "b-1", "a/b")
    assert parse_uri("gs://bucket") == ("gs", "bucket", "")
    assert parse_uri("file:///srv/models/") == ("file", "/srv/models", "")
