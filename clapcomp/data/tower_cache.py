"""Outputs of a locked audio tower, keyed by clip: stored once, looked up by every run and evaluation.

A locked tower (LiT: inference mode, frozen weights) maps a clip that fits its window to one fixed
vector, so the vector is computed once per distinct clip (`clapcomp.train.locked_tower` runs the
model; this module only stores and finds the rows, without model code, as all of clapcomp.data):

    cache = TowerCache(tower)                  tower: a JSON dict naming the tower's weights and front end
    cache.add(waveform_digest(wave), row)      wave [T] f32 at the model's rate, as the tower sees it
    cache.lookup(wave, what="record 'k'")      -> row [P] f32, or TowerCacheMiss naming the clip
    cache.save(dir, **stats)                   dir/pooled.npy [N, P] f32, dir/digests.txt (N lines),
    TowerCache.load(dir)                       dir/stats.json (tower, width, count, stats); no pickle

The key is the sha256 of the clip's float32 samples (so its length too): a clip is found whatever its
record or file is called, and another crop, resampling or edit of it is another key.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from clapcomp import fs

FILES = ("pooled.npy", "digests.txt", "stats.json")  # stats.json last: its presence marks a complete cache


class TowerCacheMiss(LookupError):
    """A clip the cache holds no row for (not bad data: the cache does not match the records)."""


def waveform_digest(wave: np.ndarray) -> str:
    """sha256 hex of a clip's samples `[T]` as little-endian float32."""
    return hashlib.sha256(np.ascontiguousarray(wave, "<f4").tobytes()).hexdigest()


class TowerCache:
    """digest -> the tower's output row [width] float32, for one tower (`tower`, compared as a dict)."""

    def __init__(self, tower: dict, *, path: str | Path | None = None):
        self.tower, self.path = tower, path
        self.index: dict[str, int] = {}
        self.rows: list[np.ndarray] = []

    def __len__(self) -> int:
        return len(self.rows)

    def __contains__(self, digest: str) -> bool:
        return digest in self.index

    def __getitem__(self, digest: str) -> np.ndarray:
        return self.rows[self.index[digest]]

    def add(self, digest: str, row: np.ndarray) -> None:
        row = np.asarray(row, np.float32)
        if self.rows and row.shape != self.rows[0].shape:
            raise ValueError(f"row of shape {row.shape} for a cache of rows {self.rows[0].shape}")
        if digest not in self.index:
            self.index[digest] = len(self.rows)
            self.rows.append(row)

    def lookup(self, wave: np.ndarray, what: str) -> np.ndarray:
        """The row of clip `wave` [T] f32; TowerCacheMiss naming `what` (e.g. "record 'k'") if absent."""
        digest = waveform_digest(wave)
        if digest not in self.index:
            where = f" at {self.path}" if self.path else ""
            raise TowerCacheMiss(
                f"{what} ({len(wave)} samples) has no row in the audio-tower cache{where}: the cache was written "
                "for other records, or the clip is longer than the model's clip window and was cropped at random "
                "(its tower output then depends on the crop). Rewrite the cache over these records "
                "(clapcomp.train.locked_tower.write_cache) or train without it (config.data.tower_cache='')"
            )
        return self.rows[self.index[digest]]

    def save(self, out_dir: str | Path, **stats) -> Path:
        """Writes the cache into `out_dir` (stats.json last; `stats` are extra JSON fields)."""
        out = fs.as_path(out_dir)
        rows = np.stack(self.rows) if self.rows else np.zeros((0, 0), np.float32)
        with fs.atomic_file(out / "pooled.npy", "wb") as f:
            np.save(f, rows, allow_pickle=False)
        fs.write_text(out / "digests.txt", "".join(f"{d}\n" for d in self.index))
        fs.write_json(out / "stats.json", {"tower": self.tower, "width": int(rows.shape[1]), "count": len(self), **stats},
                      indent=1)  # fmt: skip
        self.path = out
        return out

    @classmethod
    def load(cls, cache_dir: str | Path) -> TowerCache:
        """A cache written by `save` (never unpickles: pooled.npy is read with allow_pickle=False)."""
        path = fs.as_path(cache_dir)
        if not (path / "stats.json").is_file():
            raise FileNotFoundError(
                f"{path} holds no audio-tower cache (no stats.json); write one with "
                "clapcomp.train.locked_tower.write_cache"
            )
        stats = json.loads((path / "stats.json").read_text())
        with (path / "pooled.npy").open("rb") as f:
            rows = np.load(f, allow_pickle=False)
        digests = (path / "digests.txt").read_text().split()
        if rows.ndim != 2 or len(digests) != len(rows) or len(rows) != stats["count"]:
            raise ValueError(
                f"{path}: pooled.npy {rows.shape}, {len(digests)} digests and stats count {stats['count']} disagree; "
                "the cache is damaged: write it again"
            )
        cache = cls(stats["tower"], path=path)
        cache.index = {d: i for i, d in enumerate(digests)}
        cache.rows = list(rows.astype(np.float32))
        return cache

    def __repr__(self) -> str:
        return f"TowerCache({len(self)} clips{f', {self.path}' if self.path else ''})"
