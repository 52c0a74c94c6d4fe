"""Compiled temporaries and FLOPs of the train step at accumulation_steps A = 1, 2, 4, 8 for one fixed global
batch (GradCache, `clapcomp.train.step.make_loss_and_grads`), from XLA's analyses of the compiled programs.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python benchmarks/accumulation_memory.py \
        --config configs/tiny.py:compa --batch 512

The step is `clapcomp.train.step.from_parts` of the config, lowered with abstract inputs (no data, nothing
runs) on this host's devices (the batch split over all of them). Per device it prints XLA's
`memory_analysis()` temporaries (activations and scratch; the arguments, i.e. state + batch, do not depend
on A) and the compiled FLOPs. XLA's cost analysis counts a loop body once, whatever its trip count, so the
step's FLOPs at A > 1 are given as A x (one micro-batch's embedding, forward) + A x (its embedding vjp) +
the loss on the whole batch, each from its own compiled program; the overhead is that against A = 1.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import platform
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _sibling(name: str):
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _flops(compiled) -> float:
    cost = compiled.cost_analysis()
    cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
    return float(cost.get("flops", 0.0))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(HERE.parent / "configs" / "tiny.py:compa"), help="config file[:arg]")
    p.add_argument("--batch", type=int, default=512, help="global batch N (a multiple of 8 x devices)")
    p.add_argument("--steps", default="1,2,4,8", help="accumulation_steps values A")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="config override, repeatable")
    args = p.parse_args(argv)

    import jax
    from flax import nnx

    from clapcomp.train import config as config_lib
    from clapcomp.train import distributed, optim
    from clapcomp.train import state as state_lib
    from clapcomp.train import step as step_lib

    config = config_lib.load(args.config, None, [f"data.batch_size={args.batch}", *args.set])
    mesh = distributed.make_mesh(config.mesh.data, config.mesh.fsdp)
    parts = state_lib.setup(config, mesh)
    batch = _sibling("tpu_aot").abstract_batch(config, parts.cfg, args.batch, mesh)
    loss = step_lib.loss_fn(config.loss, lock_audio_tower=optim.audio_tower_locked(config.freeze))
    params, model_state = parts.abstract.params, parts.abstract.model_state
    key = jax.random.key(0)

    def embed_flops(n: int, backward: bool) -> float:
        """FLOPs of the towers on n samples: forward, or forward + vjp (pass 2 of one micro-batch)."""
        micro = {k: jax.ShapeDtypeStruct((n, *v.shape[1:]), v.dtype, sharding=v.sharding) for k, v in batch.items()}

        def fwd(p, ms, mb):
            return loss.embed(nnx.merge(parts.graphdef, p, ms), mb, key)

        def fwd_vjp(p, ms, mb):
            out, pull = jax.vjp(lambda q: fwd(q, ms, mb), p)
            return pull(jax.tree_util.tree_map(jax.numpy.ones_like, out))

        return _flops(jax.jit(fwd_vjp if backward else fwd).lower(params, model_state, micro).compile())

    print(f"# {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; jax {jax.__version__}; "
          f"{platform.machine()} {jax.device_count()} {jax.devices()[0].platform} devices; {args.config} "
          f"loss {config.loss}, freeze {config.freeze!r}, global batch {args.batch}; overrides {args.set}")  # fmt: skip
    print(
        f"{'A':>3} {'micro-batch':>12} {'temporaries/device':>20} {'arguments/device':>18} {'step FLOPs':>12} {'vs A=1':>7}"
    )
    base = None
    for a in [int(s) for s in args.steps.split(",")]:
        step = step_lib.from_parts(parts, mesh, loss=config.loss, freeze=config.freeze, accumulation_steps=a)
        compiled = step.lower(parts.abstract, batch).compile()
        mem, raw = compiled.memory_analysis(), _flops(compiled)
        if a == 1:
            flops = _flops(compiled)
            whole = flops - embed_flops(args.batch, backward=True)  # the loss + optimizer part of the step
            base = flops
        else:
            m = args.batch // a
            flops = whole + a * (embed_flops(m, backward=False) + embed_flops(m, backward=True))
        print(f"{a:>3} {args.batch // a:>12} {mem.temp_size_in_bytes / 2**20:>17.1f} MiB "
              f"{mem.argument_size_in_bytes / 2**20:>14.1f} MiB {flops / 1e9:>10.2f} G {flops / base - 1:>+7.1%} {raw / 1e9:>30.2f} G")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
