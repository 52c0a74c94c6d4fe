"""benchmarks/tpu_aot.py: the tiny config's CompA step (K = 3) compiled by the TPU compiler for a
v5e 2x2 slice on this CPU host. Needs libtpu: `make test` installs it outside site-packages and
points TPU_LIBRARY_PATH at it (else `pip install "jax[tpu]==<jax version>"`); those tests skip,
saying so, where it is not there. The collectives are checked against what the sharded loss
and data parallelism imply; the HLO parser is checked on a hand-written gather of the K axis."""

import importlib.util
import math
import os
from pathlib import Path

import pytest
from repo_configs import load_script

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    return load_script(ROOT / "benchmarks" / f"{name}.py")


aot, hlo = _load("tpu_aot"), _load("hlo")
B, K, CHIPS = 2, 3, 4  # samples per chip, hard negatives, chips of v5e:2x2


@pytest.fixture(scope="module")
def compiled():
    if not (Path(os.environ.get("TPU_LIBRARY_PATH", "/nonexistent")).is_file() or importlib.util.find_spec("libtpu")):
        pytest.skip(
            "libtpu (the TPU compiler) is not installed: `make test` puts it in .venv/libtpu; "
            'elsewhere pip install "jax[tpu]==<jax version>"'
        )
    args = aot.parse_args(["--config", str(ROOT / "configs" / "tiny.py"), "--topology", "v5e:2x2",
                           "--per-chip-batch", str(B), "--loss", "compa", "--k", str(K), "--dtype", "fp32"])  # fmt: skip
    config = aot.load_config(args)
    step, mesh, seconds = aot.compile_step(config, args.topology, args.per_chip_batch)
    return aot.report(args, config, step, mesh, seconds), step.as_text(), config


@pytest.mark.slow
def test_memory_report_per_chip(compiled):
    import jax

    from clapcomp.train import state as state_lib

    r, _, config = compiled
    assert r["chips"] == CHIPS and r["mesh"] == {"data": CHIPS, "fsdp": 1} and r["global_batch"] == B * CHIPS
    by = r["bytes"]
    assert by["hbm"] == 16 * 2**30 and r["fits"] is True
    assert by["total"] == by["arguments"] + by["temporaries"] + by["outputs"] + by["code"]
    # arguments: the replicated state (params + Adam moments + counters) and this chip's batch rows,
    # at least their logical size (TPU layouts pad small arrays to tiles)
    abstract = state_lib.setup(config, jax.make_mesh((1, 1), ("data", "fsdp"), devices=jax.devices()[:1])).abstract
    state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(abstract))
    cfg = state_lib.model_config(config)
    batch_bytes = B * (4 * cfg.audio.clip_samples + 4 + (1 + K) * 2 * 4 * cfg.text.max_length + K)
    assert state_bytes + batch_bytes <= by["arguments"] <= 4 * (state_bytes + batch_bytes), (
        by,
        state_bytes,
        batch_bytes,
    )
    assert by["temporaries"] > 0 and by["outputs"] >= 0 and r["compile_s"] > 0
    # the compiled FLOPs per sample cover at least the analytic matmul count of the towers
    assert 0 < r["flops_per_sample"]["model"] <= r["flops_per_sample"]["compiled"]


@pytest.mark.slow
def test_no_gather_carries_the_hard_negative_axis(compiled):
    r, text, config = compiled
    d = config.model.projection_dim
    assert r["k_axis_gathers"] == [] and hlo.gathers_with_axis(text, B, K) == []
    gathers = [c for c in r["collectives"] if c["kind"] == "all-gather"]
    # the sharded loss gathers exactly two [B_local, D] blocks (audio and main-caption embeddings) over `data`
    assert len(gathers) == 2, gathers
    for c in gathers:
        assert math.prod(c["result"][0]) == CHIPS * B * d and c["axes"] == ["data"], c
    assert all(c["kind"] != "reduce-scatter" for c in r["collectives"])  # nothing is sharded but the batch


