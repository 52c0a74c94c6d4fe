"""Embedding speed on this machine, clapcomp vs transformers' ClapModel in torch, same weights, same process.

  python benchmarks/embed_speed.py [--clips 8] [--seconds 10] [--captions 64] [--tokens 32] [--repeats 5]

The model is configs/clap_htsat_roberta.py's (the ClapConfig defaults: HTSAT-tiny + RoBERTa-base, unfused,
48 kHz) with random weights, exported to an HF dir that transformers loads, so both sides hold the same
numbers. Audio: `--clips` random clips of `--seconds` s at 48 kHz -> embeddings; clapcomp through
`Clap.embed_audio` (its front end included), torch through `ClapProcessor` + `get_audio_features`
("torch" includes the feature extractor, "torch model" is the model alone). Text: `--captions` captions of
`--tokens` token ids (the same ids on both sides). The two sides run interleaved, one warm-up round first;
each figure is the median of `--repeats` rounds. Prints the load average, as the machine may be shared, the
process CPU seconds of each job (the work, less sensitive to other jobs than wall time; torch's count
includes its threads' spin-waits) and the FLOPs XLA counts in clapcomp's two programs, so a rate can be
read against what this CPU's matmuls reach: a lone XLA matmul of the audio tower's largest (stage 3 MLP)
and smallest (stage 1 projection) shapes, in GFLOP per CPU-second (docs/export.md).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--captions", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import jax
    import torch
    import transformers
    from flax import nnx

    from clapcomp.audio import prepare_waveforms
    from clapcomp.convert.hf import save_hf_clap
    from clapcomp.inference import Clap
    from clapcomp.models.clap import ClapModel
    from clapcomp.models.configs import ClapConfig

    cfg = ClapConfig()
    model = ClapModel(cfg, rngs=nnx.Rngs(0))
    clap = Clap.from_model(model, cfg, max_batch=max(args.clips, args.captions))
    with tempfile.TemporaryDirectory() as tmp:
        save_hf_clap(model, cfg, tmp)
        hf = transformers.ClapModel.from_pretrained(tmp).eval()
        extractor = transformers.ClapFeatureExtractor.from_pretrained(tmp)
    rate = cfg.audio.sample_rate
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal((args.clips, int(args.seconds * rate)))).astype(np.float32)
    ids = rng.integers(3, cfg.text.vocab_size, (args.captions, args.tokens)).astype(np.int32)
    ids[:, 0], ids[:, -1] = 0, 2  # <s> ... </s>
    mask = np.ones_like(ids)

    def torch_audio(feats) -> np.ndarray:
        with torch.inference_mode():
            return hf.get_audio_features(**feats).pooler_output.numpy()

    def features():
        return extractor(list(audio), sampling_rate=rate, return_tensors="pt")

    cached = features()
    t_ids, t_mask = torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(mask.astype(np.int64))

    def torch_text():
        with torch.inference_mode():
            return hf.get_text_features(input_ids=t_ids, attention_mask=t_mask).pooler_output.numpy()

    jobs = {
        "audio clapcomp": (lambda: clap.embed_audio(audio, rate), args.clips),
        "audio torch": (lambda: torch_audio(features()), args.clips),
        "audio torch model": (lambda: torch_audio(cached), args.clips),
        "text clapcomp": (lambda: clap.embed_tokens(ids, mask), args.captions),
        "text torch": (torch_text, args.captions),
    }
    times = {name: [] for name in jobs}
    cpu = {name: [] for name in jobs}
    for round_ in range(args.repeats + 1):  # round 0: warm-up (compiles)
        for name, (fn, _) in jobs.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            if round_:
                times[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
    gflop = {
        "audio clapcomp": _gflop(clap, "embed_audio", *prepare_waveforms(audio, rate, cfg.audio)),
        "text clapcomp": _gflop(clap, "embed_tokens", ids, mask.astype(np.int32)),
    }
    rates = {name: n / statistics.median(times[name]) for name, (_, n) in jobs.items()}
    print(f"{jax.devices()[0].device_kind}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")  # fmt: skip
    for name, r in rates.items():
        unit = "clips/s" if name.startswith("audio") else "captions/s"
        wall, work = statistics.median(times[name]), statistics.median(cpu[name])
        flops = f", {gflop[name]:.0f} GFLOP: {gflop[name] / work:.0f} GFLOP per CPU-s" if name in gflop else ""
        print(f"  {name:18s} {r:8.2f} {unit}   (median of {args.repeats}: {wall:.3f} s, CPU {work:.3f} s{flops})")
    print(
        "  XLA matmul alone (GFLOP per CPU-s): "
        + ", ".join(f"{m}x{k}x{n} {_matmul_rate(m, k, n):.0f}" for m, k, n in ((2048, 384, 1536), (32768, 96, 96)))
    )
    print(f"audio: clapcomp / torch = {rates['audio clapcomp'] / rates['audio torch']:.2f}x "
          f"({rates['audio clapcomp'] / rates['audio torch model']:.2f}x vs the torch model alone); "
          f"text: {rates['text clapcomp'] / rates['text torch']:.2f}x")  # fmt: skip


def _matmul_rate(m: int, k: int, n: int, repeats: int = 7) -> float:
    """GFLOP per CPU-second of one jitted float32 [m, k] @ [k, n] (median of `repeats`, compiled first)."""
    import jax
    import jax.numpy as jnp

    a, b = jnp.ones((m, k), jnp.float32), jnp.ones((k, n), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    matmul(a, b).block_until_ready()
    work = []
    for _ in range(repeats):
        start = time.process_time()
        matmul(a, b).block_until_ready()
        work.append(time.process_time() - start)
    return 2 * m * k * n / statistics.median(work) / 1e9


def _gflop(clap, method: str, *arrays) -> float:
    """GFLOP XLA counts in the compiled program `clap` runs for `method` on these (batch-sized) arrays."""
    fn, state = clap._jitted(method)
    cost = fn.lower(state, *arrays).compile().cost_analysis()
    return (cost[0] if isinstance(cost, list) else cost)["flops"] / 1e9


if __name__ == "__main__":
    main()
