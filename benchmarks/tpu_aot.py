"""Compile the real train step for a TPU pod on a CPU host (no TPU needed), MaxText
`train_compile.py` style, and report what one chip would hold and do.

    pip install "jax[tpu]==<your jax version>"      # libtpu: the TPU compiler, usable on any host
    JAX_PLATFORMS=cpu python benchmarks/tpu_aot.py --config configs/clap_htsat_roberta.py \
        --topology v5e:16x16 --per-chip-batch 128 --loss compa --k 3 --dtype bf16 --out aot.json

The step is `clapcomp.train.step.from_parts` of the config (plain, CompA with K hard negatives,
or modular with P positives / K negatives), lowered with abstract inputs only (`jax.ShapeDtypeStruct`
state and batch carrying the mesh's shardings) and compiled for the topology's devices.
Reported per chip (XLA's `memory_analysis` / `cost_analysis` of the SPMD program): argument bytes
(params + optimizer state + batch), temporaries, outputs (minus those aliased to donated inputs),
their total against the chip's HBM, FLOPs per sample against the analytic count of
benchmarks/train_throughput.py, compile seconds, and every collective (kind, shapes, bytes, mesh
axes). It also checks that no all-gather carries the K (hard-negative) axis.
`--set model.htsat.remat=nothing_saveable` (any dotted config field) changes the config;
`--tower audio|text` compiles the step with a stand-in loss through that tower only (compile time by tower).

Per-chip memory is linear in the per-chip batch b (state + b x activations), so two compiles give
the figure at any b: `python benchmarks/tpu_aot.py --fit b32.json b64.json --at 128` (a third
compile at that b checks the fit).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
HBM_GIB = {"v4": 32, "v5e": 16, "v5litepod": 16, "v5p": 95, "v6e": 32}


def _sibling(name: str):
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(HERE.parent / "configs" / "clap_htsat_roberta.py"), help="config file")
    p.add_argument("--topology", default="v5e:2x2", help="TPU topology name, e.g. v5e:16x16, v5p:8x8x8, v4:2x2x2")
    p.add_argument("--per-chip-batch", type=int, default=8, help="samples per chip (global batch = this x chips)")
    p.add_argument("--loss", choices=["plain", "compa", "modular"], default="compa")
    p.add_argument("--k", type=int, default=3, help="hard negatives per audio (compa, modular)")
    p.add_argument("--p", type=int, default=2, help="extra positives per audio (modular)")
    p.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16", help="compute dtype (params stay fp32)")
    p.add_argument("--fsdp", type=int, default=1, help="size of the fsdp mesh axis (data = chips / fsdp)")
    p.add_argument("--tower", choices=["both", "audio", "text"], default="both",
                   help="compile the step with a stand-in loss through this tower only (its share of compile time)")  # fmt: skip
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="config override, repeatable")
    p.add_argument("--hlo", help="also write the compiled HLO text to this file")
    p.add_argument("--out", help="also write the report as JSON to this file")
    p.add_argument("--fit", nargs=2, metavar="JSON", help="two --out reports of one setup at two per-chip batches")
    p.add_argument("--at", type=int, default=128, help="per-chip batch to extrapolate --fit to")
    return p.parse_args(argv)


def fit(a: dict, b: dict, at: int) -> dict:
    """Per-chip bytes at `at` samples per chip, linear through two reports of the same setup."""
    (x0, r0), (x1, r1) = sorted(((r["per_chip_batch"], r) for r in (a, b)), key=lambda t: t[0])
    if x0 == x1:
        raise ValueError(f"--fit needs two different per-chip batches, got {x0} twice")
    out = {}
    for key in ("arguments", "temporaries", "outputs", "code", "total"):
        slope = (r1["bytes"][key] - r0["bytes"][key]) / (x1 - x0)
        out[key] = r0["bytes"][key] + slope * (at - x0)
    return dict(
        per_chip_batch=at,
        bytes=out,
        hbm=r0["bytes"]["hbm"],
        fits=out["total"] <= r0["bytes"]["hbm"] if r0["bytes"]["hbm"] else None,
    )


def load_config(args):
    """The config file's `get_config()` with this run's loss, K/P, dtype, mesh, then the `--set` fields
    (`clapcomp.train.config.load`: read as `clapcomp train --config.FIELD=VALUE`, unknown fields refused)."""
    from clapcomp.train.config import load

    run = [f"loss={args.loss}", f"data.num_negatives={args.k if args.loss != 'plain' else 0}",
           f"data.num_positives={args.p if args.loss == 'modular' else 0}",
           f"model.dtype={ {'bf16': 'bfloat16', 'fp32': 'float32'}[args.dtype]}", "mesh.data=-1", f"mesh.fsdp={args.fsdp}",
           *(["fsdp_text=true"] if args.fsdp > 1 else [])]  # fmt: skip
    return load(args.config, overrides=[*run, *args.set])


def abstract_batch(config, cfg, n: int, mesh):
    """ShapeDtypeStructs of a global batch of `n` samples, the pipeline's keys and dtypes."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding

    from clapcomp.train import step as step_lib
    from clapcomp.train.distributed import BATCH

    length, k, p = cfg.text.max_length, config.data.num_negatives, config.data.num_positives
    shapes = dict(waveform=((n, cfg.audio.clip_samples), jnp.float32), lengths=((n,), jnp.int32),
                  input_ids=((n, length), jnp.int32), attention_mask=((n, length), jnp.int32),
                  neg_input_ids=((n, k, length), jnp.int32), neg_attention_mask=((n, k, length), jnp.int32),
                  neg_mask=((n, k), jnp.bool_), pos_input_ids=((n, p, length), jnp.int32),
                  pos_attention_mask=((n, p, length), jnp.int32), pos_mask=((n, p), jnp.bool_))  # fmt: skip
    sharding = NamedSharding(mesh, BATCH)
    return {key: jax.ShapeDtypeStruct(*shapes[key], sharding=sharding) for key in step_lib.batch_spec(config.loss)}


