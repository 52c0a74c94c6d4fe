"""Build the real-sound compositional corpus from Debian sound-effect packages (rerunnable).

    python examples/real_sounds/build_corpus.py --cache /tmp/debs --out data/real_sounds

1. `apt-get download` each package named in labels.csv into --cache (skipped when its .deb is
   already there; run `apt-get update` once first); extract only *.wav / *.ogg / *.oga / *.flac and
   the Debian copyright file; record the package version and its licences (DEP-5 `License:`).
2. Label files through the reviewed table labels.csv (package, fnmatch pattern on the path inside
   the package -> class, caption); unlabelled files are skipped and counted. Each kept clip is
   mixed to mono, trimmed of leading / trailing silence (-45 dB of its peak), exact duplicates
   dropped, resampled to --sample-rate and cut to --event-seconds (10-ms fade-out).
3. Split BY SOURCE RECORDING: a source is one file, or the files of one package folder whose names
   differ only in a trailing number (Fire1 / Fire2 / Fire3). Per class, a seeded shuffle of its
   sources puts round(test_fraction * n) of them (at least 1 when n >= 3) in the held-apart test
   split; a class with fewer than 2 sources stays in train.
4. Train: `clapcomp data compose --kinds tree,loudness,counting` over the train clips, its tree /
   attribute negatives topped up to --negatives with the rule negatives (clapcomp.data.negatives),
   then `clapcomp data build` into records_<rate>/ (rate --record-sample-rate; 0 skips).
   Test (ONLY test-split clips): order.csv (CompA-order: "X followed by Y" vs "Y followed by X",
   every 4th row with a triplet "X with Y"), attribute.csv (CompA-attribute, column `category`:
   loudness "a loud X and a quiet Y" vs the swap; counting "X twice followed by Y three times" vs
   the counts swapped), retrieval.jsonl (compositions of all kinds, one caption each).
Writes OUT/corpus.json (packages, versions, licences, counts, split seed, durations, timing).
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import hashlib
import json
import re
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from clapcomp.data.synth import ORDER_COLUMNS, write_csv  # the CompA benchmark CSV, as the demo writes it

HERE = Path(__file__).resolve().parent
RESERVED = frozenset(
    {"0ad-data", "megaglest-data", "widelands-data", "wesnoth-1.16-data", "minetest-data", "lugaru-data"}
)
AUDIO_EXT = (".wav", ".ogg", ".oga", ".flac")


def read_labels(path: Path) -> list[dict]:
    """labels.csv rows {package, pattern, class, caption}; refuses reserved packages."""
    with path.open(newline="") as f:
        rows = [{k: (v or "").strip() for k, v in r.items()} for r in csv.DictReader(f)]
    for i, r in enumerate(rows):
        if not all(r.get(k) for k in ("package", "pattern", "class", "caption")):
            raise ValueError(f"{path} row {i + 2}: needs package, pattern, class and caption, got {r}")
        check_package(r["package"])
    return rows


def check_package(name: str) -> None:
    if name in RESERVED:
        raise ValueError(f"package {name!r} is reserved for an independent evaluation; remove it from the labels table")


def label_of(package: str, rel: str, labels: list[dict]) -> dict | None:
    """The first labels row whose package matches and whose pattern matches `rel` (path in the package)."""
    for r in labels:
        if r["package"] == package and fnmatch.fnmatchcase(rel, r["pattern"]):
            return r
    return None


def source_of(package: str, rel: str) -> str:
    """Source-recording id: package, folder and file stem without a trailing number (Fire2 -> fire)."""
    p = Path(rel)
    stem = re.sub(r"[-_ ]?\d+$", "", p.stem).lower() or p.stem.lower()
    return f"{package}:{p.parent}/{stem}"


def split_by_source(clips: list[dict], test_fraction: float, seed: int) -> dict[str, str]:
    """{source: "train" | "test"}: per class, a seeded shuffle of its sources; round(fraction * n)
    (at least 1 when n >= 3, none when n < 2) go to test. A source is assigned to its first class."""
    first_class: dict[str, str] = {}
    for c in clips:
        first_class.setdefault(c["source"], c["class"])
    by_class: dict[str, list[str]] = defaultdict(list)
    for s, cls in first_class.items():
        by_class[cls].append(s)
    out = {}
    for cls in sorted(by_class):
        sources = sorted(set(by_class[cls]))
        rng = np.random.default_rng([seed, zlib.crc32(cls.encode())])
        order = [sources[i] for i in rng.permutation(len(sources))]
        n_test = 0 if len(sources) < 2 else max(int(round(test_fraction * len(sources))), 1 if len(sources) >= 3 else 0)
        for i, s in enumerate(order):
            out[s] = "test" if i < n_test else "train"
    return out


# ---------------------------------------------------------------------------------------------
# packages


def fetch(package: str, cache: Path) -> Path:
    check_package(package)
    debs = sorted(cache.glob(f"{package}_*.deb"), key=lambda p: p.stat().st_mtime)
    if not debs:
        subprocess.run(["apt-get", "download", package], cwd=cache, check=True, stdout=subprocess.DEVNULL)
        debs = sorted(cache.glob(f"{package}_*.deb"), key=lambda p: p.stat().st_mtime)
    if not debs:
        raise FileNotFoundError(f"apt-get download {package} left no .deb in {cache}; run `apt-get update` first")
    return debs[-1]


def extract(deb: Path, dest: Path) -> None:
    """Only audio files and the copyright file: dpkg-deb --fsys-tarfile | tar -x (patterns)."""
    pats = [f"*{e}" for e in AUDIO_EXT] + ["*/usr/share/doc/*/copyright"]
    tar = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(dest), "--wildcards", *pats], stdin=tar.stdout, check=False,
                   stderr=subprocess.DEVNULL)  # fmt: skip
    tar.wait()


def licences(copyright_file: Path) -> list[str]:
    if not copyright_file.is_file():
        return ["(no copyright file)"]
    text = copyright_file.read_text(errors="replace")
    found = sorted({m.strip() for m in re.findall(r"^License:\s*(\S.*)$", text, re.M) if len(m.strip()) < 60})
    if found:
        return found
    known = ("GPL-3", "GPL-2", "GPL", "CC-BY-SA", "CC-BY", "CC0", "public domain", "MIT", "BSD")
    return [k for k in known if k.lower() in text.lower()][:1] or ["(see copyright file)"]


def load_clip(path: Path, sample_rate: int) -> tuple[np.ndarray, float]:
    """Mono float64 at `sample_rate`, leading / trailing silence (< -45 dB of peak) trimmed; and the
    original duration in seconds."""
    import soundfile as sf
    import soxr

    x, sr = sf.read(str(path), dtype="float64", always_2d=True)
    x = x.mean(axis=1)
    dur = x.size / sr
    if x.size == 0 or not np.all(np.isfinite(x)) or np.max(np.abs(x)) == 0:
        return np.zeros(0), dur
    loud = np.flatnonzero(np.abs(x) > np.max(np.abs(x)) * 10 ** (-45 / 20))
    pad = int(0.01 * sr)
    x = x[max(loud[0] - pad, 0) : loud[-1] + pad + 1]
    return (soxr.resample(x, sr, sample_rate) if sr != sample_rate else x), dur


def collect(labels: list[dict], cache: Path, events_dir: Path, a) -> tuple[list[dict], dict, Counter]:
    """Fetch, extract, label and write the event clips. Returns (clips, packages, skip reasons)."""
    import soundfile as sf

    from clapcomp.data.compose import peak_normalize, trim

    clips, packages, skips, seen = [], {}, Counter(), {}
    for package in sorted({r["package"] for r in labels}):
        deb = fetch(package, cache)
        version = subprocess.run(
            ["dpkg-deb", "-f", str(deb), "Version"], capture_output=True, text=True, check=True
        ).stdout.strip()
        with tempfile.TemporaryDirectory(prefix="real_sounds_") as tmp:
            root = Path(tmp)
            extract(deb, root)
            files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXT)
            kept = 0
            for path in files:
                rel = str(path.relative_to(root))
                row = label_of(package, rel, labels)
                if row is None:
                    skips["unlabelled"] += 1
                    continue
                try:
                    x, dur = load_clip(path, a.sample_rate)
                except Exception:
                    skips["decode_error"] += 1
                    continue
                if dur > a.max_seconds:
                    skips[f"longer_than_{a.max_seconds:g}s"] += 1
                    continue
                if x.size < 0.1 * a.sample_rate:
                    skips["silent_or_shorter_than_0.1s"] += 1
                    continue
                digest = hashlib.sha1(np.round(peak_normalize(x) * 32767).astype(np.int16).tobytes()).hexdigest()
                if digest in seen:
                    skips["duplicate_audio"] += 1
                    continue
                x = peak_normalize(trim(x, int(a.event_seconds * a.sample_rate), int(0.01 * a.sample_rate)))
                out = events_dir / f"{package}__{re.sub(r'[^A-Za-z0-9_.-]+', '_', rel[: -len(path.suffix)])}.flac"
                sf.write(str(out), x.astype(np.float32), a.sample_rate, format="FLAC")
                seen[digest] = rel
                clips.append({"audio": f"events/{out.name}", "caption": row["caption"], "class": row["class"],
                              "package": package, "path": rel, "source": source_of(package, rel),
                              "seconds_original": round(dur, 3), "seconds": round(x.size / a.sample_rate, 3)})  # fmt: skip
                kept += 1
            packages[package] = {"version": version, "deb": deb.name, "licences": licences(
                root / "usr/share/doc" / package / "copyright"), "audio_files": len(files), "clips": kept}  # fmt: skip
    return clips, packages, skips


def write_events_csv(path: Path, clips: list[dict]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["audio", "label", "class", "source", "package", "path"])
        for c in clips:
            w.writerow([c["audio"], c["caption"], c["class"], c["source"], c["package"], c["path"]])


def train_set(out: Path, events_csv: Path, a) -> dict:
    """compose (tree, loudness, counting) -> rule negatives topped up -> train.jsonl (-> records)."""
    from clapcomp.data import build, compose
    from clapcomp.data.negatives import NegativeGenerator, normalize

    compose.main(["--events", str(events_csv), "--out", str(out / "train"), "--n", str(a.n_train), "--seed", str(a.seed),
                  "--sample-rate", str(a.sample_rate), "--kinds", "tree,loudness,counting"])  # fmt: skip
    with events_csv.open(newline="") as f:
        vocabulary = sorted({r["label"] for r in csv.DictReader(f)})
    rules = NegativeGenerator(a.seed, vocabulary=vocabulary)
    kinds, n = Counter(), 0
    with (out / "train" / "manifest.jsonl").open() as fin, (out / "train.jsonl").open("w") as fout:
        for line in fin:
            row = json.loads(line)
            seen, negs = {normalize(row["caption"])} | {normalize(p) for p in row["positives"]}, []
            for neg in row["negatives"] + rules.generate(row["caption"], a.negatives):
                if normalize(neg) not in seen:
                    seen.add(normalize(neg))
                    negs.append(neg)
            row["negatives"] = negs[: a.negatives]
            row["audio"] = f"train/{row['audio']}"
            kinds[row["kind"]] += 1
            n += 1
            fout.write(json.dumps(row) + "\n")
    stats = {"examples": n, "kinds": dict(kinds)}
    if a.record_sample_rate:
        rec = out / f"records_{a.record_sample_rate}"
        s = build.build([str(out / "train.jsonl")], rec, format="manifest", sample_rate=a.record_sample_rate)
        stats["records"] = {"dir": rec.name, "written": s["written"], "skipped": s["skipped"]}
    return stats


def test_set(out: Path, clips: list[dict], a) -> dict:
    """order.csv, attribute.csv and retrieval.jsonl in OUT/test/, from test-split clips only."""
    import soundfile as sf

    from clapcomp.data import compose

    test = out / "test"
    (test / "audio").mkdir(parents=True, exist_ok=True)
    sr = a.sample_rate
    waves = {c["audio"]: sf.read(str(out / c["audio"]), dtype="float64")[0] for c in clips}
    rng = np.random.default_rng([a.seed, 1])

    def pair():  # two clips of different classes and captions
        while True:
            x, y = (clips[int(i)] for i in rng.choice(len(clips), size=2, replace=False))
            if x["class"] != y["class"] and x["caption"] != y["caption"]:
                return x, y

    def write(name, audio):
        sf.write(str(test / "audio" / name), np.asarray(audio, np.float32), sr, format="FLAC")
        return f"audio/{name}"

    rows = []
    for i in range(a.n_order):
        x, y = pair()
        wx, wy = waves[x["audio"]], waves[y["audio"]]
        row = [f"{x['caption']} followed by {y['caption']}", f"{y['caption']} followed by {x['caption']}",
               write(f"order_{i:05d}_pair.flac", compose.concat_audio(wx, wy)),
               write(f"order_{i:05d}_reversed.flac", compose.concat_audio(wy, wx)), "-", "-"]  # fmt: skip
        if i % 4 == 3:
            row[4:] = [
                f"{x['caption']} with {y['caption']}",
                write(f"order_{i:05d}_triplet.flac", compose.overlay_audio(wx, wy)),
            ]
        rows.append(row)
    write_csv(test / "order.csv", ORDER_COLUMNS, rows)

    rows, cut, fade, gap = [], int(a.count_seconds * sr), int(0.01 * sr), int(0.25 * sr)
    for i in range(a.n_attribute):
        x, y = pair()
        wx, wy = waves[x["audio"]], waves[y["audio"]]
        if i % 2 == 0:
            loud, quiet = compose.LOUDNESS_DB["loud"], compose.LOUDNESS_DB["quiet"]
            ex = compose.loudness_example(x["caption"], y["caption"], loud_first=True)
            rows.append([ex["caption"], ex["negatives"][0],
                         write(f"attribute_{i:05d}_pair.flac", compose.loudness_audio(wx, wy, loud, quiet)),
                         write(f"attribute_{i:05d}_reversed.flac", compose.loudness_audio(wx, wy, quiet, loud)), "loudness"])  # fmt: skip
        else:
            c1, c2 = (int(c) for c in rng.choice([1, 2, 3], size=2, replace=False))
            ex = compose.counting_example([x["caption"], y["caption"]], [c1, c2])
            parts = [compose.trim(wx, cut, fade), compose.trim(wy, cut, fade)]
            rows.append([ex["caption"], ex["negatives"][0],
                         write(f"attribute_{i:05d}_pair.flac", compose.counting_audio(parts, [c1, c2], gap)),
                         write(f"attribute_{i:05d}_reversed.flac", compose.counting_audio(parts, [c2, c1], gap)), "counting"])  # fmt: skip
    write_csv(test / "attribute.csv", list(ORDER_COLUMNS[:4]) + ["category"], rows)

    names, labels = [c["audio"] for c in clips], [c["caption"] for c in clips]
    clip_list = [waves[n] for n in names]
    kinds = Counter()
    with (test / "retrieval.jsonl").open("w") as f:
        for i in range(a.n_retrieval):
            kind = compose.KINDS[i % len(compose.KINDS)]
            audio, ex = compose.compose_one(kind, clip_list, labels, rng, sample_rate=sr, count_seconds=a.count_seconds)
            f.write(
                json.dumps({"audio": write(f"retrieval_{i:05d}.flac", audio), "caption": ex["caption"], "kind": kind})
                + "\n"
            )
            kinds[kind] += 1
    return {"order": a.n_order, "order_triplets": a.n_order // 4, "attribute": a.n_attribute,
            "attribute_categories": {"loudness": (a.n_attribute + 1) // 2, "counting": a.n_attribute // 2},
            "retrieval": a.n_retrieval, "retrieval_kinds": dict(kinds)}  # fmt: skip


def _table(clips: list[dict], split: dict[str, str]) -> str:
    counts = defaultdict(Counter)
    for c in clips:
        counts[c["class"]][split[c["source"]]] += 1
    srcs = defaultdict(lambda: defaultdict(set))
    for c in clips:
        srcs[c["class"]][split[c["source"]]].add(c["source"])
    lines = [f"{'class':<16}{'train clips':>12}{'test clips':>11}{'train src':>10}{'test src':>9}"]
    for cls in sorted(counts):
        lines.append(f"{cls:<16}{counts[cls]['train']:>12}{counts[cls]['test']:>11}"
                     f"{len(srcs[cls]['train']):>10}{len(srcs[cls]['test']):>9}")  # fmt: skip
    tot = Counter(split[c["source"]] for c in clips)
    lines.append(f"{'total':<16}{tot['train']:>12}{tot['test']:>11}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, default=Path("/tmp/real_sounds_debs"), help=".deb cache (outside the repo)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--labels", type=Path, default=HERE / "labels.csv")
    ap.add_argument("--seed", type=int, default=0, help="split, composition and negative seed")
    ap.add_argument("--test-fraction", type=float, default=0.2)
    ap.add_argument("--sample-rate", type=int, default=32000, help="of the event clips and compositions")
    ap.add_argument("--event-seconds", type=float, default=2.5, help="each event clip cut to this")
    ap.add_argument("--count-seconds", type=float, default=1.0, help="each counted repeat cut to this")
    ap.add_argument("--max-seconds", type=float, default=12.0, help="files longer than this (ambiences) are skipped")
    ap.add_argument("--n-train", type=int, default=3000)
    ap.add_argument("--negatives", type=int, default=3)
    ap.add_argument("--n-order", type=int, default=200)
    ap.add_argument("--n-attribute", type=int, default=200)
    ap.add_argument("--n-retrieval", type=int, default=200)
    ap.add_argument("--record-sample-rate", type=int, default=16000, help="ArrayRecords of train.jsonl (0: none)")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    labels = read_labels(a.labels)
    a.cache.mkdir(parents=True, exist_ok=True)
    if a.out.exists() and any(a.out.iterdir()):
        ap.error(f"--out {a.out} is not empty; give a new folder")
    (a.out / "events").mkdir(parents=True)
    clips, packages, skips = collect(labels, a.cache, a.out / "events", a)
    split = split_by_source(clips, a.test_fraction, a.seed)
    for c in clips:
        c["split"] = split[c["source"]]
    with (a.out / "clips.jsonl").open("w") as f:
        f.writelines(json.dumps(c) + "\n" for c in clips)
    for name in ("train", "test"):
        write_events_csv(a.out / f"events_{name}.csv", [c for c in clips if c["split"] == name])
    t_clips = time.perf_counter() - t0
    print(_table(clips, split))
    print("skipped:", dict(skips))
    train = train_set(a.out, a.out / "events_train.csv", a)
    test = test_set(a.out, [c for c in clips if c["split"] == "test"], a)
    secs = np.array([c["seconds_original"] for c in clips])
    summary = {
        "command": " ".join([Path(sys.argv[0]).name, *argv]),
        "seed": a.seed, "test_fraction": a.test_fraction, "sample_rate": a.sample_rate,
        "event_seconds": a.event_seconds, "packages": packages,
        "clips": {"total": len(clips), "train": sum(c["split"] == "train" for c in clips),
                  "test": sum(c["split"] == "test" for c in clips),
                  "sources": len(split), "test_sources": sum(v == "test" for v in split.values()),
                  "classes": len({c["class"] for c in clips}),
                  "per_class": {k: dict(Counter(c["split"] for c in clips if c["class"] == k))
                                for k in sorted({c["class"] for c in clips})},
                  "seconds_original": {"total": float(secs.sum()), "mean": float(secs.mean()),
                                       "median": float(np.median(secs)), "min": float(secs.min()), "max": float(secs.max())}},
        "skipped": dict(skips), "train": train, "test": test,
        "seconds": {"clips": round(t_clips, 1), "total": round(time.perf_counter() - t0, 1)},
    }  # fmt: skip
    (a.out / "corpus.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(
        f"train: {train}\ntest: {test}\n{len(packages)} packages, {len(clips)} clips; "
        f"{summary['seconds']['total']:.0f} s; wrote {a.out / 'corpus.json'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
