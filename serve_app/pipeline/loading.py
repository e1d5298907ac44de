"""Getting a `WanPipeline` for a model profile, holding only what a stage needs.

Each stage keeps its own components resident: the prompt encoder the
tokenizer and UMT5, the denoiser the DiT and scheduler, the video encoder the
VAE. The others are left unloaded (None), which diffusers' `from_pretrained`
supports, so a denoiser replica never pays for UMT5's 11 GB.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from serve_app.config import ATTENTION_BACKENDS, ModelProfile
from serve_app.errors import ModelLoadError
from serve_app.pipeline.startup import StartupPhases

log = logging.getLogger("ray.serve")

Stage = Literal["prompt_encoder", "denoiser", "video_encoder", "parallel_denoiser", "all"]

STAGE_COMPONENTS: dict[str, tuple[str, ...]] = {
    "prompt_encoder": ("tokenizer", "text_encoder"),
    "denoiser": ("transformer", "scheduler"),
    "video_encoder": ("vae",),
    # A multi-GPU replica's rank: the DiT, and the VAE it decodes its share of the video with.
    "parallel_denoiser": ("transformer", "scheduler", "vae"),
    "all": ("tokenizer", "text_encoder", "transformer", "scheduler", "vae"),
}
ALL_COMPONENTS = STAGE_COMPONENTS["all"]


def torch_dtype(name: str):
    import torch

    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[name]


def resolve_device(profile: ModelProfile) -> str:
    import torch

    if profile.device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"profile {profile.name!r} asks for device 'cuda' but no GPU is visible")
    if profile.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return profile.device


def load_pipeline(profile: ModelProfile, data_dir: Path, stage: Stage = "all", startup: StartupPhases | None = None):
    """A `WanPipeline` on the profile's device with the stage's components loaded
    (`startup`, if given, records how long the imports, build or load, and placement took)."""
    startup = startup or StartupPhases()
    keep = STAGE_COMPONENTS[stage]
    device = resolve_device(profile)
    with startup.phase("import_diffusers"):
        from diffusers import WanPipeline  # noqa: F401 - timed apart: a fixed cost of every start
    if profile.source == "random":
        pipe = build_random_5b(profile, device, keep, startup)
    else:
        path = _weights_path(profile, data_dir)
        skip = {name: None for name in ALL_COMPONENTS if name not in keep and name != "scheduler"}
        try:
            with startup.phase("from_pretrained"):
                pipe = _from_pretrained(path, profile, skip)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(
                f"could not load model {profile.model_id!r} from {str(path)!r}: {exc}. "
                "Download Wan-AI/Wan2.2-TI2V-5B-Diffusers to a local directory and set `path` "
                "in the profile (or model_overrides.path in serve_config.yaml)."
            ) from exc
        _fix_vae_scale_factors(pipe, path)
    with startup.phase("place"):
        _place(pipe, device)
    if pipe.transformer is not None:
        set_attention_backend(pipe.transformer, profile.attention_backend)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _weights_path(profile: ModelProfile, data_dir: Path) -> Path | str:
    if profile.source == "tiny":
        from serve_app.pipeline.tiny import ensure_tiny_model

        return ensure_tiny_model(profile, data_dir / "models")
    assert profile.path is not None
    local = Path(profile.path).expanduser()
    if local.exists():
        if not (local / "model_index.json").exists():
            raise ModelLoadError(
                f"{str(local)!r} exists but has no model_index.json; expected the diffusers layout "
                "of Wan-AI/Wan2.2-TI2V-5B-Diffusers"
            )
        return local
    return profile.path  # a hub id; honoured only with local_files_only: false


def _from_pretrained(path, profile: ModelProfile, skip: dict):
    from diffusers import WanPipeline

    # A per-component dtype lets diffusers keep its fp32-only modules (norms,
    # time embedder) in fp32 while the rest loads in the profile's dtype.
    return WanPipeline.from_pretrained(
        path,
        revision=None if Path(str(path)).exists() else profile.revision,
        dtype={"default": torch_dtype(profile.dtype), "vae": torch_dtype(profile.vae_dtype)},
        local_files_only=profile.local_files_only,
        **skip,
    )


def _fix_vae_scale_factors(pipe, path) -> None:
    # Without a VAE, WanPipeline falls back to Wan2.1's 8x spatial factor; the
    # 5B's VAE is 16x. The denoiser sizes its latents from these, so read them
    # from the VAE's config even when the VAE itself stays unloaded.
    if pipe.vae is None:
        from diffusers import AutoencoderKLWan

        cfg = AutoencoderKLWan.load_config(path, subfolder="vae", local_files_only=True)
        pipe.vae_scale_factor_spatial = cfg["scale_factor_spatial"]
        pipe.vae_scale_factor_temporal = cfg["scale_factor_temporal"]


def _place(pipe, device: str) -> None:
    # Device only: dtypes were set at load, and a blanket `.to(dtype)` would
    # undo the fp32 modules diffusers keeps on purpose.
    for module in (pipe.text_encoder, pipe.transformer, pipe.vae):
        if module is not None:
            module.to(device=device).eval()


def _keep_fp32_modules(model) -> None:
    """What from_pretrained does for `_keep_in_fp32_modules`, for models built in place."""
    import torch

    keep = getattr(model, "_keep_in_fp32_modules", None) or []
    for name, module in model.named_modules():
        if any(k in name.split(".") for k in keep):
            module.to(torch.float32)


def set_attention_backend(transformer, backend: str) -> None:
    """Point the DiT's attention at `backend`; a missing package is a startup error."""
    name = ATTENTION_BACKENDS[backend]
    if name == "native":
        return  # diffusers' default; setting it only logs an "experimental" warning
    try:
        transformer.set_attention_backend(name)
    except (RuntimeError, ImportError, ValueError) as exc:
        extra = " (pip install 'wan-serve[xformers]')" if backend == "xformers" else ""
        raise ModelLoadError(f"attention_backend={backend!r} is not usable on this host{extra}: {exc}") from exc


