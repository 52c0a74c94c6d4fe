"""Collectives in compiled HLO text (`compiled.as_text()`): kind, shapes, bytes and mesh axes.

Used by tests/test_losses.py (CPU programs) and benchmarks/tpu_aot.py (TPU programs). Async pairs
(`all-gather-start` / `-done`) count once, at their start. So does XLA:TPU's async collective fusion:
`%async-collective-start` (a fusion holding the collective) is continued by a chain of fusions of
`%async_collective_fusion.N` computations, which progress the same collective beside other work, and
ended by `%async-collective-done`; each of those holds the collective's instruction again, but it is
one collective (the LAION-CLAP step at 32,768 on v5e-256: 2 starts, 232 continuations, 2 dones).
"""

from __future__ import annotations

import re

import numpy as np

_COLLECTIVE = re.compile(r"^\s*(?:ROOT )?%(\S+) = (\(.*?\)|\S+) (all-gather|all-reduce|reduce-scatter|"
                         r"all-to-all|collective-permute)(?:-start)?\((.*?)\)(.*)$")  # fmt: skip
_DEF = re.compile(r"^\s*(?:ROOT )?%(\S+) = (\(.*?\)|\S+) ")
_SHAPE = re.compile(r"([a-z]+[0-9]*)\[([\d,]*)\]")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4, "s32": 4, "u32": 4,
          "f64": 8, "s64": 8, "u64": 8}  # fmt: skip
_IOTA = re.compile(r"replica_groups=\[([\d,]+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?")
_LIST = re.compile(r"replica_groups=\{((?:\{[\d,]*\},?)*)\}")
_NAMED = re.compile(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}")  # mesh['axis_0'=4,...] {'axis_0'}
_PAIRS = re.compile(r"source_target_pairs=\{((?:\{\d+,\d+\},?)*)\}")
_COMPUTATION = re.compile(r"^(?:ENTRY )?%(\S+) \(")
_DONE_CALLS = re.compile(r"^\s*(?:ROOT )?%async-collective-done\S* = .*?calls=%([^,\s]+)")


def _shapes(text: str) -> list[tuple[str, tuple[int, ...]]]:
    return [(dt, tuple(int(x) for x in dims.split(",") if x)) for dt, dims in _SHAPE.findall(text) if dt in _BYTES]


def _groups(attrs: str) -> list[list[int]] | None:
    """The device groups of a collective (logical ids), from its replica_groups / source_target_pairs."""
    if m := _IOTA.search(attrs):
        out, dims = [int(x) for x in m[1].split(",")], [int(x) for x in m[2].split(",")]
        ids = np.arange(int(np.prod(dims))).reshape(dims)
        if m[3]:
            ids = ids.transpose([int(x) for x in m[3].split(",")])
        return ids.reshape(out).tolist()
    if m := _NAMED.search(attrs):
        axes = re.findall(r"'([^']+)'=(\d+)", m[1])
        names, sizes = [a for a, _ in axes], [int(n) for _, n in axes]
        inner = [names.index(a) for a in re.findall(r"'([^']+)'", m[2])]
        ids = (
            np.arange(int(np.prod(sizes)))
            .reshape(sizes)
            .transpose([a for a in range(len(sizes)) if a not in inner] + inner)
        )
        return ids.reshape(-1, int(np.prod([sizes[a] for a in inner]))).tolist()
    if m := _LIST.search(attrs):
        return [[int(x) for x in g.split(",") if x] for g in re.findall(r"\{([\d,]*)\}", m[1])]
    if m := _PAIRS.search(attrs):
        return [[int(a), int(b)] for a, b in re.findall(r"\{(\d+),(\d+)\}", m[1])]
    return None


def collectives(hlo: str, mesh_shape: dict[str, int] | None = None) -> list[dict]:
    """Every collective of `hlo`: {kind, result: [shapes], operands: [shapes], result_bytes,
    operand_bytes, axes}. `axes` (with `mesh_shape`, the mesh's {name: size} in device order): the
    mesh axes along which the members of a group differ; "all" when the program names no groups."""
    lines = hlo.splitlines()
    defs = {m[1]: m[2] for m in map(_DEF.match, lines) if m}
    done = {m[1] for m in map(_DONE_CALLS.match, lines) if m}
    found, computation = [], ""
    for line in lines:
        if m := _COMPUTATION.match(line):
            computation = m[1]
        match = _COLLECTIVE.match(line)
        if not match or computation.startswith("async_collective_fusion") or computation in done:
            continue  # the continuation or end of an async collective fusion counted at its start
        result = _shapes(match[2])
        operands = [
            s for op in match[4].split(",") if op.strip() for s in _shapes(defs.get(op.strip().lstrip("%"), ""))
        ]
        if match[2].startswith("(") and len(result) == 2 * len(operands) and match[3] != "all-reduce":
            result = result[len(operands) :]  # async start: (operands, results)
        size = lambda shapes: int(sum(_BYTES[dt] * int(np.prod(dims)) for dt, dims in shapes))
        entry = dict(kind=match[3], result=[list(d) for _, d in result], operands=[list(d) for _, d in operands],
                     result_bytes=size(result), operand_bytes=size(operands))  # fmt: skip
        if mesh_shape is not None:
            entry["axes"] = _axes(_groups(match[5]), mesh_shape)
        found.append(entry)
    return found


def _axes(groups, mesh_shape: dict[str, int]) -> list[str] | str:
    if not groups or all(len(g) == len(groups[0]) and not g for g in groups):
        return "all"
    names, sizes = list(mesh_shape), list(mesh_shape.values())
    varying = set()
    for g in groups:
        coords = np.array([np.unravel_index(i, sizes) for i in g])
        varying.update(names[a] for a in range(len(names)) if len(set(coords[:, a])) > 1)
    return [n for n in names if n in varying]


def collective_shapes(hlo: str) -> list[tuple[str, set[tuple[int, ...]]]]:
    """[(kind, {operand and result shapes})] of every collective in `hlo`."""
    return [(c["kind"], {tuple(s) for s in c["result"] + c["operands"]}) for c in collectives(hlo)]


def gathers_with_axis(hlo: str, rows: int, k: int) -> list[dict]:
    """The all-gathers whose operand or result carries a [rows, k, ...] block, or rows * k rows
    flattened: a gathered hard-negative (K) axis of a `rows`-row local batch."""
    bad = []
    for c in collectives(hlo):
        shapes = [tuple(s) for s in c["operands"] + c["result"]]
        if c["kind"] == "all-gather" and any(s[:2] == (rows, k) or (s and s[0] == rows * k) for s in shapes):
            bad.append(c)
    return bad
