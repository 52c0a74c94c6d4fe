"""CompA stage 3: modular contrastive learning on composed audio (P positives, Q negatives).

Data from `clapcomp data compose` (records with `positives` and `negatives`). Run:
  clapcomp train --config configs/compa_stage3_modular.py --workdir runs/compa3 \
      --config.init.path=runs/compa2 --config.data.train=/data/composed/train
"""

import math

import ml_collections


def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.seed = 3407
    c.model = ml_collections.ConfigDict(
        dict(
            audio=dict(sample_rate=48_000, clip_seconds=10.0, fusion=False),
            htsat=dict(),
            text=dict(),
            projection_dim=512,
            logit_scale_init=math.log(1 / 0.07),
            dtype="bfloat16" if arg == "bf16" else "float32",
        )
    )
    c.init = ml_collections.ConfigDict(dict(kind="checkpoint", path=""))  # the stage-2 workdir
    c.tokenizer = ""
    c.data = ml_collections.ConfigDict(dict(train="", batch_size=256, num_negatives=5, num_positives=5, workers=8))
    c.loss = "modular"
    c.optimizer = ml_collections.ConfigDict(
        dict(lr=1e-4, warmup_steps=1600, weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-8, grad_clip=1.0)
    )
    c.freeze = ""
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))
    c.fsdp_text = False
    c.total_steps = 20_000
    c.log_every = 50
    c.ckpt_every = 1000
    c.eval_every = 2000
    c.keep_checkpoints = 3
    c.evaluators = []
    c.max_consecutive_nonfinite = 20
    c.preempt_check_every = 10  # multi-process: steps between the collective preemption checks
    return c
