"""Does an app's fractional-GPU layout fit a number of cards? (GPU serve configs, the KubeRay manifest)."""

from __future__ import annotations

from serve_app.config import ServiceArgs

MODEL_STAGES = ("prompt_encoder", "denoiser", "video_encoder")


def gpu_replicas(args: ServiceArgs) -> tuple[list[float], list[str]]:
    """(num_gpus, stage) of every GPU replica the app may run at once: each stage at its most replicas."""
    fractions: list[float] = []
    names: list[str] = []
    for stage in type(args.stages).model_fields:
        options = getattr(args.stages, stage)
        if options.num_gpus > 0:
            fractions += [options.num_gpus] * options.max_replicas
            names += [stage] * options.max_replicas
    return fractions, names


def first_fit(fractions: list[float], cards: int, names: list[str]) -> list[list[str]] | None:
    """Ray-like placement of every replica at its most; None if some replica finds no card."""
    free = [1.0] * cards
    placed: list[list[str]] = [[] for _ in range(cards)]
    for fraction, name in sorted(zip(fractions, names), reverse=True):
        for card in range(cards):
            if free[card] + 1e-9 >= fraction:
                free[card] -= fraction
                placed[card].append(name)
                break
        else:
            return None
    return placed
