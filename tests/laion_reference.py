"""LAION-CLAP reference models built by the `laion-clap` package's own class (random init), offline.

Test-side stand-ins replace what its import chain pulls in but the model does not need
(torchvision's FrozenBatchNorm2d, h5py, the package `__init__`s that import training code) and
librosa, which torchlibrosa uses for its window and mel filters (the stand-ins compute the same:
scipy's Hann window, HF's slaney mel filter bank = librosa's). Its `create_htsat_model` and
`RobertaModel.from_pretrained` are patched to build a small HTSAT and a 1-layer RoBERTa instead of
downloading roberta-base. Nothing in clapcomp is patched.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

import numpy as np
import torch

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


def laion_builder():
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
    text_cfg = model_py.CLAPTextCfg(
        context_length=77, vocab_size=300, width=768, heads=12, layers=1, model_type="roberta"
    )

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
