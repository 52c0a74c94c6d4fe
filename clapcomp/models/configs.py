"""Model configuration: plain frozen dataclasses, shared by every stage.

One `ClapConfig` describes a whole dual encoder: the audio front end (`AudioConfig`), the audio
tower (HTSAT, `HTSATConfig`, or a PANNs-style CNN, `CnnConfig`), the text tower (`TextConfig`) and
the projection heads. Configs are
JSON-serialisable (`to_dict` / `from_dict`) so checkpoints and exports carry them next to the
weights; the defaults are LAION-CLAP's HTSAT-tiny + RoBERTa-base.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from clapcomp.audio import AudioConfig


@dataclasses.dataclass(frozen=True)
class HTSATConfig:
    """HTSAT (Swin transformer over the folded mel image), LAION-CLAP / HF `ClapAudioConfig`."""

    n_mels: int = 64
    spec_size: int = 256
    patch_size: int = 4
    patch_stride: int = 4
    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (4, 8, 16, 32)
    window_size: int = 8
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_rate: float = 0.0  # hidden dropout
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.1
    layer_norm_eps: float = 1e-5
    enable_fusion: bool = False
    aff_block_r: int = 4
    spec_augment: bool = True  # time/freq stripe masking, training only
    ape: bool = False  # LAION-CLAP / Swin absolute position embedding added to the patch tokens
    time_segments: int = 1  # pooled output: mean of each of this many time spans, concatenated (1 = LAION/HF)
    remat: str = "none"  # training: rematerialise each Swin block (clapcomp.models.remat.POLICIES)

    @property
    def hidden_size(self) -> int:
        """Width of the pooled output: embed_dim * 2 ** (stages - 1) (768 for HTSAT-tiny)."""
        return self.embed_dim * 2 ** (len(self.depths) - 1)

    @property
    def pooled_size(self) -> int:
        """Width of `HTSAT.__call__`'s output, what the audio projection takes: hidden_size * time_segments."""
        return self.hidden_size * self.time_segments


@dataclasses.dataclass(frozen=True)
class CnnConfig:
    """PANNs-style CNN audio tower (`models/cnn.py`); defaults: LAION-CLAP's `PANN-10` (Cnn10).

    Presets in `CNN_PRESETS`: Cnn6 / Cnn10 / Cnn14 (PANNs as LAION-CLAP builds them) and aisfx."""

    n_mels: int = 64
    channels: tuple[int, ...] = (64, 128, 256, 512, 1024)  # one conv block per entry
    kernel_size: int = 3  # 3: two 3x3 convs per block (Cnn10 / Cnn14); 5: one 5x5 conv (Cnn6)
    pool: str = "avg"  # 2x2 pooling after each block: "avg" (PANNs) | "max" (aisfx)
    pool_last: bool = True  # False: the last block does not pool (Cnn14, aisfx)
    input_norm: bool = True  # bn0: BatchNorm over the mel bins before the first block (PANNs)
    head: str = "fc1"  # "fc1": relu(fc1(max_t + mean_t)) (PANNs) | "max": max over time (aisfx)
    dropout: float = 0.2  # after every block (training); 0.5 around fc1 as PANNs
    spec_augment: bool = True  # time/freq stripe masking, training only
    time_segments: int = 1  # pooled output: the head applied to each of this many time spans, concatenated

    @property
    def hidden_size(self) -> int:
        return self.channels[-1]

    @property
    def pooled_size(self) -> int:
        """Width of `Cnn.__call__`'s output, what the audio projection takes: hidden_size * time_segments."""
        return self.hidden_size * self.time_segments


CNN_PRESETS = {
    "Cnn6": CnnConfig(channels=(64, 128, 256, 512), kernel_size=5),
    "Cnn10": CnnConfig(),
    "Cnn14": CnnConfig(channels=(64, 128, 256, 512, 1024, 2048), pool_last=False),
    "aisfx": CnnConfig(
        n_mels=96, channels=(64, 128, 256, 512), pool="max", pool_last=False, input_norm=False, head="max"
    ),
}


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """RoBERTa / BERT-family encoder. `pooling` says how a sentence vector is made."""

    family: str = "roberta"  # "roberta" | "bert"
    vocab_size: int = 50265
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    max_position_embeddings: int = 514
    type_vocab_size: int = 1
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 1
    dropout: float = 0.1
    attn_dropout: float = 0.1
    pooling: str = "pooler"  # "pooler" (dense+tanh on token 0, CLAP) | "mean" | "cls"
    max_length: int = 77
    remat: str = "none"  # training: rematerialise each layer (clapcomp.models.remat.POLICIES)

    @property
    def max_positions(self) -> int:
        """The longest token sequence the position table holds (RoBERTa's positions start at pad + 1)."""
        return self.max_position_embeddings - (self.pad_token_id + 1 if self.family == "roberta" else 0)


