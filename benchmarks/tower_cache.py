"""A locked audio tower, run in every train step vs cached once per clip (`clapcomp.train.locked_tower`).

    python benchmarks/tower_cache.py --records runs/real_sounds_recipe/records_44100 --clips 64 --steps 3

With configs/real_sounds.py (the pretrained aisfx CNN locked, MiniLM; `--config` for another file whose
get_config takes a loss): the initial model as the trainer builds it, then
  1. `write_cache` over the first `--clips` records (copied to a scratch dir): clips per second;
  2. seconds per compiled train step at the config's batch, on the pipeline's first batch of those
     records, for each `--losses`: with waveforms (the tower runs in the step) and with the cache
     (`audio_pooled`: only the projection after the tower runs); median of `--steps` steps after one
     warm-up step, compilation excluded; each from the initial state, whose first-step loss is printed
     (the two must agree: the same batch).
Prints one line per figure.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=Path, required=True, help="records at the config's sample rate")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "real_sounds.py")
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--losses", default="plain,compa,modular")
    parser.add_argument("--no-waveform-steps", action="store_true", help="time only the steps with the cache")
    args = parser.parse_args()

    import jax
    from flax import nnx
    from jax.sharding import NamedSharding

    from clapcomp.data.options import DataConfig
    from clapcomp.data.pipeline import make_dataset
    from clapcomp.data.records import RecordSource, parse_record, write_records
    from clapcomp.tokenizer import Tokenizer
    from clapcomp.train import distributed, locked_tower
    from clapcomp.train import init as init_lib
    from clapcomp.train import state as state_lib
    from clapcomp.train import step as step_lib
    from clapcomp.train.config import load
    from clapcomp.train.distributed import BATCH

    scratch = Path(tempfile.mkdtemp(prefix="tower_cache_bench_"))
    source = RecordSource(args.records)
    subset = [parse_record(source[i]) for i in range(min(args.clips, len(source)))]
    write_records(str(scratch / "records"), subset, audio_format=subset[0]["audio_format"])
    records = scratch / "records"

    t0 = time.perf_counter()
    config = init_lib.prepare(load(args.config, "plain", [f"data.train={records}"]))
    mesh = distributed.make_mesh(config.mesh.data, config.mesh.fsdp)
    parts = state_lib.setup(config, mesh)
    state = state_lib.init_state(parts, init_lib.load_init_model(config))
    print(
        f"{jax.devices()[0].device_kind}, {jax.device_count()} device(s); initial model {time.perf_counter() - t0:.0f} s"
    )

    cache = locked_tower.write_cache(
        records, scratch / "cache", nnx.merge(parts.graphdef, state.params, state.model_state)
    )
    stats = json.loads((scratch / "cache" / "stats.json").read_text())
    print(f"write_cache: {stats['count']} clips in {stats['seconds']} s = {stats['clips_per_s']} clips/s")

    for loss in args.losses.split(","):
        c = init_lib.prepare(load(args.config, loss, [f"data.train={records}"]))
        tok = Tokenizer.from_file(c.tokenizer, max_length=c.model.text.max_length)
        audio = state_lib.model_config(c).audio
        for pooled in (False, True) if not args.no_waveform_steps else (True,):
            options = DataConfig.from_config(c, audio, seed=0, workers=0)
            ds = make_dataset(RecordSource(str(records)), options, tokenizer=tok, process_index=0, process_count=1,
                              tower_cache=cache if pooled else None)  # fmt: skip
            batch = {k: v for k, v in next(iter(ds)).items() if k in step_lib.batch_spec(loss, pooled=pooled)}
            batch = jax.device_put(batch, NamedSharding(mesh, BATCH))
            t0 = time.perf_counter()
            step = step_lib.from_parts(state_lib.setup(c, mesh), mesh, loss=c.loss, freeze=c.freeze)
            compiled = step.lower(state, batch).compile()
            compile_s = time.perf_counter() - t0
            current, times = jax.tree_util.tree_map(lambda x: x.copy(), state), []  # the step donates its state
            for i in range(args.steps + 1):
                t0 = time.perf_counter()
                current, metrics = compiled(current, batch)
                jax.block_until_ready(metrics)
                if i:
                    times.append(time.perf_counter() - t0)
                else:
                    first_loss = float(metrics["loss"])
            what = "cache (audio_pooled)" if pooled else "waveforms (tower in the step)"
            print(f"train step {loss:8s} batch {c.data.batch_size}, {what:30s}: median {statistics.median(times):.2f} s "
                  f"(min {min(times):.2f}, max {max(times):.2f}; {args.steps} steps; compile {compile_s:.0f} s; "
                  f"first loss {first_loss:.6f})", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
