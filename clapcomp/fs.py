"""Writing files safely: atomic file / folder writes, the one-writer lock, sha256 manifests.

Every command that writes goes through here; nothing else writes files its own way.

- `atomic_file(path)` / `write_text` / `write_bytes` / `write_json`: the bytes go to a temporary sibling
  `.<name>.tmp-<token>`, are flushed and fsynced, then renamed over `path`; a kill at any moment leaves
  either the old file or the new one, never a mix or a truncated file.
- `atomic_dir(path)`: a whole output folder is written into a temporary sibling and renamed into place
  at the end (an existing folder is only replaced with `overwrite=True`); the sibling lock
  `.<name>.lock` keeps a second writer out while it runs.
- `Lock` / `lock_folder(folder)`: one writer per folder. The lock is a file created with O_EXCL holding
  the holder's pid, host, run id and command, so a second writer fails at once naming the holder. A
  lock left by a process that died (SIGKILL, power cut) is taken over when that is provable: same host,
  and that pid is gone or is another process now; on another host the message says how to remove it.
  (O_EXCL rather than flock: the holder is named, it behaves the same on shared file systems, and it
  maps one to one to a GCS object written with `if_generation_match=0`.)
- `write_manifest(folder)` / `verify_manifest(folder)`: `sha256.json`, the sha256 and size of every
  file under a folder; verifying raises `CorruptFile` naming the first file that differs.
- `refuse_inputs(out, inputs)`: an output that is one of the inputs is refused before anything opens.

Paths are `str | os.PathLike`; `as_path` is the one place that turns them into path objects: gs:// ->
`etils.epath.Path`, else `pathlib.Path` (never `Path("gs://b/x")`, the local folder `gs:/b/x`). On gs://
the same calls keep the same guarantees with what a bucket offers (clapcomp/gcs.py): one-object uploads
for atomic files, the lock an object created with `ifGenerationMatch=0`, a folder built locally and
uploaded (`sha256.json` last: no folder rename there, so a kill mid-upload leaves a partial folder), a
log rewritten whole at each `AppendFile.write`.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import logging
import os
import secrets
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from clapcomp import gcs

log = logging.getLogger("clapcomp.fs")

LOCK_NAME = ".clapcomp.lock"
MANIFEST = "sha256.json"
_CHUNK = 1 << 22


def as_path(p: str | os.PathLike) -> Path:
    """A user's path -> a path object: gs:// -> etils.epath.Path (pathlib's methods), anything else Path."""
    if gcs.is_remote(p):
        from etils import epath

        gcs.configure()
        return epath.Path(os.fspath(p))
    return Path(os.fspath(p))


def absolute(p: str | os.PathLike) -> Path:
    """`as_path(p)`, made absolute when local (a gs:// path is; epath's `absolute()` would make it local)."""
    return as_path(p) if gcs.is_remote(p) else Path(p).absolute()


def resolve(p: str | os.PathLike) -> Path:
    """`as_path(p)`, symlinks and `..` resolved when local (gs:// has neither; epath would make it local)."""
    return as_path(os.fspath(p).rstrip("/")) if gcs.is_remote(p) else Path(p).resolve()


def same_path(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether `a` and `b` name the same file or folder."""
    return os.fspath(resolve(a)) == os.fspath(resolve(b))


@contextlib.contextmanager
def local_copy(p: str | os.PathLike) -> Iterator[Path]:
    """`p` itself when local; a gs:// file or folder downloaded to a temporary folder for the duration
    (for readers that open local files only: safetensors, ONNX, PyTorch)."""
    if not gcs.is_remote(p):
        yield Path(p)
        return
    with tempfile.TemporaryDirectory(prefix="clapcomp-") as local:
        yield gcs.download(p, Path(local))


def _token() -> str:
    return f"{os.getpid()}-{secrets.token_hex(4)}"


# ----------------------------------------------------------------------------- atomic writes


def refuse_inputs(out: str | os.PathLike, inputs: Iterable[str | os.PathLike | None], flag: str = "--out") -> None:
    """ValueError when `out` is one of `inputs` (symlinks and `..` resolved); call before opening anything."""
    for given in inputs:
        if given is not None and same_path(given, out):
            raise ValueError(
                f"{flag} {out} would overwrite the input {given}; write to another path (nothing was opened)"
            )


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary sibling path for a writer that takes a file name (safetensors, ArrayRecord); on
    a clean exit it is fsynced and renamed to `path`. An exception (or a kill) leaves `path` untouched.
    On gs:// the temporary file is local and uploaded as one object."""
    final = as_path(path)
    if gcs.is_remote(final):
        with tempfile.TemporaryDirectory(prefix="clapcomp-") as local:
            tmp = Path(local, final.name)
            yield tmp
            gcs.upload(tmp, final)
        return
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{_token()}")
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w", **open_kwargs) -> Iterator:
    """`open(path, mode)` that becomes visible only on a clean exit (see `atomic_path`)."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_file writes whole files: mode must be 'w' or 'wb', got {mode!r}")
    with atomic_path(path) as tmp, open(tmp, mode, **open_kwargs) as f:
        yield f


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_file(path, "wb") as f:
        f.write(data)
    return as_path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_file(path, "w", encoding="utf-8") as f:
        f.write(text)
    return as_path(path)


def write_json(path: str | os.PathLike, obj, **dumps_kwargs) -> Path:
    return write_text(path, json.dumps(obj, **dumps_kwargs) + "\n")


class AppendFile:
    """A log file that `write` adds text to (flushed at once): locally a file open in append mode; on
    gs://, where an object cannot grow, the text read at open plus what was written, uploaded whole
    (atomically) at each write. A context manager."""

    def __init__(self, path: str | os.PathLike):
        self.path = as_path(path)
        if gcs.is_remote(self.path):
            self.text, self.file = (self.path.read_text() if self.path.exists() else ""), None
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.file = open(self.path, "a")

    def write(self, text: str) -> None:
        if self.file is None:
            self.text += text
            write_text(self.path, self.text)
        else:
            self.file.write(text)
            self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()

    def __enter__(self) -> AppendFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, overwrite: bool = False, purpose: str = "") -> Iterator[Path]:
    """Yields an empty temporary sibling folder to fill; on a clean exit it is renamed to `path`.

    `path` may be absent or an empty folder; a non-empty one is replaced only with `overwrite=True`
    (the old folder is renamed aside, the new one renamed in, then the old one deleted). The sibling
    lock `.<name>.lock` is held throughout, so two writers of one folder never interleave. An
    exception deletes the temporary folder; a kill leaves it (`.<name>.tmp-*`) and `path` as it was.
    On gs:// see the module doc (a local temporary folder, uploaded at the end)."""
    final = as_path(path)
    if final.exists() and not final.is_dir():
        raise FileExistsError(f"{final} exists and is not a folder; pass another output path")
    if gcs.is_remote(final):
        with _remote_dir(final, overwrite=overwrite, purpose=purpose) as tmp:
            yield tmp
        return
    final.parent.mkdir(parents=True, exist_ok=True)
    with Lock(final.with_name(f".{final.name}.lock"), purpose=purpose or f"writing {final}"):
        if final.is_dir() and any(final.iterdir()) and not overwrite:
            raise FileExistsError(
                f"{final} is not empty and holds files this command did not write; pass a new or empty output folder"
            )
        tmp = final.with_name(f".{final.name}.tmp-{_token()}")
        tmp.mkdir()
        try:
            yield tmp
            if final.is_dir() and any(final.iterdir()):
                aside = final.with_name(f".{final.name}.old-{_token()}")
                os.rename(final, aside)
                os.rename(tmp, final)
                shutil.rmtree(aside)
            else:
                os.replace(tmp, final)  # over an absent or empty folder
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)


@contextlib.contextmanager
def _remote_dir(final: Path, *, overwrite: bool, purpose: str) -> Iterator[Path]:
    """`atomic_dir` on gs://: a local temporary folder, uploaded file by file (sha256.json last) on a clean
    exit; the objects of a replaced folder that the new one lacks are deleted after."""
    with Lock(final.with_name(f".{final.name}.lock"), purpose=purpose or f"writing {final}"):
        old = gcs.files(final)
        if old and not overwrite:
            raise FileExistsError(
                f"{final} is not empty and holds files this command did not write; pass a new or empty output folder"
            )
        with tempfile.TemporaryDirectory(prefix="clapcomp-") as local:
            yield Path(local)
            gcs.upload_folder(Path(local), final, last=MANIFEST, replacing=old)


def move(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Moves a file or folder: locally `shutil.move`; on gs:// object by object (no rename there)."""
    if gcs.is_remote(src):
        gcs.move(src, dst)
    else:
        shutil.move(src, dst)


def replaceable(folder: str | os.PathLike, names: Iterable[str], marker: str) -> bool:
    """True when `folder` is absent, empty, or an earlier output of the same command: it holds the file
    `marker` and nothing but entries matching `names` (fnmatch patterns); `atomic_dir(overwrite=True)`
    may replace it."""
    root = as_path(folder)
    if not root.is_dir() or not any(root.iterdir()):
        return True
    ours = all(any(fnmatch.fnmatchcase(p.name, n) for n in names) for p in root.iterdir())
    return (root / marker).is_file() and ours


# ----------------------------------------------------------------------------- one writer per folder


class LockHeld(RuntimeError):
    """Another writer holds the folder (the message names it and says what to do)."""


def _start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (Linux /proc; None elsewhere or when it is gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(holder: dict) -> bool:
    """False only when provable: the holder ran on this host and its pid is gone or is a newer process."""
    if holder.get("host") != socket.gethostname():
        return True
    pid = int(holder.get("pid", -1))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0
    started = holder.get("pid_start")
    return started is None or _start_time(pid) in (None, started)


class Lock:
    """An exclusive lock file (O_EXCL; on gs:// an object created with ifGenerationMatch=0) naming its
    holder; a context manager. See the module doc.

    `run_id` names the run (multi-process training: process 0 holds the lock for the run id all
    processes share)."""

    def __init__(self, path: str | os.PathLike, *, purpose: str = "", run_id: str | None = None):
        self.path = as_path(path)
        self.run_id = run_id or secrets.token_hex(8)
        self.info = {
            "pid": os.getpid(),
            "pid_start": _start_time(os.getpid()),
            "host": socket.gethostname(),
            "run_id": self.run_id,
            "purpose": purpose,
            "command": " ".join(sys.argv)[:500],
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        self.held = False
        self.remote = gcs.is_remote(self.path)

    def acquire(self) -> Lock:
        if not self.remote:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            try:
                self._create()
            except FileExistsError:
                holder = self._read(self.path)
                if holder == {}:  # released meanwhile: try again
                    continue
                if holder is None or _alive(holder):
                    raise LockHeld(self._held_message(holder)) from None
                self._take_over(holder)
                continue
            self.held = True
            return self
        raise LockHeld(self._held_message(self._read(self.path)))

    def _create(self) -> None:
        """The lock naming this holder; FileExistsError when one exists."""
        if self.remote:
            gcs.create_exclusive(self.path, json.dumps(self.info))
            return
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(self.info))
            f.flush()
            os.fsync(f.fileno())

    def release(self) -> None:
        if self.held and self.remote:
            self._delete_remote(lambda holder: holder.get("run_id") == self.run_id)
        elif self.held and (self._read(self.path) or {}).get("run_id") == self.run_id:
            self.path.unlink(missing_ok=True)
        self.held = False

    def _delete_remote(self, ours) -> bool:
        """Deletes the lock object if `ours(holder)`, at the generation read (never a newer lock)."""
        got = gcs.read(self.path)
        return got is not None and ours(_json_or_none(got[0]) or {}) and gcs.delete_if(self.path, got[1])

    def __enter__(self) -> Lock:
        return self if self.held else self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    @staticmethod
    def _read(path: Path) -> dict | None:
        if gcs.is_remote(path):  # an object appears with its content: never empty
            got = gcs.read(path)
            return {} if got is None else _json_or_none(got[0])
        for _ in range(20):  # a holder between O_EXCL create and its write: the file is briefly empty
            try:
                text = path.read_text()
            except FileNotFoundError:
                return {}
            if text:
                try:
                    return json.loads(text)
                except json.JSONDecodeError:
                    return None
            time.sleep(0.01)
        return None

    def _take_over(self, holder: dict) -> None:
        """Moves a provably stale lock aside (rename first: of two processes only one gets the file,
        and a lock renamed by mistake, not the stale one, is put back). On gs:// the object is deleted at
        the generation that holds `holder`."""
        if self.remote:
            if self._delete_remote(lambda found: found == holder):
                self._log_take_over(holder)
            return
        aside = self.path.with_name(f"{self.path.name}.stale-{_token()}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        if self._read(aside) != holder:
            with contextlib.suppress(FileExistsError):
                os.link(aside, self.path)
        else:
            self._log_take_over(holder)
        aside.unlink(missing_ok=True)

    def _log_take_over(self, holder: dict) -> None:
        log.warning(
            "%s was left by pid %s on %s (%s, since %s), which is no longer running; taking it over",
            self.path, holder.get("pid"), holder.get("host"), holder.get("purpose"), holder.get("since"),
        )  # fmt: skip

    def _held_message(self, holder: dict | None) -> str:
        if not holder:
            return (
                f"{self.path} exists but names no holder (being created, or damaged); if no other clapcomp "
                "command writes here, delete it and rerun"
            )
        who = (
            f"pid {holder.get('pid')} on host {holder.get('host')} (run {holder.get('run_id')}, "
            f"{holder.get('purpose') or 'a clapcomp command'}, since {holder.get('since')}: {holder.get('command')})"
        )
        stale = (
            ""
            if holder.get("host") == socket.gethostname()
            else f" If that process is no longer running (its host died), delete {self.path} and rerun."
        )
        return f"{self.path.parent} is being written by {who}; one writer per folder: wait for it or stop it.{stale}"


def _json_or_none(text: str) -> dict | None:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def lock_folder(folder: str | os.PathLike, *, purpose: str = "", run_id: str | None = None) -> Lock:
    """Takes the folder's own lock `<folder>/.clapcomp.lock` (creating the folder); raises LockHeld."""
    return Lock(as_path(folder) / LOCK_NAME, purpose=purpose, run_id=run_id).acquire()


# ----------------------------------------------------------------------------- sha256 manifests


class CorruptFile(ValueError):
    """A file's bytes differ from its manifest (or a listed file is missing)."""

    def __init__(self, path: str | os.PathLike, detail: str):
        super().__init__(f"{path}: {detail}")
        self.path = as_path(path)


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with as_path(path).open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _sizes(root: Path) -> dict[str, int]:
    """{path relative to `root` (posix): size in bytes} of every file below `root` (gs://: one listing)."""
    if gcs.is_remote(root):
        return gcs.files(root)
    return {p.relative_to(root).as_posix(): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def _hash_all(paths: list[Path]) -> list[str]:
    """sha256 of each file, several at a time (hashlib releases the GIL on large reads)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool:
        return list(pool.map(sha256_file, paths))


def write_manifest(folder: str | os.PathLike, name: str = MANIFEST, *, exclude: tuple[str, ...] = ()) -> dict:
    """`<folder>/<name>`: {"sha256": {relative path: hex}, "bytes": {relative path: size}} over every file
    below `folder` but those named in `exclude` (written last, atomically); returns it."""
    root = as_path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder: nothing to write a manifest for")
    sizes = {
        rel: size
        for rel, size in sorted(_sizes(root).items())
        if rel != name and not (base := rel.rsplit("/", 1)[-1]).startswith(LOCK_NAME) and base not in exclude
    }
    manifest = {
        "sha256": dict(zip(sizes, _hash_all([root / rel for rel in sizes]), strict=True)),
        "bytes": sizes,
    }
    write_json(root / name, manifest, indent=1, sort_keys=True)
    return manifest


def verify_manifest(folder: str | os.PathLike, name: str = MANIFEST) -> bool:
    """True when every file `<folder>/<name>` lists has its size and sha256; False when there is no
    manifest (written before manifests existed). Raises CorruptFile naming the first file that differs."""
    root = as_path(folder)
    try:
        manifest = json.loads((root / name).read_text())
        digests, sizes = manifest["sha256"], manifest["bytes"]
    except FileNotFoundError:
        return False
    except (ValueError, KeyError, TypeError) as e:
        raise CorruptFile(root / name, f"unreadable manifest ({type(e).__name__}: {e})") from None
    present = _sizes(root)
    for rel, size in sorted(sizes.items()):
        if rel not in present:
            raise CorruptFile(root / rel, f"listed in {name} but missing")
        if present[rel] != size:
            raise CorruptFile(root / rel, f"{present[rel]} bytes, {name} says {size}")
    paths = [root / rel for rel in sorted(digests)]
    for p, got, rel in zip(paths, _hash_all(paths), sorted(digests), strict=True):
        if got != digests[rel]:
            raise CorruptFile(p, f"sha256 {got[:16]}..., {name} says {digests[rel][:16]}...: the bytes changed")
    return True
