"""Records on GCS (`gs://`, or any URL `etils.epath` reads), copied to local disk before the pipeline starts.

    local_records("gs://bkt/recs") -> "~/.cache/clapcomp/staged/bkt/<hash of the URL>/recs"
    local_records("/data/recs")    -> "/data/recs"                (a local folder is read where it is)

The installed ArrayRecord reader cannot open `gs://` (array_record issue #120: the open hangs), so a
record folder on GCS is *staged*: its shards and `stats.json` are copied into a local cache folder that
keeps the source's basename (the mixture counters are named by it), and training reads that. Every
host stages the whole folder: the pipeline shuffles all records globally and each host then takes every
`process_count`-th example (`clapcomp.data.pipeline.make_dataset`), so every host reads from every shard.

- Checksums: each file is checked, as it is copied, against the build's manifest `sha256.json`
  (`clapcomp.fs.write_manifest`, written by `clapcomp data build`); a folder without one is refused,
  as is a shard missing in the bucket or one in the bucket that the manifest does not list.
- Restart: a staged file is recorded in `.staged.json` (sha256, size, modification time) once
  verified; a later start reuses it without downloading or hashing it again when its size and
  modification time are unchanged, hashes it again otherwise, and fetches it anew if it differs
  (a corrupt copy). Files of an older build of the same URL are deleted.
- Writes are atomic (`clapcomp.fs.atomic_file`): a kill leaves whole verified files or none. One
  stager per folder (`clapcomp.fs.lock_folder`): the other processes of a host wait for it, then
  reuse its copy.
- Progress: a log line every `PROGRESS_S` seconds (shards and bytes done) and one at the end.
- Where: `$CLAPCOMP_STAGE_DIR`, default `~/.cache/clapcomp/staged`; the free space is checked
  before anything is fetched.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

from clapcomp import fs, gcs
from clapcomp.data.records import SHARD_SUFFIX

log = logging.getLogger("clapcomp.data.stage")

STAGE_DIR_ENV = "CLAPCOMP_STAGE_DIR"
DEFAULT_STAGE_DIR = "~/.cache/clapcomp/staged"
STAGED = ".staged.json"  # {name: [sha256, bytes, mtime_ns]} of the files verified here
STATS = "stats.json"
PROGRESS_S = 10.0  # seconds between progress lines
WAIT_S = 1.0  # how often a process waiting for another's staging looks again
_CHUNK = 1 << 22

_staged: dict[tuple[str, str], str] = {}  # (source, stage dir) -> local folder, staged by this process


@dataclasses.dataclass(frozen=True)
class Staged:
    path: str  # the local folder
    fetched: int  # files downloaded
    reused: int  # files already staged and verified
    bytes_fetched: int


def local_records(source: str, stage_dir: str | os.PathLike | None = None) -> str:
    """A local folder holding the records of `source`: `source` itself when local, else its staged
    copy (`stage`; once per process: later calls return the folder at once)."""
    if not gcs.is_remote(source):
        return source
    root = stage_root(stage_dir)
    key = (source.rstrip("/"), str(root))
    if key not in _staged:
        _staged[key] = stage(source, root).path
    return _staged[key]


def stage_root(stage_dir: str | os.PathLike | None = None) -> Path:
    """Where staged copies live: `stage_dir`, else `$CLAPCOMP_STAGE_DIR`, else ~/.cache/clapcomp/staged."""
    return Path(os.path.expanduser(stage_dir or os.environ.get(STAGE_DIR_ENV) or DEFAULT_STAGE_DIR))


def staged_folder(source: str, root: Path) -> Path:
    """`root/<bucket>/<16 hex of the URL's sha256>/<basename>`: one folder per URL, named as the source."""
    url = source.rstrip("/")
    bucket, _, rest = url.split("://", 1)[1].partition("/")
    if not rest:
        raise ValueError(f"{source}: name a folder inside the bucket, e.g. gs://{bucket}/records")
    return root / bucket / hashlib.sha256(url.encode()).hexdigest()[:16] / rest.rsplit("/", 1)[-1]


def stage(source: str, stage_dir: str | os.PathLike | None = None) -> Staged:
    """Copies the record folder `source` (a URL) into `staged_folder(source, stage_root(stage_dir))`,
    verifying every file against the build's `sha256.json` and reusing what an earlier start verified.
    Raises FileNotFoundError (no manifest, a shard missing in the bucket), ValueError (a shard the
    manifest does not list, an unreadable manifest), `fs.CorruptFile` (the bucket's bytes differ from
    the manifest) or OSError (not enough free disk), each naming the file."""
    from etils import epath

    remote = epath.Path(source.rstrip("/"))
    digests, sizes = _manifest(remote)
    names = sorted(n for n in digests if "/" not in n and n.endswith(SHARD_SUFFIX))
    if not names:
        raise ValueError(f"{remote / fs.MANIFEST} lists no *{SHARD_SUFFIX} shards; is {remote} a record folder?")
    in_bucket = {p.name for p in remote.glob(f"*{SHARD_SUFFIX}")}
    missing, unlisted = sorted(set(names) - in_bucket), sorted(in_bucket - set(names))
    if missing:
        raise FileNotFoundError(
            f"{remote / missing[0]} is listed in the build's {fs.MANIFEST} but missing in the bucket "
            f"({len(missing)} of {len(names)} shards missing): upload the whole record folder again"
        )
    if unlisted:
        raise ValueError(
            f"{remote / unlisted[0]} is not in the build's {fs.MANIFEST} ({len(unlisted)} such shards): the "
            "folder mixes two builds; upload one build's folder (shards, stats.json and sha256.json)"
        )
    wanted = names + ([STATS] if STATS in digests else [])
    folder = staged_folder(source, stage_root(stage_dir))
    lock = _wait_for_lock(folder, f"staging {remote}")
    try:
        return _copy(remote, folder, wanted, digests, sizes)
    finally:
        lock.release()


def _manifest(remote) -> tuple[dict, dict]:
    path = remote / fs.MANIFEST
    try:
        manifest = json.loads(path.read_text())
        return manifest["sha256"], manifest["bytes"]
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path} not found: a record folder on GCS is staged and checked against the manifest "
            f"`clapcomp data build` writes. For records built before manifests, write one locally "
            f"(python -c \"from clapcomp import fs; fs.write_manifest('DIR')\") and upload it with them"
        ) from None
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: unreadable manifest ({type(e).__name__}: {e})") from None


def _wait_for_lock(folder: Path, purpose: str) -> fs.Lock:
    """The folder's lock; while another process holds it (staging the same source), wait."""
    waited, last_note = 0.0, -60.0
    while True:
        try:
            return fs.lock_folder(folder, purpose=purpose)
        except fs.LockHeld as e:
            if waited - last_note >= 60.0:
                log.info("waiting for another process staging into %s (%s)", folder, e)
                last_note = waited
            time.sleep(WAIT_S)
            waited += WAIT_S


