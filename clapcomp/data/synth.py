"""The embedded synthetic compositional dataset: procedural events, composed, with benchmarks.

Events: 12 classes with distinct spectro-temporal signatures (`EVENTS`): whistle (sine),
rising / falling chirp (2-octave exponential sweeps), noise burst (white), click train
(periodic 3-ms clicks, 8-14 Hz), buzz (sawtooth harmonics), tremolo (sine, 100% AM at 5-9 Hz),
siren (sine, +-25% FM at 1.2-2 Hz), rumble (noise < 250 Hz), hiss (noise 4-7 kHz), beeping
(sine gated at 3-5 Hz), chord (major triad). All content stays below 7 kHz, so 16 kHz works.
Attributes: loudness (loud = 0 dB, quiet = -15 dB, else -4..0 dB; every event is first scaled to
a common RMS), pitch (tonal classes only: high-pitched 1.4-2.4 kHz, low-pitched 180-320 Hz,
else 500-900 Hz fundamental), duration (short 0.35-0.6 s, long 1.6-2.2 s, else 0.9-1.3 s, all
times clip_seconds / 3.2, so two events in a row fill 55-80% of a clip, as in CompA's
concatenations; with more silence around them the demo model barely learns which came first).
Each rendering draws its exact frequency, duration, rates, phases and noise from its own seed.

Clips are exactly `clip_seconds` long: the content (composed with `clapcomp.data.compose`:
`+` crossfaded concatenation, `*` RMS-balanced overlay; or two events started together with their
levels kept; peak 0.5) sits at a random offset in a
-60 dB white noise floor. Training clip types (default `mix`, which the retrieval set always
uses), captions templated ("a <attr> <event>"):
- order (40%): "a X followed by a Y" / "a X and then a Y" / "a X then a Y"; audio X then Y.
  The events are named in time order, as most real captions do.
- attribute (35%): "a loud X and a quiet Y" (or high-pitched/low-pitched, short/long), X != Y,
  the two events started together: which event has which attribute must be heard in the same
  moments, not read off which half of the clip it fills.
- overlay (15%): "a X with a Y" / "a X accompanied by a Y"; RMS-balanced overlay.
- single (10%): "a X", "a high-pitched X", "a short X".
Every training row has `positives` (its operands' captions) and up to `n_negatives` negatives,
in priority order: tree negatives from compose (operand swap of `+`, `+`<->`*` swap), then
`NegativeGenerator.generate` (order rules, attribute swap, attribute flip, event substitution,
interleaved). So an order clip's first negative is the order swap and an attribute clip's first
is the attribute swap.

Benchmarks (CompA format, paths relative to the CSV):
- order.csv: "a X followed by a Y" vs "a Y followed by a X" over [X][Y] and [Y][X] made from the
  same two event renderings, the same offset and noise floor; every 4th row has a triplet
  "a X with a Y" (their overlay), the others "-".
- attribute.csv: "a A1 X and a A2 Y" vs "a A2 X and a A1 Y"; both audios rendered from the same
  event seeds and offset, events started together, only the attribute values trade places.
- retrieval.jsonl: {"audio", "caption"} clips of the training mix.
HELD APART: the class and pair vocabulary is shared with training (it has to be), but every
waveform is new: each split draws from its own seed stream (`SeedSequence(seed, spawn_key=
(split, index))`, split 0 = train, 1 = order, 2 = attribute, 3 = retrieval), so no benchmark
event rendering (frequencies, durations, phases, noise) and no benchmark clip occurs in
training. `renderings.jsonl` lists every event seed per split so this can be checked.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from clapcomp import fs
from clapcomp.data import compose
from clapcomp.data.negatives import NegativeGenerator, normalize

EVENTS = (
    "whistle", "rising chirp", "falling chirp", "noise burst", "click train", "buzz",
    "tremolo", "siren", "rumble", "hiss", "beeping", "chord",
)  # fmt: skip
TONAL = ("whistle", "rising chirp", "falling chirp", "buzz", "tremolo", "siren", "beeping", "chord")
ATTRIBUTES = {"loudness": ("loud", "quiet"), "pitch": ("high-pitched", "low-pitched"), "duration": ("short", "long")}
CONCAT_WORDS = ("followed by", "and then", "then")
OVERLAY_WORDS = ("with", "accompanied by")
SPLITS = {"train": 0, "order": 1, "attribute": 2, "retrieval": 3}
MIX = {"order": 0.40, "attribute": 0.35, "overlay": 0.15, "single": 0.10}
_RMS = 0.1
FILL_SECONDS = 3.2  # durations scale with clip_seconds / FILL_SECONDS: two events fill 55-80% of a clip
_FLOOR = 5e-4


def _uniform(rng, lo, hi):
    return float(rng.uniform(lo, hi))


def _loguniform(rng, lo, hi):
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _band_noise(rng, n, sr, lo, hi):
    """White noise [n] band-limited to [lo, hi] Hz (FFT mask over a power-of-two length)."""
    size = 1 << max(n - 1, 1).bit_length()
    spec = np.fft.rfft(rng.standard_normal(size))
    f = np.fft.rfftfreq(size, 1 / sr)
    spec[(f < lo) | (f > hi)] = 0
    return np.fft.irfft(spec, size)[:n]


def render_event(name: str, attrs: dict, seed, sample_rate: int, scale: float = 1.0) -> np.ndarray:
    """One event [T] float64 at RMS `_RMS` * gain. `attrs` maps kind -> value (ATTRIBUTES);
    `seed` seeds every random draw; `scale` multiplies every duration."""
    if name not in EVENTS:
        raise ValueError(f"unknown event {name!r}; choose one of {EVENTS}")
    if attrs.get("pitch") and name not in TONAL:
        raise ValueError(f"pitch attributes apply to tonal events {TONAL}, not {name!r}")
    rng = np.random.default_rng(seed)
    dur = {"short": (0.35, 0.6), "long": (1.6, 2.2)}.get(attrs.get("duration"), (0.9, 1.3))
    n = int(round(_uniform(rng, *dur) * scale * sample_rate))
    f0 = _loguniform(
        rng, *{"high-pitched": (1400, 2400), "low-pitched": (180, 320)}.get(attrs.get("pitch"), (500, 900))
    )
    gain_db = {"loud": (-0.5, 0.5), "quiet": (-15.5, -14.5)}.get(attrs.get("loudness"), (-4.0, 0.0))
    gain = 10 ** (_uniform(rng, *gain_db) / 20)
    phase = _uniform(rng, 0, 2 * np.pi)
    rate = _uniform(rng, 0.0, 1.0)  # a per-rendering draw for the class's modulation rate
    t = np.arange(n) / sample_rate
    top = 7000.0  # highest frequency of any content (sample_rate >= 16 kHz)

    def sine(freq):  # freq: scalar or [n] instantaneous frequency
        return np.sin(2 * np.pi * np.cumsum(np.broadcast_to(freq, (n,))) / sample_rate + phase)

    if name == "whistle":
        x = sine(f0)
    elif name in ("rising chirp", "falling chirp"):
        ramp = t / t[-1] if n > 1 else t
        x = sine(f0 * 2.0 ** (2 * (ramp if name == "rising chirp" else 1 - ramp) - 1))
    elif name == "noise burst":
        x = rng.standard_normal(n)
    elif name == "click train":
        x = np.zeros(n)
        period = int(sample_rate / (8 + 6 * rate))
        click = rng.standard_normal(int(0.003 * sample_rate)) * np.exp(-np.linspace(0, 5, int(0.003 * sample_rate)))
        for start in range(int(rate * period) % period, n - click.size, period):
            x[start : start + click.size] += click
    elif name == "buzz":
        x = sum(np.sin(2 * np.pi * h * f0 * t + phase * h) / h for h in range(1, int(top // f0) + 1))
    elif name == "tremolo":
        x = sine(f0) * (0.5 + 0.5 * np.sin(2 * np.pi * (5 + 4 * rate) * t))
    elif name == "siren":
        x = sine(f0 * (1 + 0.25 * np.sin(2 * np.pi * (1.2 + 0.8 * rate) * t)))
    elif name == "rumble":
        x = _band_noise(rng, n, sample_rate, 20.0, 250.0)
    elif name == "hiss":
        x = _band_noise(rng, n, sample_rate, 4000.0, top)
    elif name == "beeping":
        x = sine(f0) * np.clip(0.5 + 8 * np.sin(2 * np.pi * (3 + 2 * rate) * t), 0, 1)
    else:  # chord
        x = sum(np.sin(2 * np.pi * f0 * r * t + phase * k) for k, r in enumerate((1.0, 1.26, 1.5)))
    if name in TONAL:
        x = x + 0.01 * rng.standard_normal(n)
    ramp_n = min(int(0.01 * sample_rate), n // 2)
    env = np.ones(n)
    env[:ramp_n] = 0.5 - 0.5 * np.cos(np.pi * np.arange(ramp_n) / ramp_n)
    env[n - ramp_n :] = env[:ramp_n][::-1]
    x = x * env
    return x * (gain * _RMS / np.sqrt(np.mean(x**2)))


def _phrase(name: str, attr: str | None = None) -> str:
    return f"a {attr} {name}" if attr else f"a {name}"


class _Maker:
    """Renders the clips of one split; every random draw comes from (seed, split, index)."""

    def __init__(self, seed: int, split: str, sample_rate: int, clip_seconds: float):
        self.seed, self.split_id = seed, SPLITS[split]
        self.sr, self.n = sample_rate, int(round(clip_seconds * sample_rate))
        self.scale = clip_seconds / FILL_SECONDS

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(self.split_id, index)))

    def event(self, name, attrs, seed):
        return render_event(name, attrs, seed, self.sr, self.scale)

    def place(self, content: np.ndarray, seed: int) -> np.ndarray:
        """Put content [T] at a random offset in a clip [n] with a noise floor; float32."""
        rng = np.random.default_rng(seed)
        content = content[: self.n]
        out = _FLOOR * rng.standard_normal(self.n, dtype=np.float32).astype(np.float64)
        start = int(rng.integers(0, self.n - content.size + 1))
        out[start : start + content.size] += content
        return out.astype(np.float32)


def _two(rng, pool=EVENTS):
    i, j = rng.choice(len(pool), size=2, replace=False)
    return pool[int(i)], pool[int(j)]


def _attribute_pair(rng):
    kind = ("loudness", "pitch", "duration")[int(rng.integers(3))]
    x, y = _two(rng, TONAL if kind == "pitch" else EVENTS)
    a1, a2 = ATTRIBUTES[kind][:: 1 if rng.integers(2) else -1]
    return kind, x, y, a1, a2


def _train_example(maker: _Maker, index: int, rules: NegativeGenerator, n_negatives: int, mix: dict) -> tuple:
    """(audio [n] f32, {"caption", "positives", "negatives"}, [(event, attrs, seed)], placement seed)."""
    rng = maker.rng(index)
    seeds = [int(s) for s in rng.integers(0, 2**63 - 1, size=3)]
    kinds, p = list(mix), np.array(list(mix.values()), np.float64)
    kind = kinds[min(int(np.searchsorted(np.cumsum(p / p.sum()), rng.uniform(), side="right")), len(kinds) - 1)]
    words = dict(concat_words=CONCAT_WORDS, overlay_words=OVERLAY_WORDS)
    if kind == "single":
        name = EVENTS[int(rng.integers(len(EVENTS)))]
        k = ("none", "pitch", "duration")[int(rng.integers(3))]
        attr = None if k == "none" or (k == "pitch" and name not in TONAL) else ATTRIBUTES[k][int(rng.integers(2))]
        attrs = {k: attr} if attr else {}
        content = compose.peak_normalize(maker.event(name, attrs, seeds[0]))
        ex = {"caption": _phrase(name, attr), "positives": [], "negatives": []}
        events = [(name, attrs, seeds[0])]
    elif kind == "attribute":
        akind, x, y, a1, a2 = _attribute_pair(rng)
        ex_, ey_ = maker.event(x, {akind: a1}, seeds[0]), maker.event(y, {akind: a2}, seeds[1])
        content = compose.overlay_audio(ex_, ey_, balance=False, tile=False)
        ex = {
            "caption": f"{_phrase(x, a1)} and {_phrase(y, a2)}",
            "positives": [_phrase(x, a1), _phrase(y, a2)],
            "negatives": [],
        }
        events = [(x, {akind: a1}, seeds[0]), (y, {akind: a2}, seeds[1])]
    else:
        x, y = _two(rng)
        tree = compose.parse("A + B" if kind == "order" else "A * B")
        clips = {"A": maker.event(x, {}, seeds[0]), "B": maker.event(y, {}, seeds[1])}
        content = compose.render_audio(tree, clips).astype(np.float64)
        ex = compose.example(tree, {"A": _phrase(x), "B": _phrase(y)}, rng, **words)
        events = [(x, {}, seeds[0]), (y, {}, seeds[1])]
    negs = ex["negatives"] + rules.generate(ex["caption"], n_negatives)
    seen, ex["negatives"] = set(), []
    for neg in negs:
        if normalize(neg) not in seen and neg not in ex["positives"]:
            seen.add(normalize(neg))
            ex["negatives"].append(neg)
    ex["negatives"] = ex["negatives"][:n_negatives]
    return maker.place(content, seeds[2]), ex, events, seeds[2]


def _write(path: Path, audio: np.ndarray, sr: int, fmt: str) -> None:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), audio, sr, format=fmt.upper(), subtype="PCM_16")


def synthesize(
    out_dir,
    *,
    seed: int = 0,
    n_train: int = 1000,
    n_order: int = 200,
    n_attribute: int = 200,
    n_retrieval: int = 200,
    sample_rate: int = 48_000,
    clip_seconds: float = 5.0,
    n_negatives: int = 4,
    mix: dict | None = None,
    audio_format: str = "flac",
) -> dict:
    """Write the dataset under `out_dir`; returns {"train", "order", "attribute", "retrieval",
    "renderings": paths (str), "counts": {...}, "sample_rate", "clip_seconds", "seconds"}.

    Files: train.jsonl (audio, caption, positives, negatives), order.csv, attribute.csv,
    retrieval.jsonl, renderings.jsonl (per clip: split, file, events [name, attrs, seed], place seed),
    synth.json (this summary), audio/<split>/*.<format>. Same arguments -> identical bytes.
    """
    if sample_rate < 16_000:
        raise ValueError(f"sample_rate must be >= 16000 (events reach 7 kHz), got {sample_rate}")
    if not 2.5 <= clip_seconds <= 10.0:
        raise ValueError(f"clip_seconds must be in [2.5, 10] (two events must fit), got {clip_seconds}")
    mix = dict(MIX if mix is None else mix)
    if not mix or set(mix) - set(MIX) or min(mix.values()) < 0 or sum(mix.values()) <= 0:
        raise ValueError(f"mix must map some of {sorted(MIX)} to non-negative weights with a positive sum, got {mix}")
    if audio_format not in ("flac", "wav"):
        raise ValueError(f"audio_format must be 'flac' or 'wav', got {audio_format!r}")
    t0 = time.perf_counter()
    final = Path(out_dir)  # written into a temporary sibling `out`, renamed into place at the end
    with fs.atomic_dir(
        final, overwrite=fs.replaceable(final, OUTPUTS, "synth.json"), purpose="clapcomp data synth"
    ) as out:
        ext = audio_format
        rules = NegativeGenerator(seed, vocabulary=EVENTS)
        renderings = []

        def record(split, rel, events, place):
            renderings.append(
                {"split": split, "file": rel, "events": [[n, a, s] for n, a, s in events], "place": place}
            )

        for split, count, path in (("train", n_train, "train.jsonl"), ("retrieval", n_retrieval, "retrieval.jsonl")):
            maker = _Maker(seed, split, sample_rate, clip_seconds)
            with (out / path).open("w") as f:
                for i in range(count):
                    audio, ex, events, place = _train_example(
                        maker, i, rules, n_negatives, mix if split == "train" else MIX
                    )
                    rel = f"audio/{split}/{i:06d}.{ext}"
                    _write(out / rel, audio, sample_rate, ext)
                    row = {"audio": rel, **ex} if split == "train" else {"audio": rel, "caption": ex["caption"]}
                    f.write(json.dumps(row) + "\n")
                    record(split, rel, events, place)

        maker = _Maker(seed, "order", sample_rate, clip_seconds)
        rows = []
        for i in range(n_order):
            rng = maker.rng(i)
            x, y = _two(rng)
            sx, sy, sp = (int(s) for s in rng.integers(0, 2**63 - 1, size=3))
            ex_, ey_ = maker.event(x, {}, sx), maker.event(y, {}, sy)
            files = [f"audio/order/{i:06d}_{tag}.{ext}" for tag in ("pair", "reversed", "triplet")]
            _write(out / files[0], maker.place(compose.concat_audio(ex_, ey_), sp), sample_rate, ext)
            _write(out / files[1], maker.place(compose.concat_audio(ey_, ex_), sp), sample_rate, ext)
            row = [
                f"{_phrase(x)} followed by {_phrase(y)}",
                f"{_phrase(y)} followed by {_phrase(x)}",
                files[0],
                files[1],
                "-",
                "-",
            ]
            if i % 4 == 3:
                _write(out / files[2], maker.place(compose.overlay_audio(ex_, ey_), sp), sample_rate, ext)
                row[4:] = [f"{_phrase(x)} with {_phrase(y)}", files[2]]
            rows.append(row)
            for f in files[: 3 if i % 4 == 3 else 2]:
                record("order", f, [(x, {}, sx), (y, {}, sy)], sp)
        write_csv(out / "order.csv", ORDER_COLUMNS, rows)

        maker = _Maker(seed, "attribute", sample_rate, clip_seconds)
        rows = []
        for i in range(n_attribute):
            rng = maker.rng(i)
            kind, x, y, a1, a2 = _attribute_pair(rng)
            sx, sy, sp = (int(s) for s in rng.integers(0, 2**63 - 1, size=3))
            files = [f"audio/attribute/{i:06d}_{tag}.{ext}" for tag in ("pair", "reversed")]
            for f, (ax, ay) in zip(files, ((a1, a2), (a2, a1)), strict=True):
                ex_, ey_ = maker.event(x, {kind: ax}, sx), maker.event(y, {kind: ay}, sy)
                audio = compose.overlay_audio(ex_, ey_, balance=False, tile=False)
                _write(out / f, maker.place(audio, sp), sample_rate, ext)
                record("attribute", f, [(x, {kind: ax}, sx), (y, {kind: ay}, sy)], sp)
            rows.append([f"{_phrase(x, a1)} and {_phrase(y, a2)}", f"{_phrase(x, a2)} and {_phrase(y, a1)}", *files])
        write_csv(out / "attribute.csv", ORDER_COLUMNS[:4], rows)

        with (out / "renderings.jsonl").open("w") as f:
            for r in renderings:
                f.write(json.dumps(r) + "\n")
        names = {"train": "train.jsonl", "order": "order.csv", "attribute": "attribute.csv",
                 "retrieval": "retrieval.jsonl", "renderings": "renderings.jsonl"}  # fmt: skip
        summary = {
            **names,
            "counts": {"train": n_train, "order": n_order, "order_triplets": n_order // 4, "attribute": n_attribute,
                       "retrieval": n_retrieval, "events": len(EVENTS)},
            "sample_rate": sample_rate,
            "clip_seconds": clip_seconds,
            "seed": seed,
        }  # fmt: skip
        fs.write_text(out / "synth.json", json.dumps(summary, indent=1) + "\n")  # paths relative to out_dir
    return {**summary, **{k: str(final / p) for k, p in names.items()}, "seconds": time.perf_counter() - t0}


# What synthesize writes: an output folder holding only these is an earlier dataset, replaced whole.
OUTPUTS = ("train.jsonl", "order.csv", "attribute.csv", "retrieval.jsonl", "renderings.jsonl", "synth.json", "audio")

ORDER_COLUMNS = (
    "pair_caption",
    "reversed_pair_caption",
    "pair_file",
    "reversed_pair_file",
    "triplet_caption",
    "triplet_file",
)


def write_csv(path: Path, header, rows) -> None:
    """`rows` under `header` as a CSV file (the CompA benchmark format with ORDER_COLUMNS)."""
    import csv

    with path.open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="clapcomp data synth", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path, help="output folder (created)")
    ap.add_argument("--seed", type=int, default=0, help="same seed -> byte-identical files")
    ap.add_argument("--n-train", type=int, default=1000, help="training clips (train.jsonl)")
    ap.add_argument("--n-order", type=int, default=200, help="order.csv rows (every 4th with a triplet)")
    ap.add_argument("--n-attribute", type=int, default=200, help="attribute.csv rows")
    ap.add_argument("--n-retrieval", type=int, default=200, help="retrieval.jsonl clips")
    ap.add_argument("--sample-rate", type=int, default=48_000, help=">= 16000")
    ap.add_argument("--clip-seconds", type=float, default=5.0, help="every clip's exact length, 2.5-10")
    ap.add_argument("--n-negatives", type=int, default=4, help="negatives per training row, priority order")
    ap.add_argument("--format", choices=("flac", "wav"), default="flac")
    ap.add_argument("--mix", default=",".join(f"{k}={v}" for k, v in MIX.items()), help="training clip types")
    a = ap.parse_args(argv)
    try:
        mix = {k.strip(): float(v) for k, v in (item.split("=") for item in a.mix.split(","))}
    except ValueError:
        ap.error(f"--mix must look like order=0.4,attribute=0.35,overlay=0.15,single=0.1, got {a.mix!r}")
    s = synthesize(a.out, seed=a.seed, n_train=a.n_train, n_order=a.n_order, n_attribute=a.n_attribute,
                   n_retrieval=a.n_retrieval, sample_rate=a.sample_rate, clip_seconds=a.clip_seconds,
                   n_negatives=a.n_negatives, audio_format=a.format, mix=mix)  # fmt: skip
    print(f"wrote {s['counts']} to {a.out} in {s['seconds']:.1f}s")
    return 0