def tower_loss(tower: str):
    """A stand-in loss through one tower only, (model, batch, key, mesh) -> []: the mean of the audio
    embeddings, or of the caption and hard-negative rows' embeddings. The step around it (optimizer,
    sharding, the other tower's zero gradients) is the real one, so `--tower audio` and `--tower text`
    split the compile of the whole step roughly into its two towers."""
    import jax.numpy as jnp

    from clapcomp.train import step as step_lib

    def loss(model, batch, key, mesh):
        if tower == "audio":
            emb = model.embed_audio(batch["waveform"], batch["lengths"], train=True, key=key)
        else:
            ids, mask = batch["input_ids"][:, None], batch["attention_mask"][:, None]
            if "neg_input_ids" in batch:
                ids = jnp.concatenate([ids, batch["neg_input_ids"]], axis=1)
                mask = jnp.concatenate([mask, batch["neg_attention_mask"]], axis=1)
            emb = step_lib._embed_rows(model, ids, mask, key)  # the step's own [B, rows, L] -> [B, rows, D]
        return jnp.mean(emb.astype(jnp.float32))

    return loss


def compile_step(config, topology: str, per_chip_batch: int, tower: str = "both"):
    """(compiled, mesh, compile seconds) of the config's train step for `topology`; `tower` "audio" or
    "text": the step with `tower_loss(tower)` instead of the config's loss."""
    import numpy as np
    from jax.experimental import topologies
    from jax.sharding import AxisType, Mesh

    from clapcomp.train import state as state_lib
    from clapcomp.train import step as step_lib
    from clapcomp.train.distributed import AXES

    # compile-only use of libtpu: let this process load it while another one (e.g. a second compile) holds it
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    devices = topologies.get_topology_desc(platform="tpu", topology_name=topology).devices
    fsdp = config.mesh.fsdp
    if len(devices) % fsdp:
        raise ValueError(f"--fsdp {fsdp} does not divide the {len(devices)} chips of {topology}")
    mesh = Mesh(np.array(devices).reshape(len(devices) // fsdp, fsdp), AXES, axis_types=(AxisType.Auto,) * 2)
    parts = state_lib.setup(config, mesh)
    if tower == "both":
        step = step_lib.from_parts(
            parts, mesh, loss=config.loss, freeze=config.freeze, accumulation_steps=config.accumulation_steps
        )
    else:
        step = step_lib.make_train_step(parts.graphdef, parts.tx, parts.schedule, tower_loss(tower), mesh,
                                        seed=parts.seed, state_sharding=parts.shardings)  # fmt: skip
    batch = abstract_batch(config, parts.cfg, per_chip_batch * len(devices), mesh)
    start = time.perf_counter()
    compiled = step.lower(parts.abstract, batch).compile()
    return compiled, mesh, time.perf_counter() - start


def report(args, config, compiled, mesh, compile_s: float) -> dict:
    """The per-chip figures of the module doc, as a dict."""
    import jax

    from clapcomp.train import state as state_lib

    hlo_lib, bench = _sibling("hlo"), _sibling("train_throughput")
    cfg = state_lib.model_config(config)
    chips, b = mesh.size, args.per_chip_batch
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
    kind = next(
        (name for name in sorted(HBM_GIB, key=len, reverse=True) if args.topology.lower().startswith(name)), None
    )
    args_b, temp_b = int(mem.argument_size_in_bytes), int(mem.temp_size_in_bytes)
    out_b = int(mem.output_size_in_bytes) - int(mem.alias_size_in_bytes)
    total = args_b + temp_b + out_b + int(mem.generated_code_size_in_bytes)
    k, p = config.data.num_negatives, config.data.num_positives
    text_rows = b * (1 + k + p)
    hlo = compiled.as_text()
    mesh_shape = dict(mesh.shape)
    found = hlo_lib.collectives(hlo, mesh_shape)
    k_gathers = hlo_lib.gathers_with_axis(hlo, b, k) if k else []
    flops = float(cost.get("flops", 0.0))
    return dict(
        date=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        host=f"{platform.machine()} {platform.processor() or ''}".strip(), jax=jax.__version__,
        config=Path(args.config).name, topology=args.topology, chips=chips, mesh=mesh_shape, loss=config.loss, k=k, p=p,
        dtype=cfg.dtype, per_chip_batch=b, global_batch=b * chips,
        remat=dict(htsat=getattr(cfg.htsat, "remat", "none"), text=getattr(cfg.text, "remat", "none")),
        overrides=args.set, tower=args.tower, compile_s=compile_s,
        bytes=dict(arguments=args_b, temporaries=temp_b, outputs=out_b, code=int(mem.generated_code_size_in_bytes),
                   total=total, hbm=HBM_GIB[kind] * 2**30 if kind else None),
        fits=total <= HBM_GIB[kind] * 2**30 if kind else None,
        flops_per_sample=dict(compiled=flops / b, model=bench.model_flops(cfg, b, text_rows, train=True) / b),
        collectives=found,
        collective_bytes={kind_: sum(c["result_bytes"] for c in found if c["kind"] == kind_) for kind_ in sorted({c["kind"] for c in found})},
        k_axis_gathers=k_gathers,
    )  # fmt: skip


def print_report(r: dict) -> None:
    gib = lambda x: f"{x / 2**30:.2f} GiB" if x is not None else "-"
    by = r["bytes"]
    print(
        f"# {r['date']}; jax {r['jax']}; host {r['host']}; compiled for {r['topology']} ({r['chips']} chips), mesh {r['mesh']}"
    )
    print(
        f"# {r['config']} {r['loss']} K={r['k']} {r['dtype']}; {r['per_chip_batch']} samples/chip, global {r['global_batch']}; "
        f"remat {r['remat']}; compile {r['compile_s']:.1f} s"
        + (f" (loss through the {r['tower']} tower only)" if r.get("tower", "both") != "both" else "")
    )
    print(
        f"per chip: arguments {gib(by['arguments'])} + temporaries {gib(by['temporaries'])} + outputs {gib(by['outputs'])}"
        f" = {gib(by['total'])} of {gib(by['hbm'])} HBM -> {'fits' if r['fits'] else 'DOES NOT FIT' if r['fits'] is False else '?'}"
    )
    f = r["flops_per_sample"]
    print(f"FLOPs per sample: compiled {f['compiled'] / 1e9:.2f} G, analytic model {f['model'] / 1e9:.2f} G")
    print(f"{'collective':<20}{'axes':<16}{'bytes':>14}  result shapes")
    for c in r["collectives"]:
        print(
            f"{c['kind']:<20}{c.get('axes')!s:<16}{c['result_bytes']:>14,}  {c['result'][:4]}{' ...' if len(c['result']) > 4 else ''}"
        )
    print("collective bytes per step: " + ", ".join(f"{k} {v:,}" for k, v in r["collective_bytes"].items()))
    print(
        f"all-gathers carrying the K axis: {len(r['k_axis_gathers'])}"
        + (" (none: OK)" if not r["k_axis_gathers"] else " -- PROBLEM")
    )


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.fit:
        r = fit(*(json.loads(Path(f).read_text()) for f in args.fit), args.at)
        print(json.dumps(r, indent=1))
        return 0
    try:
        config = load_config(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"tpu_aot.py: {e}", file=sys.stderr)
        return 2
    compiled, mesh, compile_s = compile_step(config, args.topology, args.per_chip_batch, args.tower)
    if args.hlo:
        Path(args.hlo).write_text(compiled.as_text())
    r = report(args, config, compiled, mesh, compile_s)
    print_report(r)
    if args.out:
        Path(args.out).write_text(json.dumps(r, indent=1))
    return 1 if r["k_axis_gathers"] else 0


if __name__ == "__main__":
    sys.exit(main())
