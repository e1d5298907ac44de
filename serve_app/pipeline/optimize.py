"""Making the DiT fast without changing its answer: compile, attention, CUDA graphs, FP8.

What a replica is set up with (`SpeedOptions`) and what one request may ask
for on top (`FastKnobs`) are settings, in serve_app/settings/speed.py; this
module is what they do to the DiT and the VAE, one module at a time.
`DenoiserRuntime` (denoiser_runtime.py) puts them together for a replica's DiT.

torch, diffusers and torchao are imported inside functions, as everywhere in the
pipeline: importing this module (deployments/base.py does, for
`use_compile_cache`) loads no torch until a replica builds its model.
"""

from __future__ import annotations

import logging
from typing import Any

from serve_app.settings.speed import SpeedOptions

log = logging.getLogger("ray.serve")


# --- compile ---------------------------------------------------------------------------


def use_compile_cache(directory) -> dict[str, str]:
    """Point torch.compile's on-disk caches at `directory` (before anything compiles).

    Inductor's FX graph cache and AOTAutograd cache live under
    TORCHINDUCTOR_CACHE_DIR, Triton's kernels under TRITON_CACHE_DIR; both
    default to /tmp, which a new container or node starts without. In a
    persistent directory a restarted replica skips inductor's codegen and
    Triton's builds (dynamo still traces, in seconds). A variable already set
    in the environment is left as the operator set it. Returns what is in effect.
    """
    import os
    from pathlib import Path

    root = Path(directory)
    for variable, sub in (("TORCHINDUCTOR_CACHE_DIR", "inductor"), ("TRITON_CACHE_DIR", "triton")):
        if not os.environ.get(variable):
            (root / sub).mkdir(parents=True, exist_ok=True)
            os.environ[variable] = str(root / sub)
    return {v: os.environ[v] for v in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}


def install_compiled(modules: list, fn=None, wrap=None, **compile_options) -> int:
    """`torch.compile(fn)` once (default: the modules' class forward), installed as each
    module's instance `forward`: one compiled function, parameters as graph inputs,
    shared by every module (`wrap`, if given, wraps it first). `uncompile_blocks`
    takes it off again. How many."""
    import types

    import torch

    if not modules:
        return 0
    compiled = torch.compile(fn or type(modules[0]).forward, **compile_options)
    if wrap is not None:
        compiled = wrap(compiled)
    for module in modules:
        module.forward = types.MethodType(compiled, module)
    return len(modules)


def compile_blocks(transformer, mode: str, dynamic: bool, fullgraph: bool = True) -> int:
    """Regional compile: one `torch.compile`d block forward installed on every repeated block.

    Not `compile_repeated_blocks`: that compiles `Module._call_impl`, which
    calls whatever `forward` is installed, so diffusers' cache hooks (which
    replace `forward`) would be traced into the graph and recompile per block.
    Installing the compiled function as the instance's `forward` keeps the
    hooks outside, in eager Python, calling compiled code. The graph is shared:
    all blocks run the same code object and their parameters are graph inputs.
    Returns the number of blocks compiled.
    """
    import torch

    names = set(getattr(transformer, "_repeated_blocks", ()) or ())
    blocks = [m for m in transformer.modules() if type(m).__name__ in names]
    if not blocks:
        raise ValueError(f"{type(transformer).__name__} declares no _repeated_blocks to compile")
    # Each distinct (batch==1, dtype, FP8 subclass) combination is a graph;
    # the default limit of 8 is close once an FP8 copy shares the function.
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 32)
    kernel = hoist_sdpa_kernel(transformer)
    return install_compiled(
        blocks,
        wrap=None if kernel is None else _entering(kernel),
        mode=None if mode == "default" else mode,
        dynamic=dynamic,
        fullgraph=fullgraph,
    )