@pytest.mark.slow
def test_collectives_match_the_mesh(compiled):
    import jax

    from clapcomp.train import state as state_lib

    r, _, config = compiled
    assert {c["kind"] for c in r["collectives"]} <= {"all-gather", "all-reduce", "all-to-all"}
    assert all(c["axes"] == ["data"] for c in r["collectives"]), r["collectives"]
    # data parallelism: every parameter's gradient is summed over `data`, so the all-reduced bytes
    # cover the float32 parameters at least once
    _, params, _ = state_lib.abstract_model(state_lib.model_config(config))
    param_bytes = sum(x.size * 4 for x in jax.tree_util.tree_leaves(params))
    assert r["collective_bytes"]["all-reduce"] >= param_bytes


def test_parser_sees_a_gathered_k_axis():
    text = ("%p = f32[2,3,32]{2,1,0} parameter(0)\n"
            "%ag = f32[8,3,32]{2,1,0} all-gather(%p), channel_id=1, replica_groups=[1,4]<=[4], dimensions={0}\n")  # fmt: skip
    [found] = hlo.collectives(text, {"data": 4, "fsdp": 1})
    assert found["kind"] == "all-gather" and found["axes"] == ["data"] and found["result_bytes"] == 8 * 3 * 32 * 4
    assert [c["operands"] for c in hlo.gathers_with_axis(text, 2, 3)] == [[[2, 3, 32]]]
    assert hlo.gathers_with_axis(text, 2, 5) == []


# XLA:TPU's async collective fusion, cut down from the compiled LAION-CLAP step at 32,768 on v5e-256:
# one all-gather started, continued beside other work, and ended, its instruction in each piece
ASYNC_FUSION = """
%fused_computation.1 (param_0.1: bf16[128,512]) -> (bf16[128,512], bf16[32768,512], s32[2]) {
  %param_0.1 = bf16[128,512]{1,0} parameter(0)
  %all-gather.9 = bf16[32768,512]{1,0} all-gather(%param_0.1), channel_id=1, replica_groups=[1,256]<=[256], dimensions={0}
}
%async_collective_fusion.2 (param_0.2: bf16[128,512], param_1.2: bf16[32768,512]) -> (bf16[128,512], bf16[32768,512]) {
  %param_0.2 = bf16[128,512]{1,0} parameter(0)
  %all-gather.11 = bf16[32768,512]{1,0} all-gather(%param_0.2), channel_id=1, replica_groups=[1,256]<=[256], dimensions={0}
}
%async_collective_fusion.3 (param_0.3: bf16[128,512], param_1.3: bf16[32768,512]) -> (bf16[128,512], bf16[32768,512]) {
  %param_0.3 = bf16[128,512]{1,0} parameter(0)
  %all-gather.13 = bf16[32768,512]{1,0} all-gather(%param_0.3), channel_id=1, replica_groups=[1,256]<=[256], dimensions={0}
}
%fused_computation.4 (param_0.4: bf16[128,512], param_1.4: bf16[32768,512]) -> bf16[32768,512] {
  %param_0.4 = bf16[128,512]{1,0} parameter(0)
  %all-gather.459 = bf16[32768,512]{1,0} all-gather(%param_0.4), channel_id=1, replica_groups=[1,256]<=[256], dimensions={0}
}
ENTRY %main.5 (param.1: bf16[128,512]) -> bf16[32768,512] {
  %async-collective-start = (bf16[128,512]{1,0}, bf16[32768,512]{1,0}, s32[2]{0}) fusion(%param.1), kind=kCustom, calls=%fused_computation.1
  %fusion.2 = (bf16[128,512]{1,0}, bf16[32768,512]{1,0}) fusion(%gte.1, %gte.2), kind=kCustom, calls=%async_collective_fusion.2
  %fusion.3 = (bf16[128,512]{1,0}, bf16[32768,512]{1,0}) fusion(%gte.3, %gte.4), kind=kCustom, calls=%async_collective_fusion.3
  ROOT %async-collective-done = bf16[32768,512]{1,0} fusion(%gte.5, %gte.6), kind=kCustom, calls=%fused_computation.4, backend_config={}
}
"""


