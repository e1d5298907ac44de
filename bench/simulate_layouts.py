"""Which layout of one GPU node serves more requests within their deadlines: a discrete-event simulation.

    python bench/simulate_layouts.py                                 # 4 GPUs, the built-in mixes and loads
    python bench/simulate_layouts.py --gpus 8 --mix 720p-only --load 0.5 0.9 --json /tmp/sim.json
    python bench/simulate_layouts.py --layout 2+1+1 --mix preview:0.7:30,official:0.3:150 --rate 0.05

No GPU, no Ray: service times come from bench/layout_times.py (a measured
bench/results/parallel-*.json when there is one, else the built-in numbers;
the output names its source), arrivals are Poisson at a rate, each request is
one kind (a preset) with a deadline counted from its arrival.

Layouts (`--layout`, degrees joined by "+"; the defaults for N GPUs):
- "1+1+...": N independent single-GPU replicas;
- "N": one N-GPU context-parallel replica that serves everything;
- "k+1+...": one k-GPU replica plus N-k single-GPU replicas, for every power of
  two 2 <= k < N. When a layout has both, requests of >= --threshold-tokens latent
  tokens go to the multi-GPU replicas and the rest to the single-GPU ones (the
  routing rule of configs/serve_gpu_4x.yaml); otherwise every replica serves all.
A request goes to the eligible replica with the fewest requests queued or running
(ties: the first), which serves its queue in order, one request at a time.

What happens to a request that cannot make its deadline (`--late`):
- skip (default): when it reaches the head of its queue and cannot finish by its
  deadline, it is dropped without using the replica, as the service's admission
  (ETA against deadline) and its denoiser's deadline stop do; it counts as missed.
- serve: everything is served in order; a late video counts as missed.

Per layout and load: requests served within their deadline, missed, the mean and
p95 latency (arrival to finish, nearest rank) of the videos finished, and per kind
served-in-time/total. Same --seed, same arrivals, same numbers; every layout sees
the same arrivals.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import random
import sys
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.layout_times import (
    KINDS,
    Measurements,
    RequestKind,
    ServiceTimes,
    SpeedupModel,
    default_measurements_file,
)

# Between the standard preset (8,190 latent tokens) and the official 720p one (27,280).
DEFAULT_THRESHOLD_TOKENS = 16384

# kind -> (share of arrivals, deadline in seconds). 480p gets the service's default 30 s
# (configs/serve_gpu.yaml); 720p gets 60 s (less than one GPU's 97.6 s), 150 s (one GPU
# makes it when it starts within 52 s) or 600 s (the service's max_deadline_s: throughput).
MIXES: dict[str, dict[str, tuple[float, float]]] = {
    "mostly-previews": {"preview": (0.75, 30.0), "standard": (0.20, 30.0), "official": (0.05, 150.0)},
    "720p-interactive": {"preview": (0.50, 30.0), "official": (0.50, 60.0)},
    "720p-only": {"official": (1.0, 150.0)},
    "720p-batch": {"official": (1.0, 600.0)},
}


@dataclass(frozen=True)
class Arrival:
    index: int
    time: float
    kind: RequestKind
    deadline: float  # absolute: arrival time + the kind's deadline


@dataclass(frozen=True)
class Layout:
    degrees: tuple[int, ...]  # GPUs per replica
    threshold_tokens: int = DEFAULT_THRESHOLD_TOKENS

    @classmethod
    def parse(cls, spec: str, threshold_tokens: int = DEFAULT_THRESHOLD_TOKENS) -> Layout:
        try:
            degrees = tuple(int(part) for part in spec.split("+"))
        except ValueError:
            raise ValueError(f"layout {spec!r}: expected GPU counts joined by '+', e.g. '2+1+1'") from None
        if not degrees or min(degrees) < 1:
            raise ValueError(f"layout {spec!r}: every replica needs at least 1 GPU")
        return cls(degrees, threshold_tokens)

    @property
    def gpus(self) -> int:
        return sum(self.degrees)

    @property
    def name(self) -> str:
        return "+".join(str(d) for d in self.degrees)

    def eligible(self, kind: RequestKind) -> list[int]:
        """Replica indexes that may serve `kind` under the routing rule."""
        multi = [i for i, d in enumerate(self.degrees) if d > 1]
        single = [i for i, d in enumerate(self.degrees) if d == 1]
        if not multi or not single:
            return list(range(len(self.degrees)))
        return multi if kind.latent_tokens >= self.threshold_tokens else single


def default_layouts(gpus: int, threshold_tokens: int = DEFAULT_THRESHOLD_TOKENS) -> list[Layout]:
    layouts = [Layout((1,) * gpus, threshold_tokens)]
    if gpus > 1:
        layouts.append(Layout((gpus,), threshold_tokens))
    k = 2
    while k < gpus:
        layouts.append(Layout((k,) + (1,) * (gpus - k), threshold_tokens))
        k *= 2
    return layouts


def parse_mix(text: str) -> dict[str, tuple[float, float]]:
    """A named mix, or "kind:share:deadline_s,..." (shares need not add to 1)."""
    if text in MIXES:
        return MIXES[text]
    mix = {}
    for part in text.split(","):
        try:
            name, share, deadline = part.split(":")
            mix[name.strip()] = (float(share), float(deadline))
        except ValueError:
            raise ValueError(f"mix part {part!r}: expected kind:share:deadline_s, or one of {sorted(MIXES)}") from None
        if name.strip() not in KINDS:
            raise ValueError(f"mix part {part!r}: kind must be one of {sorted(KINDS)}")
    return mix


def poisson_arrivals(mix: dict[str, tuple[float, float]], rate: float, duration: float, seed: int) -> list[Arrival]:
    """Arrivals in [0, duration) at `rate` per second, kinds drawn by share."""
    rng = random.Random(seed)
    names = sorted(mix)
    shares = [mix[name][0] for name in names]
    arrivals: list[Arrival] = []
    now = rng.expovariate(rate)
    while now < duration:
        name = rng.choices(names, weights=shares)[0]
        arrivals.append(Arrival(len(arrivals), now, KINDS[name], now + mix[name][1]))
        now += rng.expovariate(rate)
    return arrivals


@dataclass
class Outcome:
    arrival: Arrival
    replica: int
    finish: float | None  # None: dropped without being served

    @property
    def latency(self) -> float | None:
        return None if self.finish is None else self.finish - self.arrival.time

    @property
    def in_time(self) -> bool:
        return self.finish is not None and self.finish <= self.arrival.deadline + 1e-9


@dataclass
class Replica:
    gpus: int
    queue: deque[Arrival] = field(default_factory=deque)
    running: Arrival | None = None

    @property
    def load(self) -> int:
        return len(self.queue) + (self.running is not None)


# Event order at one instant: finishes free replicas before an arrival is routed.
FINISH, ARRIVE = 0, 1


def simulate(layout: Layout, arrivals: list[Arrival], times: ServiceTimes, late: str = "skip") -> list[Outcome]:
    """Every arrival's outcome, in arrival order."""
    if late not in ("skip", "serve"):
        raise ValueError(f"late={late!r}: expected 'skip' or 'serve'")
    replicas = [Replica(d) for d in layout.degrees]
    outcomes: dict[int, Outcome] = {}
    events: list[tuple[float, int, int, int]] = [(a.time, ARRIVE, a.index, a.index) for a in arrivals]
    heapq.heapify(events)
    by_index = {a.index: a for a in arrivals}

    def start_next(index: int, now: float) -> None:
        replica = replicas[index]
        while replica.queue:
            request = replica.queue.popleft()
            finish = now + times.seconds(request.kind, replica.gpus)
            if late == "skip" and finish > request.deadline + 1e-9:
                outcomes[request.index] = Outcome(request, index, None)
                continue
            replica.running = request
            outcomes[request.index] = Outcome(request, index, finish)
            heapq.heappush(events, (finish, FINISH, index, request.index))
            return

    while events:
        now, what, who, request_index = heapq.heappop(events)
        if what == FINISH:
            replicas[who].running = None
            start_next(who, now)
            continue
        request = by_index[request_index]
        index = min(layout.eligible(request.kind), key=lambda i: (replicas[i].load, i))
        replicas[index].queue.append(request)
        if replicas[index].running is None:
            start_next(index, now)
    return [outcomes[a.index] for a in arrivals]


