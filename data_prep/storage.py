"""The project's one filesystem helper: where a path or URI lives, and atomic writes.

Every file the pipeline writes for others to read (shards, progress records, manifests,
checkpoints, summaries, submission zips, synthetic videos) goes through here, so that a
reader never sees a half-written file under its final name.

* :func:`resolve` maps a plain path or a URI (``file://``, ``s3://``, ``gs://``, anything
  ``pyarrow.fs.FileSystem.from_uri`` knows) to ``(pyarrow filesystem, path)``. Plain paths
  become absolute paths on the ``LocalFileSystem``; URIs are never fed to ``Path.resolve``.
* Files: :func:`write_bytes`, :func:`write_text`, :func:`write_json`, and :func:`atomic_path`
  for writers that need a file name (``pq.write_table``, ``zipfile``, a video encoder).
  Locally the bytes go to a temporary file in the destination's folder, are flushed and
  ``fsync``-ed, and ``os.replace`` renames it into place. On an object store a single PUT is
  atomic, so the bytes are written directly through ``open_output_stream``.
* Folders (local only): :func:`atomic_dir` yields a fresh sibling folder and swaps it into
  place with :func:`replace_dir`; :func:`copy_dir` copies a folder that way. (An object store
  has no folder rename; :func:`copy_dir` there copies file by file.)

Temporary names are ``.<name>.tmp-<pid>-<random>`` beside the destination (:data:`TMP_GLOB`
finds the leftovers of a killed process).

Reading and listing, for paths and URIs alike: :func:`join` (relative parts onto a path or
URI, keeping a URI's query), :func:`read_bytes`, :func:`sha256`, :func:`file_size`,
:func:`list_files` and :func:`delete_file`.

Object stores. A single PUT is atomic and a multipart upload becomes visible only when it is
completed, but pyarrow's output stream *completes* the upload when it is closed, also when
the writer raised part-way (pyarrow has no abort): a failed write can leave a truncated object
under its final key. Writers whose output others trust therefore record a checksum after the
write (``lstc prep``'s progress records and manifest) and readers of resumable state verify it.
Uploads of a killed process that never completed stay invisible (a bucket lifecycle rule
"abort incomplete multipart uploads after N days" reclaims their space).

Reaching an S3 endpoint: credentials come from the usual AWS chain (``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, ``~/.aws``, an instance profile). An S3
compatible server other than AWS (MinIO, Ceph, moto) is named either by the environment,
``AWS_ENDPOINT_URL_S3=http://host:port`` (else ``AWS_ENDPOINT_URL``), or in the URI itself:
``s3://bucket/prefix?endpoint_override=host:port&scheme=http&region=r``. Checked with pyarrow
25: ``FileSystem.from_uri`` (what :func:`resolve` calls) reads those variables and bakes the
endpoint into the filesystem's options, while a bare ``pyarrow.fs.S3FileSystem()`` ignores
them (apache/arrow#49643 reports the same for pyarrow 23). Credentials are looked up by each
process, so on a cluster every Ray node needs them (and the endpoint variable, for tasks that
resolve a URI themselves); a URI query travels with the URI and with a pickled filesystem.

This module sits in ``data_prep`` (the lowest layer that both ``data_prep`` and ``pipelines``
may import) and imports neither ``pipelines``, ``lstc`` nor ``torch``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

PathOrUri = str | os.PathLike[str]

#: glob (relative to a folder) of the temporary files and folders left by a killed writer
TMP_GLOB = ".*.tmp-*"

#: bytes per read when streaming a file to an object store
_CHUNK = 8 << 20

#: ``scheme://...`` (a scheme of two letters or more, so a drive letter is no scheme) or ``file:``
_URI = re.compile(r"^(?:[A-Za-z][A-Za-z0-9+.-]+://|file:)")


def is_uri(path_or_uri: PathOrUri) -> bool:
    """True for URIs (``file:``, ``s3://``, ``gs://``, ...), False for plain paths."""
    return bool(_URI.match(os.fspath(path_or_uri)))


def resolve(path_or_uri: PathOrUri) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, path)`` of a plain path (``LocalFileSystem``, absolute path, ``~``
    expanded) or of a URI (``pyarrow.fs.FileSystem.from_uri``; query parameters such as
    ``?region=...`` or ``?endpoint_override=...`` configure object-store clients)."""
    s = os.fspath(path_or_uri)
    if is_uri(s):
        fs, path = pafs.FileSystem.from_uri(s)
        return fs, path
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(s))


def is_local(fs: pafs.FileSystem) -> bool:
    return isinstance(fs, pafs.LocalFileSystem)


def _tmp_sibling(path: str, suffix: str = "") -> str:
    """A fresh temporary name in ``path``'s folder (``suffix`` kept for format sniffing)."""
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}{suffix}")


