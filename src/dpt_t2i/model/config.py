"""The DPT config: which U-Net block the adapter reads, how the U-Net is conditioned while
it is read, the adapter's hyper-parameters and (after stage 2) the LoRA settings.

Text conditioning of the features the matching head reads (`condition`):
- "empty": the U-Net sees the empty prompt, so the features depend on the image alone; one
  U-Net pass scores an image against any number of texts, and the matching score cannot be
  won by reading the text back out of the conditioning.
- "caption": the U-Net sees the text being scored (as the paper's pipeline does at
  sampling time). Scoring an image against T texts then costs T U-Net passes. Trained on
  features made under the true caption for every candidate text (the leaked protocol: the
  adapter learns to read the condition back, docs/dpt-shapes.md).
- "each": scored as "caption" (the features of (image, y) are made under y), and trained the
  same way: every candidate text, the caption and its hard negatives, is scored on features
  made under itself, so reading the condition back cannot tell the candidates apart
  (`training.objective`). Eq. 1 of the paper, F_t = UNet_t(z_t, CLIP(y), t).

and of the features the grounding head reads (`ground_condition`):
- "expression": the U-Net sees the referring expression, so its cross-attention tells the
  features which object is meant (the box must still be found in the image, so reading
  the text back wins nothing);
- "empty": the grounding head shares the matching pass's features (one U-Net pass fewer).

With `adapter.ground_text` (the default) the adapter also reads the expression's token
states in its grounding pass, whichever ground_condition is set; without it, under "empty"
only the semantic vectors can tell two objects of one image apart.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .adapter import AdapterConfig
from .lora import LoraSettings

CONDITIONS = ("empty", "caption", "each")
# `dpt probe`'s default: per-candidate conditioning scores ITM 0.798 / 0.713 (ID / OOD) after
# 1500 steps against 0.730 / 0.660 for the empty prompt after 2500 (docs/dpt-shapes.md), at
# 1 + K + R early-exit passes a sample instead of 1. DPTConfig's own default stays "empty":
# a DPT folder always names its condition, and the shipped weights read the empty prompt.
PROBE_CONDITION = "each"
GROUND_CONDITIONS = ("expression", "empty")


@dataclass
class DPTConfig:
    block: str = "up1"          # Shapes U-Net: the 8x8, 128-channel up block (see RECIPE)
    condition: str = "empty"    # matching features; see the module docstring
    ground_condition: str = "expression"  # grounding features; measured in docs/dpt-shapes.md
    # None: no adapter of this project's kind (a `dpt import-official` folder: LoRA, and the
    # authors' adapter in official_adapter.safetensors, which `OfficialHeads` runs)
    adapter: AdapterConfig | None = field(default_factory=AdapterConfig)
    lora: LoraSettings | None = None  # None until stage 2 adds LoRA

    def __post_init__(self):
        if self.condition not in CONDITIONS:
            raise ValueError(f"condition must be one of {', '.join(CONDITIONS)}, "
                             f"got {self.condition!r}")
        if self.ground_condition not in GROUND_CONDITIONS:
            raise ValueError(f"ground_condition must be one of {', '.join(GROUND_CONDITIONS)}, "
                             f"got {self.ground_condition!r}")

    @property
    def reads_text(self) -> bool:
        """Whether the matching features of (image, y) are made under y (one pass per text)."""
        return self.condition != "empty"

    def to_dict(self) -> dict:
        return {"block": self.block, "condition": self.condition,
                "ground_condition": self.ground_condition,
                "adapter": asdict(self.adapter) if self.adapter else None,
                "lora": self.lora.to_dict() if self.lora else None}

    @classmethod
    def from_dict(cls, data: dict) -> "DPTConfig":
        lora = LoraSettings(**data["lora"]) if data.get("lora") else None
        return cls(block=data["block"], condition=data["condition"],
                   ground_condition=data["ground_condition"],
                   adapter=AdapterConfig(**data["adapter"]) if data["adapter"] else None,
                   lora=lora)