def percentile(values: list[float], q: float) -> float | None:
    """Nearest rank: the smallest value with at least q of the values at or below it."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def summarize(outcomes: list[Outcome]) -> dict[str, Any]:
    latencies = [o.latency for o in outcomes if o.latency is not None]
    per_kind: dict[str, dict[str, int]] = {}
    for o in outcomes:
        entry = per_kind.setdefault(o.arrival.kind.name, {"requests": 0, "in_time": 0})
        entry["requests"] += 1
        entry["in_time"] += o.in_time
    in_time = sum(o.in_time for o in outcomes)
    return {
        "requests": len(outcomes),
        "in_time": in_time,
        "missed": len(outcomes) - in_time,
        "dropped": sum(o.finish is None for o in outcomes),
        "mean_latency_s": sum(latencies) / len(latencies) if latencies else None,
        "p95_latency_s": percentile(latencies, 0.95),
        "per_kind": dict(sorted(per_kind.items())),
    }


def single_gpu_capacity(mix: dict[str, tuple[float, float]], times: ServiceTimes, gpus: int) -> float:
    """Requests per second that `gpus` independent single-GPU replicas finish at 100% busy."""
    total = sum(share for share, _ in mix.values())
    mean_s = sum(share / total * times.seconds(KINDS[name], 1) for name, (share, _) in mix.items())
    return gpus / mean_s


def service_time_rows(times: ServiceTimes, degrees: list[int]) -> list[dict[str, Any]]:
    """Latency against throughput per kind and degree: what docs/parallel.md's table shows."""
    rows = []
    for kind in KINDS.values():
        one = times.seconds(kind, 1)
        for g in degrees:
            found = times.lookup(kind, g)
            speedup = one / found.seconds
            rows.append(
                {
                    "kind": kind.name,
                    "shape": f"{kind.width}x{kind.height}x{kind.num_frames}, {kind.steps} steps",
                    "tokens": kind.latent_tokens,
                    "gpus": g,
                    "seconds": round(found.seconds, 2),
                    "speedup": round(speedup, 2),
                    # Videos per hour of g GPUs as one replica, against g independent replicas.
                    "videos_per_hour_one_replica": round(3600 / found.seconds, 1),
                    "videos_per_hour_independent": round(3600 * g / one, 1),
                    "throughput_kept": round(speedup / g, 2),
                    "source": found.source,
                }
            )
    return rows


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def print_service_times(rows: list[dict[str, Any]]) -> None:
    header = ["kind", "latent tokens", "GPUs", "seconds", "speedup", "videos/h, one replica",
              "videos/h, independent", "throughput kept", "source"]  # fmt: skip
    body = [
        [
            r["kind"],
            str(r["tokens"]),
            str(r["gpus"]),
            fmt(r["seconds"], 2),
            f"{r['speedup']:.2f}x",
            fmt(r["videos_per_hour_one_replica"]),
            fmt(r["videos_per_hour_independent"]),
            f"{r['throughput_kept']:.0%}",
            r["source"],
        ]
        for r in rows
    ]
    print(markdown_table(header, body))


