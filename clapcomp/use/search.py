"""`clapcomp search index | query`: a persistent, incremental FAISS index over a sound library.

    clapcomp search index --model M --out IDX [--approximate hnsw|ivf|exact] [--json] PATH...
    clapcomp search query --index IDX [--model M] [--top-k K] [--json] ("text" | --audio FILE)

Each recording is embedded per window of the model's clip length (`clapcomp.use.files`); a hit is a file
at its best window's offset (seconds). Exact search (default) is FAISS `IndexFlatIP` over the unit
embeddings, i.e. cosine similarity, equal to brute force; `--approximate hnsw` (HNSW, 32 links) or `ivf`
(IVF-Flat, ~sqrt(N) lists) trade exactness for speed on large libraries; an update keeps the index's
mode unless `--approximate` names another (`exact` returns to exact search).

IDX is a folder: `CURRENT` names the generation folder in use (`gen-<n>/`: `index.json` with the model's
path and identity (config + weights sha256) and the files (path, size, mtime_ns); `vectors.npz` with the
embeddings [N, D] and each row's file id and offset; `vectors.faiss`). `index` writes a new generation
beside the old one and then replaces CURRENT (write + rename), so an interrupted run leaves the previous
index whole. Re-running `index` embeds only files that are new or whose size / mtime changed, and drops
files no longer found under the PATHs given (nothing is written when nothing changed).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import threading
from pathlib import Path

import numpy as np

from clapcomp import fs
from clapcomp.decode import Limits
from clapcomp.inference import Clap, load
from clapcomp.use.files import embed_files, find_audio, model_identity

FORMAT = "clapcomp-search"
MODES = ("exact", "hnsw", "ivf")


def build_faiss(vectors: np.ndarray, mode: str):
    """vectors [N, D] unit rows -> a FAISS inner-product index over them."""
    import faiss

    n, d = vectors.shape
    if mode == "exact":
        index = faiss.IndexFlatIP(d)
    elif mode == "hnsw":
        index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = 128
    else:
        nlist = max(1, min(int(np.sqrt(n)), n // 39))  # FAISS wants >= 39 training points per list
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
        index.nprobe = max(1, nlist // 8)
    index.add(vectors)
    return index


class Index:
    """An index generation in memory: `meta` (index.json), vectors [N, D], row_file [N], row_offset [N], faiss."""

    def __init__(self, meta: dict, vectors: np.ndarray, row_file: np.ndarray, row_offset: np.ndarray, faiss_index):
        self.meta, self.vectors, self.row_file, self.row_offset, self.faiss = (
            meta, vectors, row_file, row_offset, faiss_index
        )  # fmt: skip

    @property
    def files(self) -> list[dict]:
        return self.meta["files"]

    @classmethod
    def read(cls, folder: str | Path) -> Index:
        import faiss

        folder = Path(folder)
        current = folder / "CURRENT"
        if not current.is_file():
            raise FileNotFoundError(f"no search index at {folder} (no {current}); build one with "
                                    f"`clapcomp search index --model M --out {folder} PATH...`")  # fmt: skip
        gen = folder / current.read_text().strip()
        meta = json.loads((gen / "index.json").read_text())
        with np.load(gen / "vectors.npz") as z:
            vectors, row_file, row_offset = z["vectors"], z["row_file"], z["row_offset"]
        return cls(meta, vectors, row_file, row_offset, faiss.read_index(str(gen / "vectors.faiss")))

    def write(self, folder: Path) -> None:
        """A new generation folder, then CURRENT replaced; older generations (and leftovers) deleted."""
        import faiss

        current = folder / "CURRENT"
        old = current.read_text().strip() if current.is_file() else "gen-0"
        name = f"gen-{int(old.split('-')[1]) + 1}"
        gen = folder / name
        shutil.rmtree(gen, ignore_errors=True)
        gen.mkdir()
        np.savez(gen / "vectors.npz", vectors=self.vectors, row_file=self.row_file, row_offset=self.row_offset)
        faiss.write_index(self.faiss, str(gen / "vectors.faiss"))
        (gen / "index.json").write_text(json.dumps(self.meta, indent=1))
        fs.write_text(current, name + "\n")
        for stale in folder.glob("gen-*"):
            if stale.name != name:
                shutil.rmtree(stale, ignore_errors=True)


def check_model(meta: dict, identity: dict, where: Path) -> None:
    if meta["model"]["identity"] != identity:
        raise ValueError(
            f"the index at {where} was built with another model ({meta['model']['path']}, "
            f"{meta['model']['identity']}); this one is {identity}. Query with the model that built it, "
            "or build a new index (a new --out) with this model"
        )


def build(
    clap: Clap,
    model_path: str,
    out: Path,
    paths: list[str],
    mode: str | None = None,
    limits: Limits | None = None,
) -> tuple[dict, list]:
    """Create or update the index at `out` -> ({"embedded", "unchanged", "removed", "total"}, errors)."""
    out = Path(out)
    if out.exists() and not (out / "CURRENT").is_file() and any(p.name != fs.LOCK_NAME for p in out.iterdir()):
        raise ValueError(f"{out} exists and is not a clapcomp search index; choose a new --out")
    files = find_audio(paths)
    identity = model_identity(clap)
    with fs.lock_folder(out, purpose="clapcomp search index"):
        prev = Index.read(out) if (out / "CURRENT").is_file() else None
        if prev is not None:
            check_model(prev.meta, identity, out)
        old = {f["path"]: i for i, f in enumerate(prev.files)} if prev else {}
        mode = mode or (prev.meta["mode"] if prev else "exact")
        stats = [(f, f.stat()) for f in files]
        keep = {
            str(f): old[str(f)]
            for f, st in stats
            if str(f) in old and prev.files[old[str(f)]]["size"] == st.st_size
            and prev.files[old[str(f)]]["mtime_ns"] == st.st_mtime_ns
        }  # fmt: skip
        todo = [f for f in files if str(f) not in keep]
        fresh, errors = {}, []
        for item in embed_files(clap, todo, what="files embedded", limits=limits):
            if item.error:
                errors.append(item.error)
            else:
                fresh[str(item.path)] = item
        entries, vectors, row_file, row_offset = [], [], [], []
        for f, st in stats:
            if str(f) in keep:  # a file's rows are contiguous: row_file is non-decreasing
                lo, hi = np.searchsorted(prev.row_file, [keep[str(f)], keep[str(f)] + 1])
                vec, off = prev.vectors[lo:hi], prev.row_offset[lo:hi]
            elif str(f) in fresh:
                vec, off = fresh[str(f)].embeddings, fresh[str(f)].offsets
            else:
                continue
            vectors.append(vec)
            row_offset.append(off.astype(np.float32))
            row_file.append(np.full(len(vec), len(entries), np.int32))
            entries.append({"path": str(f), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
        if not entries:
            raise ValueError(f"none of the {len(files)} audio files could be read: {errors[:3]}; nothing written")
        vectors = np.concatenate(vectors).astype(np.float32)
        meta = {
            "format": FORMAT,
            "version": 1,
            "model": {"path": str(fs.resolve(model_path)), "identity": identity},
            "mode": mode,
            "clip_seconds": clap.config.audio.clip_seconds,
            "files": entries,
        }
        removed = len(set(old) - {e["path"] for e in entries})
        if prev is None or fresh or removed or mode != prev.meta["mode"]:  # else the index on disk is current
            row_file, row_offset = np.concatenate(row_file), np.concatenate(row_offset)
            Index(meta, vectors, row_file, row_offset, build_faiss(vectors, mode)).write(out)
    return {"embedded": len(fresh), "unchanged": len(keep), "removed": removed, "total": len(entries)}, errors


class Searcher:
    """An index and its model, ready for queries (thread-safe: one query at a time)."""

    def __init__(self, folder: str | Path, model: str | None = None, clap: Clap | None = None):
        self.folder = Path(folder)
        self.index = Index.read(self.folder)
        recorded = self.index.meta["model"]["path"]
        if clap is None and model is None and not fs.as_path(recorded).exists():
            raise FileNotFoundError(
                f"the model that built {self.folder} ({recorded}) is gone; pass --model M (same weights)"
            )
        self.clap = clap or load(model or recorded)
        check_model(self.index.meta, model_identity(self.clap), self.folder)
        self._lock = threading.Lock()

    def by_vector(self, query: np.ndarray, top_k: int = 10) -> list[dict]:
        """query [D] unit -> [{"file", "score", "offset", "id"}] best first, each file once (its best window)."""
        n = len(self.index.vectors)
        k = min(n, 4 * top_k)
        while True:
            scores, rows = self.index.faiss.search(np.asarray(query, np.float32)[None], k)
            hits, seen = [], set()
            for s, r in zip(scores[0], rows[0], strict=True):
                f = int(self.index.row_file[r]) if r >= 0 else -1
                if f >= 0 and f not in seen:
                    seen.add(f)
                    hits.append({"file": self.index.files[f]["path"], "score": round(float(s), 6),
                                 "offset": round(float(self.index.row_offset[r]), 3), "id": f})  # fmt: skip
            if len(hits) >= top_k or k >= n:
                return hits[:top_k]
            k = min(n, 2 * k)

    def text(self, query: str, top_k: int = 10) -> list[dict]:
        with self._lock:
            return self.by_vector(self.clap.embed_text([query])[0], top_k)

    def audio(self, path: str | Path, top_k: int = 10) -> list[dict]:
        """Query by example: the file's vector is the normalised mean of its windows."""
        with self._lock:
            (item,) = embed_files(self.clap, [Path(path).resolve()])
            if item.error:
                raise ValueError(f"cannot use {path} as a query: {item.error}")
            return self.by_vector(item.mean(), top_k)


