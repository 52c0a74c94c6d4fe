"""HTSAT audio tower: a Swin transformer over the log-mel folded into a square image.

Numerics follow HF `ClapAudioModel` (pooler_output) exactly in eval mode:
mel [B, C, F, M] -> BatchNorm over mel bins -> (train: SpecAugment) -> bicubic resize of time to
spec_size * freq_ratio -> fold into [B, spec_size, spec_size, C] -> patch embedding (+ AFF fusion of
the 3 local chunks for `is_longer` rows when `enable_fusion`) (+ the absolute position embedding when `ape`,
LAION-CLAP's option; HF has none) -> Swin stages (window attention with
relative position bias, shifted windows, patch merging) -> LayerNorm -> mean over tokens.

Feature maps are kept channels-last (`[B, H, W, C]`); H is the folded frequency axis, W time.
Training randomness (SpecAugment, dropout, drop-path) comes only from the `key` argument (`models.layers`).
Drop-path is applied to both residual branches as in LAION-CLAP / the Swin paper (HF applies it only to
the attention branch; this only matters in training).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from clapcomp.audio import spec_augment
from clapcomp.models import remat
from clapcomp.models.configs import HTSATConfig
from clapcomp.models.layers import TORCH_EPS, batch_norm, dropout, split

_MASK_VALUE = -100.0  # HF / Swin shifted-window mask value


# ----------------------------------------------------------------------------- pure helpers
@functools.cache
def bicubic_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch `interpolate(mode="bicubic", align_corners=True)` along one axis as 4 taps per output.

    Returns (index [n_out, 4] int32 into the input, weight [n_out, 4] float32); A = -0.75, clamped
    border indices, exactly like `upsample_bicubic2d`.
    """
    a = -0.75
    scale = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    src = scale * np.arange(n_out, dtype=np.float64)
    x0 = np.floor(src)
    t = src - x0

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    weight = np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=1)
    index = np.clip(x0[:, None].astype(np.int64) + np.arange(-1, 3)[None, :], 0, n_in - 1)
    return index.astype(np.int32), weight.astype(np.float32)


def _resize_axis(x: jax.Array, axis: int, n_out: int) -> jax.Array:
    """Bicubic (align_corners) resize of `x` along `axis` to `n_out` samples."""
    index, weight = bicubic_taps(x.shape[axis], n_out)
    taps = jnp.take(x, jnp.asarray(index), axis=axis)  # axis -> (n_out, 4)
    weight = jnp.asarray(weight).reshape(weight.shape + (1,) * (x.ndim - axis - 1))
    return jnp.sum(taps * weight, axis=axis + 1)


@functools.cache
def relative_position_index(window: int) -> np.ndarray:
    """[window**2, window**2] index into the (2w-1)**2 relative position bias table (HF/Swin order)."""
    coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij")).reshape(2, -1)
    rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + (window - 1)
    return rel[..., 0] * (2 * window - 1) + rel[..., 1]


@functools.cache
def shifted_window_mask(height: int, width: int, window: int, shift: int) -> np.ndarray:
    """[num_windows, N, N] additive mask (0 / -100) keeping attention inside cyclic-shift regions."""
    h = np.arange(height)
    w = np.arange(width)
    h_region = (h >= height - window).astype(np.int64) + (h >= height - shift)
    w_region = (w >= width - window).astype(np.int64) + (w >= width - shift)
    region = (h_region[:, None] * 3 + w_region[None, :])[None, :, :, None]
    ids = window_partition(region, window)[0, :, :, 0]  # [nW, N]
    return np.where(ids[:, None, :] != ids[:, :, None], _MASK_VALUE, 0.0).astype(np.float32)


