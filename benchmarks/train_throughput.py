"""Train and inference throughput: clapcomp (JAX) vs HF `transformers.ClapModel` (PyTorch), one device.

    python benchmarks/train_throughput.py --out bench.json      # the issue-8 comparison (one H100)
    python benchmarks/train_throughput.py --config tiny --batch 8 --steps 2 --warmup 1 --dtype fp32 --k 2

Parts (`--parts`; each runs in its own child process, one after the other, so each gets the whole
device, its own peak-memory figure, and JAX's pre-allocation never starves PyTorch):
  train  the clapcomp train step of `clap_htsat_roberta` (clapcomp.train.step): waveform [B, 10 s @
         48 kHz] -> log-mel + random crop + SpecAugment on device -> HTSAT + RoBERTa-base (--dtype
         compute, float32 master params) -> plain contrastive loss -> grad clip + AdamW, state donated.
  compa  the CompA stage-2 step (`compa_stage2`): the same plus K hard-negative captions per audio;
         then, alone, the text tower's forward + backward on those B*K extra rows ("text extra").
  infer  eval-mode embeddings: text [B, L] tokens, then audio from waveforms (log-mel on device).
  torch  HF ClapModel of the same architecture (`clapcomp.convert.hf.hf_config_from_clap`, random
         weights), eager and `torch.compile`: train step on precomputed log-mel [B, 1, F, M] with bf16
         autocast, fused AdamW and HF's `return_loss` loss; eval-mode audio (from log-mel) and text
         embeddings. Needs a CUDA device; on CPU only with --config tiny.

Timing: median of --steps calls after --warmup calls (compilation happens before or in the first),
each synchronised (`jax.block_until_ready` / `torch.cuda.synchronize`). FLOPs per step: XLA's
`cost_analysis()` of the compiled program ("xla"), and an analytic matmul count of the model
("model", forward x 3 for training; used for the PyTorch rows too). MFU = model FLOPs / step time /
peak, peak = the device kind's dense bf16 spec (TF32 for --dtype fp32) or --peak-tflops; on an H100
also against the measured 788 TFLOP/s bf16 matmul ceiling ("MFU@ceil", the issue's MFU). Memory:
the allocator's peak bytes in use (`memory_stats()["peak_bytes_in_use"]` /
`torch.cuda.max_memory_allocated`; not on CPU) and XLA's program size (arguments + outputs +
temporaries). Peaks of the second row of a JAX part (text extra, audio) are since the process began.

The recipes are the real config files (`configs/clap_htsat_roberta.py` for the plain step,
`configs/compa_stage2.py` for the CompA step, `configs/tiny.py` for --config tiny), loaded by
`clapcomp.train.config.load`; the step is `clapcomp.train.step.from_parts` of them. Besides ml_collections the
JAX parts need only jax, flax, optax, numpy and clapcomp's model / loss / train-step modules.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

PARTS = ("train", "compa", "infer", "torch")
RESULT = "@@result "
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# --config tiny keeps configs/tiny.py's sizes but gives its text tower the RoBERTa form, so that an
# HF ClapModel (whose text tower is RoBERTa) can mirror it in the torch part
TINY_ROBERTA = dict(family="roberta", vocab_size=1000, type_vocab_size=1, pad_token_id=1, pooling="pooler")
# device_kind substring -> (dense bf16 FLOP/s, dense TF32 FLOP/s, measured bf16 matmul ceiling); first match wins
PEAKS = [("H100 PCIe", 756e12, 378e12, None), ("H100", 989e12, 494e12, 788e12), ("H200", 989e12, 494e12, None),
         ("A100", 312e12, 156e12, None)]  # fmt: skip
TARGETS = {"train/compile": 2.0, "train/eager": 3.5, "audio/compile": 1.5, "text/compile": 1.5, "compa overhead": 1.03}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=256, help="batch size B (train and inference)")
    p.add_argument("--steps", type=int, default=20, help="timed calls per measurement (median reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls before timing (>= 1)")
    p.add_argument(
        "--config",
        choices=["clap_htsat_roberta", "tiny"],
        default="clap_htsat_roberta",
        help="model: LAION-CLAP HTSAT-tiny + RoBERTa-base, or a tiny one of the same architecture",
    )
    p.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16", help="compute dtype (params stay fp32)")
    p.add_argument("--k", type=int, default=3, help="hard negatives per audio in the compa step")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="what to run (default: all)")
    p.add_argument("--skip-torch", action="store_true", help="do not run the PyTorch baseline")
    p.add_argument("--torch-modes", nargs="+", choices=["eager", "compile"], default=["eager", "compile"])
    p.add_argument("--torch-compile-mode", default="default", help="torch.compile(mode=...)")
    p.add_argument("--peak-tflops", type=float, help="peak FLOP/s of the device (default: from its kind)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and inputs")
    p.add_argument("--out", help="also write the results as JSON to this file")
    p.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)  # internal: run one part in this process
    args = p.parse_args(argv)
    if args.warmup < 1 or args.steps < 1 or args.batch < 2 or args.k < 1:
        p.error("need --warmup >= 1, --steps >= 1, --batch >= 2 (contrastive) and --k >= 1")
    return args


# ----------------------------------------------------------------------------- shared pieces


def train_config(args, loss: str = "plain"):
    """The config file behind --config and `loss` (see module doc), computing in --dtype."""
    from clapcomp.train.config import load

    name = "tiny" if args.config == "tiny" else {"plain": "clap_htsat_roberta", "compa": "compa_stage2"}[loss]
    tiny = [f"model.text.{k}={v}" for k, v in TINY_ROBERTA.items()] if args.config == "tiny" else []
    dtype = {"bf16": "bfloat16", "fp32": "float32"}[args.dtype]
    return load(CONFIGS / f"{name}.py", overrides=[f"loss={loss}", f"model.dtype={dtype}", *tiny])


def model_config(args):
    """The ClapConfig of --config (the same model in every recipe of that --config)."""
    from clapcomp.train.state import model_config as from_config

    return from_config(train_config(args))


def model_flops(cfg, audio_rows: int, text_rows: int, *, train: bool) -> float:
    """Analytic matmul FLOPs of HTSAT (+ head) on `audio_rows` clips and the text tower (+ head) on
    `text_rows` captions of cfg.text.max_length tokens, plus the B x B logits; x 3 for training."""
    h, t, d = cfg.htsat, cfg.text, cfg.projection_dim
    side = h.spec_size // h.patch_stride
    audio = 2 * side**2 * h.patch_size**2 * h.embed_dim  # patch-embedding conv, 1 input channel
    for i, depth in enumerate(h.depths):
        res, c = side // 2**i, h.embed_dim * 2**i
        n, w = res * res, min(h.window_size, res) ** 2
        audio += depth * (2 * n * c * c * (4 + 2 * h.mlp_ratio) + 4 * n * w * c)  # qkv + out + MLP, QK^T + AV
        audio += 2 * (n // 4) * 4 * c * 2 * c if i < len(h.depths) - 1 else 0  # patch merging
    audio += 2 * (h.hidden_size * d + d * d)
    length, hid = t.max_length, t.hidden_size
    text = t.num_layers * (2 * length * hid * (4 * hid + 2 * t.intermediate_size) + 4 * length * length * hid)
    text += 2 * hid * hid * (t.pooling == "pooler") + 2 * (hid * d + d * d)
    total = audio_rows * audio + text_rows * text + (2 * audio_rows * audio_rows * d if train else 0)
    return float((3 if train else 1) * total)


def inputs(cfg, batch: int, k: int, seed: int) -> dict:
    """Random NumPy inputs: 'waveform' [B, S] f32 (full clips), 'lengths' [B], 'mel' [B, 1, F, M]
    (log-mel-like dB values), tokens [B, L] and hard negatives [B, k, L] with all-ones masks."""
    import numpy as np

    rng = np.random.default_rng(seed)
    s, length, vocab = cfg.audio.clip_samples, cfg.text.max_length, cfg.text.vocab_size

    def tokens(*shape):
        ids = rng.integers(3, vocab, (*shape, length), dtype=np.int32)
        ids[..., 0] = 0  # <s>
        return ids, np.ones_like(ids)

    ids, mask = tokens(batch)
    neg_ids, neg_mask = tokens(batch, k)
    return dict(
        waveform=0.1 * rng.standard_normal((batch, s), dtype=np.float32), lengths=np.full(batch, s, np.int32),
        mel=(rng.standard_normal((batch, 1, cfg.audio.n_frames, cfg.audio.n_mels), dtype=np.float32) * 10 - 50),
        input_ids=ids, attention_mask=mask, neg_input_ids=neg_ids, neg_attention_mask=neg_mask,
        neg_mask=np.ones((batch, k), bool),
    )  # fmt: skip


def timed(call, sync, warmup: int, steps: int) -> tuple[float, list[float]]:
    """(seconds of the first call, per-call seconds of `steps` calls after `warmup` calls in all)."""
    start = time.perf_counter()
    sync(call())
    first = time.perf_counter() - start
    for _ in range(warmup - 1):
        sync(call())
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        sync(call())
        times.append(time.perf_counter() - start)
    return first, times


def row(name, batch, times, *, first_s, flops_model, **extra) -> dict:
    step = statistics.median(times)
    return dict(name=name, batch=batch, step_s=step, samples_per_s=batch / step, first_s=first_s,
                times_s=times, flops_model=flops_model, **extra)  # fmt: skip


# ----------------------------------------------------------------------------- JAX parts


def jax_env() -> dict:
    import flax
    import jax
    import jaxlib
    import optax

    dev = jax.devices()[0]
    return dict(
        device_kind=dev.device_kind,
        backend=jax.default_backend(),
        devices_visible=jax.device_count(),
        jax=jax.__version__,
        jaxlib=jaxlib.__version__,
        flax=flax.__version__,
        optax=optax.__version__,
    )


def compiled_stats(compiled) -> dict:
    cost = compiled.cost_analysis()
    cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
    mem = compiled.memory_analysis()
    size = mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes + mem.temp_size_in_bytes
    return dict(flops_xla=float(cost.get("flops", 0.0)) or None, program_bytes=int(size))


def peak_bytes():
    import jax

    stats = jax.devices()[0].memory_stats()  # None on CPU
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def run_train(args, loss: str) -> list[dict]:
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from jax.sharding import AxisType, NamedSharding

    from clapcomp.train import state as state_lib
    from clapcomp.train import step as step_lib
    from clapcomp.train.distributed import AXES, BATCH

    config = train_config(args, loss)
    cfg = state_lib.model_config(config)
    mesh = jax.make_mesh((1, 1), AXES, axis_types=(AxisType.Auto,) * 2, devices=jax.devices()[:1])
    parts = state_lib.setup(config, mesh)
    state = state_lib.init_state(parts)
    step = step_lib.from_parts(parts, mesh, loss=config.loss, freeze=config.freeze)
    data = inputs(cfg, args.batch, args.k, args.seed)
    batch = {k: jax.device_put(data[k], NamedSharding(mesh, BATCH)) for k in step_lib.batch_spec(loss)}
    start = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    box = {"state": state}

    def call():
        box["state"], metrics = compiled(box["state"], batch)
        return metrics

    first, times = timed(call, jax.block_until_ready, args.warmup, args.steps)
    metrics = jax.device_get(call())
    text_rows = args.batch * (1 + (args.k if loss == "compa" else 0))
    rows = [row(f"clapcomp train ({loss}{f', K={args.k}' if loss == 'compa' else ''})", args.batch, times,
                first_s=first, compile_s=compile_s, flops_model=model_flops(cfg, args.batch, text_rows, train=True),
                peak_bytes=peak_bytes(), loss=float(metrics["loss"]), nonfinite=int(metrics["nonfinite"]),
                **compiled_stats(compiled))]  # fmt: skip
    if loss != "compa":
        return rows
    # the extra work of the compa step alone: text tower + head forward + backward on the B*K negatives
    params, model_state = box["state"].params, box["state"].model_state
    text_names = ("text_tower", "text_projection")
    rest = {k: v for k, v in params.items() if k not in text_names}
    ids = batch["neg_input_ids"].reshape(args.batch * args.k, -1)
    mask = batch["neg_attention_mask"].reshape(args.batch * args.k, -1)

    def text_grads(text_params, ids, mask):
        def f(tp):
            model = nnx.merge(parts.graphdef, {**rest, **tp}, model_state)
            return jnp.sum(model.embed_tokens(ids, mask, train=True, key=jax.random.key(0)))

        return jax.grad(f)(text_params)

    text_params = {k: params[k] for k in text_names}
    start = time.perf_counter()
    extra = jax.jit(text_grads).lower(text_params, ids, mask).compile()
    compile_s = time.perf_counter() - start
    first, times = timed(lambda: extra(text_params, ids, mask), jax.block_until_ready, args.warmup, args.steps)
    rows.append(row(f"text extra (fwd+bwd, {args.batch}x{args.k} rows)", args.batch, times, first_s=first,
                    compile_s=compile_s, flops_model=model_flops(cfg, 0, args.batch * args.k, train=True),
                    peak_bytes=peak_bytes(), **compiled_stats(extra)))  # fmt: skip
    return rows


def run_infer(args) -> list[dict]:
    import jax
    from flax import nnx

    from clapcomp.models.clap import ClapModel

    cfg = model_config(args)
    graphdef, weights = nnx.split(ClapModel(cfg, rngs=nnx.Rngs(args.seed)))
    data = {k: jax.device_put(v) for k, v in inputs(cfg, args.batch, 1, args.seed).items()}
    fns = {
        "text": (
            lambda s, a, b: nnx.merge(graphdef, s).embed_tokens(a, b),
            ("input_ids", "attention_mask"),
            (0, args.batch),
        ),
        "audio": (lambda s, a, b: nnx.merge(graphdef, s).embed_audio(a, b), ("waveform", "lengths"), (args.batch, 0)),
    }  # text first: the audio program is the larger, so the process peak after it is its own
    rows = []
    for what, (fn, keys, (audio_rows, text_rows)) in fns.items():
        start = time.perf_counter()
        compiled = jax.jit(fn).lower(weights, *(data[k] for k in keys)).compile()
        compile_s = time.perf_counter() - start
        call = lambda compiled=compiled, keys=keys: compiled(weights, *(data[k] for k in keys))
        first, times = timed(call, jax.block_until_ready, args.warmup, args.steps)
        source = "from waveforms" if what == "audio" else f"{cfg.text.max_length} tokens"
        rows.append(row(f"clapcomp {what} embed ({source})", args.batch, times, first_s=first, compile_s=compile_s,
                        flops_model=model_flops(cfg, audio_rows, text_rows, train=False), peak_bytes=peak_bytes(),
                        **compiled_stats(compiled)))  # fmt: skip
    return rows


# ----------------------------------------------------------------------------- PyTorch part


def run_torch(args) -> tuple[dict, list[dict], str | None]:
    """(env, rows, reason skipped or None): HF ClapModel eager and torch.compile, see module doc."""
    try:
        import torch
        import transformers
    except ImportError as e:
        return {}, [], f"torch/transformers not importable ({e})"
    env = dict(torch=torch.__version__, transformers=transformers.__version__)
    if torch.cuda.is_available():
        device = torch.device("cuda")
        env["torch_device"] = torch.cuda.get_device_name()
    elif args.config == "tiny":
        device = torch.device("cpu")
        env["torch_device"] = "cpu"
    else:
        return env, [], "no CUDA device: the PyTorch baseline runs on CPU only with --config tiny"
    from clapcomp.convert.hf import hf_config_from_clap

    cuda = device.type == "cuda"
    sync = (lambda _: torch.cuda.synchronize()) if cuda else (lambda _: None)
    cfg = model_config(args)
    torch.manual_seed(args.seed)
    model = transformers.ClapModel(transformers.ClapConfig.from_dict(hf_config_from_clap(cfg))).to(device)
    env["torch_attn_implementation"] = str(model.config._attn_implementation)
    data = inputs(cfg, args.batch, 1, args.seed)
    mel = torch.from_numpy(data["mel"]).to(device)
    longer = torch.zeros((args.batch, 1), dtype=torch.bool, device=device)
    ids = torch.from_numpy(data["input_ids"]).long().to(device)
    mask = torch.from_numpy(data["attention_mask"]).long().to(device)
    autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16")
    o = train_config(args).optimizer
    opt = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=(o.b1, o.b2), eps=o.eps, weight_decay=o.weight_decay,
                            fused=True)  # fmt: skip
    compile_ = lambda f: torch.compile(f, mode=args.torch_compile_mode)

    def measure(name, call, batch, flops):
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        first, times = timed(call, sync, args.warmup, args.steps)
        peak = int(torch.cuda.max_memory_allocated()) if cuda else None
        return row(name, batch, times, first_s=first, flops_model=flops, peak_bytes=peak)

    rows = []
    for mode in args.torch_modes:
        forward = compile_(model) if mode == "compile" else model
        model.train()

        def train_step(forward=forward):
            with autocast():
                loss = forward(input_ids=ids, attention_mask=mask, input_features=mel, is_longer=longer,
                               return_loss=True).loss  # fmt: skip
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss

        rows.append(measure(f"torch {mode} train", train_step, args.batch,
                            model_flops(cfg, args.batch, args.batch, train=True)))  # fmt: skip
    model.eval()
    audio = lambda m, is_longer: model.get_audio_features(input_features=m, is_longer=is_longer).pooler_output
    text = lambda i, m: model.get_text_features(input_ids=i, attention_mask=m).pooler_output
    for what, fn, args_, counts in (
        ("audio", audio, (mel, longer), (args.batch, 0)),
        ("text", text, (ids, mask), (0, args.batch)),
    ):
        for mode in args.torch_modes:
            f = compile_(fn) if mode == "compile" else fn

            def call(f=f, args_=args_):
                with torch.inference_mode(), autocast():
                    return f(*args_)

            source = "from log-mel" if what == "audio" else f"{cfg.text.max_length} tokens"
            rows.append(measure(f"torch {mode} {what} embed ({source})", call, args.batch,
                                model_flops(cfg, *counts, train=False)))  # fmt: skip
    return env, rows, None


def run_part(args) -> int:
    skipped = None
    if args.part == "torch":
        env, rows, skipped = run_torch(args)
    elif args.part == "infer":
        env, rows = jax_env(), run_infer(args)
    else:
        env, rows = jax_env(), run_train(args, "plain" if args.part == "train" else "compa")
    print(RESULT + json.dumps(dict(part=args.part, env=env, rows=rows, skipped=skipped)), flush=True)
    return 0


# ----------------------------------------------------------------------------- report


def peak_for(kind: str, args) -> tuple[float | None, float | None, str]:
    if args.peak_tflops:
        return args.peak_tflops * 1e12, None, f"{args.peak_tflops:g} TFLOP/s (--peak-tflops)"
    for name, bf16, tf32, ceiling in PEAKS:
        if name in kind:
            peak = bf16 if args.dtype == "bf16" else tf32
            what = f"{peak / 1e12:g} TFLOP/s ({name} spec, dense {'bf16' if args.dtype == 'bf16' else 'TF32'})"
            return (
                peak,
                ceiling,
                what + (f"; measured bf16 matmul ceiling {ceiling / 1e12:g} TFLOP/s" if ceiling else ""),
            )
    return None, None, f"unknown for {kind!r}: MFU not computed (pass --peak-tflops)"


def ratios(rows: dict) -> dict:
    def sps(name):
        return rows[name]["samples_per_s"] if name in rows else None

    out = {}
    train = sps("clapcomp train (plain)")
    for mode in ("compile", "eager"):
        if train and sps(f"torch {mode} train"):
            out[f"train/{mode}"] = train / sps(f"torch {mode} train")
    for what in ("audio", "text"):
        j = next((r for n, r in rows.items() if n.startswith(f"clapcomp {what} embed")), None)
        t = next((r for n, r in rows.items() if n.startswith(f"torch compile {what} embed")), None)
        if j and t:
            out[f"{what}/compile"] = j["samples_per_s"] / t["samples_per_s"]
    compa = next((r for n, r in rows.items() if n.startswith("clapcomp train (compa")), None)
    extra = next((r for n, r in rows.items() if n.startswith("text extra")), None)
    if compa and extra and "clapcomp train (plain)" in rows:
        out["compa overhead"] = compa["step_s"] / (rows["clapcomp train (plain)"]["step_s"] + extra["step_s"])
    return out


def report(args, results: dict, failed: dict) -> dict:
    env = {k: v for r in results.values() for k, v in r["env"].items()}
    env.update(date=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
               python=platform.python_version(), host=platform.machine(), XLA_FLAGS=os.environ.get("XLA_FLAGS", ""))  # fmt: skip
    rows = {r["name"]: r for res in results.values() for r in res["rows"]}
    peak, ceiling, peak_text = peak_for(env.get("device_kind", ""), args)
    for r in rows.values():
        r["mfu"] = r["flops_model"] / r["step_s"] / peak if peak else None
        r["mfu_ceiling"] = r["flops_model"] / r["step_s"] / ceiling if ceiling else None
        r["mfu_xla"] = r["flops_xla"] / r["step_s"] / peak if peak and r.get("flops_xla") else None
    cfg = model_config(args)
    print(
        f"# {env['date']}; "
        + ", ".join(
            f"{k} {env[k]}" for k in ("jax", "jaxlib", "flax", "optax", "torch", "transformers", "python") if k in env
        )
    )
    print(
        f"# device: {env.get('device_kind', '?')} ({env.get('backend', '?')}, 1 of {env.get('devices_visible', '?')} used)"
        f"{'; torch on ' + env['torch_device'] if 'torch_device' in env else ''}; XLA_FLAGS={env['XLA_FLAGS']!r}"
    )
    print(
        f"# --config {args.config}: batch {args.batch}, {args.dtype} compute / fp32 params, {cfg.text.max_length} tokens, "
        f"{cfg.audio.clip_seconds:g} s @ {cfg.audio.sample_rate} Hz, K={args.k}; median of {args.steps} steps after {args.warmup} warm-up"
    )
    print(f"# peak: {peak_text}")  # fmt: skip
    fmt = lambda x, w, f, scale=1.0: f"{'-':>{w}}" if x is None else f"{x * scale:>{w}{f}}"
    head = f"{'':<44}{'samples/s':>10}{'step ms':>9}{'1st s':>7}{'GFLOP xla':>11}{'GFLOP mdl':>11}{'MFU':>6}{'@ceil':>6}{'MFUxla':>7}{'peak GiB':>9}{'prog GiB':>9}"
    print(head + "\n" + "-" * len(head))
    for r in rows.values():
        gib = lambda b: None if b is None else b / 2**30
        first = r.get("compile_s", 0.0) + r["first_s"]
        print(f"{r['name']:<44}{r['samples_per_s']:>10.1f}{1e3 * r['step_s']:>9.2f}{first:>7.1f}"
              f"{fmt(r.get('flops_xla'), 11, '.2f', 1e-9)}{r['flops_model'] / 1e9:>11.2f}{fmt(r['mfu'], 6, '.1%')}"
              f"{fmt(r['mfu_ceiling'], 6, '.1%')}{fmt(r['mfu_xla'], 7, '.1%')}{fmt(gib(r.get('peak_bytes')), 9, '.2f')}"
              f"{fmt(gib(r.get('program_bytes')), 9, '.3f')}")  # fmt: skip
    skipped = {p: r["skipped"] for p, r in results.items() if r.get("skipped")}
    for part, why in {**skipped, **failed}.items():
        print(f"# {part}: {why}")
    found = ratios(rows)
    for name, value in found.items():
        bound = TARGETS[name]
        ok = value <= bound if name == "compa overhead" else value >= bound
        what = (
            "compa step / (plain step + text extra)"
            if name == "compa overhead"
            else f"clapcomp / torch {name.split('/')[1]} ({name.split('/')[0]})"
        )
        print(
            f"{what:<44}{value:>10.2f}x  target {'<=' if name == 'compa overhead' else '>='} {bound}  {'ok' if ok else 'MISSED'}"
        )
    return dict(env=env, args={k: v for k, v in vars(args).items() if k != "part"}, rows=list(rows.values()),
                ratios=found, skipped=skipped, failed=failed)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.part:
        return run_part(args)
    parts = [p for p in args.parts if not (p == "torch" and args.skip_torch)]
    results, failed = {}, {}
    if args.skip_torch and "torch" in args.parts:
        results["torch"] = dict(env={}, rows=[], skipped="--skip-torch")
    for part in parts:
        print(f"# running {part} ...", file=sys.stderr, flush=True)
        proc = subprocess.run(
            [sys.executable, os.path.abspath(__file__), *argv, "--part", part], stdout=subprocess.PIPE, text=True
        )
        lines = proc.stdout.splitlines()
        found = [json.loads(line[len(RESULT) :]) for line in lines if line.startswith(RESULT)]
        sys.stderr.write("".join(line + "\n" for line in lines if not line.startswith(RESULT)))
        if proc.returncode or not found:
            failed[part] = f"FAILED (exit code {proc.returncode}; its error is above)"
        else:
            results[part] = found[0]
    summary = report(args, results, failed)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
