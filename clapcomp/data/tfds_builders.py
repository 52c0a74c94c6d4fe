"""tfds builders (ArrayRecord, no TensorFlow) for AudioCaps, Clotho, ESC-50 and CompA's benchmarks.

Each reads files the user downloaded into a ``manual_dir`` and stores the audio as the original
encoded file bytes (``Tensor(shape=(), dtype=object)``; ``tfds.features.Audio`` would need
TensorFlow); ``b""`` where a listed file is missing. Text comes back as UTF-8 bytes.

    builder = AudioCaps(data_dir="~/tfds", file_format="array_record")
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir="/data/audiocaps"))
    source = builder.as_data_source(split="train")   # random access, grain-ready

Manual-dir layouts:
- AudioCaps: ``{train,val,test}.csv`` (official columns ``audiocap_id, youtube_id, start_time,
  caption``) and ``audio/{train,val,test}/<youtube_id>.{wav,flac,ogg}``; the rows of one clip are
  grouped into one example with all its captions. Splits train / validation / test.
- Clotho: ``clotho_captions_{development,validation,evaluation}.csv`` (``file_name,
  caption_1..caption_5``) and ``{development,validation,evaluation}/<file_name>``. Splits train /
  validation / test.
- ESC-50 (the GitHub repository as is): ``meta/esc50.csv`` (``filename, fold, target, category,
  ...``) and ``audio/<filename>``. One split ``train`` with all clips and their ``fold``.
- CompA-order / CompA-attribute: ``compa_order.csv`` / ``compa_attribute.csv`` (``pair_caption,
  reversed_pair_caption, pair_file, reversed_pair_file``; order adds ``triplet_caption,
  triplet_file``, ``-`` when absent) with the audio paths relative to ``manual_dir`` (or found by
  file name in ``manual_dir/audio/``). One split ``test``.

`iter_candidates` turns a prepared split into `clapcomp data build` items.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from clapcomp.data.reasons import BadData

_AUDIO = tfds.features.Tensor(shape=(), dtype=np.object_)
_EXTS = (".wav", ".flac", ".ogg")


def _read_csv(path: str) -> list[dict]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found; see clapcomp.data.tfds_builders for the layout")
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        return list(csv.DictReader(f))


def _read_bytes(path: str | None) -> bytes:
    if path and os.path.isfile(path):
        with open(path, "rb") as f:
            return f.read()
    return b""


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class _Base(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "First release (clapcomp)."}

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        # tfds' default probes `importlib_resources` (a backport not installed on Python >= 3.9)
        # for builders defined in packages; the answer is simply this file.
        return epath.Path(__file__)

    def to_candidates(self, example: dict) -> list[tuple[str, dict]]:
        """One prepared example -> `clapcomp data build` items (key, audio bytes, captions...)."""
        raise NotImplementedError


def _candidate(key: str, audio: bytes, filename: str, captions, negatives=()):
    if not audio:
        return key, BadData("missing_file", f"{filename} was not in manual_dir")
    return key, dict(
        key=key,
        audio=audio,
        name=filename,
        captions=[_text(c) for c in captions],
        negatives=[_text(n) for n in negatives],
        positives=[],
    )


class _Captioned(_Base):
    """A clip with several captions (AudioCaps, Clotho)."""

    def _info(self):
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "audio": _AUDIO,
                    "filename": tfds.features.Text(),
                    "captions": tfds.features.Sequence(tfds.features.Text()),
                }
            )
        )

    def to_candidates(self, example):
        name = _text(example["filename"])
        return [_candidate(f"{self.name}/{name}", example["audio"], name, example["captions"])]


class AudioCaps(_Captioned):
    name = "audiocaps"
    MANUAL_DOWNLOAD_INSTRUCTIONS = "{train,val,test}.csv + audio/<split>/<youtube_id>.wav (see module doc)"

    def _split_generators(self, dl_manager):
        root = dl_manager.manual_dir
        return {
            split: self._generate_examples(root, csv_name)
            for split, csv_name in (("train", "train"), ("validation", "val"), ("test", "test"))
            if os.path.isfile(os.path.join(root, f"{csv_name}.csv"))
        }

    def _generate_examples(self, root, csv_name):
        clips: dict[str, list[str]] = {}
        for row in _read_csv(os.path.join(root, f"{csv_name}.csv")):
            clips.setdefault(row["youtube_id"], []).append(row["caption"])
        folder = os.path.join(root, "audio", csv_name)
        for yid, captions in clips.items():
            path = next(
                (os.path.join(folder, yid + e) for e in _EXTS if os.path.isfile(os.path.join(folder, yid + e))), None
            )
            name = os.path.basename(path) if path else yid + ".wav"
            yield yid, {"audio": _read_bytes(path), "filename": name, "captions": captions}


class Clotho(_Captioned):
    name = "clotho"
    MANUAL_DOWNLOAD_INSTRUCTIONS = "clotho_captions_<part>.csv + <part>/<file_name> (see module doc)"
    _PARTS = (("train", "development"), ("validation", "validation"), ("test", "evaluation"))

    def _split_generators(self, dl_manager):
        root = dl_manager.manual_dir
        return {
            split: self._generate_examples(root, part)
            for split, part in self._PARTS
            if os.path.isfile(os.path.join(root, f"clotho_captions_{part}.csv"))
        }

    def _generate_examples(self, root, part):
        for row in _read_csv(os.path.join(root, f"clotho_captions_{part}.csv")):
            name = row["file_name"]
            captions = [row[c] for c in sorted(row) if c.startswith("caption") and row[c]]
            yield name, {"audio": _read_bytes(os.path.join(root, part, name)), "filename": name, "captions": captions}


class Esc50(_Base):
    name = "esc50"
    MANUAL_DOWNLOAD_INSTRUCTIONS = "the ESC-50 repository: meta/esc50.csv + audio/*.wav"

    def _info(self):
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "audio": _AUDIO,
                    "filename": tfds.features.Text(),
                    "category": tfds.features.Text(),
                    "target": np.int32,
                    "fold": np.int32,
                }
            )
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(dl_manager.manual_dir)}

    def _generate_examples(self, root):
        for row in _read_csv(os.path.join(root, "meta", "esc50.csv")):
            yield (
                row["filename"],
                {
                    "audio": _read_bytes(os.path.join(root, "audio", row["filename"])),
                    "filename": row["filename"],
                    "category": row["category"],
                    "target": int(row["target"]),
                    "fold": int(row["fold"]),
                },
            )

    def to_candidates(self, example):
        name, label = _text(example["filename"]), _text(example["category"]).replace("_", " ")
        return [_candidate(f"esc50/{name}", example["audio"], name, [f"This is a sound of {label}."])]


class _CompA(_Base):
    """CompA benchmark rows: two (order: optionally three) audios with swapped captions."""

    CSV = ""
    TRIPLETS = False

    def _info(self):
        features = {
            "pair_caption": tfds.features.Text(),
            "reversed_pair_caption": tfds.features.Text(),
            "pair_file": tfds.features.Text(),
            "reversed_pair_file": tfds.features.Text(),
            "pair_audio": _AUDIO,
            "reversed_pair_audio": _AUDIO,
        }
        if self.TRIPLETS:
            features.update(
                triplet_caption=tfds.features.Text(), triplet_file=tfds.features.Text(), triplet_audio=_AUDIO
            )
        # Rows stay in CSV order (benchmark row i = CSV row i).
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict(features), disable_shuffling=True)

    def _split_generators(self, dl_manager):
        return {"test": self._generate_examples(dl_manager.manual_dir)}

    @staticmethod
    def _find(root: str, rel: str) -> str | None:
        if not rel or rel.strip() == "-":
            return None
        for path in (os.path.join(root, rel), os.path.join(root, "audio", os.path.basename(rel))):
            if os.path.isfile(path):
                return path
        return None

    def _generate_examples(self, root):
        fields = ["pair", "reversed_pair"] + (["triplet"] if self.TRIPLETS else [])
        for i, row in enumerate(_read_csv(os.path.join(root, self.CSV))):
            ex = {}
            for f in fields:
                rel = (row.get(f"{f}_file") or "").strip()
                caption = (row.get(f"{f}_caption") or "").strip()
                ex[f"{f}_file"] = rel if rel != "-" else ""
                ex[f"{f}_caption"] = caption if caption != "-" else ""
                ex[f"{f}_audio"] = _read_bytes(self._find(root, rel))
            yield i, ex

    def to_candidates(self, example):
        """Each audio with its caption; the pair's other caption is its hard negative."""
        caps = {f: _text(example[f"{f}_caption"]) for f in ("pair", "reversed_pair")}
        out = []
        for f, other in (("pair", "reversed_pair"), ("reversed_pair", "pair")):
            name = _text(example[f"{f}_file"])
            out.append(_candidate(f"{self.name}/{name}", example[f"{f}_audio"], name, [caps[f]], [caps[other]]))
        if self.TRIPLETS and _text(example["triplet_file"]):
            name = _text(example["triplet_file"])
            out.append(
                _candidate(f"{self.name}/{name}", example["triplet_audio"], name, [_text(example["triplet_caption"])])
            )
        return out


