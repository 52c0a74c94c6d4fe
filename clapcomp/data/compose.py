"""CompA stage-3 compositional audio: expression trees over single-event clips.

An expression combines named event clips with two binary operators (`*` binds tighter than `+`,
both left-associative, parentheses allowed: `"(A + B) * C"`):

- `A + B`: concatenation. The last `c` samples of A are crossfaded with the first `c` samples of
  B, `c = round(0.1 * min(len(A), len(B)))`, with linear weights `w_in[i] = (i + 0.5) / c`,
  `w_out = 1 - w_in` (they sum to 1, so a constant stays constant across the seam). Length
  `len(A) + len(B) - c`. Then the result is peak-normalised to 0.5.
- `A * B`: overlay. The shorter clip is tiled (repeated) to the longer one's length; with
  `balance=True` each (tiled) operand is then scaled to unit RMS (gain balancing, so neither event
  masks the other); then the sum is peak-normalised to 0.5. Length `max(len(A), len(B))`.

Captions render `+` and `*` with connective phrases ("followed by", "with", ...); the phrase at
each operator is chosen once per example (`pick_connectives`) and reused in every positive and
negative, so negatives differ from the caption only where the tree differs. A connective may be
a template that names the right operand first, e.g. `"{b} after {a}"` for `A + B` ("B after A":
mention order opposite to time order). From the tree, as
CompA: positives = the captions of all proper sub-expressions (the operands, recursively);
negatives = `+`<->`*` swaps at one operator and operand swaps at one `+` (at most 5 of each,
deduplicated, never equal to the caption or a positive).

Attribute compositions (CompA-attribute style): loudness, two events started together at +0 /
-15 dB after RMS matching, "a loud X and a quiet Y" (negatives: the swap, then both loud / both
quiet); counting, one or two events each repeated 1-4 times with silent gaps, "X twice followed
by Y three times" (negatives: the counts swapped, then each count one up or down).

CLI: `clapcomp data compose --events events.csv --out DIR [--n N --seed S --kinds
tree,loudness,counting]`, events.csv having columns `audio,label`; writes `DIR/audio/*.flac` and
`DIR/manifest.jsonl` (audio, kind, caption, positives, negatives; paths relative to the manifest).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from clapcomp import fs
from clapcomp.decode import DecodeError, Limits, read_audio

CONCAT_CONNECTIVES = ("followed by", "before", "and then", "after which")
OVERLAY_CONNECTIVES = ("with", "overlayed by", "accompanied by", "amidst")
PEAK = 0.5
MAX_PER_KIND = 5


@dataclasses.dataclass(frozen=True)
class Event:
    """A leaf: the name of one event clip (a key into the clip / label mappings)."""

    name: str

    def __str__(self) -> str:
        return self.name


@dataclasses.dataclass(frozen=True)
class Op:
    """An operator node: `op` is "+" (concatenate) or "*" (overlay)."""

    op: str
    left: Expr
    right: Expr

    def __post_init__(self):
        if self.op not in ("+", "*"):
            raise ValueError(f"operator must be '+' or '*', got {self.op!r}")

    def __str__(self) -> str:
        left, right = str(self.left), str(self.right)
        if isinstance(self.left, Op) and self.left.op == "+" and self.op == "*":
            left = f"({left})"
        if isinstance(self.right, Op) and (self.right.op == "+" or self.op == "*"):
            right = f"({right})"
        return f"{left} {self.op} {right}"


Expr = Event | Op


# ---------------------------------------------------------------------------------------------
# parsing

_TOKEN = re.compile(r"\s*(?:([A-Za-z0-9_.\-]+)|(.))")


def parse(text: str) -> Expr:
    """Parse `"(A + B) * C"` into a tree. Names: letters, digits, `_ . -`."""
    tokens = []
    for m in _TOKEN.finditer(text):
        name, sym = m.groups()
        if name:
            tokens.append(("name", name))
        elif sym and not sym.isspace():
            if sym not in "+*()":
                raise ValueError(f"unexpected {sym!r} in expression {text!r}; use names, + , * and ( )")
            tokens.append((sym, sym))
    pos = 0

    def peek():
        return tokens[pos][0] if pos < len(tokens) else None

    def take(kind):
        nonlocal pos
        if peek() != kind:
            found = tokens[pos][1] if pos < len(tokens) else "end of input"
            raise ValueError(f"expected {kind!r} at {found!r} in expression {text!r}")
        pos += 1
        return tokens[pos - 1][1]

    def atom() -> Expr:
        if peek() == "(":
            take("(")
            e = sum_()
            take(")")
            return e
        return Event(take("name"))

    def product() -> Expr:
        e = atom()
        while peek() == "*":
            take("*")
            e = Op("*", e, atom())
        return e

    def sum_() -> Expr:
        e = product()
        while peek() == "+":
            take("+")
            e = Op("+", e, product())
        return e

    if not tokens:
        raise ValueError("empty expression")
    tree = sum_()
    if pos != len(tokens):
        raise ValueError(f"unexpected {tokens[pos][1]!r} in expression {text!r}")
    return tree


def leaves(expr: Expr) -> list[str]:
    """Event names left to right."""
    return [expr.name] if isinstance(expr, Event) else leaves(expr.left) + leaves(expr.right)


def _nodes(expr: Expr, path: tuple = ()) -> list[tuple[tuple, Op]]:
    """(path, node) of every operator, pre-order; path = tuple of 0 (left) / 1 (right) steps."""
    if isinstance(expr, Event):
        return []
    return [(path, expr)] + _nodes(expr.left, path + (0,)) + _nodes(expr.right, path + (1,))


def _replace(expr: Expr, path: tuple, new: Expr) -> Expr:
    if not path:
        return new
    assert isinstance(expr, Op)
    if path[0] == 0:
        return Op(expr.op, _replace(expr.left, path[1:], new), expr.right)
    return Op(expr.op, expr.left, _replace(expr.right, path[1:], new))


# ---------------------------------------------------------------------------------------------
# audio


def peak_normalize(x: np.ndarray, peak: float = PEAK) -> np.ndarray:
    m = float(np.max(np.abs(x))) if x.size else 0.0
    return x * (peak / m) if m > 0 else x


def concat_audio(a: np.ndarray, b: np.ndarray, *, peak: float | None = PEAK) -> np.ndarray:
    """[Ta], [Tb] -> [Ta + Tb - c], c = round(0.1 * min(Ta, Tb)); linear crossfade, then peak."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    c = int(round(0.1 * min(a.size, b.size)))
    w_in = (np.arange(c) + 0.5) / c if c else np.zeros(0)
    seam = a[a.size - c :] * (1.0 - w_in) + b[:c] * w_in
    out = np.concatenate([a[: a.size - c], seam, b[c:]])
    return peak_normalize(out, peak) if peak is not None else out


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x)))) if x.size else 0.0


