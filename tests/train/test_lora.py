"""LoRA fine-tuning (config.lora): a tiny run with adapters, resumed, checked against independent
expectations: the base weights in the checkpoint bit-identical to the initial ones, the adapters and
(train_heads) the heads trained, the resume bit-identical to a straight run, and the merged export read
by transformers' ClapModel embedding like `clapcomp.load(workdir)` (<= 1e-4)."""

import json

import jax
import numpy as np
import pytest
from flax import nnx

import clapcomp
from clapcomp import cli
from clapcomp.models import lora
from clapcomp.train import distributed, optim
from clapcomp.train import state as state_lib

TEXTS = ["a low tone followed by a high tone", "a high tone", "a very high tone with a middle tone"]
# configs/tiny.py with a text tower HF's ClapModel can hold (RoBERTa layout, pooler output).
HF_TEXT = dict(family="roberta", pooling="pooler", pad_token_id=1, type_vocab_size=1, max_position_embeddings=34)


def _flat(tree) -> dict:
    return {state_lib.path_name(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def test_wrapped_paths_keep_their_layer_ids_and_only_adapters_get_a_rate():
    """The layer-decay regexes see through the wrapping: an adapter and its base weight sit in the block of
    the plain model's weight; with LoRA the multipliers are the decay formula's on adapters, 0 elsewhere."""
    from repo_configs import load_config  # tests/repo_configs.py

    config = load_config("tiny", None, "model.text.num_layers=3", "optimizer.layer_decay.text=0.5", "lora.rank=2")
    plain = state_lib.abstract_model(state_lib.model_config(config))[1]
    wrapped = state_lib.abstract_model(state_lib.model_config(config), state_lib.lora_config(config))[1]
    names = list(_flat(wrapped))
    plain_ids, n = optim.layer_ids(list(_flat(plain)), "text_tower")
    ids, n_wrapped = optim.layer_ids(names, "text_tower")
    assert n == n_wrapped == 3
    for name, layer in ids.items():  # "...layers.1.query.lora_a" -> the id of "...layers.1.query.kernel"
        base = name.replace(".base_module", "").replace(".lora_a", ".kernel").replace(".lora_b", ".kernel")
        assert layer == plain_ids[base], name
    mults = optim.multipliers(wrapped, layer_decay={"text": 0.5}, lora_heads=False)
    for name, m in mults.items():
        want = 0.5 ** (n + 1 - ids[name]) if name in ids else 1.0
        assert m == (want if lora.is_adapter(name) else 0.0), name


@pytest.mark.slow  # trains twice and exports
def test_lora_run_trains_only_adapters_resumes_exactly_and_exports_merged(tmp_path, tiny, helpers):
    import torch
    import transformers

    config = tiny("plain")
    config.model.text.update(HF_TEXT)
    config.lora.update(rank=4, alpha=8.0, train_heads=True)
    config.total_steps, config.ckpt_every = 4, 2
    final, resumed_final = helpers.straight_and_resumed(config, tmp_path)  # resumed after step 2's checkpoint
    helpers.assert_states_bitwise_equal(final, resumed_final)
    resumed = tmp_path / "resumed"

    mesh = distributed.make_mesh(config.mesh.data, config.mesh.fsdp)
    parts = state_lib.setup(config, mesh)
    initial, trained = _flat(state_lib.init_state(parts).params), _flat(final.params)
    assert initial.keys() == trained.keys()
    adapters = {n for n in initial if n.endswith((".lora_a", ".lora_b"))}
    assert len(adapters) == 2 * (6 + 2 * 6)  # 6 projections per text layer (1) and Swin block (2 stages x 1)
    for name, x in initial.items():  # the base weights bit-identical; adapters and heads trained
        assert (x.tobytes() != trained[name].tobytes()) == (name in adapters or lora.is_head(name)), name
    recorded = json.loads((resumed / "config.json").read_text())["lr_groups"]
    assert all(lora.is_adapter(prefix) or lora.is_head(prefix) for prefix, m in recorded if m != 0), recorded

    ours = clapcomp.load(resumed)  # merged: a plain ClapModel
    adapted = nnx.merge(parts.graphdef, final.params, final.model_state)
    ids, mask = ours.tokenizer(TEXTS)
    np.testing.assert_allclose(ours.embed_tokens(ids, mask), adapted.embed_tokens(ids, mask), atol=1e-5)

    assert cli.main(["export", "--model", str(resumed), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    hf = transformers.ClapModel.from_pretrained(tmp_path / "hf").eval()
    features = transformers.ClapFeatureExtractor.from_pretrained(tmp_path / "hf")
    rate, n = ours.config.audio.sample_rate, ours.config.audio.clip_samples
    rng = np.random.default_rng(0)
    audio = [0.1 * rng.standard_normal(k).astype(np.float32) for k in (n // 3, n, n - 1234)]
    with torch.no_grad():
        inputs = features(audio, sampling_rate=rate, return_tensors="pt")
        ref_audio = hf.get_audio_features(**inputs).pooler_output
        ref_text = hf.get_text_features(input_ids=torch.tensor(ids, dtype=torch.long),
                                        attention_mask=torch.tensor(mask, dtype=torch.long)).pooler_output  # fmt: skip
    normalize = lambda t: torch.nn.functional.normalize(t, dim=-1).numpy()
    np.testing.assert_allclose(ours.embed_audio(audio, rate), normalize(ref_audio), atol=1e-4)
    np.testing.assert_allclose(ours.embed_text(TEXTS), normalize(ref_text), atol=1e-4)
