"""How the ranks of one multi-GPU replica split a guided denoising step.

Two kinds of parallelism, nested:

- CFG-parallel (`cfg_degree` 2): classifier-free guidance runs the DiT twice
  per step, on the prompt and on the negative prompt. The two passes are
  independent, so one half of the ranks runs the first and the other half the
  second; the halves swap their outputs once per step (one tensor of latent
  size, a few MB), which costs far less than splitting either pass further.
- Ulysses sequence parallel inside each half (`ulysses_degree` ranks): every
  rank holds 1/u of the video's tokens and, inside self-attention, trades
  them for 1/u of the heads with one all-to-all (diffusers' context parallel).

Ranks are numbered half by half: rank r is in half r // u at position r % u,
which is the row-major order of the ("cfg", "ring", "ulysses") device mesh
that group.py builds, so both agree on who is who.

torch-free: the deployment and the config checker import it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ParallelLayout:
    world: int  # ranks (GPUs) in the replica
    cfg_degree: int  # 2: cond and uncond on separate halves; 1: both passes on every rank

    def __post_init__(self) -> None:
        if self.world < 1:
            raise ValueError(f"a parallel replica needs at least one rank, not {self.world}")
        if self.cfg_degree not in (1, 2) or self.world % self.cfg_degree:
            raise ValueError(f"cfg_degree {self.cfg_degree} must be 1 or 2 and divide the {self.world} ranks")

    @property
    def ulysses_degree(self) -> int:
        return self.world // self.cfg_degree

    def cfg_rank(self, rank: int) -> int:
        """Which guidance pass `rank` runs when cfg_degree is 2: 0 the prompt's, 1 the negative prompt's."""
        return rank // self.ulysses_degree

    def ulysses_rank(self, rank: int) -> int:
        return rank % self.ulysses_degree

    def describe(self) -> dict[str, int]:
        return {"world": self.world, "cfg_degree": self.cfg_degree, "ulysses_degree": self.ulysses_degree}

    @classmethod
    def plan(cls, world: int, heads: int, cfg_parallel: bool = True) -> ParallelLayout:
        """CFG halves whenever the rank count is even (the cheaper split), Ulysses over the rest.

        Ulysses hands each rank whole attention heads, so its degree must divide
        the DiT's head count (24 for the 5B: 2, 3, 4, 6 and 8 ranks per half work).
        """
        cfg = 2 if cfg_parallel and world >= 2 and world % 2 == 0 else 1
        layout = cls(world, cfg)
        if heads % layout.ulysses_degree:
            raise ValueError(
                f"{world} ranks give {layout.ulysses_degree} sequence-parallel ranks per guidance half, "
                f"which does not divide the DiT's {heads} attention heads"
            )
        return layout