def overlay_audio(
    a: np.ndarray, b: np.ndarray, *, balance: bool = True, tile: bool = True, peak: float | None = PEAK
) -> np.ndarray:
    """[Ta], [Tb] -> [max(Ta, Tb)]: shorter tiled (`tile`; else followed by silence), then both
    RMS-matched (`balance`), summed, peak."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    n = max(a.size, b.size)
    if tile:
        a, b = np.resize(a, n), np.resize(b, n)
    else:
        a, b = np.pad(a, (0, n - a.size)), np.pad(b, (0, n - b.size))
    if balance:
        a = a / _rms(a) if _rms(a) > 0 else a
        b = b / _rms(b) if _rms(b) > 0 else b
    out = a + b
    return peak_normalize(out, peak) if peak is not None else out


def render_audio(expr: Expr, clips: Mapping[str, np.ndarray], *, balance: bool = True) -> np.ndarray:
    """The waveform [T] float32 of an expression; `clips` maps event names to mono [T_i] arrays."""
    if isinstance(expr, Event):
        if expr.name not in clips:
            raise KeyError(f"no clip named {expr.name!r}; have {sorted(clips)}")
        x = np.asarray(clips[expr.name], np.float64)
        if x.ndim != 1 or x.size == 0:
            raise ValueError(f"clip {expr.name!r} must be a non-empty mono 1-D array, got shape {x.shape}")
        return x
    a, b = render_audio(expr.left, clips, balance=balance), render_audio(expr.right, clips, balance=balance)
    out = concat_audio(a, b) if expr.op == "+" else overlay_audio(a, b, balance=balance)
    return out.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# captions, positives, negatives


def pick_connectives(expr: Expr, rng: np.random.Generator | None = None) -> dict[tuple, float]:
    """One connective draw u in [0, 1) per operator path (0 everywhere without `rng`); the phrase
    is `words[int(u * len(words))]`, so an operator swap keeps its relative position."""
    return {p: (0.0 if rng is None else float(rng.random())) for p, _ in _nodes(expr)}


def render_caption(
    expr: Expr,
    labels: Mapping[str, str],
    choice: Mapping[tuple, float] | None = None,
    *,
    concat_words: Sequence[str] = CONCAT_CONNECTIVES,
    overlay_words: Sequence[str] = OVERLAY_CONNECTIVES,
    _path: tuple = (),
) -> str:
    """Caption of a tree: `"<left> <connective> <right>"`, or for a template connective such as
    `"{b} after {a}"` the right operand first (mention order opposite to time order). A comma
    follows the first-mentioned operand when it is itself compound. `choice` as `pick_connectives`."""
    if isinstance(expr, Event):
        return labels.get(expr.name, expr.name)
    kw = dict(concat_words=concat_words, overlay_words=overlay_words)
    left = render_caption(expr.left, labels, choice, _path=_path + (0,), **kw)
    right = render_caption(expr.right, labels, choice, _path=_path + (1,), **kw)
    words = concat_words if expr.op == "+" else overlay_words
    conn = words[min(int((choice or {}).get(_path, 0.0) * len(words)), len(words) - 1)]
    first, first_expr, second = left, expr.left, right
    if "{a}" in conn or "{b}" in conn:
        m = re.fullmatch(r"\{([ab])\}\s+(.+?)\s+\{([ab])\}", conn.strip())
        if not m or {m.group(1), m.group(3)} != {"a", "b"}:
            raise ValueError(f"connective template {conn!r} must look like '{{b}} after {{a}}'")
        if m.group(1) == "b":
            first, first_expr, second = right, expr.right, left
        conn = m.group(2)
    sep = ", " if isinstance(first_expr, Op) else " "
    return f"{first}{sep}{conn} {second}"


def negative_trees(expr: Expr) -> tuple[list[Expr], list[Expr]]:
    """(operator swaps, operand swaps): one `+`<->`*` flip at each operator; one operand swap at
    each `+` (swapping the operands of `*` does not change the meaning)."""
    op_swaps, order_swaps = [], []
    for path, node in _nodes(expr):
        op_swaps.append(_replace(expr, path, Op("*" if node.op == "+" else "+", node.left, node.right)))
        if node.op == "+":
            order_swaps.append(_replace(expr, path, Op("+", node.right, node.left)))
    return op_swaps, order_swaps


def _subtree_choice(choice: Mapping[tuple, float], path: tuple) -> dict[tuple, float]:
    return {p[len(path) :]: i for p, i in choice.items() if p[: len(path)] == path}


def example(
    expr: Expr,
    labels: Mapping[str, str],
    rng: np.random.Generator | None = None,
    *,
    concat_words: Sequence[str] = CONCAT_CONNECTIVES,
    overlay_words: Sequence[str] = OVERLAY_CONNECTIVES,
    max_per_kind: int = MAX_PER_KIND,
) -> dict:
    """Caption, positives and negatives of one expression.

    Returns {"caption": str, "positives": [str], "negatives": [str]}. Negatives: operand swaps of
    `+` first, then operator swaps (each kind capped at `max_per_kind`), deduplicated, none equal
    to the caption or to a positive. A negative keeps the connective choice of every operator
    (an operator swap at a node uses the same relative position in the other vocabulary).
    """
    choice = pick_connectives(expr, rng)
    kw = dict(concat_words=concat_words, overlay_words=overlay_words)
    caption = render_caption(expr, labels, choice, **kw)

    positives: list[str] = []
    for path, sub in _paths_of(expr):
        cap = render_caption(sub, labels, _subtree_choice(choice, path), **kw)
        if cap != caption and cap not in positives:
            positives.append(cap)

    op_swaps, order_swaps = negative_trees(expr)
    negatives: list[str] = []
    for trees in (order_swaps, op_swaps):
        kept = 0
        for tree in trees:
            cap = render_caption(tree, labels, _remap_choice(expr, tree, choice), **kw)
            if kept < max_per_kind and cap != caption and cap not in positives and cap not in negatives:
                negatives.append(cap)
                kept += 1
    return {"caption": caption, "positives": positives, "negatives": negatives}


def _paths_of(expr: Expr, path: tuple = ()) -> list[tuple[tuple, Expr]]:
    """(path, subtree) of every proper sub-expression, pre-order."""
    if isinstance(expr, Event):
        return []
    out = []
    for side, sub in ((0, expr.left), (1, expr.right)):
        out.append((path + (side,), sub))
        out.extend(_paths_of(sub, path + (side,)))
    return out


def _remap_choice(orig: Expr, new: Expr, choice: Mapping[tuple, float]) -> dict[tuple, float]:
    """Connective choices for a swapped tree: an operand swap moves subtrees, so each operator
    keeps the choice it had before the move (matched by identity of the operator node)."""
    by_node = {id(node): choice[p] for p, node in _nodes(orig)}
    out = {}
    for p, node in _nodes(new):
        if id(node) in by_node:
            out[p] = by_node[id(node)]
        else:  # the swapped node itself: same path as in the original
            out[p] = choice.get(p, 0.0)
    return out


# ---------------------------------------------------------------------------------------------
# attribute compositions: loudness and counting

LOUDNESS_DB = {"loud": 0.0, "quiet": -15.0}
COUNT_WORDS = {1: "once", 2: "twice", 3: "three times", 4: "four times"}


def with_attribute(phrase: str, word: str) -> str:
    """Put an adjective after the phrase's article: ("a dog barking", "loud") -> "a loud dog
    barking", ("an owl", "quiet") -> "a quiet owl", ("footsteps", "loud") -> "loud footsteps"."""
    m = re.match(r"(?i)(an?|the)\s+(.*)", phrase.strip())
    if not m:
        return f"{word} {phrase.strip()}"
    art = m.group(1) if m.group(1).lower() == "the" else ("an" if word[:1].lower() in "aeiou" else "a")
    return f"{art} {word} {m.group(2)}"


