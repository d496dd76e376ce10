"""`lstc prep` onto object storage and the shard readers from it, against a real S3 server.

The server is moto's S3 application (the real S3 protocol over HTTP on 127.0.0.1) behind the
fault-injecting WSGI layer of ``tests/local_cluster.S3Server``: answer a PUT of one key with
403 AccessDenied (an unwritable bucket), or stop the whole server when a key is PUT (the
listening socket closes; requests on connections still open get 503) and start it again on
the same port (moto keeps its objects in the process). pyarrow's S3 client reaches
it through the URI query (``endpoint_override``/``scheme``/``region``) with the credentials
in the URI, so the Ray workers of the session's instance (started before this module) need no
environment; :func:`test_endpoint_and_credentials_from_the_environment` checks the other way,
the AWS_* variables a user sets.

The reference is the session's ``tiny_shards``: the same source prepared locally with the
same settings. Faults are placed where no other shard task is in flight (the only shard left
to write, or the driver's manifest write), so the counts asserted are exact.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import TINY_SHARDS_FRAMES, TINY_SHARDS_SIZE, TINY_SHARDS_STRIDE
from local_cluster import S3Server

from data_prep.clipspec import ClipSpec
from data_prep.prep import PrepConfig, PrepStorageError, run_prep
from data_prep.shards import (
    ShardError,
    iter_clip_rows,
    load_manifest,
    read_clips,
    read_samples,
    shard_files,
)
from data_prep.storage import (
    copy_dir,
    delete_file,
    join,
    list_files,
    read_bytes,
    write_bytes,
)
from pipelines.cli import main as cli_main

BUCKET = "lstc-prep"
TINY_CLIP = ClipSpec(
    num_frames=TINY_SHARDS_FRAMES,
    stride=TINY_SHARDS_STRIDE,
    height=TINY_SHARDS_SIZE[0],
    width=TINY_SHARDS_SIZE[1],
)
TINY_CLIPS_PER_SHARD = 8  # as the tiny_shards fixture


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    server = S3Server(BUCKET)
    yield server
    server.stop()


def local_tree(root: Path) -> dict[str, str]:
    """sha256 of every file below ``root`` by relative path."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def uri_tree(root: str) -> dict[str, str]:
    """sha256 of every object below the URI ``root`` by relative key."""
    return {
        rel: hashlib.sha256(read_bytes(join(root, rel))).hexdigest() for rel in list_files(root)
    }


def prep_s3(tiny_shards: Path, out: str, **kw) -> object:
    """The tiny_shards preparation (same source and settings), written to ``out``."""
    return run_prep(
        PrepConfig(
            dataset="refer_shapes",
            root=str(tiny_shards.parent / "source"),
            out=out,
            clip=TINY_CLIP,
            clips_per_shard=TINY_CLIPS_PER_SHARD,
            progress=False,
            **kw,
        )
    )


@pytest.fixture(scope="module")
def s3_shards(s3: S3Server, tiny_shards: Path) -> str:
    """tiny_shards' source prepared by `lstc prep --out s3://...` (the CLI, in this process)."""
    out = s3.uri("full")
    h, w = TINY_SHARDS_SIZE
    rc = cli_main(
        ["prep", "--dataset", "refer_shapes", "--root", str(tiny_shards.parent / "source"),
         "--out", out, "--frames", str(TINY_SHARDS_FRAMES), "--stride", str(TINY_SHARDS_STRIDE),
         "--size", str(h), str(w), "--clips-per-shard", str(TINY_CLIPS_PER_SHARD),
         "--no-progress"]
    )  # fmt: skip
    assert rc == 0
    return out


# ----------------------------------------------------------------------------- storage


def test_join_keeps_the_uri_query_and_plain_paths():
    assert join("s3://b/x?region=r&scheme=http", "a", "b.json") == (
        "s3://b/x/a/b.json?region=r&scheme=http"
    )
    assert join("s3://u:p@b/x/", "_progress/t-1.json") == "s3://u:p@b/x/_progress/t-1.json"
    assert join("gs://b", "m.json") == "gs://b/m.json"
    assert join("file:///tmp/o", "m.json") == "file:///tmp/o/m.json"
    assert join("out/d", "train", "p.parquet") == "out/d/train/p.parquet"
    assert join(Path("/a"), "b") == "/a/b"