# diffusers' `_native_{cudnn,flash,efficient,math}` backends enter
# `sdpa_kernel(...)` inside every attention call. Traced by dynamo, that context
# manager puts calls to torch._C's SDPA switches into the graph, and AOTAutograd's
# cache refuses such graphs (counter `autograd_cache_bypass`): each restart redid
# AOTAutograd for the DiT (~7 s of an H100 replica's warm-up with warm caches).
# Entered around the compiled block instead, the switches hold while the graph is
# traced, SDPA's dispatcher picks the same kernel into the graph, and it caches.
_SDPA_KERNEL_OF_BACKEND = {
    "_native_cudnn": "CUDNN_ATTENTION",
    "_native_flash": "FLASH_ATTENTION",
    "_native_efficient": "EFFICIENT_ATTENTION",
    "_native_math": "MATH",
}
HOISTED_ATTENTION = "_serve_hoisted_attention"


def hoist_sdpa_kernel(transformer):
    """If the DiT's attention is one of diffusers' pinned-kernel SDPA backends, point its
    processors at plain native SDPA and return that kernel (a `torch.nn.attention.SDPBackend`)
    for the caller to enter around the compiled code; else None. `uncompile_blocks` undoes it."""
    from torch.nn.attention import SDPBackend

    backend = attention_in_effect(transformer)
    if backend not in _SDPA_KERNEL_OF_BACKEND:
        return None
    from diffusers.models.attention_dispatch import AttentionBackendName

    for processor in _attention_processors(transformer):
        processor._attention_backend = AttentionBackendName.NATIVE
    setattr(transformer, HOISTED_ATTENTION, backend)
    return getattr(SDPBackend, _SDPA_KERNEL_OF_BACKEND[backend])


def _entering(kernel):
    """Wrap a compiled function so that it runs inside `sdpa_kernel(kernel)`."""
    import functools

    from torch.nn.attention import sdpa_kernel

    def wrap(compiled):
        @functools.wraps(compiled)
        def run(*args, **kwargs):
            with sdpa_kernel(kernel):
                return compiled(*args, **kwargs)

        return run

    return wrap


def compile_text_encoder(text_encoder) -> int:
    """Regional compile of a UMT5 encoder: one compiled block forward installed on every block.

    Eager UMT5-XXL is launch-bound at 512 tokens (24 blocks of small kernels,
    each computing its own position bias); compiled, the block's norms,
    bias and activations fuse. Graph breaks are allowed (Hugging Face code
    paths vary by version). Returns the number of blocks compiled.
    """
    blocks = [m for m in text_encoder.modules() if type(m).__name__ in ("UMT5Block", "T5Block")]
    if not blocks:
        raise ValueError(f"{type(text_encoder).__name__} has no UMT5/T5 blocks to compile")
    return install_compiled(blocks, dynamic=False)


def uncompile_blocks(transformer) -> None:
    """Back to the class's eager forward (the instance attribute goes), and the attention
    backend that `hoist_sdpa_kernel` moved out of the processors back into them."""
    for module in transformer.modules():
        if "forward" in vars(module) and hasattr(vars(module)["forward"], "__func__"):
            del module.forward
    hoisted = vars(transformer).pop(HOISTED_ATTENTION, None)
    if hoisted is not None:
        from diffusers.models.attention_dispatch import AttentionBackendName

        for processor in _attention_processors(transformer):
            processor._attention_backend = AttentionBackendName(hoisted)


# --- attention ---------------------------------------------------------------------------


def attention_in_effect(transformer) -> str:
    """The diffusers attention backend the DiT's processors really dispatch to.

    diffusers stores the choice on each processor (`_attention_backend`); None
    means its default, native SDPA, where PyTorch picks flash, cuDNN or
    memory-efficient kernels per call.
    """
    hoisted = getattr(transformer, HOISTED_ATTENTION, None)
    if hoisted is not None:
        return hoisted  # the same kernel, entered around the compiled blocks
    names = set()
    for processor in _attention_processors(transformer):
        backend = getattr(processor, "_attention_backend", None)
        names.add(getattr(backend, "value", backend) or "native")
    if not names:
        return "unknown"
    return ",".join(sorted(names))