def loudness_audio(a: np.ndarray, b: np.ndarray, db_a: float, db_b: float, *, peak: float | None = PEAK) -> np.ndarray:
    """[Ta], [Tb] -> [max(Ta, Tb)]: each clip scaled to unit RMS, then by its gain (dB), the two
    started together (no tiling), summed, peak-normalised: the level difference is kept."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    a = a / _rms(a) * 10 ** (db_a / 20) if _rms(a) > 0 else a
    b = b / _rms(b) * 10 ** (db_b / 20) if _rms(b) > 0 else b
    return overlay_audio(a, b, balance=False, tile=False, peak=peak)


def loudness_example(x: str, y: str, loud_first: bool = True) -> dict:
    """Caption / positives / negatives for two events of different loudness heard together:
    "a loud X and a quiet Y"; negatives: the swap ("a quiet X and a loud Y"), then the two
    single flips (both loud, both quiet)."""
    wa, wb = ("loud", "quiet") if loud_first else ("quiet", "loud")
    cap = f"{with_attribute(x, wa)} and {with_attribute(y, wb)}"
    negs = [f"{with_attribute(x, wb)} and {with_attribute(y, wa)}",
            f"{with_attribute(x, wb)} and {with_attribute(y, wb)}",
            f"{with_attribute(x, wa)} and {with_attribute(y, wa)}"]  # fmt: skip
    return {"caption": cap, "positives": [with_attribute(x, wa), with_attribute(y, wb)], "negatives": negs}


def repeat_audio(x: np.ndarray, count: int, gap: int) -> np.ndarray:
    """[T] -> [count * T + (count - 1) * gap]: `count` copies separated by `gap` zero samples."""
    x = np.asarray(x, np.float64)
    if count < 1 or gap < 0:
        raise ValueError(f"count must be >= 1 and gap >= 0, got count={count}, gap={gap}")
    parts = [x if i == 0 else np.concatenate([np.zeros(gap), x]) for i in range(count)]
    return np.concatenate(parts)


def counting_audio(
    clips: Sequence[np.ndarray], counts: Sequence[int], gap: int, *, peak: float | None = PEAK
) -> np.ndarray:
    """Each clip repeated its count (`repeat_audio`), the runs joined by the same silent gap, then
    peak-normalised: [sum_i (c_i * T_i) + (sum_i c_i - 1) * gap]."""
    runs = [repeat_audio(x, c, gap) for x, c in zip(clips, counts, strict=True)]
    out = runs[0]
    for r in runs[1:]:
        out = np.concatenate([out, np.zeros(gap), r])
    return peak_normalize(out, peak) if peak is not None else out


def counting_example(phrases: Sequence[str], counts: Sequence[int]) -> dict:
    """Caption / positives / negatives for events repeated a number of times, in sequence:
    "a dog barking twice followed by a bell ringing three times". Negatives: the counts swapped
    between events (when they differ), then each count one up or down (within `COUNT_WORDS`)."""

    def render(cs):
        return " followed by ".join(f"{p} {COUNT_WORDS[c]}" for p, c in zip(phrases, cs, strict=True))

    counts = [int(c) for c in counts]
    if any(c not in COUNT_WORDS for c in counts):
        raise ValueError(f"counts must be in {sorted(COUNT_WORDS)}, got {counts}")
    cap, cands = render(counts), []
    if len(counts) == 2:
        cands.append(render(counts[::-1]))
    for i, c in enumerate(counts):
        for d in (1, -1):
            if c + d in COUNT_WORDS:
                cands.append(render(counts[:i] + [c + d] + counts[i + 1 :]))
    negs = list(dict.fromkeys(n for n in cands if n != cap))
    pos = [f"{p} {COUNT_WORDS[c]}" for p, c in zip(phrases, counts, strict=True)] if len(counts) > 1 else []
    return {"caption": cap, "positives": pos, "negatives": negs}


# ---------------------------------------------------------------------------------------------
# CLI

SHAPES = ("A + B", "A * B", "A + B + C", "(A + B) * C", "A * B + C", "A + B * C")


def _load_events(path: Path, sample_rate: int, limits: Limits) -> tuple[list[np.ndarray], list[str]]:
    import soxr

    with path.open(newline="") as f:
        rows = [{(k or "").strip(): (v or "").strip() for k, v in r.items()} for r in csv.DictReader(f)]
    if not rows or "audio" not in rows[0] or "label" not in rows[0]:
        raise ValueError(f"{path} must be a CSV with columns audio,label (paths relative to the CSV)")
    clips, labels = [], []
    for i, row in enumerate(rows):
        audio_path = Path(row["audio"]) if Path(row["audio"]).is_absolute() else path.parent / row["audio"]
        if not audio_path.is_file() or not row["label"]:
            raise ValueError(f"{path} row {i + 2}: missing file {str(audio_path)!r} or empty label; fix the row")
        try:  # the header is held to `limits` (--max-seconds, the decode budget) before decoding
            x, sr = read_audio(audio_path, limits, target_rate=sample_rate)
        except DecodeError as e:
            raise ValueError(
                f"{path} row {i + 2}: {audio_path}: {e}; cut the clip, drop the row or raise --max-seconds"
            ) from None
        x = x.astype(np.float64)
        if x.size == 0 or not np.all(np.isfinite(x)):
            raise ValueError(f"{audio_path}: empty or non-finite audio; drop it from {path}")
        if sr != sample_rate:
            x = soxr.resample(x, sr, sample_rate)
        clips.append(x)
        labels.append(row["label"])
    return clips, labels


def trim(x: np.ndarray, n: int, fade: int) -> np.ndarray:
    """[T] -> [min(T, n)]: the first n samples, the last `fade` of them faded out linearly when cut."""
    x = np.asarray(x, np.float64)
    if x.size <= n:
        return x
    out = x[:n].copy()
    f = min(fade, n)
    out[n - f :] *= 1.0 - (np.arange(f) + 0.5) / f
    return out


def compose_one(
    kind: str,
    clips: Sequence[np.ndarray],
    labels: Sequence[str],
    rng: np.random.Generator,
    *,
    sample_rate: int,
    gap_seconds: float = 0.25,
    count_seconds: float = 1.0,
) -> tuple[np.ndarray, dict]:
    """One composed example of `kind` ("tree": a random `SHAPES` expression; "loudness"; "counting")
    from clips drawn with `rng` (loudness / counting: two clips with different labels, else a swap
    negative would describe the same scene). Returns (audio [T] float32, {"caption", "positives",
    "negatives"})."""
    if kind == "tree":
        shape = parse(SHAPES[int(rng.integers(len(SHAPES)))])
        names = leaves(shape)
        picks = rng.choice(len(clips), size=len(names), replace=len(names) > len(clips))
        ex = example(shape, {n: labels[int(k)] for n, k in zip(names, picks, strict=True)}, rng)
        return render_audio(shape, {n: clips[int(k)] for n, k in zip(names, picks, strict=True)}), ex
    x = int(rng.integers(len(clips)))
    other = [k for k in range(len(clips)) if labels[k] != labels[x]]  # same-label pairs make false negatives
    if not other:
        raise ValueError(f"{kind} compositions need clips with at least two different labels, got only {labels[x]!r}")
    y = other[int(rng.integers(len(other)))]
    if kind == "loudness":
        loud_first = bool(rng.integers(2))
        db = (LOUDNESS_DB["loud"], LOUDNESS_DB["quiet"]) if loud_first else (LOUDNESS_DB["quiet"], LOUDNESS_DB["loud"])
        return loudness_audio(clips[x], clips[y], *db).astype(np.float32), loudness_example(
            labels[x], labels[y], loud_first
        )
    if kind == "counting":
        picks = [x, y] if rng.integers(2) else [x]
        counts = [int(c) for c in rng.integers(1, 4, size=len(picks))]
        if len(picks) == 1:
            counts = [int(rng.integers(2, 5))]
        n, fade = int(count_seconds * sample_rate), int(0.01 * sample_rate)
        audio = counting_audio([trim(clips[k], n, fade) for k in picks], counts, int(gap_seconds * sample_rate))
        return audio.astype(np.float32), counting_example([labels[k] for k in picks], counts)
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


KINDS = ("tree", "loudness", "counting")
OUTPUTS = ("manifest.jsonl", "audio")  # what main writes: a folder holding only these is replaced whole


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="clapcomp data compose", description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", required=True, type=Path, help="CSV with columns audio,label")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--n", type=int, default=100, help="number of composed examples")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sample-rate", type=int, default=48_000)
    ap.add_argument("--kinds", default="tree", help=f"comma-separated, drawn uniformly per example: {', '.join(KINDS)}")
    ap.add_argument("--gap-seconds", type=float, default=0.25, help="silence between repeats (counting)")
    ap.add_argument("--count-seconds", type=float, default=1.0, help="each repeated clip cut to this (counting)")
    ap.add_argument("--max-seconds", type=float, default=600.0, help="refuse longer event clips (header check)")
    args = ap.parse_args(argv)
    import soundfile as sf

    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if not kinds or set(kinds) - set(KINDS):
        ap.error(f"--kinds must name some of {', '.join(KINDS)}, got {args.kinds!r}")
    try:
        fs.refuse_inputs(args.out, [args.events, args.events.parent])
    except ValueError as e:
        ap.error(str(e))
    clips, labels = _load_events(args.events, args.sample_rate, Limits(max_seconds=args.max_seconds))
    if len(clips) < 2:
        raise SystemExit(f"{args.events} needs at least 2 event clips to compose")
    rng = np.random.default_rng(args.seed)
    # Into a temporary sibling, renamed into place at the end: an earlier output survives a failed run.
    with (
        fs.atomic_dir(
            args.out, overwrite=fs.replaceable(args.out, OUTPUTS, "manifest.jsonl"), purpose="clapcomp data compose"
        ) as out,
        (out / "manifest.jsonl").open("w") as f,
    ):
        (out / "audio").mkdir()
        for n in range(args.n):
            kind = kinds[int(rng.integers(len(kinds)))] if len(kinds) > 1 else kinds[0]
            audio, ex = compose_one(
                kind,
                clips,
                labels,
                rng,
                sample_rate=args.sample_rate,
                gap_seconds=args.gap_seconds,
                count_seconds=args.count_seconds,
            )
            rel = f"audio/{n:06d}.flac"
            sf.write(str(out / rel), audio, args.sample_rate, format="FLAC")
            f.write(json.dumps({"audio": rel, "kind": kind, **ex}) + "\n")
    print(f"wrote {args.n} composed examples to {args.out / 'manifest.jsonl'}")
    return 0
