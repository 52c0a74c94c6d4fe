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


@dataclasses.dataclass(frozen=True)
class AudioConfig:
    """Waveform -> log-mel front end (HF `ClapFeatureExtractor` semantics)."""

    sample_rate: int = 48_000
    n_fft: int = 1024  # also the Hann window length
    hop_length: int = 480
    n_mels: int = 64
    f_min: float = 50.0
    f_max: float = 14_000.0
    clip_seconds: float = 10.0  # 480,000 samples -> 1001 frames
    fusion: bool = False  # True: global + 3 local chunks (`aff_2d`); False: one repeat-padded mel
    # Front-end variants; the defaults are HF / LAION-CLAP (HTSAT and PANN alike). aisfx: AISFX_AUDIO below.
    mel_scale: str = "auto"  # "auto": htk if fusion else slaney (HF) | "slaney" | "htk"
    mel_norm: str = "auto"  # "auto": slaney area with the slaney scale, none with htk | "slaney" | "none" | "unit_sum"
    mel_weighting: str = "hz"  # filter triangles linear in "hz" (HF, librosa) or in "mel" (Essentia's "warping")
    window: str = "periodic"  # Hann window: "periodic" (HF, librosa, torchlibrosa) | "symmetric" (Essentia)
    pad_mode: str = "reflect"  # centre padding of the STFT: "reflect" (HF, torchlibrosa) | "constant" (zeros)
    compression: str = "db"  # "db": 10 log10(max(p, 1e-10)) | "log10_1e4": log10(1e4 p + 1) (Essentia shift_scale_log)
    peak_normalize: bool = False  # divide each clip by its largest |sample| before the STFT
    feature_range: tuple[float, float] = (0.0, 1.0)  # (lo, hi): features -> (x - lo) / (hi - lo)

    @property
    def clip_samples(self) -> int:
        return int(round(self.clip_seconds * self.sample_rate))

    @property
    def n_frames(self) -> int:
        return self.clip_samples // self.hop_length + 1


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
# The front end aisfx's CNN was trained on, its Essentia spectrogram (44.1 kHz, 2048 / 1024 frames centred
# with zeros, symmetric Hann, 96 HTK mels to 22.05 kHz, triangles in mel, unit-sum, log10(1e4 p + 1), min-max
# by its training range); its clips are 100 frames (2.3 s). aisfx's librosa path instead peak-normalises the
# audio and uses a periodic window with Hz triangles: replace(AISFX_AUDIO, peak_normalize=True,
# window="periodic", mel_weighting="hz").
AISFX_AUDIO = AudioConfig(
    sample_rate=44_100, n_fft=2048, hop_length=1024, n_mels=96, f_min=0.0, f_max=22_050.0,
    clip_seconds=99 * 1024 / 44_100, mel_scale="htk", mel_norm="unit_sum", mel_weighting="mel", window="symmetric",
    pad_mode="constant", compression="log10_1e4", feature_range=(0.0, 9.457798957824707),
)  # fmt: skip


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


@dataclasses.dataclass(frozen=True)
class ClapConfig:
    """The dual encoder: towers + projection MLPs (hidden -> D -> D, ReLU) + logit scale."""

    audio: AudioConfig = AudioConfig()
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
    def from_dict(cls, d: dict[str, Any]) -> "ClapConfig":
        d = dict(d)
        towers = {"audio": AudioConfig, "htsat": HTSATConfig, "text": TextConfig, "cnn": CnnConfig}
        for name, klass in towers.items():
            d[name] = _build(klass, d.get(name, {}))
        return _build(cls, d)


def _build(klass, values: dict[str, Any]):
    """klass(**values), with JSON lists turned back into tuples and unknown keys refused."""
    if isinstance(values, klass):
        return values
    unknown = set(values) - {f.name for f in dataclasses.fields(klass)}
    if unknown:
        raise ValueError(f"unknown {klass.__name__} fields {sorted(unknown)}; is the config from a newer clapcomp?")
    return klass(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