def _attention_processors(transformer) -> list:
    """The processors that dispatch through diffusers' attention backends."""
    processors = (getattr(m, "processor", None) for m in transformer.modules())
    return [p for p in processors if p is not None and hasattr(p, "_attention_backend")]


# --- FP8 ----------------------------------------------------------------------------------


def fp8_supported() -> tuple[bool, str]:
    """FP8 matmuls need compute capability >= 8.9 (Ada/Hopper) and torchao."""
    import torch

    if not torch.cuda.is_available():
        return False, "no CUDA device"
    major, minor = torch.cuda.get_device_capability()
    if (major, minor) < (8, 9):
        return False, f"compute capability {major}.{minor} < 8.9 has no FP8 tensor cores"
    try:
        import torchao  # noqa: F401
    except ImportError as exc:
        return False, f"torchao is not installed ({exc})"
    return True, "ok"


def make_fp8_copy(transformer, granularity: str = "row"):
    """A copy of the DiT whose block linears run in FP8 (torchao, dynamic scales per row
    or per tensor: `granularity` "row" | "tensor").

    Only `blocks.*` linears: the patch embedding, the time/text embedders and
    the output projection are a sliver of the FLOPs and the most sensitive to
    rounding. The bf16 original stays for exact requests.
    """
    import copy

    import torch
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, PerTensor, quantize_

    ok, why = fp8_supported()
    if not ok:
        raise RuntimeError(f"FP8 DiT unavailable: {why}")
    clone = copy.deepcopy(transformer)
    quantize_(
        clone,
        Float8DynamicActivationFloat8WeightConfig(granularity=PerRow() if granularity == "row" else PerTensor()),
        filter_fn=lambda m, fqn: isinstance(m, torch.nn.Linear) and fqn.startswith("blocks."),
    )
    return clone


# --- VAE ----------------------------------------------------------------------------------


def prepare_vae(vae, speed: SpeedOptions) -> None:
    """Per-replica VAE settings: cuDNN autotuning, the Conv3d weight layout, fused norms."""
    import torch

    if speed.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    set_vae_channels_last(vae, speed.vae_channels_last)
    if speed.vae_fused_norms:
        fuse_vae_norms(vae)


# Graph variants the VAE's fused norms may need: channel counts (parameters keep
# static shapes) x a time axis of 1 or more x memory layouts, for each of the two
# compiled functions. Spatial size, frame count and chunk length are symbolic.
# Dynamo's default limit (8 a function) is below that for the 5B VAE, and with
# fullgraph=True hitting it raised inside a replica's warm-up decode.
VAE_NORM_RECOMPILE_LIMIT = 64


