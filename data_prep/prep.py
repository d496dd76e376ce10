"""``lstc prep``: benchmark files → Parquet shards + manifest + rejects, as a Ray Data job.

Flow: the benchmark is indexed with its reader (metadata only, no pixels; on a cluster in a Ray
task kept off the head, :mod:`data_prep.placement`); samples are grouped into clips (one per
video × target frame) and clips into shards by a deterministic assignment (split, then video
id and target frame, chunks of ``clips_per_shard``). Shards that a previous run finished —
progress record present, same plan hash, file checksum matching — are skipped. The remaining
shard plans stream through a Ray Data ``map`` whose tasks decode, resize, encode and write
their shard (:mod:`data_prep.shard_writer`); the driver only receives small records, so
memory stays bounded whatever the dataset size.
Finally ``rejects.parquet`` and ``manifest.json`` are written atomically. Output bytes are a
function of the input and the config only: a killed-and-rerun job equals an uninterrupted one.

Output on object storage. ``--out`` may be a local folder or a URI (``s3://bucket/prefix``,
``gs://...``, ``file://...``); every write and listing goes through :mod:`data_prep.storage`
on the filesystem resolved from it. The commit order is what makes the result safe without
a rename:

1. a shard is written to its final key in one upload (a multipart upload becomes visible only
   when complete);
2. then its progress record, which carries the shard's size and sha256: resume trusts a shard
   only when its record is present and its bytes match that checksum, so a truncated object
   (pyarrow completes an upload even when the writer failed part-way) or a shard without a
   record is written again;
3. ``manifest.json`` last. An existing manifest is deleted before the first shard is written
   or removed, so a reader never takes a dataset that is being changed for a complete one.

Temporary files of a killed local run are removed; on an object store nothing is written under
a temporary key, and a killed upload never becomes visible. The source ``--root`` stays a local
folder or shared mount (videos are decoded from local files); a URI root is refused.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from data_prep.clips import build_clips
from data_prep.clipspec import ClipSpec
from data_prep.heldout import HeldoutSpec, assign_samples, assign_units
from data_prep.readers import get_reader
from data_prep.readers.base import IndexUnit
from data_prep.samples import DatasetRootError, Reject
from data_prep.schema import SCHEMA_VERSION
from data_prep.shard_writer import progress_path, write_shard
from data_prep.storage import (
    TMP_GLOB,
    atomic_path,
    delete_file,
    file_size,
    is_local,
    is_uri,
    join,
    list_files,
    read_bytes,
    resolve,
    sha256,
    write_json,
)

#: parallel checksum reads when looking for finished shards (I/O bound on object stores)
_VERIFY_THREADS = 8


class PrepStorageError(OSError):
    """The output store could not be read or written (unreachable endpoint, missing bucket,
    access denied, ...). Finished shards stay valid: rerunning the same command resumes."""


@dataclass(frozen=True)
class PrepConfig:
    """Everything ``lstc prep`` needs; ``output_config`` is what determines the bytes written."""

    dataset: str
    root: str
    out: str
    clip: ClipSpec = field(default_factory=ClipSpec)
    clips_per_shard: int = 64
    splits: tuple[str, ...] = ()  # empty: every split the reader finds
    heldout: HeldoutSpec | None = None  # move some train videos to a validation split
    address: str | None = None  # Ray cluster address; None: local Ray
    num_cpus: int | None = None  # local Ray only
    concurrency: int | None = None  # max shard tasks in flight (None: as many as CPUs)
    progress: bool = True

    def output_config(self, splits: list[str] | None = None) -> dict[str, Any]:
        """The manifest's ``config``; ``splits`` = the splits the manifest lists."""
        return {**self._bytes_config(), "splits": sorted(self.splits if splits is None else splits)}

    def _bytes_config(self) -> dict[str, Any]:
        out = {
            "schema_version": SCHEMA_VERSION,
            "dataset": self.dataset,
            "clip": asdict(self.clip),
            "clips_per_shard": self.clips_per_shard,
        }
        if self.heldout is not None:  # absent otherwise: hashes of earlier preps stay valid
            out["heldout"] = self.heldout.to_dict()
        return out

    def config_hash(self) -> str:
        """Hash of what determines a shard's bytes. Not the split selection: a run restricted
        to some splits writes the same shards as a full run, and keeps the other splits'."""
        return _hash_json(self._bytes_config())


