"""CompA stage 2: fine-tune a pretrained CLAP with K = 3 composition-aware hard negatives.

  clapcomp train --config configs/compa_stage2.py --workdir runs/compa2 \
      --config.init.path=/models/clap-htsat-unfused --config.data.train=/data/compa/train

`init.path`: an HF ClapModel dir (laion/clap-htsat-unfused or -fused, saved with save_pretrained),
a LAION-CLAP .pt (then also --config.tokenizer=roberta-base/tokenizer.json), or a clapcomp workdir;
its kind is detected. The architecture comes from the checkpoint; dropout, drop-path, SpecAugment,
the loss, the optimizer and the data from this file. Arguments: `dtype` = float32 | bfloat16
(`configs/compa_stage2.py:dtype=bfloat16`; a bare `bf16` also works).
The hard negatives of each audio enter only that audio's audio->text softmax (clapcomp.losses).
"""

from clapcomp.train.config import defaults, parse_arg


def get_config(arg=None):
    arg = parse_arg("dtype=bfloat16" if arg == "bf16" else arg, dtype="float32")
    c = defaults()
    c.seed = 3407
    c.model.dtype = arg.dtype
    c.loss = "compa"
    c.data.num_negatives = 3
    c.optimizer.warmup_steps = 1600
    c.total_steps = 20_000
    c.eval_every = 2000
    return c