def index_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="clapcomp search index", description="build or update a search index")
    p.add_argument("--model", required=True, help="model directory")
    p.add_argument("--out", required=True, help="index folder (created, or updated in place)")
    p.add_argument(
        "--approximate",
        choices=MODES,
        help="hnsw | ivf: approximate search for large libraries; exact (default for a new index; an update keeps the index's mode)",
    )
    p.add_argument("--json", action="store_true", help='print {"embedded", "unchanged", "removed", "total"}')
    p.add_argument("--max-seconds", type=float, default=600.0, help="refuse longer audio files (header check)")
    p.add_argument("paths", nargs="+", metavar="PATH", help="audio files or folders (searched recursively)")
    args = p.parse_args(argv)
    try:
        limits = Limits(max_seconds=args.max_seconds)
        counts, errors = build(load(args.model), args.model, Path(args.out), args.paths, args.approximate, limits)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"clapcomp search index: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(counts) if args.json else ", ".join(f"{k} {v}" for k, v in counts.items()) + f" -> {args.out}")
    for e in errors:
        print(f"clapcomp search index: skipped {e}", file=sys.stderr)
    return 1 if errors else 0


def query_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="clapcomp search query", description="rank indexed files by a text or a sound")
    p.add_argument("--index", required=True, help="index folder written by `clapcomp search index`")
    p.add_argument("--model", help="model directory (default: the one that built the index; must be the same)")
    p.add_argument("--top-k", type=int, default=10, help="files to return (default 10)")
    p.add_argument("--json", action="store_true", help='stdout: [{"file", "score", "offset"}] best first')
    p.add_argument("--audio", help="query by example: an audio file")
    p.add_argument("text", nargs="?", help="the text query")
    args = p.parse_args(argv)
    if args.top_k < 1:
        p.error("--top-k must be >= 1")
    if (args.text is None) == (args.audio is None):
        p.error("give a text query or --audio FILE (one of them)")
    try:
        searcher = Searcher(args.index, args.model)
        hits = searcher.audio(args.audio, args.top_k) if args.audio else searcher.text(args.text, args.top_k)
    except (ValueError, FileNotFoundError) as e:
        print(f"clapcomp search query: error: {e}", file=sys.stderr)
        return 2
    hits = [{k: h[k] for k in ("file", "score", "offset")} for h in hits]
    if args.json:
        print(json.dumps(hits, indent=1))
    else:
        print("\n".join(f"{h['score']:8.4f}  {h['file']}" + (f"  @ {h['offset']:.1f} s" if h["offset"] else "") for h in hits))  # fmt: skip
    return 0