@dataclass
class PrepSummary:
    out: str
    samples: int
    clips: int
    shards: int
    shards_skipped: int
    rejects: int
    frames_decoded: int
    frames_stored: int
    seconds: float  # end to end
    counts: dict[str, dict[str, int]]
    seconds_index: float = 0.0  # reading the benchmark's index, planning, checking finished shards
    seconds_write: float = 0.0  # the Ray Data shard-writing job (without starting Ray)
    cpu_seconds_write: float = 0.0  # CPU time spent inside the shard tasks (sum over tasks)

    @property
    def frames_per_s(self) -> float:
        """Decoded frames per second of the shard-writing job."""
        return self.frames_decoded / self.seconds_write if self.seconds_write > 0 else 0.0

    def text(self) -> str:
        per_split = ", ".join(
            f"{s}: {c['samples']} samples / {c['clips']} clips"
            for s, c in sorted(self.counts.items())
        )
        return (
            f"prep done -> {self.out}\n"
            f"  {self.samples} samples in {self.clips} clips ({per_split})\n"
            f"  {self.shards} shards ({self.shards_skipped} already done, skipped), {self.rejects} rejects "
            f"(see rejects.parquet)\n"
            f"  {self.frames_decoded} frames decoded, {self.frames_stored} stored; shard writing "
            f"{self.seconds_write:.1f} s = {self.frames_per_s:.0f} frames/s; total {self.seconds:.1f} s "
            f"(index {self.seconds_index:.1f} s)"
        )


def _hash_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def plan_shards(
    clips: dict[str, list[dict[str, Any]]], cfg: PrepConfig, root: str = ""
) -> list[dict[str, Any]]:
    """Deterministic assignment of clips to shards: consecutive chunks per split."""
    plans = []
    config_hash = cfg.config_hash()
    for split in sorted(clips):
        items = clips[split]
        for k in range(0, len(items), cfg.clips_per_shard):
            chunk = items[k : k + cfg.clips_per_shard]
            rel = f"{split}/part-{k // cfg.clips_per_shard:05d}.parquet"
            plans.append(
                {
                    "path": rel,
                    "split": split,
                    "root": root,
                    "plan_hash": _hash_json([config_hash, rel, root, chunk]),
                    "config_hash": config_hash,
                    "clips": chunk,
                }
            )
    return plans


def plan_unit_shards(units: list[IndexUnit], cfg: PrepConfig, root: str) -> list[dict[str, Any]]:
    """Deterministic assignment of index units (videos) to shards: per split, in key order,
    consecutive units until their estimated clips reach ``clips_per_shard``."""
    by_split: dict[str, list[IndexUnit]] = defaultdict(list)
    for u in units:
        by_split[u.split].append(u)
    config_hash = cfg.config_hash()
    plans: list[dict[str, Any]] = []
    for split in sorted(by_split):
        groups: list[list[dict[str, Any]]] = [[]]
        weight = 0
        for u in sorted(by_split[split], key=lambda u: u.key):
            if weight >= cfg.clips_per_shard:
                groups.append([])
                weight = 0
            groups[-1].append(u.to_dict())
            weight += max(u.weight, 1)
        for k, group in enumerate(g for g in groups if g):
            rel = f"{split}/part-{k:05d}.parquet"
            plans.append(
                {
                    "path": rel,
                    "split": split,
                    "root": root,
                    "plan_hash": _hash_json([config_hash, rel, root, group]),
                    "config_hash": config_hash,
                    "units": group,
                }
            )
    return plans


def source_fingerprint(
    dataset: str, rejects: list[dict[str, str]], records: list[dict[str, Any]], root: str
) -> str:
    """Hash of the reader's own rejects and every shard's source digest (index content with
    paths relative to the root, mask bytes, video file sizes): changes when the input does."""
    payload = json.dumps(
        [dataset, rejects, [r["source_digest"] for r in records]], ensure_ascii=False
    )
    if root:
        payload = payload.replace(root, "<root>")
    return hashlib.sha256(payload.encode()).hexdigest()