def test_an_async_collective_fusion_is_one_collective():
    [found] = hlo.collectives(ASYNC_FUSION, {"data": 256, "fsdp": 1})
    assert found["kind"] == "all-gather" and found["axes"] == ["data"]
    assert found["result"] == [[32768, 512]] and found["result_bytes"] == 32768 * 512 * 2


def test_linear_fit_of_two_compiles():
    def report(b, args, temps):
        return dict(per_chip_batch=b, bytes=dict(arguments=args, temporaries=temps, outputs=0, code=10,
                                                  total=args + temps + 10, hbm=1000))  # fmt: skip

    r = aot.fit(report(64, 120, 400), report(32, 110, 200), 128)  # by hand: +10 / +200 bytes per 32 samples
    assert r["bytes"] == {"arguments": 140, "temporaries": 800, "outputs": 0, "code": 10, "total": 950}
    assert r["fits"] is True and aot.fit(report(32, 110, 200), report(64, 120, 400), 160)["fits"] is False
    with pytest.raises(ValueError, match="two different per-chip batches"):
        aot.fit(report(32, 1, 1), report(32, 1, 1), 128)


@pytest.mark.parametrize("tower, trained", [("audio", "audio_"), ("text", "text_")])
def test_tower_loss_reaches_only_its_tower(tower, trained):
    """`--tower`'s stand-in loss: gradients reach its tower (and projection) and no parameter of the other."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from clapcomp.models.clap import ClapModel
    from clapcomp.train import state as state_lib

    args = aot.parse_args(["--config", str(ROOT / "configs" / "tiny.py"), "--loss", "compa", "--k", "2",
                           "--dtype", "fp32"])  # fmt: skip
    config = aot.load_config(args)
    cfg = state_lib.model_config(config)
    graphdef, params, model_state = state_lib.split_model(ClapModel(cfg, rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(1, 100, (2, 3, cfg.text.max_length)), jnp.int32)
    batch = dict(waveform=jnp.asarray(rng.standard_normal((2, cfg.audio.clip_samples)), jnp.float32),
                 lengths=jnp.full((2,), cfg.audio.clip_samples, jnp.int32), input_ids=ids[:, 0],
                 attention_mask=jnp.ones_like(ids[:, 0]), neg_input_ids=ids[:, 1:],
                 neg_attention_mask=jnp.ones_like(ids[:, 1:]))  # fmt: skip
    loss = aot.tower_loss(tower)
    grads = jax.jit(jax.grad(lambda p: loss(nnx.merge(graphdef, p, model_state), batch, jax.random.key(0), None)))(
        params
    )
    norms = {
        state_lib.path_name(path): float(jnp.abs(g).max()) for path, g in jax.tree_util.tree_leaves_with_path(grads)
    }
    mine = [n for n in norms if n.startswith(trained)]
    assert mine and any(norms[n] > 0 for n in mine)
    assert all(v == 0 for n, v in norms.items() if n not in mine), {
        n: v for n, v in norms.items() if n not in mine and v
    }


def test_an_unknown_set_field_stops_before_compiling(capsys):
    """`--set` goes through clapcomp.train.config.load: once accepted silently, an unknown field now
    exits 2 naming it and the closest fields; a known one reaches the config, parsed by its type."""
    base = ["--config", str(ROOT / "configs" / "tiny.py"), "--loss", "compa"]
    assert aot.main([*base, "--set", "data.nonexistent_key=3"]) == 2
    err = capsys.readouterr().err
    assert "'data.nonexistent_key', which is no config field; data has batch_size" in err, err
    assert aot.main([*base, "--set", "model.htsat.drop_path_rat=0.2"]) == 2
    assert "the closest are model.htsat.drop_path_rate" in capsys.readouterr().err
    config = aot.load_config(aot.parse_args([*base, "--fsdp", "2", "--set", "model.htsat.remat=nothing_saveable"]))
    assert (config.model.htsat.remat, config.loss, config.data.num_negatives, config.mesh.fsdp, config.fsdp_text) == (
        "nothing_saveable", "compa", 3, 2, True)  # fmt: skip
    assert config.model.dtype == "bfloat16" and "model.htsat.remat" in config.overrides