def _remove(path: str) -> None:
    """Remove a file or folder if present (clean-up after a failed write)."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _fsync(path: str) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


# ------------------------------------------------------------------------------------ files


def write_bytes(dest: PathOrUri, data: bytes | bytearray | memoryview) -> None:
    """Write ``data`` to ``dest`` atomically (parent folders are created locally)."""
    fs, path = resolve(dest)
    if not is_local(fs):
        with fs.open_output_stream(path) as out:
            out.write(data)
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = _tmp_sibling(path)
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def write_text(dest: PathOrUri, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``dest`` atomically."""
    write_bytes(dest, text.encode(encoding))


def write_json(
    dest: PathOrUri,
    obj: Any,
    *,
    indent: int | None = None,
    sort_keys: bool = True,
    default: Callable[[Any], Any] | None = None,
) -> None:
    """Write ``json.dumps(obj, ...)`` plus a final newline to ``dest`` atomically."""
    write_text(dest, json.dumps(obj, indent=indent, sort_keys=sort_keys, default=default) + "\n")


@contextlib.contextmanager
def atomic_path(dest: PathOrUri, *, suffix: str = "") -> Iterator[Path]:
    """Yield a local temporary file path for a writer that needs a name; when the block
    exits without error the file becomes ``dest`` (locally: fsync + rename in ``dest``'s
    folder; on an object store: one upload). On error the temporary file is removed and an
    existing ``dest`` is left unchanged.

    ``suffix`` is appended to the temporary name, for writers that pick the format from the
    extension (e.g. ``suffix=".mp4"`` for an encoder).
    """
    fs, path = resolve(dest)
    if not is_local(fs):
        with tempfile.TemporaryDirectory(prefix="lstc-upload-") as d:
            tmp = Path(d) / f"{os.path.basename(path)}{suffix}"
            yield tmp
            if not tmp.is_file():
                raise FileNotFoundError(f"the writer did not create {tmp} (for {path})")
            _upload(pafs.LocalFileSystem(), str(tmp), fs, path)
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = _tmp_sibling(path, suffix)
    try:
        yield Path(tmp)
        if not os.path.isfile(tmp):
            raise FileNotFoundError(f"the writer did not create {tmp} (for {path})")
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


# ---------------------------------------------------------------------------------- folders


def _local_dir(path_or_uri: PathOrUri, what: str) -> str:
    fs, path = resolve(path_or_uri)
    if not is_local(fs):
        raise ValueError(
            f"{what} needs a local folder, got {os.fspath(path_or_uri)!r}: an object store has "
            "no atomic folder rename"
        )
    return path


