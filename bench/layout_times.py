"""Service times for bench/simulate_layouts.py: how long one request kind holds a replica of g GPUs.

Two sources, and the output always says which one a number came from:

- measured: the `rows` of a `bench/results/parallel-<card>.json` written by
  bench/bench_parallel.py (`{gpus, setting, time_s, ...}`; the shape and step
  count are read from `width`/`height`/`num_frames`/`steps` keys when a row has
  them, else from a setting such as "official 1280x704x121, 50 steps"). Rows of
  the plain-diffusers baseline or of the fast (approximate) path are ignored:
  the service's exact path is what a replica runs.
- built-in: one GPU (H100), the project's exact path, from /work/shared/REFERENCE.md
  and issue 17: 640x480x17 x 20 steps 1.58 s (1.52-1.64 s measured),
  832x480x81 x 20 steps 8.73 s, 1280x704x121 x 50 steps 97.6 s. The VAE-decode
  share of each (0.30 / 1.50 / 4.89 s) is from bench/results/gpu-nvidia-h100-80gb-hbm3.json.

Step counts other than the measured one: decode is paid once, the rest scales
with the steps (832x480x81 at the standard preset's 30 steps: 1.50 + 7.23 x 1.5 =
12.35 s; 12.55 s was measured in-process, docs/gpu.md).

Degrees with no measurement follow an efficiency model, stated in `SpeedupModel`:
g GPUs do the work of g_eff = min(g, 2 x max(1, tokens // min_tokens_per_rank))
GPUs (CFG-parallel always splits the two guidance passes; Ulysses gains nothing
once a rank holds fewer than min_tokens_per_rank latent tokens), each doubling of
g_eff keeps a share `e` of linear speedup: speedup = g_eff x e^log2(g_eff). The
default e = 0.93 gives 1.86x on 2 GPUs, 3.46x on 4 and 6.43x on 8: the issue's
goals (>= 1.85x on 2, >= 3.2x on 4), and below LightX2V's published 6.9x on 8
H100s at ~33k tokens. When a shape has a measured multi-GPU row, `e` for that
shape is fitted to its largest measured degree instead.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class RequestKind:
    """One kind of request in an arrival mix (a preset of configs/presets.yaml)."""

    name: str
    width: int
    height: int
    num_frames: int
    steps: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.width, self.height, self.num_frames)

    @property
    def latent_tokens(self) -> int:
        # The DiT's sequence length, as serve_app/params.py's GenerationParams.latent_tokens
        # computes it (VAE 4x temporal, 16x spatial, patch 2); the routing rule compares it.
        return ((self.num_frames - 1) // 4 + 1) * (self.height // 32) * (self.width // 32)


# The presets of configs/presets.yaml (tests/unit/test_simulate_layouts.py keeps them equal).
KINDS = {
    "preview": RequestKind("preview", 640, 480, 17, 20),
    "standard": RequestKind("standard", 832, 480, 81, 30),
    "official": RequestKind("official", 1280, 704, 121, 50),
}


@dataclass(frozen=True)
class Point:
    """One timing: a shape at a step count on a replica of `gpus` GPUs."""

    gpus: int
    steps: int
    time_s: float
    decode_s: float | None = None


BUILTIN_SOURCE = "built-in: REFERENCE.md / issue 17 numbers, 1 H100, project exact path (not a parallel measurement)"
BUILTIN = {
    (640, 480, 17): Point(gpus=1, steps=20, time_s=1.58, decode_s=0.30),
    (832, 480, 81): Point(gpus=1, steps=20, time_s=8.73, decode_s=1.50),
    (1280, 704, 121): Point(gpus=1, steps=50, time_s=97.6, decode_s=4.89),
}

SHAPE_IN_TEXT = re.compile(r"(\d+)\s*x\s*(\d+)\s*x\s*(\d+)")
STEPS_IN_TEXT = re.compile(r"(\d+)\s*steps")
# A row whose label says this is not the exact path a replica serves with.
NOT_EXACT = ("plain", "fast")


@dataclass(frozen=True)
class SpeedupModel:
    """Speedup of a g-GPU replica over one GPU on a shape of `tokens` latent tokens (see module doc)."""

    doubling_efficiency: float = 0.93
    min_tokens_per_rank: int = 2048

    def effective_gpus(self, gpus: int, tokens: int) -> int:
        if gpus <= 1:
            return 1
        return min(gpus, 2 * max(1, tokens // self.min_tokens_per_rank))

    def speedup(self, gpus: int, tokens: int, efficiency: float | None = None) -> float:
        g_eff = self.effective_gpus(gpus, tokens)
        e = self.doubling_efficiency if efficiency is None else efficiency
        return float(g_eff * e ** math.log2(g_eff))

    def fit_efficiency(self, gpus: int, tokens: int, measured_speedup: float) -> float:
        """The per-doubling efficiency that reproduces a measured speedup at `gpus`."""
        g_eff = self.effective_gpus(gpus, tokens)
        if g_eff <= 1:
            return self.doubling_efficiency
        return float((measured_speedup / g_eff) ** (1 / math.log2(g_eff)))


@dataclass
class Measurements:
    """Timings by shape, from a parallel-*.json or the built-in table."""

    source: str
    points: dict[tuple[int, int, int], list[Point]]
    ignored: list[str] = field(default_factory=list)
    label: str = "measured"  # what a number taken from `points` is called in the output

    @classmethod
    def builtin(cls) -> Measurements:
        points = {shape: [point] for shape, point in BUILTIN.items()}
        return cls(source=BUILTIN_SOURCE, points=points, label="built-in")

    @classmethod
    def from_file(cls, path: Path) -> Measurements:
        data = json.loads(Path(path).read_text())
        found: dict[tuple[tuple[int, int, int], int, int], list[Point]] = {}
        ignored = []
        for row in data.get("rows", []):
            parsed = parse_row(row)
            if isinstance(parsed, str):
                ignored.append(parsed)
                continue
            shape, point = parsed
            found.setdefault((shape, point.gpus, point.steps), []).append(point)
        points: dict[tuple[int, int, int], list[Point]] = {}
        for (shape, gpus, steps), repeats in sorted(found.items()):
            # Repeated rows for one setting: their median, so one slow run does not decide.
            decodes = [p.decode_s for p in repeats if p.decode_s is not None]
            points.setdefault(shape, []).append(
                Point(
                    gpus,
                    steps,
                    statistics.median(p.time_s for p in repeats),
                    statistics.median(decodes) if decodes else None,
                )
            )
        card = data.get("card", "card not named")
        return cls(source=f"measured: {path} ({card})", points=points, ignored=ignored)


def parse_row(row: object) -> tuple[tuple[int, int, int], Point] | str:
    """A usable row as (shape, point), or why it is not used."""
    if not isinstance(row, dict) or "gpus" not in row or "time_s" not in row:
        return f"no gpus/time_s: {row!r}"[:160]
    label = " ".join(str(row.get(key, "")) for key in ("setting", "path", "variant")).lower()
    if any(word in label for word in NOT_EXACT):
        return f"not the exact path: {label.strip()}"
    setting = str(row.get("setting", ""))
    if all(key in row for key in ("width", "height", "num_frames")):
        shape = (int(row["width"]), int(row["height"]), int(row["num_frames"]))
    elif match := SHAPE_IN_TEXT.search(setting):
        shape = (int(match[1]), int(match[2]), int(match[3]))
    else:
        return f"no shape in {setting!r}"
    steps = row.get("steps", row.get("num_inference_steps"))
    if steps is None and (match := STEPS_IN_TEXT.search(setting)):
        steps = match[1]
    if steps is None:
        return f"no step count in {setting!r}"
    decode = row.get("decode_s")
    point = Point(int(row["gpus"]), int(steps), float(row["time_s"]), None if decode is None else float(decode))
    return shape, point


@dataclass(frozen=True)
class ServiceTime:
    kind: str
    gpus: int
    seconds: float
    source: str  # "measured", "measured, rescaled to N steps", "model (...)"


class ServiceTimes:
    """seconds(kind, gpus): the time a request of `kind` holds a g-GPU replica."""

    def __init__(self, measurements: Measurements, model: SpeedupModel | None = None) -> None:
        self.measurements = measurements
        self.model = model or SpeedupModel()
        self._cache: dict[tuple[str, int], ServiceTime] = {}

    def seconds(self, kind: RequestKind, gpus: int) -> float:
        return self.lookup(kind, gpus).seconds

    def lookup(self, kind: RequestKind, gpus: int) -> ServiceTime:
        key = (kind.name, gpus)
        if key not in self._cache:
            self._cache[key] = self._compute(kind, gpus)
        return self._cache[key]

    def _one_gpu(self, kind: RequestKind) -> tuple[Point, str]:
        singles = [p for p in self.measurements.points.get(kind.shape, []) if p.gpus == 1]
        if singles:
            return closest_steps(singles, kind.steps), self.measurements.label
        return BUILTIN[kind.shape], "built-in"

    def _decode_share(self, kind: RequestKind) -> float:
        """Decode's share of the 1-GPU time at that point's steps (decode is paid once per video)."""
        base, _ = self._one_gpu(kind)
        decode = base.decode_s if base.decode_s is not None else BUILTIN[kind.shape].decode_s
        assert decode is not None
        return decode / base.time_s

    def _rescale(self, kind: RequestKind, point: Point) -> float:
        """The point's time at the kind's step count."""
        if point.steps == kind.steps:
            return point.time_s
        share = self._decode_share(kind)
        if point.decode_s is not None:
            share = point.decode_s / point.time_s
        return point.time_s * (share + (1 - share) * kind.steps / point.steps)

    def _compute(self, kind: RequestKind, gpus: int) -> ServiceTime:
        points = self.measurements.points.get(kind.shape, [])
        exact = [p for p in points if p.gpus == gpus]
        if exact:
            point = closest_steps(exact, kind.steps)
            label = self.measurements.label
            if point.steps != kind.steps:
                label += f" at {point.steps} steps, rescaled"
            return ServiceTime(kind.name, gpus, self._rescale(kind, point), label)
        base, base_label = self._one_gpu(kind)
        one_gpu = self._rescale(kind, base)
        if gpus == 1:
            label = base_label if base.steps == kind.steps else f"{base_label} at {base.steps} steps, rescaled"
            return ServiceTime(kind.name, 1, one_gpu, label)
        efficiency, why = self._efficiency(kind, points)
        g_eff = self.model.effective_gpus(gpus, kind.latent_tokens)
        seconds = one_gpu / self.model.speedup(gpus, kind.latent_tokens, efficiency)
        return ServiceTime(kind.name, gpus, seconds, f"model: {g_eff} effective GPUs, e={efficiency:.3f} {why}")

    def _efficiency(self, kind: RequestKind, points: list[Point]) -> tuple[float, str]:
        """Per-doubling efficiency for this shape: fitted to its largest measured degree, else the default."""
        multi = [p for p in points if p.gpus > 1]
        if not multi:
            return self.model.doubling_efficiency, "(default)"
        largest = max(multi, key=lambda p: (p.gpus, -abs(p.steps - kind.steps)))
        base, _ = self._one_gpu(kind)
        # Both at the multi-GPU row's step count, so the ratio is a speedup and not a step change.
        one_gpu = self._rescale(RequestKind(kind.name, *kind.shape, largest.steps), base)
        measured_speedup = one_gpu / largest.time_s
        return (
            self.model.fit_efficiency(largest.gpus, kind.latent_tokens, measured_speedup),
            f"(fitted to the measured {largest.gpus}-GPU {measured_speedup:.2f}x)",
        )


def closest_steps(points: list[Point], steps: int) -> Point:
    return min(points, key=lambda p: (abs(p.steps - steps), p.steps))


def default_measurements_file() -> Path | None:
    """The first bench/results/parallel-*.json by name (pass --measurements to pick another)."""
    found = sorted(RESULTS_DIR.glob("parallel-*.json"))
    return found[0] if found else None