# --- the 5B architecture with random weights -------------------------------------------


@contextmanager
def _default_dtype(dtype) -> Iterator[None]:
    import torch

    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def build_random_5b(profile: ModelProfile, device: str, keep: tuple[str, ...], startup: StartupPhases | None = None):
    """Wan2.2-TI2V-5B's exact architecture, random weights, built on `device`.

    Built directly on the device in the target dtype: initialising 10.7 B
    parameters on a CPU takes minutes, on a GPU seconds, and never holding an
    fp32 copy keeps the peak at the bf16 size.
    """
    import torch
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    from serve_app.pipeline.architecture import TRANSFORMER_5B, UMT5_XXL, VAE_5B
    from serve_app.pipeline.tiny import build_tokenizer

    startup = startup or StartupPhases()
    torch.manual_seed(0)
    parts: dict = {"tokenizer": None, "text_encoder": None, "transformer": None, "vae": None}
    with torch.device(device):
        if "text_encoder" in keep:
            with startup.phase("build_text_encoder"), _default_dtype(torch_dtype(profile.dtype)):
                parts["text_encoder"] = UMT5EncoderModel(UMT5Config(**UMT5_XXL))
            # Real UMT5 vocabulary is not available offline; a byte-level tokenizer
            # gives valid ids and the same 512-token padded sequence cost.
            parts["tokenizer"] = build_tokenizer(profile.max_sequence_length)
        if "transformer" in keep:
            with startup.phase("build_transformer"), _default_dtype(torch_dtype(profile.dtype)):
                parts["transformer"] = WanTransformer3DModel(**TRANSFORMER_5B)
                _keep_fp32_modules(parts["transformer"])
        if "vae" in keep:
            with startup.phase("build_vae"), _default_dtype(torch_dtype(profile.vae_dtype)):
                parts["vae"] = AutoencoderKLWan(**VAE_5B)
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        flow_shift=profile.flow_shift,
        num_train_timesteps=1000,
    )
    pipe = WanPipeline(scheduler=scheduler, expand_timesteps=True, **parts)
    pipe.vae_scale_factor_spatial = VAE_5B["scale_factor_spatial"]
    pipe.vae_scale_factor_temporal = VAE_5B["scale_factor_temporal"]
    return pipe