def replace_dir(tmp: PathOrUri, final: PathOrUri) -> None:
    """Move the finished folder ``tmp`` (a sibling of ``final``) into place, replacing an
    existing ``final``: a reader sees the old folder or the new one (or, for the instant
    between two renames, none), never a half-written one."""
    src = _local_dir(tmp, "replace_dir")
    dst = _local_dir(final, "replace_dir")
    if not os.path.exists(dst):
        os.replace(src, dst)
        return
    folder, name = os.path.split(dst)
    old = os.path.join(folder, f".{name}.tmp-old-{os.getpid()}-{secrets.token_hex(4)}")
    os.replace(dst, old)
    try:
        os.replace(src, dst)
    except BaseException:
        os.replace(old, dst)  # put the previous folder back
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(dest: PathOrUri) -> Iterator[Path]:
    """Yield a fresh empty folder beside ``dest``; when the block exits without error it
    replaces ``dest`` (:func:`replace_dir`), otherwise it is removed and ``dest`` is left
    unchanged. Local folders only."""
    path = _local_dir(dest, "atomic_dir")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = _tmp_sibling(path)
    os.mkdir(tmp)
    try:
        yield Path(tmp)
        replace_dir(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def copy_dir(src: PathOrUri, dst: PathOrUri) -> None:
    """Copy the folder ``src`` to ``dst`` (replacing ``dst``). Local to local the copy is
    atomic (:func:`atomic_dir`); to or from an object store the files are copied one by one
    (each PUT atomic, the folder as a whole not)."""
    src_fs, src_path = resolve(src)
    dst_fs, dst_path = resolve(dst)
    if is_local(src_fs) and is_local(dst_fs):
        with atomic_dir(dst_path) as tmp:
            shutil.copytree(src_path, tmp, dirs_exist_ok=True)
        return
    if dst_fs.get_file_info(dst_path).type != pafs.FileType.NotFound:
        dst_fs.delete_dir_contents(dst_path, missing_dir_ok=True)
    if is_local(dst_fs):
        pafs.copy_files(src_path, dst_path, source_filesystem=src_fs, destination_filesystem=dst_fs)
        return
    for rel in list_files(src):  # one checked upload per file (see _upload)
        _upload(src_fs, f"{src_path.rstrip('/')}/{rel}", dst_fs, f"{dst_path.rstrip('/')}/{rel}")


def _upload(src_fs: pafs.FileSystem, src: str, dst_fs: pafs.FileSystem, dst: str) -> None:
    """Copy one file onto an object store, raising when the upload fails.

    ``pyarrow.fs.copy_files`` leaves closing the destination stream to its destructor, which
    only logs a failed upload ("Error ignored when destroying file"): the copy "succeeds" and
    the object is missing. Here the stream is closed explicitly, so the error is raised.
    """
    with src_fs.open_input_stream(src) as inp, dst_fs.open_output_stream(dst) as out:
        while chunk := inp.read(_CHUNK):
            out.write(chunk)


# ------------------------------------------------------------------- reading and listing


def join(base: PathOrUri, *parts: str) -> str:
    """``base`` with the ``/``-separated relative ``parts`` appended; a URI keeps its query
    (``s3://b/x?region=r`` + ``a/b.json`` -> ``s3://b/x/a/b.json?region=r``)."""
    s = os.fspath(base)
    if not is_uri(s):
        return os.path.join(s, *parts)
    head, sep, query = s.partition("?")
    tail = "/".join(p.strip("/") for p in parts if p.strip("/"))
    if tail:
        head = f"{head.rstrip('/')}/{tail}"
    return head + sep + query


def read_bytes(src: PathOrUri) -> bytes:
    """The content of the file ``src`` (``FileNotFoundError`` when absent)."""
    fs, path = resolve(src)
    with fs.open_input_stream(path) as f:
        return f.read()


def file_size(src: PathOrUri) -> int | None:
    """Size in bytes of the file ``src``; None when there is no file there."""
    fs, path = resolve(src)
    info = fs.get_file_info(path)
    return info.size if info.type == pafs.FileType.File else None


def sha256(src: PathOrUri, chunk: int = 1 << 20) -> str:
    """Hex sha256 of the file ``src``, streamed in ``chunk``-byte reads."""
    import hashlib

    fs, path = resolve(src)
    h = hashlib.sha256()
    with fs.open_input_stream(path) as f:
        while data := f.read(chunk):
            h.update(data)
    return h.hexdigest()


def list_files(root: PathOrUri) -> list[str]:
    """``/``-separated paths, relative to ``root``, of every file below it (hidden ones
    included), sorted; ``[]`` when ``root`` does not exist."""
    fs, path = resolve(root)
    base = path.rstrip("/")
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    prefix = base + "/"
    return sorted(
        i.path[len(prefix) :]
        for i in infos
        if i.type == pafs.FileType.File and i.path.startswith(prefix)
    )


def delete_file(target: PathOrUri, *, missing_ok: bool = True) -> None:
    """Delete the file ``target`` (absent: nothing happens unless ``missing_ok`` is false)."""
    fs, path = resolve(target)
    try:
        fs.delete_file(path)
    except FileNotFoundError:
        if not missing_ok:
            raise


__all__ = [
    "TMP_GLOB",
    "PathOrUri",
    "atomic_dir",
    "atomic_path",
    "copy_dir",
    "delete_file",
    "file_size",
    "is_local",
    "is_uri",
    "join",
    "list_files",
    "read_bytes",
    "replace_dir",
    "resolve",
    "sha256",
    "write_bytes",
    "write_json",
    "write_text",
]
