"""LAION-CLAP `.pt` import against the `laion-clap` package's own model class (random init).

The reference is built offline and small: test-side stand-ins replace what its import chain pulls
in but the model does not need (torchvision's FrozenBatchNorm2d, h5py, the package `__init__`s that
import training code) and librosa, which torchlibrosa uses for its window and mel filters (the
stand-ins compute the same: scipy's Hann window, HF's slaney mel filter bank = librosa's). Its
`create_htsat_model` and `RobertaModel.from_pretrained` are patched to build a small HTSAT and a
1-layer RoBERTa instead of downloading roberta-base. Nothing in clapcomp is patched.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

import jax.numpy as jnp
import numpy as np
import pytest

import clapcomp
from clapcomp.convert.hf import TEXT_BUFFERS, hf_config_from_clap
from clapcomp.convert.laion import DROPPED, laion_config, laion_to_hf, load_laion_clap, read_laion_checkpoint
from clapcomp.models.configs import AudioConfig

torch = pytest.importorskip("torch")
RATE = 48_000


def _module(name, path=None, **attrs):
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    if path is not None:
        mod.__path__ = [path]
    return mod


def _stand_ins() -> dict:
    import scipy.signal
    from transformers.audio_utils import mel_filter_bank

    def mel(*, sr, n_fft, n_mels, fmin, fmax, **_):  # librosa.filters.mel defaults: slaney scale and norm
        return mel_filter_bank(num_frequency_bins=n_fft // 2 + 1, num_mel_filters=n_mels, min_frequency=fmin,
                               max_frequency=fmax, sampling_rate=sr, norm="slaney", mel_scale="slaney").T  # fmt: skip

    def pad_center(data, *, size):
        left = (size - len(data)) // 2
        return np.pad(data, (left, size - len(data) - left))

    class FrozenBatchNorm2d(torch.nn.Module):
        pass

    filters = _module("librosa.filters", mel=mel, get_window=scipy.signal.get_window)
    util = _module("librosa.util", pad_center=pad_center)
    misc = _module("torchvision.ops.misc", FrozenBatchNorm2d=FrozenBatchNorm2d)
    ops = _module("torchvision.ops", misc=misc)
    spec = importlib.util.find_spec("laion_clap")
    if spec is None or importlib.util.find_spec("torchlibrosa") is None:
        raise ImportError("the LAION reference is missing: pip install --no-deps laion-clap==1.1.7 torchlibrosa==0.1.0 "
                          "(`make install` does this)")  # fmt: skip
    root = spec.submodule_search_locations[0]
    return {
        "librosa": _module("librosa", filters=filters, util=util), "librosa.filters": filters, "librosa.util": util,
        "torchvision": _module("torchvision", ops=ops), "torchvision.ops": ops, "torchvision.ops.misc": misc,
        "h5py": _module("h5py"), "laion_clap": _module("laion_clap", root),
        "laion_clap.clap_module": _module("laion_clap.clap_module", root + "/clap_module"),
    }  # fmt: skip


@pytest.fixture(scope="module")
def laion():
    """`make(fusion, ape) -> eval-mode laion_clap CLAP` (HTSAT 8-wide, depths (2, 1); RoBERTa 1 layer)."""
    import transformers

    stand_ins = _stand_ins()
    hidden = {name: sys.modules[name] for name in stand_ins if name in sys.modules}
    sys.modules.update(stand_ins)
    try:
        model_py = importlib.import_module("laion_clap.clap_module.model")
        htsat_py = importlib.import_module("laion_clap.clap_module.htsat")
    finally:  # take the stand-ins out again; the loaded reference modules keep their own references
        for name in [*stand_ins, *(n for n in sys.modules if n.startswith(("laion_clap.", "torchlibrosa")))]:
            sys.modules.pop(name, None)
        sys.modules.update(hidden)

    options = {"ape": False}

    def small_htsat(audio_cfg, enable_fusion=False, fusion_type="None"):
        return htsat_py.HTSAT_Swin_Transformer(
            spec_size=128, patch_size=4, patch_stride=(4, 4), num_classes=5, embed_dim=8, depths=[2, 1],
            num_heads=[1, 2], window_size=4, config=audio_cfg, enable_fusion=enable_fusion, fusion_type=fusion_type,
            ape=options["ape"],
        )  # fmt: skip

    def small_roberta(name):
        assert name == "roberta-base"
        return transformers.RobertaModel(transformers.RobertaConfig(
            vocab_size=300, hidden_size=768, num_hidden_layers=1, num_attention_heads=12, intermediate_size=64,
            max_position_embeddings=40, layer_norm_eps=1e-5, type_vocab_size=1,
        ))  # fmt: skip

    model_py.create_htsat_model = small_htsat
    model_py.RobertaModel = types.SimpleNamespace(from_pretrained=small_roberta)
    audio_cfg = model_py.CLAPAudioCfp(model_type="HTSAT", model_name="tiny", sample_rate=RATE, window_size=1024,
                                      hop_size=480, fmin=50, fmax=14000, class_num=5, mel_bins=64, clip_samples=RATE)  # fmt: skip
    text_cfg = model_py.CLAPTextCfg(context_length=77, vocab_size=300, width=768, heads=12, layers=1, model_type="roberta")

    def make(fusion: bool, ape: bool = False):
        options["ape"] = ape
        torch.manual_seed(7 + fusion)
        model = model_py.CLAP(embed_dim=16, audio_cfg=audio_cfg, text_cfg=text_cfg, enable_fusion=fusion,
                              fusion_type="aff_2d", joint_embed_shape=12)  # fmt: skip
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():  # non-trivial BatchNorm statistics and logit scale
            for name, buf in model.named_buffers():
                if name.endswith("running_mean"):
                    buf.copy_(torch.randn(buf.shape, generator=gen))
                elif name.endswith("running_var"):
                    buf.copy_(0.5 + torch.rand(buf.shape, generator=gen))
            model.logit_scale_a.fill_(2.5)
        return model.eval()

    return make


def _tokens(rng):
    ids = rng.integers(3, 300, (3, 12))
    ids[:, 0], mask = 0, np.ones_like(ids)
    ids[1, 7], ids[1, 8:], mask[1, 8:] = 2, 1, 0  # </s> then padding
    return ids, mask


def test_unfused_checkpoint_imports_completely_with_equal_embeddings(tmp_path, laion):
    import transformers

    ref = laion(False)
    state = ref.state_dict()
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "laion.pt")
    tensors = read_laion_checkpoint(tmp_path / "laion.pt")
    assert set(tensors) == set(state)  # "module." stripped
    cfg, model = load_laion_clap(tmp_path / "laion.pt", audio=AudioConfig(clip_seconds=1))
    h, t = cfg.htsat, cfg.text
    assert (h.embed_dim, h.depths, h.num_heads, h.window_size, h.spec_size, h.enable_fusion) == (8, (2, 1), (1, 2), 4, 128, False)
    assert (t.num_layers, t.hidden_size, t.vocab_size, t.max_position_embeddings, cfg.projection_dim) == (1, 768, 300, 40, 12)
    np.testing.assert_allclose(float(model.logit_scale.get_value()), 2.5)

    # Every key is accounted for: dropped ones are only the documented kinds, the rest land on HF names
    # that transformers' own ClapModel takes with no learned tensor missing or left over.
    mapped = laion_to_hf(tensors)
    dropped = {k for k in tensors if DROPPED.match(k)}
    assert sorted({_category(k) for k in dropped}) == ["attn_mask", "audio_transform", "head", "logmel_extractor",
                                                       "spectrogram_extractor", "text_transform", "tscam_conv"]  # fmt: skip
    n_qkv = sum(k.endswith((".attn.qkv.weight", ".attn.qkv.bias")) for k in tensors)
    assert len(mapped) == len(tensors) - len(dropped) + 2 * n_qkv
    hf = transformers.ClapModel(transformers.ClapConfig(**hf_config_from_clap(cfg)))
    result = hf.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in mapped.items()}, strict=False)
    buffers = {f"text_model.{b}" for b in TEXT_BUFFERS}  # HF's position/token-type id buffers: no learned state
    assert set(result.missing_keys) <= buffers and not result.unexpected_keys, result

    rng = np.random.default_rng(0)
    waveform = (0.1 * rng.standard_normal((2, RATE))).astype(np.float32)  # exactly one clip: no padding/cropping
    with torch.no_grad():
        want = ref.get_audio_embedding([{"waveform": torch.from_numpy(w)} for w in waveform]).numpy()
    lengths = jnp.full((2,), RATE, jnp.int32)
    np.testing.assert_allclose(np.asarray(model.embed_audio(jnp.asarray(waveform), lengths)), want, atol=1e-4)

    ids, mask = _tokens(rng)
    with torch.no_grad():
        want = ref.get_text_embedding({"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)}).numpy()
    got = model.embed_tokens(jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32))
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-4)

    clap = clapcomp.load(tmp_path / "laion.pt")  # the public entry point takes the .pt as is
    assert clap.tokenizer is None and clap.config.text == cfg.text
    np.testing.assert_allclose(clap.embed_tokens(ids, mask), want, atol=1e-4)


def test_fused_bare_state_dict_matches_on_the_same_mel(tmp_path, laion):
    ref = laion(True)
    torch.save(ref.state_dict(), tmp_path / "fused.pt")
    cfg, model = load_laion_clap(tmp_path / "fused.pt", audio=AudioConfig(clip_seconds=1))
    assert cfg.htsat.enable_fusion and cfg.audio.fusion
    rng = np.random.default_rng(1)
    mel = (rng.standard_normal((2, 4, 101, 64)) * 10 - 30).astype(np.float32)
    longer = np.array([True, False])
    with torch.no_grad():
        want = ref.get_audio_embedding(
            [{"mel_fusion": torch.from_numpy(m), "longer": torch.tensor(b)} for m, b in zip(mel, longer)]
        ).numpy()
    np.testing.assert_allclose(np.asarray(model.embed_mel(jnp.asarray(mel), jnp.asarray(longer))), want, atol=1e-4)


def test_absolute_position_embedding_imports_and_refuses_hf_export(tmp_path, laion):
    ref = laion(False, ape=True)
    with torch.no_grad():  # larger than its init so a misplaced grid cell would show
        ref.audio_branch.absolute_pos_embed.normal_(0, 1, generator=torch.Generator().manual_seed(3))
    torch.save(ref.state_dict(), tmp_path / "ape.pt")
    cfg, model = load_laion_clap(tmp_path / "ape.pt", audio=AudioConfig(clip_seconds=1))
    assert cfg.htsat.ape and model.audio_tower.absolute_pos_embed.get_value().shape == (1, 32, 32, 8)
    rng = np.random.default_rng(2)
    waveform = (0.1 * rng.standard_normal((2, RATE))).astype(np.float32)
    with torch.no_grad():
        want = ref.get_audio_embedding([{"waveform": torch.from_numpy(w)} for w in waveform]).numpy()
    got = model.embed_audio(jnp.asarray(waveform), jnp.full((2,), RATE, jnp.int32))
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-4)
    with pytest.raises(ValueError, match="no absolute position embedding"):
        hf_config_from_clap(cfg)


def test_unknown_keys_and_other_towers_are_named(laion):
    tensors = {k: v.numpy() for k, v in laion(False).state_dict().items()}
    with pytest.raises(ValueError, match=r"2 LAION-CLAP tensors have no mapping: \['audio_branch.extra.weight', 'mystery'\]"):
        laion_to_hf({**tensors, "mystery": np.zeros(1), "audio_branch.extra.weight": np.zeros(1)})
    with pytest.raises(ValueError, match="no 'text_branch.embeddings.word_embeddings.weight'"):
        laion_config({k: v for k, v in tensors.items() if not k.startswith("text_branch.")})


def _category(key: str) -> str:
    parts = key.split(".")
    if parts[0] != "audio_branch":
        return parts[0]
    return "attn_mask" if parts[-1] == "attn_mask" else parts[1]
