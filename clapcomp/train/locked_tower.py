"""A locked audio tower runs once per distinct clip, for every run and evaluation that shares it.

With `config.freeze="audio_tower"` (LiT) the audio tower runs in inference mode on frozen weights, so
for a clip that fits the clip window (the crop is then the whole clip) its output is a fixed function
of the clip and of the tower. This module computes those outputs once and keys them by clip, in a
`clapcomp.data.tower_cache.TowerCache`:

    tower_identity(cfg, params, model_state)    what the outputs depend on: front end, tower config,
                                                compute dtype, sha256 of the tower's weights and
                                                BatchNorm statistics (a JSON dict)
    write_cache(records, out_dir, model)        the tower over every record of a `clapcomp data build`
                                                dir (each at most the clip window, else refused)
    --config.data.tower_cache=out_dir           the trainer reads rows `audio_pooled` [B, P] instead of
                                                waveforms [B, S] and only the projection after the tower
                                                runs; `load` refuses it for a tower that trains, `check`
                                                for a cache of another tower
    CachedClap(model, cfg, tok, caches=caches)  an inference `Clap` whose tower runs once per distinct
                                                clip over every model wrapped with the same `caches`
    cache_for_config(config, records, root)     the run's initial tower, its cache written once under
                                                root (examples/real_sounds/compare.py); from the shell:

    clapcomp tower-cache --config configs/real_sounds.py --records DIR --out ROOT [--config.f=v ...]
    clapcomp train --config configs/real_sounds.py ... --config.data.tower_cache=<the dir it prints>
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import sys
import time
from collections import Counter
from pathlib import Path

import jax
import numpy as np

from clapcomp import fs
from clapcomp.audio import prepare_waveforms
from clapcomp.data.tower_cache import FILES, TowerCache, waveform_digest
from clapcomp.inference import Clap
from clapcomp.models.configs import ClapConfig
from clapcomp.train import optim
from clapcomp.train import state as state_lib

log = logging.getLogger("clapcomp.train")


def _host(x) -> np.ndarray:
    """A (replicated) array as NumPy, also when other processes hold copies of it."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        if not x.is_fully_replicated:
            raise ValueError(f"the audio tower's arrays must be replicated to be hashed, got {x.sharding}")
        x = x.addressable_data(0)
    return np.asarray(x)


def tower_identity(cfg: ClapConfig, params: dict, model_state: dict) -> dict:
    """What a locked tower's outputs depend on, as a JSON dict: front end, tower kind and config, compute
    dtype, and `weights_sha256` over the tower's parameters and state (BatchNorm statistics) in
    `params` / `model_state` (pure dicts of the whole model, as `state_lib.split_model` gives)."""
    digest = hashlib.sha256()
    for tree in (params.get("audio_tower", {}), model_state.get("audio_tower", {})):
        leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
        for path, x in sorted(leaves, key=lambda leaf: state_lib.path_name(leaf[0])):
            x = _host(x)
            digest.update(f"{state_lib.path_name(path)}:{x.dtype}:{x.shape};".encode())
            digest.update(np.ascontiguousarray(x).tobytes())
    tower_cfg = cfg.cnn if cfg.audio_tower == "cnn" else cfg.htsat
    identity = {"audio_tower": cfg.audio_tower, "tower_config": dataclasses.asdict(tower_cfg),
                "front_end": dataclasses.asdict(cfg.audio), "dtype": cfg.dtype, "weights_sha256": digest.hexdigest()}  # fmt: skip
    return json.loads(json.dumps(identity))  # tuples as lists, as read back from stats.json


def _differences(have: dict, want: dict, prefix: str = "") -> list[str]:
    """`field: have -> want` for every leaf that differs between two identities."""
    out = []
    for k in sorted(have.keys() | want.keys()):
        a, b = have.get(k), want.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


def load(tower_cache: str, freeze: str) -> TowerCache | None:
    """`tower_cache` (config.data.tower_cache) as a TowerCache (None when empty); refused unless `freeze`
    (config.freeze) locks the audio tower."""
    if not tower_cache:
        return None
    if not optim.audio_tower_locked(freeze):
        raise ValueError(
            f"config.data.tower_cache={tower_cache!r} holds a locked audio tower's outputs, but this run "
            f"trains its audio tower (config.freeze={freeze!r}); set config.freeze='audio_tower' (LiT) or "
            "config.data.tower_cache=''"
        )
    return TowerCache.load(tower_cache)


