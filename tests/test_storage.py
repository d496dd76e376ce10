"""data_prep.storage: path/URI resolution and the atomic writes, with injected failures.

The object-store branch runs against moto's S3 server on loopback (a real S3 protocol
endpoint; pyarrow's S3 client talks to it over HTTP), configured through the URI's query.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from data_prep.storage import (
    TMP_GLOB,
    atomic_dir,
    atomic_path,
    copy_dir,
    is_uri,
    replace_dir,
    resolve,
    write_bytes,
    write_json,
    write_text,
)


class Boom(RuntimeError):
    """The injected failure."""


def listing(folder: Path) -> list[str]:
    """Every entry under ``folder`` (hidden ones included), relative, sorted."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def tree(folder: Path) -> dict[str, bytes]:
    return {k: (folder / k).read_bytes() for k in listing(folder) if (folder / k).is_file()}


# ------------------------------------------------------------------------------ resolve


def test_plain_relative_path_and_file_uri_resolve_to_the_same_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fs_rel, rel = resolve("sub/x.txt")
    fs_uri, from_uri = resolve(f"file://{tmp_path}/sub/x.txt")
    assert isinstance(fs_rel, pafs.LocalFileSystem) and isinstance(fs_uri, pafs.LocalFileSystem)
    assert rel == from_uri == str(tmp_path / "sub" / "x.txt")
    assert resolve(Path("sub") / "x.txt")[1] == rel
    # written through one spelling, read through the other
    write_text("sub/x.txt", "hello\n")
    assert (tmp_path / "sub" / "x.txt").read_text() == "hello\n"
    write_text(f"file://{tmp_path}/sub/x.txt", "again\n")
    assert Path(rel).read_text() == "again\n"


def test_uri_detection():
    assert is_uri("s3://bucket/k") and is_uri("gs://b/k") and is_uri("file:///tmp/x")
    assert is_uri("file:/tmp/x")
    assert not is_uri("/tmp/x") and not is_uri("runs/x") and not is_uri(Path("a/b"))


def test_s3_uri_resolves_without_network():
    # with the region in the query pyarrow does not look the bucket's region up
    fs, path = resolve("s3://some-bucket/runs/e2e/summary.json?region=eu-west-1")
    assert isinstance(fs, pafs.S3FileSystem) and fs.region == "eu-west-1"
    assert path == "some-bucket/runs/e2e/summary.json"


# -------------------------------------------------------------------------------- files


def test_write_round_trips_and_leave_no_temp_file(tmp_path):
    write_bytes(tmp_path / "a" / "b" / "x.bin", b"\x00\x01\xff")
    write_text(tmp_path / "t.txt", "héllo")
    write_json(tmp_path / "j.json", {"b": 1, "a": [1, 2.5, None]})
    write_json(tmp_path / "k.json", {"b": 1, "a": 2}, indent=1)
    assert (tmp_path / "a" / "b" / "x.bin").read_bytes() == b"\x00\x01\xff"
    assert (tmp_path / "t.txt").read_bytes() == "héllo".encode()
    assert (tmp_path / "j.json").read_text() == '{"a": [1, 2.5, null], "b": 1}\n'
    assert (tmp_path / "k.json").read_text() == '{\n "a": 2,\n "b": 1\n}\n'
    assert listing(tmp_path) == ["a", "a/b", "a/b/x.bin", "j.json", "k.json", "t.txt"]


def test_write_replaces_existing_file_with_the_usual_permissions(tmp_path):
    ref = tmp_path / "ref"
    ref.write_text("plain open()")  # the mode a plain write gets under this umask
    dest = tmp_path / "x.json"
    dest.write_text("old")
    write_json(dest, [1])
    assert json.loads(dest.read_text()) == [1]
    new = tmp_path / "new.json"
    write_json(new, [2])
    assert new.stat().st_mode == ref.stat().st_mode == dest.stat().st_mode


