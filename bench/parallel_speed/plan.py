"""What bench/bench_parallel.py runs, where, and what fits its budget: no torch here.

The jobs are the single-GPU project path ("project"), plain diffusers on one
GPU ("plain") and one SPMD run per GPU count ("parallel", N processes, one
card each). They are packed into phases, first fit in that order: a phase
runs its jobs at once on separate cards, so on four cards the two baselines
and the 2-GPU run share the first phase and the 4-GPU run has the second.
Time estimates are H100 figures (bench/results/gpu-nvidia-h100-80gb-hbm3.json
for one card; the parallel ones assume 80% scaling) and only decide what is
skipped when the budget runs short.
"""

from __future__ import annotations

from dataclasses import dataclass, field

KINDS = ("project", "plain", "parallel")


@dataclass(frozen=True)
class Setting:
    key: str
    label: str
    height: int
    width: int
    frames: int
    steps: int
    preset: str  # whose negative prompt and fps the request takes

    @property
    def tokens(self) -> int:
        """Latent tokens of one forward (the DiT patchifies the 16x latents by 2x2)."""
        return ((self.frames - 1) // 4 + 1) * (self.height // 32) * (self.width // 32)


SETTINGS: dict[str, Setting] = {
    "720p": Setting("720p", "1280x704x121, 50 steps", 704, 1280, 121, 50, "official"),
    "480p": Setting("480p", "832x480x81, 20 steps", 480, 832, 81, 20, "standard"),
}
# --smoke: the tiny model on a CPU, same code, shapes and steps it runs in seconds.
SMOKE_SETTINGS: dict[str, Setting] = {
    "720p": Setting("720p", "smoke 96x64x9, 1 step", 64, 96, 9, 1, "official"),
    "480p": Setting("480p", "smoke 64x64x5, 1 step", 64, 64, 5, 1, "standard"),
}
GUIDANCE = 5.0
SEED = 1234
PROMPT = "a red fox running through fresh snow, golden hour, cinematic"

# Seconds on one H100, measured (project, plain: the committed bench_gpu result) or assumed.
SINGLE_DENOISE_S = {
    "project": {"720p": 98.7, "480p": 8.8},
    "plain": {"720p": 137.1, "480p": 14.1},
}
DECODE_S = {"720p": 12.0, "480p": 3.0}  # one-shot decode at one card, warm-up decode included
STARTUP_S = {"project": 60.0, "plain": 35.0, "parallel": 75.0}  # spawn, import, build, compile
PARALLEL_EFFICIENCY = 0.8
WARMUP_STEPS = 2


@dataclass(frozen=True)
class Job:
    kind: str  # project | plain | parallel
    gpus: int

    @property
    def name(self) -> str:
        return self.kind if self.kind != "parallel" else f"parallel-{self.gpus}gpu"


@dataclass
class Placement:
    job: Job
    devices: list[int]


@dataclass
class Phase:
    index: int
    placements: list[Placement] = field(default_factory=list)

    @property
    def used(self) -> int:
        return sum(len(p.devices) for p in self.placements)


def jobs_for(gpu_counts: list[int]) -> list[Job]:
    """1 in the counts means the two single-GPU baselines; every other count one SPMD run."""
    jobs: list[Job] = []
    if 1 in gpu_counts:
        jobs += [Job("project", 1), Job("plain", 1)]
    jobs += [Job("parallel", n) for n in sorted(set(gpu_counts)) if n > 1]
    return jobs


def plan_phases(jobs: list[Job], devices: int) -> tuple[list[Phase], list[str]]:
    """First fit of the jobs, in order, into phases of `devices` cards; (phases, what cannot run)."""
    phases: list[Phase] = []
    unrunnable: list[str] = []
    for job in jobs:
        if job.gpus > devices:
            unrunnable.append(f"{job.name}: needs {job.gpus} GPUs, this machine has {devices}")
            continue
        phase = next((p for p in phases if p.used + job.gpus <= devices), None)
        if phase is None:
            phase = Phase(len(phases))
            phases.append(phase)
        phase.placements.append(Placement(job, list(range(phase.used, phase.used + job.gpus))))
    return phases, unrunnable


def estimate_setting_s(job: Job, setting: str) -> float:
    """Seconds one job spends on one setting on an H100: warm-up steps, the timed run, decodes."""
    base = SINGLE_DENOISE_S["plain" if job.kind == "plain" else "project"][setting]
    steps = SETTINGS[setting].steps
    if job.kind == "parallel":
        base /= job.gpus * PARALLEL_EFFICIENCY
    warm = base * WARMUP_STEPS / steps
    decode = 0.0 if job.kind == "plain" else DECODE_S[setting] / (1 if job.kind == "project" else job.gpus)
    return base + warm + decode


def estimate_job_s(job: Job, settings: list[str]) -> float:
    return STARTUP_S[job.kind] + sum(estimate_setting_s(job, s) for s in settings)


def estimate_phase_s(phase: Phase, settings: list[str]) -> float:
    return max((estimate_job_s(p.job, settings) for p in phase.placements), default=0.0)