@dataclasses.dataclass(frozen=True)
class ClapConfig:
    """The dual encoder: towers + projection MLPs (hidden -> D -> D, ReLU) + logit scale."""

    audio: AudioConfig = AudioConfig()  # noqa: RUF009 (frozen, shared safely, like the towers below)
    htsat: HTSATConfig = HTSATConfig()
    text: TextConfig = TextConfig()
    audio_tower: str = "htsat"  # "htsat" (uses `htsat`) | "cnn" (uses `cnn`)
    cnn: CnnConfig = CnnConfig()
    projection_dim: int = 512
    logit_scale_init: float = math.log(1 / 0.07)
    dtype: str = "float32"  # compute dtype: "float32" | "bfloat16"; parameters stay float32

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClapConfig:
        d = dict(d)
        towers = {"audio": AudioConfig, "htsat": HTSATConfig, "text": TextConfig, "cnn": CnnConfig}
        for name, klass in towers.items():
            d[name] = _build(klass, d.get(name, {}))
        return _build(cls, d)


def check_geometry(cfg: ClapConfig) -> None:
    """The front end must fit the audio tower: a ValueError naming the fields and values that would fit."""
    a, h = cfg.audio, cfg.htsat
    if cfg.audio_tower == "cnn":
        _check_cnn_geometry(cfg)
        return
    if a.n_mels != h.n_mels:
        raise ValueError(f"model.audio.n_mels={a.n_mels} but model.htsat.n_mels={h.n_mels}: HTSAT normalises each of "
                         f"its {h.n_mels} mel bins; set --config.model.audio.n_mels={h.n_mels}")  # fmt: skip
    if a.fusion != h.enable_fusion:
        raise ValueError(f"model.audio.fusion={a.fusion} but model.htsat.enable_fusion={h.enable_fusion}: "
                         f"set --config.model.audio.fusion={h.enable_fusion}")  # fmt: skip
    _check_front_and_text(cfg)
    width = h.spec_size * (h.spec_size // h.n_mels)  # frames HTSAT folds into its spec_size x spec_size image
    if a.n_frames > width:
        hop = next(k for k in range(a.hop_length, a.clip_samples + 2) if a.clip_samples // k + 1 <= width)
        seconds = math.floor((width * a.hop_length - 1) / a.sample_rate * 100) / 100
        raise ValueError(
            f"model.audio.clip_seconds={a.clip_seconds} at sample_rate={a.sample_rate} with hop_length={a.hop_length} "
            f"gives {a.n_frames} mel frames, but HTSAT (model.htsat.spec_size={h.spec_size}, n_mels={h.n_mels}) takes "
            f"at most {width} (spec_size * (spec_size // n_mels)). Fit them with one of: "
            f"--config.model.audio.clip_seconds={seconds}; --config.model.audio.hop_length={hop} "
            f"--config.model.audio.n_fft={max(a.n_fft, 1 << (hop - 1).bit_length())}; or, for a model trained from "
            f"scratch, a larger model.htsat.spec_size"
        )


def _check_front_and_text(cfg: ClapConfig) -> None:
    """Either tower: STFT hop within a window, captions within the text tower's position table."""
    a, t = cfg.audio, cfg.text
    if a.hop_length > a.n_fft:
        raise ValueError(f"model.audio.hop_length={a.hop_length} > n_fft={a.n_fft}: samples between windows would be "
                         f"skipped; set --config.model.audio.n_fft={1 << (a.hop_length - 1).bit_length()}")  # fmt: skip
    if t.max_length > t.max_positions:
        raise ValueError(f"model.text.max_length={t.max_length} exceeds the {t.family} text tower's position table "
                         f"(max_position_embeddings={t.max_position_embeddings}); set "
                         f"--config.model.text.max_length={t.max_positions} or less")  # fmt: skip


def _check_cnn_geometry(cfg: ClapConfig) -> None:
    """The CNN tower: one mel channel of cnn.n_mels bins, and a time map of at least time_segments steps."""
    a, c = cfg.audio, cfg.cnn
    if a.n_mels != c.n_mels:
        raise ValueError(f"model.audio.n_mels={a.n_mels} but model.cnn.n_mels={c.n_mels}: set "
                         f"--config.model.audio.n_mels={c.n_mels}")  # fmt: skip
    if a.fusion:
        raise ValueError("model.audio.fusion=True, but the CNN audio tower takes one mel channel: set "
                         "--config.model.audio.fusion=False")  # fmt: skip
    _check_front_and_text(cfg)
    steps = a.n_frames // 2 ** (len(c.channels) - (0 if c.pool_last else 1))
    if steps < c.time_segments:
        raise ValueError(f"model.audio.clip_seconds={a.clip_seconds} gives the CNN a time map of {steps} steps, fewer "
                         f"than model.cnn.time_segments={c.time_segments}: use longer clips or fewer time_segments")  # fmt: skip


def _build(klass, values: dict[str, Any]):
    """klass(**values), with JSON lists turned back into tuples and unknown keys refused."""
    if isinstance(values, klass):
        return values
    unknown = set(values) - {f.name for f in dataclasses.fields(klass)}
    if unknown:
        raise ValueError(f"unknown {klass.__name__} fields {sorted(unknown)}; is the config from a newer clapcomp?")
    return klass(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