def print_results(results: list[dict[str, Any]]) -> None:
    kinds = sorted({k for r in results for k in r["per_kind"]})
    header = ["mix", "load", "req/min", "layout", "in deadline", "missed", "mean latency s", "p95 latency s"]
    header += [f"{k} in time" for k in kinds]
    body = []
    for r in results:
        row = [r["mix"], f"{r['load']:.2f}" if r["load"] is not None else "-", f"{r['rate_per_s'] * 60:.2f}",
               r["layout"], f"{r['in_time']}/{r['requests']}", str(r["missed"]),
               fmt(r["mean_latency_s"]), fmt(r["p95_latency_s"])]  # fmt: skip
        for k in kinds:
            entry = r["per_kind"].get(k)
            row.append(f"{entry['in_time']}/{entry['requests']}" if entry else "-")
        body.append(row)
    print(markdown_table(header, body))


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpus", type=int, default=4, help="GPUs on the node (default 4)")
    parser.add_argument("--layout", action="append", help="a layout such as 2+1+1 (repeatable; default: see above)")
    parser.add_argument("--threshold-tokens", type=int, default=DEFAULT_THRESHOLD_TOKENS,
                        help="latent tokens from which a request goes to the multi-GPU replicas")  # fmt: skip
    parser.add_argument("--mix", action="append", help=f"{sorted(MIXES)} or kind:share:deadline_s,... (repeatable)")
    parser.add_argument("--load", type=float, nargs="+", default=[0.5, 0.9, 1.2],
                        help="arrival rate as a share of N single-GPU replicas' capacity for the mix")  # fmt: skip
    parser.add_argument("--rate", type=float, nargs="+", help="arrival rates per second (instead of --load)")
    parser.add_argument("--duration", type=float, default=8 * 3600.0, help="seconds of arrivals (default 8 h)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--late", choices=["skip", "serve"], default="skip")
    parser.add_argument("--measurements", type=Path, help="a parallel-*.json (default: the first in bench/results)")
    parser.add_argument("--builtin", action="store_true", help="use the built-in numbers even if measurements exist")
    parser.add_argument("--doubling-efficiency", type=float, default=SpeedupModel.doubling_efficiency)
    parser.add_argument("--min-tokens-per-rank", type=int, default=SpeedupModel.min_tokens_per_rank)
    parser.add_argument("--json", type=Path, help="also write everything as JSON here")
    args = parser.parse_args(argv)

    path = None if args.builtin else (args.measurements or default_measurements_file())
    measurements = Measurements.from_file(path) if path else Measurements.builtin()
    times = ServiceTimes(measurements, SpeedupModel(args.doubling_efficiency, args.min_tokens_per_rank))
    layouts = (
        [Layout.parse(spec, args.threshold_tokens) for spec in args.layout]
        if args.layout
        else default_layouts(args.gpus, args.threshold_tokens)
    )
    for layout in layouts:
        if layout.gpus != args.gpus:
            parser.error(f"layout {layout.name} uses {layout.gpus} GPUs, --gpus is {args.gpus}")
    mixes = {name: parse_mix(name) for name in (args.mix or list(MIXES))}

    print(f"Service times from {measurements.source}")
    for reason in measurements.ignored:
        print(f"  ignored row: {reason}")
    degrees = sorted({d for layout in layouts for d in layout.degrees} | {1})
    table = service_time_rows(times, degrees)
    print_service_times(table)
    print(f"\n{args.gpus} GPUs, threshold {args.threshold_tokens} latent tokens, late requests: {args.late}, "
          f"{args.duration:.0f} s of Poisson arrivals, seed {args.seed}\n")  # fmt: skip

    results = []
    for mix_name, mix in mixes.items():
        capacity = single_gpu_capacity(mix, times, args.gpus)
        levels = [(None, r) for r in args.rate] if args.rate else [(load, load * capacity) for load in args.load]
        for load, rate in levels:
            arrivals = poisson_arrivals(mix, rate, args.duration, args.seed)
            for layout in layouts:
                summary = summarize(simulate(layout, arrivals, times, args.late))
                results.append({"mix": mix_name, "load": load, "rate_per_s": rate, "layout": layout.name, **summary})
    print_results(results)
    if args.json:
        payload = {
            "command": "python bench/simulate_layouts.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "source": measurements.source,
            "ignored_rows": measurements.ignored,
            "model": asdict(times.model),
            "gpus": args.gpus,
            "threshold_tokens": args.threshold_tokens,
            "late": args.late,
            "duration_s": args.duration,
            "seed": args.seed,
            "mixes": {
                name: {k: {"share": s, "deadline_s": d} for k, (s, d) in mix.items()} for name, mix in mixes.items()
            },
            "service_times": table,
            "results": results,
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return results


if __name__ == "__main__":
    main()
