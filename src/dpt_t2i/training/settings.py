"""The settings of a DPT training run (`dpt probe`, `dpt tune`, `dpt tune-hn-itm`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

STAGES = ("probe", "tune", "hn-itm")
# Where a stage's command starts from other values than the fields below: stage 2 moves an
# adapter stage 1 already trained, at a tenth of its rate; the HN-ITM baseline trains no
# adapter (its rate and loss weights are recorded as 0) and runs shorter.
STAGE_DEFAULTS = {"probe": {}, "tune": {"lr": 1e-4},
                  "hn-itm": {"steps": 400, "lr": 0.0, "match_weight": 0.0, "ground_weight": 0.0}}
MIXED_PRECISIONS = ("no", "fp16", "bf16")
RATES_AND_WEIGHTS = ("lr", "match_weight", "ground_weight", "lora_lr", "mse_weight", "hn_weight",
                     "hn_clip", "grad_clip")


@dataclass
class TrainSettings:
    stage: str = "probe"
    steps: int = 2000
    batch: int = 64              # samples per process per micro-step
    grad_accum: int = 1          # micro-steps per optimizer step
    lr: float = 1e-3             # adapter and heads (3e-4 trained boxes far slower)
    lora_lr: float = 1e-4        # LoRA (stage 2)
    warmup: int = 100            # steps of linear warm-up of every learning rate
    lr_floor: float = 0.1        # the cosine ends at lr_floor x the rate (1.0: constant)
    grad_clip: float = 1.0       # the gradient norm is clipped to this; 0 turns clipping off
    t_min: int = 0               # training timesteps are drawn from [t_min, t_max)
    t_max: int = 1000
    match_weight: float = 1.0
    ground_weight: float = 1.0
    mse_weight: float = 0.0      # the denoising term the official code kept (stage 2)
    n_negatives: int = 3         # hard negatives per caption
    batch_negatives: int = 3     # condition "each": captions of other images per image (a
    #                              U-Net pass each; they also give the text-to-image loss)
    hn_weight: float = 1.0       # hn-itm: weight of the hard negative's (clipped) error
    hn_clip: float = 1.0         # hn-itm: that error is clipped at hn_clip x the positive's
    global_negatives: bool = False  # matching InfoNCE over every process's batch (gather.py)
    workers: int = 0             # DataLoader processes drawing the coming batches; 0: inline
    prefetch: int = 2            # batches each worker keeps ready
    mixed_precision: str = "no"  # accelerate's: no, fp16, bf16; frozen weights stored in it
    gradient_checkpointing: bool = False  # recompute the U-Net's activations in backward
    allow_tf32: bool = False     # TF32 matmuls and convolutions on Ampere+ GPUs
    channels_last: bool = False  # the U-Net's weights (and so its activations) in NHWC
    checkpoint_every: int = 250
    keep_checkpoints: int = 2    # newest checkpoints kept; 0 keeps all (a learning curve)
    seed: int = 0
    log_with: str | None = None  # "tensorboard" to log losses under <run>/logs

    def __post_init__(self):
        if self.mixed_precision not in MIXED_PRECISIONS:
            raise ValueError(f"mixed_precision must be one of {', '.join(MIXED_PRECISIONS)}, "
                             f"got {self.mixed_precision!r}")
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {self.stage!r}")
        for name in ("steps", "batch", "grad_accum", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        if self.n_negatives < 1:  # the matching loss and hn-itm need one at least
            raise ValueError(f"n_negatives must be >= 1, got {self.n_negatives}")
        if not 0 <= self.lr_floor <= 1:  # NaN fails too
            raise ValueError(f"lr_floor must be between 0 and 1, got {self.lr_floor}")
        if self.workers < 0 or self.prefetch < 1:
            raise ValueError(f"need workers >= 0 and prefetch >= 1, got {self.workers} and "
                             f"{self.prefetch}")
        if self.batch_negatives < 0:
            raise ValueError(f"batch_negatives must be >= 0, got {self.batch_negatives}")
        if self.keep_checkpoints < 0:
            raise ValueError(f"keep_checkpoints must be >= 0, got {self.keep_checkpoints}")
        for name in RATES_AND_WEIGHTS:
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if not 0 <= self.t_min < self.t_max <= 1000:  # the noise schedule's 1000 steps
            raise ValueError(f"need 0 <= t_min < t_max <= 1000, got {self.t_min} and {self.t_max}")