def _read_record(src: str) -> dict[str, Any] | None:
    """A progress record, or None when it is absent or unreadable as JSON (a store that cannot
    be reached raises)."""
    try:
        rec = json.loads(read_bytes(src))
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def _shard_matches(out: str, rec: dict[str, Any]) -> bool:
    """The shard a record names is there with the record's size and sha256."""
    f = join(out, str(rec.get("path", "")))
    size = file_size(f)
    return size is not None and size == rec.get("bytes") and sha256(f) == rec.get("sha256")


def _finished(out: str, plan: dict[str, Any]) -> dict[str, Any] | None:
    """The progress record of a shard a previous run completed, verified by checksum."""
    rec = _read_record(progress_path(out, plan["path"]))
    if rec is None or rec.get("plan_hash") != plan["plan_hash"] or rec.get("path") != plan["path"]:
        return None
    return rec if _shard_matches(out, rec) else None


def _clean_tmp(out: str) -> None:
    """Remove temporary files a killed run left (:mod:`data_prep.storage` names)."""
    for rel in list_files(out):
        if fnmatch.fnmatch(rel.rsplit("/", 1)[-1], TMP_GLOB):
            delete_file(join(out, rel))


def _output_location(out: str) -> str:
    """``out`` as an absolute local path, or the URI itself; fails early (and clearly) when an
    object store's bucket does not exist or cannot be reached."""
    fs, path = resolve(out)
    if is_local(fs):
        os.makedirs(path, exist_ok=True)
        return path
    bucket = path.split("/", 1)[0]
    try:
        kind = fs.get_file_info(bucket).type
    except OSError as exc:
        raise PrepStorageError(f"cannot reach the output store of {out}: {_describe(exc)}") from exc
    import pyarrow.fs as pafs

    if kind != pafs.FileType.Directory:
        raise PrepStorageError(
            f"the bucket {bucket!r} of --out {out} does not exist: create it first"
        )
    return out


def _local_root(root: str) -> str:
    """The source root as a local path (``file://`` URIs allowed); other URIs are refused."""
    if not is_uri(root):
        return root
    if root.startswith("file:"):
        return resolve(root)[1]
    raise DatasetRootError(
        f"--root must be a local folder or a shared mount (videos are decoded from local "
        f"files), got the URI {root!r}: copy or mount the benchmark on the machines that run "
        "prep; --out may be a URI"
    )


