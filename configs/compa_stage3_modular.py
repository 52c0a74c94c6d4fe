"""CompA stage 3: modular contrastive learning on composed audio (P positives, Q negatives).

Data from `clapcomp data compose` (records with `positives` and `negatives`); weights from the
stage-2 workdir (its tokenizer.json is in it). Run:
  clapcomp train --config configs/compa_stage3_modular.py --workdir runs/compa3 \
      --config.init.path=runs/compa2 --config.data.train=/data/composed/train
Arguments: `dtype` = float32 | bfloat16 (a bare `bf16` also works).
"""

from clapcomp.train.config import defaults, parse_arg


def get_config(arg=None):
    arg = parse_arg("dtype=bfloat16" if arg == "bf16" else arg, dtype="float32")
    c = defaults()
    c.seed = 3407
    c.model.dtype = arg.dtype
    c.loss = "modular"
    c.data.update(num_negatives=5, num_positives=5)
    c.total_steps = 20_000
    c.eval_every = 2000
    return c