def fuse_vae_norms(vae) -> int:
    """Each RMS norm of the VAE decoder as one compiled kernel; in residual blocks with the SiLU
    that follows it folded in (the block's activation becomes the identity).

    diffusers' `WanRMS_norm.forward` upcasts, normalises, casts back, scales,
    multiplies and adds: about eight full passes over the activation, at the
    full output resolution. Compiled, it reads once and writes once. The
    class's own forward is what gets compiled (wrapped with SiLU where fused),
    so the math stays diffusers'. Returns the number of norms replaced.

    Symbolic shapes without duck shaping: with it, dynamo gives equal sizes one
    symbol (a square frame makes height == width a guard), so every new aspect
    ratio or frame count compiled again until the recompile limit failed the
    decode. Without it the graphs a decoder needs are bounded by its channel
    counts and layouts, whatever the request's size (tests/unit/test_vae_norm_compile.py).
    """
    import torch
    import torch.fx.experimental._config as shape_config
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanResidualBlock, WanRMS_norm

    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, VAE_NORM_RECOMPILE_LIMIT)

    def norm_then_silu(norm, x):
        return torch.nn.functional.silu(WanRMS_norm.forward(norm, x))

    def without_duck_shapes(compiled):
        # The flag is read when dynamo traces a new variant, i.e. inside the call.
        def call(norm, x):
            with shape_config.patch(use_duck_shape=False):
                return compiled(norm, x)

        return call

    with_silu = []
    for block in vae.decoder.modules():
        # Only where the activation is SiLU and runs right after norm1 and norm2
        # and nowhere else (WanResidualBlock.forward), may it move into the norm.
        if isinstance(block, WanResidualBlock) and isinstance(block.nonlinearity, torch.nn.SiLU):
            with_silu += [block.norm1, block.norm2]
            block.nonlinearity = torch.nn.Identity()
    fused = {id(norm) for norm in with_silu}
    alone = [m for m in vae.decoder.modules() if isinstance(m, WanRMS_norm) and id(m) not in fused]
    # fullgraph=False: past the limit a variant runs eagerly (slower, same answer) instead of failing.
    options = dict(dynamic=True, fullgraph=False, wrap=without_duck_shapes)
    return install_compiled(with_silu, norm_then_silu, **options) + install_compiled(alone, **options)


def set_vae_channels_last(vae, on: bool) -> None:
    """Conv3d weights only: the VAE's 2-D convs and norms have no 5-D layout (a module-wide
    `.to(memory_format=channels_last_3d)` raises). A channels-last weight makes
    PyTorch pick the channels-last convolution, whose output carries the layout on."""
    import torch

    fmt = torch.channels_last_3d if on else torch.contiguous_format
    for module in vae.modules():
        if isinstance(module, torch.nn.Conv3d):
            module.weight.data = module.weight.data.contiguous(memory_format=fmt)


# --- CUDA graphs --------------------------------------------------------------------------


class GraphedForward:
    """Whole-DiT-forward CUDA graphs, one per input shape, captured on demand.

    The graph replays every kernel of a forward with one launch, so small
    shapes stop paying Python and launch overhead. Inputs are copied into
    static buffers; the output is cloned, since the next replay overwrites it.
    Only for exact requests (a step cache decides on the host, mid-forward).
    """

    def __init__(self, transformer, max_tokens: int) -> None:
        import torch

        self.transformer = transformer
        self.max_tokens = max_tokens
        self.graphs: dict[tuple, tuple[Any, tuple, Any]] = {}
        self.pool = torch.cuda.graph_pool_handle()

    def wants(self, latents_shape, patch) -> bool:
        _, _, f, h, w = latents_shape
        return self.max_tokens > 0 and f * (h // patch[1]) * (w // patch[2]) // patch[0] <= self.max_tokens

    def __call__(self, hidden_states, timestep, encoder_hidden_states):
        key = (
            tuple(hidden_states.shape),
            tuple(timestep.shape),
            tuple(encoder_hidden_states.shape),
            hidden_states.dtype,
            encoder_hidden_states.dtype,
        )
        entry = self.graphs.get(key)
        if entry is None:
            entry = self._capture(hidden_states, timestep, encoder_hidden_states)
            self.graphs[key] = entry
        graph, static_in, static_out = entry
        for buf, value in zip(static_in, (hidden_states, timestep, encoder_hidden_states)):
            buf.copy_(value)
        graph.replay()
        return static_out.clone()

    def _run(self, hs, ts, enc):
        return self.transformer(hidden_states=hs, timestep=ts, encoder_hidden_states=enc, return_dict=False)[0]

    def _capture(self, hidden_states, timestep, encoder_hidden_states):
        import torch

        static_in = tuple(t.clone() for t in (hidden_states, timestep, encoder_hidden_states))
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # compiled code and cuBLAS handles initialised outside the capture
                self._run(*static_in)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            static_out = self._run(*static_in)
        log.info("captured a CUDA graph for DiT input %s", tuple(hidden_states.shape))
        return graph, static_in, static_out