# ----------------------------------------------------------------------------- writing


def test_prep_to_s3_writes_the_bytes_of_a_local_prep(s3_shards: str, tiny_shards: Path, s3):
    reference = local_tree(tiny_shards)
    assert any(k.startswith("_progress/") for k in reference) and "manifest.json" in reference
    assert uri_tree(s3_shards) == reference  # shards, progress records, rejects, manifest
    assert load_manifest(s3_shards) == load_manifest(tiny_shards)
    assert not [k for k in s3.writes if ".tmp-" in k]  # nothing under a temporary key


def test_uri_root_is_refused_with_one_clear_error(s3, tmp_path, capsys):
    rc = cli_main(
        ["prep", "--dataset", "refer_shapes", "--root", s3.uri("source"),
         "--out", str(tmp_path / "o")]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert "--root must be a local folder or a shared mount" in err and "s3://" in err
    assert not (tmp_path / "o").exists()


def test_missing_bucket_fails_before_any_work(s3, tiny_shards, capsys):
    out = s3.uri("x").replace(f"@{BUCKET}/", "@no-such-bucket/")
    rc = cli_main(
        ["prep", "--dataset", "refer_shapes", "--root", str(tiny_shards.parent / "source"),
         "--out", out, "--no-progress"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1
    assert "the bucket 'no-such-bucket'" in err and "create it first" in err


# ----------------------------------------------------------------------------- reading


def test_reads_from_s3_equal_local_reads(ray_local, s3_shards: str, tiny_shards: Path):
    for split in ("train", "test"):
        uris = shard_files(s3_shards, split)
        assert all(u.startswith(f"s3://testing:testing@{BUCKET}/full/{split}/part-") for u in uris)
        assert [tuple(u.split("?")[0].rsplit("/", 2)[-2:]) for u in uris] == [
            Path(f).parts[-2:] for f in shard_files(tiny_shards, split)
        ]
        assert list(iter_clip_rows(s3_shards, split)) == list(iter_clip_rows(tiny_shards, split))
        # pyarrow reads a shard URI directly (eval's split_videos does)
        assert pq.read_table(uris[0]).equals(pq.read_table(shard_files(tiny_shards, split)[0]))

    remote = list(read_clips(s3_shards, "train").iter_rows())
    local = list(read_clips(tiny_shards, "train").iter_rows())
    assert len(remote) == 18 and remote == local  # manifest order, one block per shard

    def key(s):
        return (s["clip_id"], s["object_id"], s["expression_id"])

    remote_s = sorted(read_samples(s3_shards, "test").iter_rows(), key=key)
    local_s = sorted(read_samples(tiny_shards, "test").iter_rows(), key=key)
    assert len(remote_s) == len(local_s) == load_manifest(tiny_shards)["counts"]["test"]["samples"]
    for a, b in zip(remote_s, local_s, strict=True):
        assert key(a) == key(b) and a["text"] == b["text"]
        assert a["clip"].shape == (TINY_SHARDS_FRAMES, *TINY_SHARDS_SIZE, 3)
        assert np.array_equal(a["clip"], b["clip"]) and np.array_equal(a["mask"], b["mask"])


def test_endpoint_and_credentials_from_the_environment(s3_shards, tiny_shards, s3, monkeypatch):
    """What a user sets: AWS credentials and AWS_ENDPOINT_URL_S3; the URI is plain s3://."""
    for k in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{s3.port}")
    plain = f"s3://{BUCKET}/full"
    assert load_manifest(plain) == load_manifest(tiny_shards)
    assert list(iter_clip_rows(plain, "test")) == list(iter_clip_rows(tiny_shards, "test"))
    with pytest.raises(ShardError, match="does not exist: run `lstc prep`"):
        load_manifest(f"s3://{BUCKET}/nothing-here")


# ------------------------------------------------------------------ resume and failures


def test_resume_on_s3_redoes_only_damaged_shards(s3, tiny_shards: Path):
    reference = local_tree(tiny_shards)
    out = s3.uri("resume")
    copy_dir(tiny_shards, out)
    parts = sorted(k for k in reference if k.endswith(".parquet") and "/part-" in k)
    assert len(parts) == 3  # test 1, train 2
    delete_file(join(out, "manifest.json"))
    # killed between a shard's upload and its record: the shard is there, unrecorded
    delete_file(join(out, "_progress", parts[0].replace("/", "-") + ".json"))
    data = read_bytes(join(out, parts[1]))
    write_bytes(join(out, parts[1]), data[: len(data) // 2])  # truncated upload, record kept
    write_bytes(join(out, "train/.part-00001.parquet.tmp-9-abcd"), b"partial")  # temp leftover
    write_bytes(join(out, "train/part-00042.parquet"), b"stale shard of another plan")
    write_bytes(join(out, "_progress/train-part-00042.parquet.json"), b"{}")

    again = prep_s3(tiny_shards, out)
    assert again.shards == 3 and again.shards_skipped == 1  # parts[2] kept as it was
    assert uri_tree(out) == reference
    idle = prep_s3(tiny_shards, out)
    assert idle.shards_skipped == idle.shards == 3 and uri_tree(out) == reference


@pytest.mark.parametrize(
    "fault, key",
    [
        ("deny", "train/part-00001.parquet"),  # the bucket refuses the shard: 403
        ("stop", "train/part-00001.parquet"),  # the server goes away as the shard is uploaded
        ("stop", "manifest.json"),  # ... as the driver commits the manifest
    ],
)
def test_storage_failure_fails_clearly_then_rerun_completes(
    s3, tiny_shards: Path, capsys, fault: str, key: str
):
    reference = local_tree(tiny_shards)
    prefix = f"fault-{fault}-{key.split('/')[0].split('.')[0]}"
    out = s3.uri(prefix)
    copy_dir(tiny_shards, out)
    redo = key.endswith(".parquet")
    if redo:  # the one shard this run has to write (no other shard task is in flight)
        delete_file(join(out, key))
        delete_file(join(out, "_progress", key.replace("/", "-") + ".json"))
    else:
        delete_file(join(out, "_progress", "test-part-00000.parquet.json"))
    if fault == "deny":
        s3.deny_write.add(f"{prefix}/{key}")
    else:
        s3.stop_on_write = f"{prefix}/{key}"
    try:
        with pytest.raises(PrepStorageError) as err:
            prep_s3(tiny_shards, out)
        msg = str(err.value)
        assert f"{prefix}?" in msg and "rerun the same command to resume" in msg
        assert key in msg  # names the object that failed
        assert ("denied" in msg.lower()) == (fault == "deny")
        if fault == "stop":
            assert not s3.running
            # while the store is down the CLI fails at once, in one line, exit code 1
            rc = cli_main(
                ["prep", "--dataset", "refer_shapes", "--root", str(tiny_shards.parent / "source"),
                 "--out", out, "--no-progress"]
            )  # fmt: skip
            cli_err = capsys.readouterr().err
            assert rc == 1 and cli_err.count("\n") == 1
            assert "lstc prep: cannot reach the output store" in cli_err
    finally:
        s3.restart_if_stopped()
    # nothing half-done is taken as complete: the manifest was retracted before the change
    with pytest.raises(ShardError, match="does not exist"):
        load_manifest(out)
    files = list_files(out)
    assert key not in files and "manifest.json" not in files
    for rel in (f for f in files if f.startswith("_progress/")):  # every record is honest
        rec = json.loads(read_bytes(join(out, rel)))
        assert hashlib.sha256(read_bytes(join(out, rec["path"]))).hexdigest() == rec["sha256"]

    again = prep_s3(tiny_shards, out)
    assert again.shards_skipped == again.shards - (1 if redo else 0)
    assert uri_tree(out) == reference
