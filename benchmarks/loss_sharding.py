"""Benchmark: CompA hard-negative loss, sharded (shard_map) vs naive dense, forward + backward.

Implementations compared, all on the same global batch sharded over a 1-D "data" mesh:

- sharded: `clapcomp.losses.contrastive_loss(..., mesh=mesh)`; per device [n, N + K] and [n, N]
  logits (n = N / devices), only audio and main-caption embeddings are all-gathered.
- dense-gather: what the released CompA / LAION-CLAP code does: every device all-gathers audio,
  captions *and* hard negatives and materialises the full N x N(K + 1) logit matrix, excluding
  other audios' negatives with a mask.
- jnp-spmd: `contrastive_loss(..., mesh=None)` under `jax.jit` with sharded inputs (XLA's SPMD
  partitioner decides the communication).

Reported per implementation: compile time, median fwd+bwd step time, and per-device memory from
the compiled program's `memory_analysis()` (temporaries, arguments, outputs), plus the largest
difference in loss / gradients vs the sharded one. Example (8 simulated CPU devices):

    python benchmarks/loss_sharding.py --n 4096 --k 3 --d 512
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=4096, help="global batch N (multiple of --devices)")
    parser.add_argument("--k", type=int, default=3, help="hard negatives per audio K")
    parser.add_argument("--d", type=int, default=512, help="embedding dim D")
    parser.add_argument("--devices", type=int, default=8, help="devices of the default backend to shard over")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per implementation (after 1 warm-up)")
    parser.add_argument("--scale", type=float, default=100.0, help="exp(logit_scale)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--only",
        choices=["sharded", "dense-gather", "jnp-spmd"],
        action="append",
        help="run only these implementations (repeatable)",
    )
    return parser.parse_args(argv)


def dense_gather_loss(mesh, a, t, h, m, scale):
    """Released-code style: gather everything, full [N, N(K+1)] masked logits on every device."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import PartitionSpec as P

    def per_device(scale, a, t, h, m):
        a, t, h, m = (jax.lax.all_gather(x, "data", tiled=True) for x in (a, t, h, m))
        n, k = m.shape
        texts = jnp.concatenate([t, h.reshape(n * k, -1)], axis=0)  # [N(K+1), D]
        logits = scale * jnp.einsum("nd,md->nm", a, texts, preferred_element_type=jnp.float32)
        own = jnp.arange(n)[:, None] == jnp.repeat(jnp.arange(n), k)[None, :]  # [N, NK]
        valid = jnp.concatenate([jnp.ones((n, n), bool), own & m.reshape(1, n * k)], axis=1)
        logits = jnp.where(valid, logits, -jnp.inf)
        diag = jnp.diagonal(logits[:, :n])
        a2t = jax.nn.logsumexp(logits, axis=1) - diag
        t2a = jax.nn.logsumexp(logits[:, :n], axis=0) - diag
        return jax.lax.pmean((a2t.mean() + t2a.mean()) / 2, "data")  # every device has the full loss

    spec = P("data")
    return jax.shard_map(per_device, mesh=mesh, in_specs=(P(), spec, spec, spec, spec), out_specs=P())(
        scale, a, t, h, m
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    from clapcomp.losses import contrastive_loss

    if len(jax.devices()) < args.devices:
        print(
            f"error: {args.devices} devices requested, {len(jax.devices())} available; set "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={args.devices} for CPU",
            file=sys.stderr,
        )
        return 2
    if args.n % args.devices:
        print(f"error: --n {args.n} must be a multiple of --devices {args.devices}", file=sys.stderr)
        return 2
    mesh = Mesh(np.array(jax.devices()[: args.devices]), ("data",))
    rows = NamedSharding(mesh, P("data"))

    rng = np.random.default_rng(args.seed)
    unit = lambda *s: (lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True))(rng.normal(size=s))
    a, t, h = (
        jax.device_put(unit(*s).astype(np.float32), rows)
        for s in [(args.n, args.d), (args.n, args.d), (args.n, args.k, args.d)]
    )
    m = jax.device_put(rng.random((args.n, args.k)) < 0.8, rows)
    scale = jnp.float32(args.scale)

    impls = {
        "sharded": lambda a, t, h, s: contrastive_loss(a, t, s, h, m, mesh=mesh),
        "dense-gather": lambda a, t, h, s: dense_gather_loss(mesh, a, t, h, m, s),
        "jnp-spmd": lambda a, t, h, s: contrastive_loss(a, t, s, h, m),
    }
    names = args.only or list(impls)
    n_loc = args.n // args.devices
    print(
        f"# {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, jax {jax.__version__}, "
        f"{args.devices} x {jax.devices()[0].device_kind} ({jax.default_backend()}), "
        f"N={args.n} K={args.k} D={args.d}, float32, fwd+bwd w.r.t. audio, text, negatives, scale"
    )
    print(
        f"# largest logits per device: sharded [{n_loc}, {args.n + args.k}]; "
        f"dense-gather [{args.n}, {args.n * (args.k + 1)}]"
    )
    header = (
        f"{'impl':<13} {'compile s':>9} {'step ms':>10} {'temp MiB':>9} {'args MiB':>9} {'out MiB':>8}"
        f" {'|dloss|':>9} {'|dgrad|':>9}"
    )
    print(header)
    print("-" * len(header))
    reference = None
    for name in names:
        step = jax.jit(jax.value_and_grad(impls[name], argnums=(0, 1, 2, 3)))
        start = time.perf_counter()
        compiled = step.lower(a, t, h, scale).compile()
        compile_s = time.perf_counter() - start
        mem = compiled.memory_analysis()
        result = jax.block_until_ready(compiled(a, t, h, scale))
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            jax.block_until_ready(compiled(a, t, h, scale))
            times.append(time.perf_counter() - start)
        loss, grads = jax.device_get(result)
        reference = reference or (loss, grads)
        dloss = abs(float(loss) - float(reference[0]))
        dgrad = max(
            float(np.abs(np.asarray(g) - np.asarray(r)).max()) for g, r in zip(grads, reference[1], strict=True)
        )
        mib = lambda b: b / 2**20
        print(
            f"{name:<13} {compile_s:>9.2f} {1e3 * statistics.median(times):>10.1f} "
            f"{mib(mem.temp_size_in_bytes):>9.2f} {mib(mem.argument_size_in_bytes):>9.2f} "
            f"{mib(mem.output_size_in_bytes):>8.2f} {dloss:>9.2e} {dgrad:>9.2e}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
