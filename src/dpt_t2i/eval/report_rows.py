"""The referee rows of `dpt report`'s Table 1: which referees and starts, and the
`dpt referee` run each row is."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..generation.methods import referee_preset
from ..generation.referee import INITS
from ..generation.referee_folder import RefereeRun

SHAPES_REFEREES = ("shapes-itm", "dpt", "clip")  # the referees of the Shapes model
REFEREE_ROWS = ("shapes-itm:sample", "shapes-itm:noise")  # the default rows: REFEREE:INIT


@dataclass(frozen=True)
class RefereeSpec:
    """A referee row of Table 1: `dpt referee --referee <referee> --init <init>` with the
    Shapes model's preset for that start (the DPT referee reads the report's DPT folder)."""

    referee: str
    init: str
    dpt: Path | None = None

    @property
    def name(self) -> str:
        return f"referee-{self.referee}-{self.init}"

    def run(self, model: Path, prompts: list[str], out: Path, num_images: int, seed: int
            ) -> RefereeRun:
        return RefereeRun(model, prompts, out, referee_preset(model, self.init), self.referee,
                          self.dpt if self.referee == "dpt" else None, num_images, seed,
                          overwrite=True)


def referee_rows(text: str) -> tuple[str, ...]:
    """The REFEREE:INIT names of a comma-separated --referees value (checked)."""
    rows = tuple(r.strip() for r in text.split(",") if r.strip())
    for row in rows:
        referee, _, init = row.partition(":")
        if referee not in SHAPES_REFEREES or init not in INITS:
            raise ValueError(f"--referees takes comma-separated REFEREE:INIT with REFEREE one "
                             f"of {', '.join(SHAPES_REFEREES)} and INIT one of "
                             f"{', '.join(INITS)} (e.g. shapes-itm:noise), got {row!r}")
    return rows
