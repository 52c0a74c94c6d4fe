"""LAION-CLAP pretraining recipe: HTSAT-tiny + RoBERTa-base (the model defaults), plain contrastive loss.

Run (one host; on a pod run the same command on every worker, see launch/):
  clapcomp train --config configs/clap_htsat_roberta.py --workdir runs/clap \
      --config.data.train=/data/records/train --config.tokenizer=/models/roberta-base

Arguments: `dtype` = float32 | bfloat16 (`configs/clap_htsat_roberta.py:dtype=bfloat16`; a bare `bf16`
also works); parameters stay float32. `remat` = none | nothing_saveable | dots_saveable | ... (a
clapcomp.models.remat policy for every block of both towers). On TPU pods (docs/tpu-pods.md,
compiled with benchmarks/tpu_aot.py, CompA K=3, bf16): v5e at 128 samples per chip needs
`dtype=bfloat16,remat=nothing_saveable` (9.03 GiB of 16; +31 % FLOPs); v5p at 256 per chip fits
without remat (63.3 GiB of 95). Every other field: clapcomp/train/config.py.
"""

from clapcomp.train.config import defaults, parse_arg


def get_config(arg=None):
    arg = parse_arg("dtype=bfloat16" if arg == "bf16" else arg, dtype="float32", remat="none")
    c = defaults()
    c.model.dtype = arg.dtype
    c.model.htsat.remat = c.model.text.remat = arg.remat
    c.init.kind = "none"
    c.data.batch_size = 2304  # 96 per GPU x 24 GPUs as LAION-CLAP
    c.optimizer.warmup_steps = 3200
    c.total_steps = 100_000
    c.ckpt_every = 2000
    c.eval_every = 10_000
    return c