def test_failed_write_leaves_existing_file_and_no_temp(tmp_path):
    dest = tmp_path / "x.bin"
    dest.write_bytes(b"old")
    with pytest.raises(TypeError):
        write_bytes(dest, "not bytes")  # type: ignore[arg-type]  # fails inside the write
    assert dest.read_bytes() == b"old"
    assert listing(tmp_path) == ["x.bin"]


def test_atomic_path_commits_a_named_writer(tmp_path):
    dest = tmp_path / "out" / "t.parquet"
    table = pa.table({"k": [3, 1, 2], "v": ["c", "a", "b"]})
    with atomic_path(dest) as tmp:
        assert tmp.parent == dest.parent and tmp.name.startswith(".t.parquet.tmp-")
        assert not dest.exists()  # nothing under the final name while writing
        pq.write_table(table, tmp)
    assert pq.read_table(dest).equals(table)
    assert listing(tmp_path / "out") == ["t.parquet"]
    with atomic_path(tmp_path / "clip", suffix=".mp4") as tmp:
        assert tmp.name.endswith(".mp4") and tmp.match(TMP_GLOB)
        tmp.write_bytes(b"video")
    assert (tmp_path / "clip").read_bytes() == b"video"


def test_writer_raising_inside_atomic_path_leaves_nothing(tmp_path):
    dest = tmp_path / "new.zip"
    with pytest.raises(Boom):
        with atomic_path(dest) as tmp:
            tmp.write_bytes(b"half a zip")
            raise Boom
    assert listing(tmp_path) == []


def test_writer_raising_inside_atomic_path_keeps_existing_destination(tmp_path):
    dest = tmp_path / "old.zip"
    dest.write_bytes(b"complete")
    with pytest.raises(Boom):
        with atomic_path(dest) as tmp:
            tmp.write_bytes(b"half")
            raise Boom
    assert dest.read_bytes() == b"complete"
    assert listing(tmp_path) == ["old.zip"]


def test_atomic_path_block_that_writes_nothing_is_an_error(tmp_path):
    dest = tmp_path / "x"
    dest.write_bytes(b"keep")
    with pytest.raises(FileNotFoundError, match="did not create"):
        with atomic_path(dest):
            pass
    assert dest.read_bytes() == b"keep" and listing(tmp_path) == ["x"]


# ------------------------------------------------------------------------------ folders


def make_tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def test_replace_dir_over_an_existing_folder(tmp_path):
    final = make_tree(tmp_path / "ckpt", {"model.pt": b"old", "stale.txt": b"s"})
    tmp = make_tree(tmp_path / ".ckpt.new", {"model.pt": b"new", "sub/m.json": b"{}"})
    replace_dir(tmp, final)
    assert tree(final) == {"model.pt": b"new", "sub/m.json": b"{}"}
    assert listing(tmp_path) == ["ckpt", "ckpt/model.pt", "ckpt/sub", "ckpt/sub/m.json"]
    fresh = make_tree(tmp_path / ".other.new", {"a": b"1"})
    replace_dir(fresh, tmp_path / "other")  # no previous folder
    assert tree(tmp_path / "other") == {"a": b"1"}


def test_replace_dir_failure_puts_the_old_folder_back(tmp_path):
    final = make_tree(tmp_path / "ckpt", {"model.pt": b"old"})
    with pytest.raises(FileNotFoundError):
        replace_dir(tmp_path / "missing", final)  # the second rename fails
    assert tree(final) == {"model.pt": b"old"}
    assert listing(tmp_path) == ["ckpt", "ckpt/model.pt"]


def test_atomic_dir_commits_or_leaves_destination_unchanged(tmp_path):
    dest = tmp_path / "best"
    with atomic_dir(dest) as d:
        assert d.parent == tmp_path and not dest.exists()
        (d / "a.txt").write_text("1")
    assert tree(dest) == {"a.txt": b"1"}
    with pytest.raises(Boom):
        with atomic_dir(dest) as d:
            (d / "a.txt").write_text("2")
            (d / "b.txt").write_text("half")
            raise Boom
    assert tree(dest) == {"a.txt": b"1"}
    assert listing(tmp_path) == ["best", "best/a.txt"]