class CompaOrder(_CompA):
    name = "compa_order"
    CSV = "compa_order.csv"
    TRIPLETS = True
    MANUAL_DOWNLOAD_INSTRUCTIONS = "compa_order.csv + the audio files it names (see module doc)"


class CompaAttribute(_CompA):
    name = "compa_attribute"
    CSV = "compa_attribute.csv"
    MANUAL_DOWNLOAD_INSTRUCTIONS = "compa_attribute.csv + the audio files it names (see module doc)"


BUILDERS = {b.name: b for b in (AudioCaps, Clotho, Esc50, CompaOrder, CompaAttribute)}


def prepare(name: str, manual_dir: str, data_dir: str) -> tfds.core.GeneratorBasedBuilder:
    """Build (once) the named dataset from `manual_dir` into `data_dir`; returns the builder."""
    if name not in BUILDERS:
        raise ValueError(f"unknown tfds dataset {name!r}; choose one of {sorted(BUILDERS)}")
    builder = BUILDERS[name](data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    return builder


def iter_candidates(name: str, manual_dir: str, *, split: str, data_dir: str) -> Iterator:
    """(item, candidate | BadData) pairs over one split, for `clapcomp.data.build`."""
    builder = prepare(name, manual_dir, data_dir)
    if split not in builder.info.splits:
        raise ValueError(f"{name} has no split {split!r}; it has {sorted(builder.info.splits)}")
    source = builder.as_data_source(split=split)
    for i in range(len(source)):
        yield from builder.to_candidates(source[i])
