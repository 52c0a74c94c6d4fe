"""LAION-CLAP pretraining recipe: HTSAT-tiny + RoBERTa-base, plain contrastive loss.

Run (one host; on a pod run the same command on every worker, see launch/):
  clapcomp train --config configs/clap_htsat_roberta.py --workdir runs/clap \
      --config.data.train=/data/records/train --config.tokenizer=/models/roberta-base

`get_config("bf16")` computes in bfloat16 (parameters stay float32).
Every field below is read by clapcomp/train (loop.py, state.py, step.py, checkpoint.py).
"""

import math

import ml_collections


def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.seed = 0
    # ClapConfig fields (clapcomp/models/configs.py); defaults are LAION-CLAP HTSAT-tiny + RoBERTa-base.
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
    # Weights to start from: kind "none" (random), "hf" (HF ClapModel dir), "sentence"
    # (BERT-family sentence-encoder dir as the text tower), "checkpoint" (clapcomp workdir).
    c.init = ml_collections.ConfigDict(dict(kind="none", path=""))
    c.tokenizer = ""  # tokenizer.json or a dir holding one (RoBERTa-base for this recipe)
    c.data = ml_collections.ConfigDict(
        dict(
            train="",  # dir of ArrayRecord files written by `clapcomp data build`
            batch_size=2304,  # global: 96 per GPU x 24 GPUs as LAION-CLAP
            num_negatives=0,  # K hard-negative captions per audio (loss "compa") or Q (loss "modular")
            num_positives=0,  # P extra positive captions per audio (loss "modular")
            workers=8,  # grain worker processes per host (0 = in-process)
        )
    )
    c.loss = "plain"  # "plain" | "compa" (hard negatives) | "modular" (CompA stage 3)
    c.optimizer = ml_collections.ConfigDict(
        dict(lr=1e-4, warmup_steps=3200, weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-8, grad_clip=1.0)
    )
    c.freeze = ""  # "" | "audio" | "text": that tower gets no updates
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))  # -1: all remaining devices
    c.fsdp_text = False  # shard the big text-tower matrices over the `fsdp` mesh axis
    c.total_steps = 100_000
    c.log_every = 50
    c.ckpt_every = 2000
    c.eval_every = 10_000
    c.keep_checkpoints = 3
    c.evaluators = []  # [dict(name=<clapcomp.evaluate.run.EVALUATORS key>, kwargs=dict(...))]
    c.max_consecutive_nonfinite = 20  # stop after this many skipped (NaN/inf) steps in a row
    c.preempt_check_every = 10  # multi-process: steps between the collective preemption checks
    return c