def window_partition(x, window: int):
    """[B, H, W, C] -> [B, nW, window*window, C], windows in row-major (h, w) order."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // window, window, w // window, window, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // window) * (w // window), window * window, c)


def window_reverse(windows: jax.Array, window: int, height: int, width: int) -> jax.Array:
    """[B, nW, window*window, C] -> [B, H, W, C] (inverse of `window_partition`)."""
    b, _, _, c = windows.shape
    x = windows.reshape(b, height // window, width // window, window, window, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, height, width, c)


def window_attention(q, k, v, bias, *, dropout_rate: float = 0.0, key=None):
    """Scaled dot-product attention inside windows.

    q, k, v [B, nW, N, heads, d]; bias broadcastable to [B, nW, heads, N, N] (relative position bias
    plus shift mask). Softmax in float32. Dropout on the probabilities when `key` is given.
    Returns [B, nW, N, heads, d] in q.dtype. Heads move ahead of tokens once, so both products are plain
    batched matmuls (on XLA:CPU ~30% faster than the einsums that transpose per product).
    """
    q, k, v = (t.transpose(0, 1, 3, 2, 4) for t in (q, k, v))  # [B, nW, heads, N, d]
    scores = jnp.matmul(q, k.swapaxes(-1, -2), preferred_element_type=jnp.float32)
    probs = jax.nn.softmax(scores / math.sqrt(q.shape[-1]) + bias, axis=-1)
    probs = dropout(probs, dropout_rate, key)
    return jnp.matmul(probs.astype(v.dtype), v).transpose(0, 1, 3, 2, 4)


# ----------------------------------------------------------------------------- modules
class AFF(nnx.Module):
    """Attentional feature fusion (2-D): sigmoid(local(x+r) + global(x+r)) gates x against r."""

    def __init__(self, channels: int, ratio: int, *, dtype, rngs: nnx.Rngs):
        inter = int(channels // ratio)
        conv = functools.partial(nnx.Conv, kernel_size=(1, 1), dtype=dtype, rngs=rngs)
        bn = functools.partial(batch_norm, dtype=dtype, rngs=rngs)
        self.local_conv1, self.local_bn1 = conv(channels, inter), bn(inter)
        self.local_conv2, self.local_bn2 = conv(inter, channels), bn(channels)
        self.global_conv1, self.global_bn1 = conv(channels, inter), bn(inter)
        self.global_conv2, self.global_bn2 = conv(inter, channels), bn(channels)

    def __call__(self, x, residual, rows, *, train: bool):
        """x, residual [B, H, W, C]; rows [B] bool: the rows whose batch statistics count in training."""
        bns = (self.local_bn1, self.local_bn2, self.global_bn1, self.global_bn2)
        any_row = jnp.any(rows)
        mask = jnp.where(any_row, rows, True)[:, None, None, None]  # never empty: keeps stats finite
        saved = [(bn.mean[...], bn.var[...]) for bn in bns] if train else None

        def norm(bn, h):
            return bn(h, use_running_average=not train, mask=mask if train else None)

        both = x + residual
        local = norm(self.local_bn2, self.local_conv2(jax.nn.relu(norm(self.local_bn1, self.local_conv1(both)))))
        pooled = jnp.mean(both, axis=(1, 2), keepdims=True)
        glob = norm(self.global_bn2, self.global_conv2(jax.nn.relu(norm(self.global_bn1, self.global_conv1(pooled)))))
        if train:  # a batch without any longer row must not move the running statistics
            for bn, (mean, var) in zip(bns, saved, strict=True):
                bn.mean[...] = jnp.where(any_row, bn.mean[...], mean)
                bn.var[...] = jnp.where(any_row, bn.var[...], var)
        gate = jax.nn.sigmoid(local + glob)
        return 2 * x * gate + 2 * residual * (1 - gate)


class PatchEmbed(nnx.Module):
    """Folded mel image [B, S, S, C] -> patch tokens [B, S/stride, S/stride, E] (LayerNorm'ed)."""

    def __init__(self, cfg: HTSATConfig, *, dtype, rngs: nnx.Rngs):
        p, s = cfg.patch_size, cfg.patch_stride
        pad = (p - s) // 2
        self.fusion = cfg.enable_fusion
        self.proj = nnx.Conv(1, cfg.embed_dim, (p, p), strides=(s, s), padding=[(pad, pad)] * 2, dtype=dtype, rngs=rngs)
        self.norm = nnx.LayerNorm(cfg.embed_dim, epsilon=TORCH_EPS, dtype=dtype, rngs=rngs)
        if self.fusion:
            self.mel_conv = nnx.Conv(
                1, cfg.embed_dim, (p, 3 * p), strides=(s, 3 * s), padding=[(pad, pad)] * 2, dtype=dtype, rngs=rngs
            )
            self.aff = AFF(cfg.embed_dim, cfg.aff_block_r, dtype=dtype, rngs=rngs)

    def __call__(self, img, is_longer, *, train: bool):
        tokens = self.proj(img[..., :1])  # the global view is channel 0
        if self.fusion:
            b, size, _, c = img.shape
            local = img[..., 1:].transpose(0, 3, 1, 2).reshape(b * (c - 1), size, size, 1)
            local = self.mel_conv(local)  # [B*3, h, w', E]: the 3 chunks side by side along time
            _, h, w_local, e = local.shape
            local = local.reshape(b, c - 1, h, w_local, e).transpose(0, 2, 1, 3, 4).reshape(b, h, -1, e)
            width = tokens.shape[2]
            local = jnp.pad(local, ((0, 0), (0, 0), (0, max(width - local.shape[2], 0)), (0, 0)))[:, :, :width]
            fused = self.aff(tokens, local, is_longer, train=train)
            tokens = jnp.where(is_longer[:, None, None, None], fused, tokens)
        return self.norm(tokens)


class SwinBlock(nnx.Module):
    """(Shifted-)window attention + MLP, pre-norm residuals. x [B, H, W, C] -> [B, H, W, C]."""

    def __init__(
        self, cfg: HTSATConfig, dim: int, heads: int, resolution, shift: bool, path_rate: float, *, dtype, rngs
    ):
        self.resolution = tuple(resolution)
        self.window = min(cfg.window_size, *resolution)
        self.shift = cfg.window_size // 2 if shift and min(resolution) > cfg.window_size else 0
        self.heads = heads
        self.attn_drop, self.drop, self.path_rate = cfg.attn_drop_rate, cfg.drop_rate, path_rate
        dense = functools.partial(nnx.Linear, dtype=dtype, rngs=rngs)
        norm = functools.partial(nnx.LayerNorm, epsilon=cfg.layer_norm_eps, dtype=dtype, rngs=rngs)
        self.norm1 = norm(dim)
        self.query = dense(dim, dim, use_bias=cfg.qkv_bias)
        self.key = dense(dim, dim, use_bias=cfg.qkv_bias)
        self.value = dense(dim, dim, use_bias=cfg.qkv_bias)
        table = (2 * self.window - 1) ** 2
        self.rel_bias = nnx.Param(nnx.initializers.truncated_normal(0.02)(rngs.params(), (table, heads), jnp.float32))
        self.out = dense(dim, dim)
        self.norm2 = norm(dim)
        self.fc1 = dense(dim, int(cfg.mlp_ratio * dim))
        self.fc2 = dense(int(cfg.mlp_ratio * dim), dim)

    def _attend(self, x, key):
        b, h, w, c = x.shape
        win, shift = self.window, self.shift
        x = jnp.pad(x, ((0, 0), (0, -h % win), (0, -w % win), (0, 0)))
        hp, wp = x.shape[1:3]
        if shift:
            x = jnp.roll(x, (-shift, -shift), axis=(1, 2))
        windows = window_partition(x, win)  # [B, nW, N, C]
        per_head = windows.shape[:3] + (self.heads, c // self.heads)
        q, k, v = (proj(windows).reshape(per_head) for proj in (self.query, self.key, self.value))
        n = win * win
        bias = self.rel_bias[...][relative_position_index(win).reshape(-1)].reshape(n, n, self.heads)
        bias = bias.transpose(2, 0, 1)[None, None]  # [1, 1, heads, N, N]
        if shift:
            bias = bias + jnp.asarray(shifted_window_mask(hp, wp, win, shift))[None, :, None]
        k_probs, k_out = split(key, 2)
        out = window_attention(q, k, v, bias, dropout_rate=self.attn_drop, key=k_probs)
        out = dropout(self.out(out.reshape(windows.shape)), self.attn_drop, k_out)
        x = window_reverse(out, win, hp, wp)
        if shift:
            x = jnp.roll(x, (shift, shift), axis=(1, 2))
        return x[:, :h, :w]

    def __call__(self, x, *, key=None):
        k_attn, k_mlp, k_path1, k_path2 = split(key, 4)
        x = x + dropout(self._attend(self.norm1(x), k_attn), self.path_rate, k_path1, per_sample=True)
        h = self.fc2(jax.nn.gelu(self.fc1(self.norm2(x)), approximate=False))
        return x + dropout(dropout(h, self.drop, k_mlp), self.path_rate, k_path2, per_sample=True)


class PatchMerging(nnx.Module):
    """[B, H, W, C] -> [B, ceil(H/2), ceil(W/2), 2C]: 2x2 neighbours concatenated (HF order), LN, linear."""

    def __init__(self, dim: int, *, dtype, rngs):
        self.norm = nnx.LayerNorm(4 * dim, epsilon=TORCH_EPS, dtype=dtype, rngs=rngs)
        self.reduction = nnx.Linear(4 * dim, 2 * dim, use_bias=False, dtype=dtype, rngs=rngs)

    def __call__(self, x):
        b, h, w, c = x.shape
        x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
        h2, w2 = x.shape[1] // 2, x.shape[2] // 2
        # [B, h2, row, w2, col, C] -> [B, h2, w2, col, row, C]: channel block order (r0c0, r1c0, r0c1, r1c1)
        x = x.reshape(b, h2, 2, w2, 2, c).transpose(0, 1, 3, 4, 2, 5).reshape(b, h2, w2, 4 * c)
        return self.reduction(self.norm(x))


class SwinStage(nnx.Module):
    def __init__(self, cfg: HTSATConfig, index: int, resolution, path_rates, *, dtype, rngs):
        dim = cfg.embed_dim * 2**index
        self.blocks = nnx.List(
            [
                SwinBlock(cfg, dim, cfg.num_heads[index], resolution, i % 2 == 1, path_rates[i], dtype=dtype, rngs=rngs)
                for i in range(cfg.depths[index])
            ]
        )
        last = index == len(cfg.depths) - 1
        self.downsample = None if last else PatchMerging(dim, dtype=dtype, rngs=rngs)
        self.remat = cfg.remat

    def __call__(self, x, *, key=None):
        call = remat.blockwise(lambda block, x, k: block(x, key=k), self.remat, "htsat.remat")
        for block, k in zip(self.blocks, split(key, len(self.blocks)), strict=True):
            x = call(block, x, k)
        return x if self.downsample is None else self.downsample(x)


class HTSAT(nnx.Module):
    """The audio tower. `__call__(mel [B, C, F, M], is_longer [B] bool) -> pooled [B, cfg.pooled_size]` f32."""

    def __init__(self, cfg: HTSATConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        if cfg.spec_size % cfg.n_mels:
            raise ValueError(f"spec_size {cfg.spec_size} must be a multiple of n_mels {cfg.n_mels}")
        if len(cfg.num_heads) != len(cfg.depths):
            raise ValueError(f"num_heads {cfg.num_heads} needs one entry per stage of depths {cfg.depths}")
        self.cfg = cfg
        self.dtype = dtype
        self.freq_ratio = cfg.spec_size // cfg.n_mels
        grid = (cfg.spec_size + 2 * ((cfg.patch_size - cfg.patch_stride) // 2) - cfg.patch_size) // cfg.patch_stride + 1
        resolutions = [(math.ceil(grid / 2**i),) * 2 for i in range(len(cfg.depths))]
        last = resolutions[-1][0]
        if cfg.time_segments > 1 and (last % self.freq_ratio or last * self.freq_ratio % cfg.time_segments):
            raise ValueError(
                f"time_segments={cfg.time_segments} must divide the {last * self.freq_ratio} time steps of the last "
                f"{last}x{last} grid unfolded by freq_ratio {self.freq_ratio} (which must divide {last})"
            )
        if last < cfg.window_size:
            raise ValueError(
                f"the last stage sees a {last}x{last} grid, smaller than window_size "
                f"{cfg.window_size}: use fewer stages, a smaller window or a larger spec_size"
            )
        self.bn0 = batch_norm(cfg.n_mels, dtype=jnp.float32, rngs=rngs)
        self.patch_embed = PatchEmbed(cfg, dtype=dtype, rngs=rngs)
        if cfg.ape:  # one learned vector per grid cell: tells every token where it sits in the folded image
            init = nnx.initializers.truncated_normal(0.02)
            self.absolute_pos_embed = nnx.Param(init(rngs.params(), (1, grid, grid, cfg.embed_dim), jnp.float32))
        rates = np.linspace(0.0, cfg.drop_path_rate, sum(cfg.depths)).tolist()
        starts = np.cumsum((0,) + tuple(cfg.depths)).tolist()
        self.stages = nnx.List(
            [
                SwinStage(cfg, i, resolutions[i], rates[starts[i] : starts[i + 1]], dtype=dtype, rngs=rngs)
                for i in range(len(cfg.depths))
            ]
        )
        self.norm = nnx.LayerNorm(cfg.hidden_size, epsilon=TORCH_EPS, dtype=jnp.float32, rngs=rngs)

    def to_image(self, mel: jax.Array) -> jax.Array:
        """Normalised mel [B, C, F, M] -> folded image [B, spec_size, spec_size, C] (HF reshape_mel2img)."""
        b, c, frames, mels = mel.shape
        width, height = self.cfg.spec_size * self.freq_ratio, self.cfg.spec_size // self.freq_ratio
        if frames > width or mels > height:
            raise ValueError(f"mel of {frames} frames x {mels} bins does not fit the {width}x{height} HTSAT input")
        if frames < width:
            mel = _resize_axis(mel, 2, width)
        if mels < height:
            mel = _resize_axis(mel, 3, height)
        r = self.freq_ratio
        img = mel.reshape(b, c * r, width // r, height).transpose(0, 1, 3, 2).reshape(b, c, height * r, width // r)
        return img.transpose(0, 2, 3, 1)

    def __call__(self, mel, is_longer, *, train: bool = False, key=None):
        """mel [B, C, F, M] f32 (C = 4 fused, 1 unfused), is_longer [B] bool -> [B, pooled_size] f32.

        time_segments = 1: the mean of `tokens(...)` over the grid, HF `ClapAudioModel(...).pooler_output`.
        S > 1: the grid unfolded into LAION's time sequence [B, T, C] (`fine_grained_latent_output`: mean
        over each chunk's frequency rows, chunks one after another) cut into S equal spans, each
        averaged: [B, S * C], so the embedding keeps which sound came first.
        """
        tokens = self.tokens(mel, is_longer, train=train, key=key)
        s = self.cfg.time_segments
        if s == 1:
            return jnp.mean(tokens, axis=(1, 2))
        b, h, w, c = tokens.shape
        seq = jnp.mean(tokens.reshape(b, self.freq_ratio, h // self.freq_ratio, w, c), axis=2).reshape(b, -1, c)
        return jnp.mean(seq.reshape(b, s, -1, c), axis=2).reshape(b, s * c)

    def tokens(self, mel, is_longer, *, train: bool = False, key=None):
        """Final LayerNorm'ed feature map [B, H', W', hidden_size] f32 (H' folded frequency, W' time)."""
        cfg = self.cfg
        want = 4 if cfg.enable_fusion else 1
        if mel.ndim != 4 or mel.shape[1] != want or mel.shape[3] != cfg.n_mels:
            raise ValueError(
                f"HTSAT expects mel [B, {want}, frames, {cfg.n_mels}] (enable_fusion={cfg.enable_fusion}), got "
                f"{tuple(mel.shape)}; check that AudioConfig.fusion matches HTSATConfig.enable_fusion"
            )
        if train and key is None:
            raise ValueError("HTSAT(train=True) needs a PRNG key for SpecAugment, dropout and drop-path")
        k_spec, k_stages = split(key if train else None, 2)
        x = self.bn0(jnp.asarray(mel, jnp.float32), use_running_average=not train)
        if train and cfg.spec_augment:
            x = spec_augment(x, k_spec)
        x = self.to_image(x).astype(self.dtype)
        x = self.patch_embed(x, jnp.asarray(is_longer, bool).reshape(-1), train=train)
        if cfg.ape:
            x = x + self.absolute_pos_embed[...].astype(x.dtype)
        for stage, k in zip(self.stages, split(k_stages, len(self.stages)), strict=True):
            x = stage(x, key=k)
        return self.norm(x.astype(jnp.float32))
