"""`wan-video presets`: the presets and limits a service checks requests against, as a table.

The service's `GET /v1/presets` by default; `--offline` reads the presets file
this installation ships instead (package data of an installed wheel), so a
user can see what `--preset` takes before any service runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def local_presets() -> dict[str, Any]:
    """What `GET /v1/presets` answers for the shipped presets file, without a service."""
    from serve_app.settings.presets import load_presets

    catalog = load_presets()
    return {
        "presets": {name: preset.model_dump() for name, preset in catalog.presets.items()},
        "limits": catalog.limits.model_dump(),
        "default_preset": catalog.default_preset,
    }


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned columns two spaces apart; the last column is not padded."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return [("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1]).rstrip() for row in rows]


def format_presets(answer: dict[str, Any]) -> str:
    """The answer of `GET /v1/presets` as a table, the default marked, and a line of limits."""
    default = answer.get("default_preset")
    rows = [("PRESET", "SIZE", "FRAMES", "STEPS", "GUIDANCE", "FPS", "DESCRIPTION")]
    for name, p in (answer.get("presets") or {}).items():
        label = f"{name} (default)" if name == default else name
        rows.append(
            (
                label,
                f"{p['width']}x{p['height']}",
                str(p["num_frames"]),
                str(p["num_inference_steps"]),
                str(p["guidance_scale"]),
                str(p.get("fps", "")),
                p.get("description", ""),
            )
        )
    lines = _table(rows)
    limits = answer.get("limits") or {}
    if limits:
        lines += [
            "",
            "limits: sides {min_side}-{max_side} px, multiples of {side_multiple}, at most {max_pixels} pixels; "
            "frames {min_frames}-{max_frames} of the form {frames_modulus}k+1; steps {min_steps}-{max_steps}; "
            "guidance {min_guidance}-{max_guidance}; fps {min_fps}-{max_fps}".format(**limits),
        ]
    return "\n".join(lines)