def check(cache: TowerCache, cfg: ClapConfig, params, model_state) -> None:
    """Refuses `cache` unless it holds the outputs of this run's audio tower (ClapConfig and weights)."""
    want = tower_identity(cfg, params, model_state)
    if cache.tower != want:
        diff = "; ".join(_differences(cache.tower, want))
        raise ValueError(
            f"config.data.tower_cache={str(cache.path)!r} holds the outputs of another audio tower than this run's "
            f"(cache -> run: {diff}); write one for this run (clapcomp.train.locked_tower.cache_for_config) "
            "or train without it (config.data.tower_cache='')"
        )


class CachedClap(Clap):
    """A `Clap` whose audio tower runs once per distinct clip. `embed_audio` looks the tower's outputs up
    in `caches` (a dict the caller keeps: one TowerCache per tower identity, shared by every model wrapped
    with it) and runs the tower only on clips not seen before; the projection always runs. Embeddings
    are those of `Clap` (the inference crop is deterministic). The tower's weights are hashed here, once:
    do not change the wrapped model's audio tower afterwards. `computed`: clips the tower ran on."""

    def __init__(self, model, config: ClapConfig, tokenizer=None, *, caches: dict, max_batch: int = 16):
        super().__init__(model, config, tokenizer, max_batch=max_batch)
        _, params, model_state = state_lib.split_model(model)
        tower = tower_identity(config, params, model_state)
        self.cache = caches.setdefault(json.dumps(tower, sort_keys=True), TowerCache(tower))
        self.computed = 0

    def pooled(self, waveform: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """waveform [B, S] f32 at the model's rate (zero-padded), lengths [B] -> the tower's outputs [B, P]."""
        digests = [waveform_digest(w[:n]) for w, n in zip(waveform, lengths, strict=True)]
        first: dict[str, int] = {}  # each unseen clip once
        for i, d in enumerate(digests):
            if d not in self.cache:
                first.setdefault(d, i)
        if first:
            idx = list(first.values())
            for d, row in zip(first, self._run("pool_audio", waveform[idx], lengths[idx]), strict=True):
                self.cache.add(d, row)
            self.computed += len(idx)
        return np.stack([self.cache[d] for d in digests])

    def embed_audio(self, audio, sample_rate: int) -> np.ndarray:
        """audio [B, T] float or a list of 1-D float arrays at `sample_rate` Hz -> [B, D] unit rows."""
        waveform, lengths = prepare_waveforms(audio, sample_rate, self.config.audio)
        return self._run("embed_pooled", self.pooled(waveform, lengths))


def write_cache(records: str | Path, out_dir: str | Path, model, *, batch_size: int = 16) -> TowerCache:
    """The tower's output for every record in `records` (a `clapcomp data build` dir), saved in `out_dir`.

    Records are decoded and resampled to the model's rate as the training pipeline does
    (`clapcomp.data.transform.decode_at`). A record longer than the clip window is refused: training
    crops it at random, so its tower output is not one per record. Records the pipeline would skip as
    unreadable are skipped and counted; identical clips share one row. stats.json adds the records, the
    counts, the seconds taken and the clips per second. One writer per `out_dir`: it is written into a
    temporary sibling (under a lock) and renamed into place at the end; an earlier cache there survives a
    failed run and is replaced by a finished one.
    """
    fs.refuse_inputs(out_dir, [records])
    overwrite = fs.replaceable(out_dir, FILES, "stats.json")
    with fs.atomic_dir(out_dir, overwrite=overwrite, purpose="clapcomp tower-cache") as tmp:
        cache, stats = _compute(records, model, batch_size)
        cache.save(tmp, **stats)
    cache.path = fs.as_path(out_dir)
    return cache


def _compute(records: str | Path, model, batch_size: int) -> tuple[TowerCache, dict]:
    """write_cache's rows and stats."""
    from clapcomp.data.reasons import BadData
    from clapcomp.data.records import RecordSource, parse_record
    from clapcomp.data.stage import local_records
    from clapcomp.data.transform import decode_at

    cfg, source = model.cfg, RecordSource(local_records(str(records)))  # records on GCS: a staged copy
    rate, clip = cfg.audio.sample_rate, cfg.audio.clip_samples

    def too_long(key: str, n: int) -> ValueError:
        return ValueError(
            f"record {key!r} in {records} has {n} samples at {rate} Hz, more than the clip window ({clip} samples, "
            f"model.audio.clip_seconds={cfg.audio.clip_seconds}): training crops it at random, so a locked tower's "
            "output is not a function of the record. Build the records from clips of at most clip_seconds, "
            "lengthen the window, or train without a tower cache"
        )

    for i in range(len(source)):  # headers only: refuse before the tower runs
        try:
            rec = parse_record(source[i])
        except BadData:
            continue
        if rec["sample_rate"] == rate and rec["num_samples"] > clip:  # other rates: checked once resampled
            raise too_long(rec["key"], rec["num_samples"])
    clap = CachedClap(model, cfg, caches={}, max_batch=batch_size)
    skipped: Counter[str] = Counter()
    waves: list[np.ndarray] = []
    t0 = time.perf_counter()

    def flush(done: int):
        waveform = np.zeros((len(waves), clip), np.float32)
        for row, w in zip(waveform, waves, strict=True):
            row[: len(w)] = w
        clap.pooled(waveform, np.array([len(w) for w in waves], np.int32))
        waves.clear()
        log.info(
            "tower cache: %d of %d records, %.2f clips/s", done, len(source), clap.computed / (time.perf_counter() - t0)
        )

    for i in range(len(source)):
        try:
            rec = parse_record(source[i])
            wave = decode_at(rec, rate)
        except BadData as e:  # the pipeline replaces these: nothing to cache
            skipped[e.reason] += 1
            continue
        if len(wave) > clip:
            raise too_long(rec["key"], len(wave))
        waves.append(wave)
        if len(waves) == batch_size:
            flush(i + 1)
    if waves:
        flush(len(source))
    seconds = time.perf_counter() - t0
    return clap.cache, dict(records=str(records), num_records=len(source), skipped=dict(skipped),
                            seconds=round(seconds, 1), clips_per_s=round(clap.computed / max(seconds, 1e-9), 3))  # fmt: skip


def cache_for_config(config, records: str | Path, root: str | Path) -> Path:
    """The tower cache of the run `config` describes, over `records`: the run's initial model is built as
    the trainer builds it (`clapcomp.train.init`), its cache written into root/<identity hash> on first
    use and found there afterwards (any seed or stage that starts from the same tower shares it)."""
    from flax import nnx

    from clapcomp.train import distributed
    from clapcomp.train import init as init_lib

    config = config.copy_and_resolve_references()
    config.data.train = str(records)
    config = init_lib.prepare(config)
    parts = state_lib.setup(config, distributed.make_mesh(config.mesh.data, config.mesh.fsdp))
    state = state_lib.init_state(parts, init_lib.load_init_model(config))
    tower = tower_identity(parts.cfg, state.params, state.model_state)
    out = fs.as_path(root) / hashlib.sha256(json.dumps(tower, sort_keys=True).encode()).hexdigest()[:16]
    stats = json.loads((out / "stats.json").read_text()) if (out / "stats.json").is_file() else {}
    if stats.get("tower") == tower and stats.get("records") == str(records):
        return out
    write_cache(records, out, nnx.merge(parts.graphdef, state.params, state.model_state))
    return out


def main(argv: list[str]) -> int:
    """`clapcomp tower-cache --config FILE[:ARG] --records DIR --out ROOT [--config.field=value ...]`: writes
    the tower cache of the run the config describes (once) and prints its dir, for --config.data.tower_cache."""
    from absl import flags

    from clapcomp.train import config as config_lib

    fv = flags.FlagValues()
    flags.DEFINE_string("records", None, "the run's training records (config.data.train)", flag_values=fv)
    flags.DEFINE_string("out", None, "root dir: the cache goes into ROOT/<tower identity hash>/", flag_values=fv)
    try:
        path, overrides, rest = config_lib.split_argv(argv)
        fv(["clapcomp tower-cache", *rest])
        config = config_lib.load(path, overrides=overrides) if path else None
    except (flags.Error, ValueError, FileNotFoundError) as e:
        sys.stderr.write(f"clapcomp tower-cache: {e}\n")
        return 2
    if config is None or not fv.records or not fv.out:
        sys.stderr.write("clapcomp tower-cache: --config, --records and --out are required\n")
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    print(cache_for_config(config, fv.records, fv.out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