def test_copy_dir_copies_and_replaces(tmp_path):
    src = make_tree(tmp_path / "src", {"model.pt": b"\x01" * 1000, "d/e/f.json": b"[1]"})
    dst = make_tree(tmp_path / "runs" / "last", {"stale": b"x"})
    copy_dir(src, dst)
    assert tree(dst) == tree(src) == {"model.pt": b"\x01" * 1000, "d/e/f.json": b"[1]"}
    assert listing(tmp_path / "runs") == [
        "last",
        "last/d",
        "last/d/e",
        "last/d/e/f.json",
        "last/model.pt",
    ]
    copy_dir(src, tmp_path / "runs" / "new")  # into a folder that does not exist yet
    assert tree(tmp_path / "runs" / "new") == tree(src)


def test_folder_swaps_refuse_object_store_uris(tmp_path):
    with pytest.raises(ValueError, match="local folder"):
        replace_dir(tmp_path, "s3://bucket/x?region=us-east-1")
    with pytest.raises(ValueError, match="local folder"):
        with atomic_dir("s3://bucket/x?region=us-east-1"):
            pass


# ------------------------------------------------------------------------- object store


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on loopback and a bucket in it; yields the URI query to reach it."""
    from conftest import free_port
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        query = f"?endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1"
        fs, _ = resolve(f"s3://lstc{query}&allow_bucket_creation=true")
        fs.create_dir("lstc")
        yield query
    server.stop()


def s3_listing(query: str) -> dict[str, bytes]:
    fs, _ = resolve(f"s3://lstc{query}")
    files = fs.get_file_info(pafs.FileSelector("lstc", recursive=True))
    out = {}
    for f in files:
        if f.type == pafs.FileType.File:
            with fs.open_input_stream(f.path) as fh:
                out[f.path] = fh.read()
    return out


def test_object_store_writes_round_trip(s3, tmp_path):
    fs, _ = resolve(f"s3://lstc{s3}")
    fs.delete_dir_contents("lstc")
    write_json(f"s3://lstc/run/summary.json{s3}", {"epoch": 2})
    table = pa.table({"x": [1, 2, 3]})
    with atomic_path(f"s3://lstc/run/part-00000.parquet{s3}") as tmp:
        assert not tmp.is_relative_to(tmp_path)  # a local temp file, uploaded afterwards
        pq.write_table(table, tmp)
    with pytest.raises(Boom):
        with atomic_path(f"s3://lstc/run/broken.parquet{s3}") as tmp:
            pq.write_table(table, tmp)
            raise Boom
    objects = s3_listing(s3)
    assert sorted(objects) == ["lstc/run/part-00000.parquet", "lstc/run/summary.json"]
    assert objects["lstc/run/summary.json"] == b'{"epoch": 2}\n'
    assert pq.read_table(pa.BufferReader(objects["lstc/run/part-00000.parquet"])).equals(table)


def test_copy_dir_to_and_from_object_store(s3, tmp_path):
    fs, _ = resolve(f"s3://lstc{s3}")
    fs.delete_dir_contents("lstc")
    src = make_tree(tmp_path / "ckpt", {"model.pt": b"weights", "sub/metrics.json": b"{}"})
    write_bytes(f"s3://lstc/best/stale.txt{s3}", b"old")
    copy_dir(src, f"s3://lstc/best{s3}")
    assert s3_listing(s3) == {"lstc/best/model.pt": b"weights", "lstc/best/sub/metrics.json": b"{}"}
    back = tmp_path / "back"
    copy_dir(f"s3://lstc/best{s3}", back)
    assert tree(back) == tree(src)
    assert not list(tmp_path.glob(TMP_GLOB))