def _init_ray(cfg: PrepConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    # Under a Ray Job, RAY_ADDRESS is set and ray.init refuses num_cpus/object_store_memory:
    # join the cluster as it is; size a local instance only when there is no cluster.
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(
            num_cpus=cfg.num_cpus,
            include_dashboard=False,
            object_store_memory=300 * 1024 * 1024,
            log_to_driver=False,
        )


def _run_shards(
    plans: list[dict[str, Any]], cfg: PrepConfig, bar: Any, reader: Any, out: str
) -> tuple[list[dict[str, Any]], float]:
    """Run the shard writers as a streaming Ray Data map: (records, CPU seconds of the tasks);
    ``out`` is the absolute output folder or the output URI."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.enable_auto_log_stats = False
    ds = ray.data.from_items(
        [{"plan": json.dumps(p)} for p in plans], override_num_blocks=len(plans)
    )
    spec = cfg.clip

    def work(row: dict[str, Any]) -> dict[str, Any]:
        cpu = time.process_time()
        plan = json.loads(row["plan"])
        try:
            record = write_shard(plan, spec, out, reader)
        except OSError as exc:  # Ray keeps only the text of a task's exception: pass it on
            return {"record": "", "error": f"shard {plan['path']}: {_describe(exc)}", "cpu_s": 0.0}
        return {"record": json.dumps(record), "error": "", "cpu_s": time.process_time() - cpu}

    compute = ray.data.TaskPoolStrategy(size=cfg.concurrency) if cfg.concurrency else None
    ds = ds.map(work, num_cpus=1, compute=compute)
    records = []
    cpu_s = 0.0
    for row in ds.iter_rows():
        if row["error"]:
            raise PrepStorageError(_storage_message(cfg.out, row["error"]))
        rec = json.loads(row["record"])
        records.append(rec)
        cpu_s += float(row["cpu_s"])
        bar.update(1)
        bar.set_postfix(clips=sum(r["clips"] for r in records), refresh=False)
    return records, cpu_s


def build_plans(
    cfg: PrepConfig, reader: Any, root: str
) -> tuple[list[dict[str, Any]], list[Reject]]:
    """The work list: the reader's index (annotations, video listing; metadata only) turned
    into shard plans, and the reader's own rejects."""
    split_index = reader.units()
    if split_index is None:  # the whole index here (metadata only)
        samples, reader_rejects = reader.read()
        if cfg.heldout is not None:
            samples = assign_samples(samples, cfg.heldout)
        if cfg.splits:
            samples = [s for s in samples if s.split in cfg.splits]
        return plan_shards(build_clips(samples), cfg, root), reader_rejects
    # cheap pass here, the expensive part of the index inside the shard tasks
    reader_rejects, units = split_index
    if cfg.heldout is not None:
        units = assign_units(units, cfg.heldout)
    if cfg.splits:
        units = [u for u in units if u.split in cfg.splits]
    return plan_unit_shards(units, cfg, root), reader_rejects


def _index_task(cfg: PrepConfig, reader: Any, root: str) -> dict[str, Any]:
    """:func:`build_plans` inside a Ray task; an error comes back as a value (re-raised by the
    driver as itself, without Ray's remote traceback around its message)."""
    from data_prep.placement import where_am_i

    try:
        plans, rejects = build_plans(cfg, reader, root)
    except Exception as exc:  # noqa: BLE001 - handed to the driver
        return {"error": exc, "where": where_am_i()}
    return {"plans": plans, "rejects": rejects, "where": where_am_i()}


def _index(cfg: PrepConfig, reader: Any, root: str) -> tuple[list[dict[str, Any]], list[Reject]]:
    """Build the work list: in a Ray task off the head on a cluster (``--address`` or
    ``RAY_ADDRESS``, :mod:`data_prep.placement`), in this process otherwise. The task's node is printed (``prep: indexed ... on node <ip> (<id>)``)."""
    from data_prep.placement import describe_node, off_head_options, on_a_cluster

    if not on_a_cluster(cfg.address):
        return build_plans(cfg, reader, root)
    import ray

    _init_ray(cfg)
    task = ray.remote(num_cpus=1, max_retries=2)(_index_task)
    out = ray.get(task.options(**off_head_options()).remote(cfg, reader, root))
    print(f"prep: indexed {cfg.dataset} in a Ray task on {describe_node(out['where'])}", flush=True)
    if "error" in out:
        raise out["error"]
    return out["plans"], out["rejects"]


def run_prep(cfg: PrepConfig) -> PrepSummary:
    """Run the whole job. Raises ``DatasetRootError`` before any work on a wrong (or URI)
    root, :class:`PrepStorageError` when the output store cannot be read or written."""
    start = time.perf_counter()
    reader = get_reader(cfg.dataset, _local_root(cfg.root))
    root = str(reader.root)
    plans, reader_rejects = _index(cfg, reader, root)
    try:
        return _write_dataset(cfg, reader, root, plans, reader_rejects, start)
    except PrepStorageError:
        raise
    except OSError as exc:  # listing, checksums, records, manifest: the output store
        raise PrepStorageError(_storage_message(cfg.out, _describe(exc))) from exc


def _describe(exc: BaseException) -> str:
    """``Type: first line of the message``."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def _storage_message(out: str, what: str) -> str:
    return (
        f"reading or writing the output {out} failed ({what}); finished shards are kept: "
        "rerun the same command to resume"
    )


def _write_dataset(
    cfg: PrepConfig,
    reader: Any,
    root: str,
    plans: list[dict[str, Any]],
    reader_rejects: list[Reject],
    start: float,
) -> PrepSummary:
    """Everything after indexing: skip finished shards, write the rest, rejects, manifest."""
    from tqdm import tqdm

    out = _output_location(cfg.out)
    _clean_tmp(out)
    with ThreadPoolExecutor(_VERIFY_THREADS) as pool:
        found = list(pool.map(lambda p: _finished(out, p), plans))
    done: dict[str, dict[str, Any]] = {
        p["path"]: rec for p, rec in zip(plans, found, strict=True) if rec is not None
    }
    todo = [p for p in plans if p["path"] not in done]
    seconds_index = time.perf_counter() - start
    seconds_write = cpu_write = 0.0
    manifest_path = join(out, "manifest.json")
    if todo:  # the dataset is about to change: it is no longer complete until the end
        delete_file(manifest_path)
    bar = tqdm(
        total=len(plans), initial=len(done), unit="shard", desc="prep", disable=not cfg.progress
    )
    try:
        if todo:
            _init_ray(cfg)
            t_write = time.perf_counter()
            fresh_records, cpu_write = _run_shards(todo, cfg, bar, reader, out)
            for rec in fresh_records:
                done[rec["path"]] = rec
            seconds_write = time.perf_counter() - t_write
    finally:
        bar.close()
    records = [done[p["path"]] for p in plans]
    if cfg.splits:  # keep the finished shards of the splits this run did not touch
        records = sorted(
            records + _kept_other_splits(out, cfg, set(cfg.splits)),
            key=lambda r: (r["split"], r["path"]),
        )
    _remove_stale(out, {r["path"] for r in records}, manifest_path)
    rejects = [r.to_dict() for r in reader_rejects] + [r for rec in records for r in rec["rejects"]]
    _write_rejects(join(out, "rejects.parquet"), rejects)
    counts: dict[str, dict[str, int]] = {}
    for rec in records:
        c = counts.setdefault(rec["split"], {"clips": 0, "objects": 0, "samples": 0, "shards": 0})
        c["clips"] += rec["clips"]
        c["objects"] += rec["objects"]
        c["samples"] += rec["samples"]
        c["shards"] += 1
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "dataset": cfg.dataset,
        "config": cfg.output_config(sorted({r["split"] for r in records} | set(cfg.splits))),
        "config_hash": cfg.config_hash(),
        "source_fingerprint": source_fingerprint(
            cfg.dataset, [r.to_dict() for r in reader_rejects], records, root
        ),
        "counts": counts,
        "rejects": len(rejects),
        "shards": [
            {k: rec[k] for k in ("path", "split", "clips", "samples", "bytes", "sha256")}
            for rec in records
        ],
    }
    write_json(manifest_path, manifest, indent=1)  # last: the dataset is complete
    fresh = [done[p["path"]] for p in todo]
    return PrepSummary(
        out=cfg.out if is_uri(cfg.out) else str(Path(cfg.out)),
        samples=sum(c["samples"] for c in counts.values()),
        clips=sum(c["clips"] for c in counts.values()),
        shards=len(plans),
        shards_skipped=len(plans) - len(todo),
        rejects=len(rejects),
        frames_decoded=sum(r["frames_decoded"] for r in fresh),
        frames_stored=sum(r["frames_stored"] for r in fresh),
        seconds=time.perf_counter() - start,
        counts=counts,
        seconds_index=seconds_index,
        seconds_write=seconds_write,
        cpu_seconds_write=cpu_write,
    )


def _kept_other_splits(out: str, cfg: PrepConfig, splits: set[str]) -> list[dict[str, Any]]:
    """Progress records of finished shards of splits outside ``splits`` that were written with
    the same config hash and whose file still matches its checksum (else they are dropped)."""
    kept = []
    config_hash = cfg.config_hash()
    for rel in list_files(join(out, "_progress")):
        if "/" in rel or not rel.endswith(".json"):
            continue
        rec_path = join(out, "_progress", rel)
        rec = _read_record(rec_path)
        if rec is None or rec.get("split") in splits or rec.get("config_hash") != config_hash:
            continue
        if progress_path(out, str(rec.get("path", ""))) != rec_path:
            continue
        if _shard_matches(out, rec):
            kept.append(rec)
    return kept


def _remove_stale(out: str, keep: set[str], manifest_path: str) -> None:
    """Shards of an earlier run with another plan (e.g. more shards) must not be read back;
    the manifest that may still list them goes first."""
    stale = [
        rel
        for rel in list_files(out)
        if rel.count("/") == 1
        and fnmatch.fnmatch(rel.rsplit("/", 1)[1], "part-*.parquet")
        and rel not in keep
    ]
    if stale:
        delete_file(manifest_path)
    for rel in stale:
        delete_file(join(out, rel))
        delete_file(progress_path(out, rel))


def _write_rejects(path: str, rejects: list[dict[str, str]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from data_prep.schema import REJECT_SCHEMA

    table = pa.Table.from_pylist(rejects, schema=REJECT_SCHEMA)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


__all__ = [
    "PrepConfig",
    "PrepStorageError",
    "PrepSummary",
    "Reject",
    "build_clips",
    "plan_shards",
    "plan_unit_shards",
    "run_prep",
]
