"""Google Cloud Storage (gs://) for clapcomp.fs: what a bucket offers in place of the POSIX calls fs makes.

A bucket has objects, not files: no rename, no append, no O_EXCL, no folders. clapcomp.fs uses
- `upload(local, remote)`: one object, written in one upload. GCS makes an object visible only when its
  upload completes, so a kill mid-upload leaves the old object (or none): the atomic write of a file.
- `create_exclusive(remote, text)`: an object created with the precondition `ifGenerationMatch=0`
  (google-cloud-storage), refused by GCS when the object exists: the O_EXCL of the folder lock.
- `read(remote)` -> (text, generation) and `delete_if(remote, generation)`: the lock is read and removed
  (released, or taken over when stale) only at the generation that was read, so a lock object written
  meanwhile by another writer is never deleted by mistake.
- `files(root)` -> {relative name: size}: every object under a prefix in one listing (for manifests).
Everything else (reads, listings, plain writes) goes through etils.epath, which reaches gs:// by gcsfs,
`configure`d without its listing cache: other processes and hosts write the same workdir, and gcsfs
answers from a cached listing without asking GCS (its docs), so their objects would stay unseen. This
module talks to the same bucket with google-cloud-storage (gcsfs's own dependency).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple


class Object(NamedTuple):
    bucket: str
    name: str


def is_remote(path: str | os.PathLike) -> bool:
    """True for a gs:// path (str, epath.Path)."""
    return os.fspath(path).startswith("gs://")


def split(path: str | os.PathLike) -> Object:
    """`gs://bucket/a/b` -> Object("bucket", "a/b")."""
    bucket, _, name = os.fspath(path)[len("gs://") :].partition("/")
    if not bucket:
        raise ValueError(f"{path}: a gs:// path names a bucket: gs://BUCKET/...")
    return Object(bucket, name.rstrip("/"))


def configure() -> None:
    """gcsfs, as etils.epath and this module make it, without the listing cache (see the module doc):
    the default for instances made from now on, and off in the one etils.epath keeps if it made it before."""
    import fsspec.config
    from etils.epath import backend

    fsspec.config.conf.setdefault("gs", {})["use_listings_cache"] = False
    listings = backend.fsspec_backend.fs("gs://").dircache
    listings.use_listings_cache = False
    listings.clear()


def _gfs():
    import fsspec

    configure()
    return fsspec.filesystem("gs")


def _blob(path):
    from google.cloud import storage

    obj = split(path)
    return storage.Client().bucket(obj.bucket).blob(obj.name)


def upload(local: str | os.PathLike, remote: str | os.PathLike) -> None:
    """Copies the local file to the object `remote` in one upload (all-or-nothing, see the module doc)."""
    _gfs().put_file(os.fspath(local), os.fspath(remote))


def upload_folder(local: Path, remote: str | os.PathLike, *, last: str, replacing: Iterable[str] = ()) -> None:
    """Every file below `local` uploaded to the same name below `remote`, the file `last` last; then the
    objects named in `replacing` (relative names) that the folder lacks are deleted."""
    new = sorted((p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()), key=lambda r: r == last)
    for rel in new:
        upload(local / rel, f"{os.fspath(remote)}/{rel}")
    stale = [f"{os.fspath(remote)}/{rel}" for rel in sorted(set(replacing) - set(new))]
    if stale:
        _gfs().rm(stale)


def create_exclusive(remote: str | os.PathLike, text: str) -> None:
    """Creates the object with `text`; FileExistsError when it exists (GCS refuses: ifGenerationMatch=0)."""
    from google.api_core import exceptions

    try:
        _blob(remote).upload_from_string(text, if_generation_match=0)
    except exceptions.PreconditionFailed:
        raise FileExistsError(f"{remote} exists") from None


def read(remote: str | os.PathLike) -> tuple[str, int] | None:
    """(text, generation) of the object; None when it does not exist (or is replaced while read)."""
    from google.api_core import exceptions
    from google.cloud import storage

    obj = split(remote)
    try:
        blob = storage.Client().bucket(obj.bucket).get_blob(obj.name)
        if blob is None:
            return None
        generation = int(blob.generation)
        return blob.download_as_text(if_generation_match=generation), generation
    except (exceptions.NotFound, exceptions.PreconditionFailed):
        return None


def delete_if(remote: str | os.PathLike, generation: int) -> bool:
    """Deletes the object if it is still at `generation`; False when it changed or is gone."""
    from google.api_core import exceptions

    try:
        _blob(remote).delete(if_generation_match=generation)
        return True
    except (exceptions.PreconditionFailed, exceptions.NotFound):
        return False


def download(remote: str | os.PathLike, local_dir: Path) -> Path:
    """The object or prefix `remote` copied into `local_dir` under its own name; returns the local copy."""
    target = local_dir / split(remote).name.rsplit("/", 1)[-1]
    _gfs().get(os.fspath(remote).rstrip("/"), str(target), recursive=True)
    return target


def move(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Moves an object, or every object below a prefix: copied, then deleted (not atomic)."""
    gfs = _gfs()
    src, dst = os.fspath(src).rstrip("/"), os.fspath(dst).rstrip("/")
    names = files(src)
    pairs = [(f"{src}/{n}", f"{dst}/{n}") for n in names] if names else [(src, dst)]
    for a, b in pairs:
        gfs.copy(a, b)
    gfs.rm([a for a, _ in pairs])


def files(root: str | os.PathLike) -> dict[str, int]:
    """{name relative to `root` (posix): size in bytes} of every object below the prefix `root`."""
    prefix = "/".join(split(root)) + "/"
    found = _gfs().find(os.fspath(root), detail=True)
    return {
        name[len(prefix) :]: int(info["size"])
        for name, info in found.items()
        if name.startswith(prefix) and info.get("type") != "directory"
    }