def _copy(remote, folder: Path, wanted: list[str], digests: dict, sizes: dict) -> Staged:
    start = time.monotonic()
    book_path = folder / STAGED
    try:
        book = json.loads(book_path.read_text())
    except (OSError, ValueError):  # none yet (or unreadable): every file present is hashed again
        book = {}
    for stale in sorted(folder.glob(f"*{SHARD_SUFFIX}")):  # an older build's shards at this URL
        if stale.name not in wanted:
            log.info("deleting %s: not in the current build of %s", stale, remote)
            stale.unlink()
            book.pop(stale.name, None)
    for partial in folder.glob(".*.tmp-*"):  # left by a stager that was killed (we hold the lock)
        partial.unlink()
    todo = [n for n in wanted if not _verified(folder / n, book, digests[n], sizes[n])]
    need = sum(sizes[n] for n in todo)
    free = shutil.disk_usage(folder).free
    if need > free:
        raise OSError(
            f"staging {remote} needs {need / 1e9:.2f} GB more in {folder}, {free / 1e9:.2f} GB are free: point "
            f"${STAGE_DIR_ENV} at a bigger disk"
        )
    fs.write_json(book_path, book, indent=1, sort_keys=True)  # what was verified by hashing just now
    total = sum(sizes[n] for n in wanted)
    done_bytes, last = total - need, time.monotonic()
    for i, name in enumerate(todo, 1):
        _fetch(remote / name, folder / name, digests[name], sizes[name])
        st = (folder / name).stat()
        book[name] = [digests[name], st.st_size, st.st_mtime_ns]
        fs.write_json(book_path, book, indent=1, sort_keys=True)
        done_bytes += sizes[name]
        if time.monotonic() - last >= PROGRESS_S:
            last = time.monotonic()
            log.info("staging %s: %d of %d files fetched, %.2f of %.2f GB staged", remote, i, len(todo),
                     done_bytes / 1e9, total / 1e9)  # fmt: skip
    log.info("staged %s -> %s: %d files (%d fetched, %.3f GB; %d reused) in %.1f s", remote, folder, len(wanted),
             len(todo), need / 1e9, len(wanted) - len(todo), time.monotonic() - start)  # fmt: skip
    return Staged(path=str(folder), fetched=len(todo), reused=len(wanted) - len(todo), bytes_fetched=need)


def _verified(path: Path, book: dict, digest: str, size: int) -> bool:
    """Whether the staged `path` holds the manifest's bytes: recorded as verified and unchanged since
    (size, mtime), or hashed again now. A copy that differs is deleted (to be fetched again)."""
    if not path.is_file():
        return False
    st = path.stat()
    if book.get(path.name) == [digest, st.st_size, st.st_mtime_ns]:
        return True
    if st.st_size == size and fs.sha256_file(path) == digest:
        book[path.name] = [digest, st.st_size, st.st_mtime_ns]
        return True
    log.warning("%s differs from the build's manifest (a corrupt or partial copy): fetching it again", path)
    path.unlink()
    book.pop(path.name, None)
    return False


def _fetch(src, dst: Path, digest: str, size: int) -> None:
    """Downloads `src` to `dst` (atomically), hashing as it goes; `fs.CorruptFile` if the bytes differ."""
    h, n = hashlib.sha256(), 0
    try:
        with src.open("rb") as r, fs.atomic_file(dst, "wb") as f:
            while chunk := r.read(_CHUNK):
                h.update(chunk)
                f.write(chunk)
                n += len(chunk)
            if n != size or h.hexdigest() != digest:
                raise fs.CorruptFile(dst, f"not staged: {src} has {n} bytes with sha256 {h.hexdigest()[:16]}..., "
                                          f"the build's {fs.MANIFEST} says {size} bytes, {digest[:16]}...: upload "
                                          "it again")  # fmt: skip
    except FileNotFoundError:
        raise FileNotFoundError(f"{src} vanished from the bucket while staging: upload the records again") from None
