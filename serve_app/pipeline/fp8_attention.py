"""FP8 self-attention for the DiT: cuDNN's FP8 SDPA, through nvidia-cudnn-frontend.

Why this kernel: on an H100 at the Wan 5B shapes (B=2, 24 heads, d=128),
SageAttention's Triton kernels were slower than cuDNN's bf16 SDPA, and the
other FP8 candidates either do not install on this image or are not Hopper
kernels; bench/bench_attention.py measures the candidates in one run and
docs/performance.md has the table.

Numerics (per-tensor scaling, recomputed on every call, no amax history: a
diffusion step's activations change with the timestep):
- Q, K and V are cast to e4m3 with scale 448 / amax(x) each.
- Scores are softmaxed in fp32 inside the kernel; the unnormalised
  probabilities (in [0, 1], flash-attention style) go to FP8 with scale 448.
- Hopper's FP8 SDPA writes O in FP8 (a bf16 O exists only on Blackwell). O is
  a convex combination of V's rows, so |O| <= amax(V) and V's scale is O's;
  O is dequantized right after the kernel.

Only the blocks' self-attention (`attn1`) goes to FP8: it is where the time is
(27,280 x 27,280 at 720p), while cross-attention sees 512 text tokens.
`reference_fp8_sdpa` is the same arithmetic in plain torch, so CPU tests check
the processor and the quantization, and GPU tests check the kernel against it.

torch and cudnn are imported inside functions: importing this module loads
neither.
"""

from __future__ import annotations

import math
import threading
from typing import Any

E4M3_MAX = 448.0
OP_NAME = "wan_serve::cudnn_fp8_sdpa"


def fp8_attention_supported() -> tuple[bool, str]:
    """cuDNN's FP8 SDPA needs a Hopper card (sm_90) and nvidia-cudnn-frontend."""
    import torch

    if not torch.cuda.is_available():
        return False, "no CUDA device"
    major, minor = torch.cuda.get_device_capability()
    if major != 9:
        return False, f"cuDNN's FP8 SDPA here is wired for Hopper (sm_90); this card is sm_{major}{minor}"
    try:
        import cudnn  # noqa: F401
    except ImportError as exc:
        return False, f"nvidia-cudnn-frontend is not installed ({exc}); pip install 'wan-serve[fp8-attention]'"
    return True, "ok"


# --- quantization (plain torch: traced into the compiled block) ---------------------------


def quantize_e4m3(x):
    """(x in float8_e4m3fn, its descale as a 1x1x1x1 fp32 tensor): per-tensor, scale 448/amax."""
    import torch

    amax = x.detach().abs().amax().float().clamp(min=1e-12)
    scale = E4M3_MAX / amax
    return (x.float() * scale).to(torch.float8_e4m3fn), (1.0 / scale).reshape(1, 1, 1, 1)


def reference_fp8_sdpa(q8, k8, v8, descale_q, descale_k, descale_v, scale_o, attn_scale: float):
    """What the kernel computes, in fp32 torch: BSHD e4m3 in, BSHD e4m3 O out.

    The one difference from cuDNN is where P is rounded: the kernel rounds the
    unnormalised probabilities of each key tile against its running row max,
    this rounds them against the full row's max (the same values once the
    row's max is in the first tile). Used by CPU tests and as the GPU check.
    """
    import torch

    q = q8.float() * descale_q.flatten()
    k = k8.float() * descale_k.flatten()
    v = v8.float() * descale_v.flatten()
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * attn_scale
    unnormalised = torch.exp(scores - scores.amax(dim=-1, keepdim=True))
    p8 = (unnormalised * E4M3_MAX).to(torch.float8_e4m3fn).float() / E4M3_MAX
    out = torch.einsum("bhqk,bkhd->bqhd", p8, v) / unnormalised.sum(dim=-1).transpose(1, 2).unsqueeze(-1)
    return (out * scale_o.flatten()).to(torch.float8_e4m3fn)


def fp8_sdpa(query, key, value, kernel=None):
    """Self-attention of BSHD bf16 tensors through FP8; BSHD out, in the query's dtype.

    `kernel` defaults to the cuDNN op; tests pass `reference_fp8_sdpa`.
    """
    import torch

    q8, descale_q = quantize_e4m3(query)
    k8, descale_k = quantize_e4m3(key)
    v8, descale_v = quantize_e4m3(value)
    scale_o = 1.0 / descale_v  # |O| <= amax(V): V's scale fits O
    attn_scale = 1.0 / math.sqrt(query.shape[-1])
    if kernel is None:
        kernel = torch.ops.wan_serve.cudnn_fp8_sdpa
    out8 = kernel(q8, k8, v8, descale_q, descale_k, descale_v, scale_o, attn_scale)
    return (out8.float() * descale_v.flatten()).to(query.dtype)


# --- the cuDNN kernel, as a torch custom op (opaque to dynamo, so blocks compile whole) ---


class _CudnnGraphs:
    """One built cuDNN graph per (shape, strides, device), and a cuDNN handle per thread
    (handles are not thread-safe). The first call of a shape builds every plan cuDNN's
    heuristics offer and keeps the fastest on that call's own tensors (`plans` records
    the times): heuristics mode A's first pick is not always the fastest engine."""

    def __init__(self) -> None:
        self._graphs: dict[tuple, tuple[Any, dict, Any]] = {}
        self._lock = threading.Lock()
        self._local = threading.local()
        self.plans: dict[tuple, dict[str, float]] = {}

    def handle(self, device):
        import cudnn
        import torch

        handles = getattr(self._local, "handles", None)
        if handles is None:
            handles = self._local.handles = {}
        if device not in handles:
            with torch.cuda.device(device):
                handles[device] = cudnn.create_handle()
        return handles[device]

    def run(self, inputs: dict, attn_scale: float):
        """Execute the graph for `inputs` (name -> tensor, outputs included)."""
        import cudnn
        import torch

        q8 = inputs["q"]
        key = (tuple(q8.shape), tuple(q8.stride()), q8.device, attn_scale)
        handle = self.handle(q8.device)
        cudnn.set_stream(handle=handle, stream=torch.cuda.current_stream(q8.device).cuda_stream)
        with self._lock:
            if key not in self._graphs:
                self._graphs[key] = self._build(q8, attn_scale, handle)
                self._pick_fastest(key, inputs, handle)
        graph, tensors, workspace = self._graphs[key]
        graph.execute({tensors[n]: t for n, t in inputs.items()}, workspace, handle=handle)

    def _build(self, q8, attn_scale: float, handle):
        import cudnn

        e4m3, fp32 = cudnn.data_type.FP8_E4M3, cudnn.data_type.FLOAT
        graph = cudnn.pygraph(io_data_type=e4m3, intermediate_data_type=fp32, compute_data_type=fp32, handle=handle)
        batch, sequence, heads, dim = q8.shape
        # cuDNN takes (B, H, S, D) dims; the tensors stay BSHD in memory, described by strides.
        dims = (batch, heads, sequence, dim)
        strides = (q8.stride(0), q8.stride(2), q8.stride(1), q8.stride(3))
        q, k, v = (graph.tensor(name=n, dim=dims, stride=strides, data_type=e4m3) for n in "qkv")
        scalar = {"dim": (1, 1, 1, 1), "stride": (1, 1, 1, 1), "data_type": fp32}
        names = ("descale_q", "descale_k", "descale_v", "descale_s", "scale_s", "scale_o")
        scalars = {n: graph.tensor(name=n, **scalar) for n in names}
        out, _, amax_s, amax_o = graph.sdpa_fp8(
            q=q,
            k=k,
            v=v,
            **scalars,
            is_inference=True,
            attn_scale=attn_scale,
            use_causal_mask=False,
            name="fp8_self_attention",
        )
        out.set_output(True).set_dim(dims).set_stride(strides).set_data_type(e4m3)
        for amax in (amax_s, amax_o):
            amax.set_output(True).set_dim((1, 1, 1, 1)).set_stride((1, 1, 1, 1)).set_data_type(fp32)
        graph.validate()
        graph.build_operation_graph()
        graph.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
        graph.check_support()
        graph.build_plans(cudnn.build_plan_policy.ALL)
        tensors = {"q": q, "k": k, "v": v, "out": out, "amax_s": amax_s, "amax_o": amax_o, **scalars}
        return graph, tensors, None

    def _pick_fastest(self, key, inputs: dict, handle) -> None:
        import torch

        graph, tensors, _ = self._graphs[key]
        pack = {tensors[n]: t for n, t in inputs.items()}
        times: dict[int, float] = {}
        names: dict[int, str] = {}
        for index in range(graph.get_execution_plan_count()):
            try:
                graph.build_plan_at_index(index)
                workspace = torch.empty(graph.get_workspace_size(), device=inputs["q"].device, dtype=torch.uint8)
                graph.execute_plan_at_index(pack, workspace, index, handle=handle)  # first call: not timed
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(3):
                    graph.execute_plan_at_index(pack, workspace, index, handle=handle)
                end.record()
                end.synchronize()
                times[index] = start.elapsed_time(end) / 3
                names[index] = str(graph.get_plan_name_at_index(index))
            except Exception:  # noqa: BLE001 - a plan cuDNN cannot build or run here is just not a candidate
                continue
        if not times:
            raise RuntimeError("cuDNN built no plan for FP8 SDPA at shape " + str(key[0]))
        best = min(times, key=times.get)
        graph.build_plan_at_index(best)
        workspace = torch.empty(graph.get_workspace_size(), device=inputs["q"].device, dtype=torch.uint8)
        self._graphs[key] = (graph, tensors, workspace)
        self.plans[key] = {f"{names[i]}{' (chosen)' if i == best else ''}": round(ms, 3) for i, ms in times.items()}


_GRAPHS = _CudnnGraphs()
_CONSTANTS: dict[Any, tuple] = {}


def _softmax_scales(device):
    """scale_s / descale_s: the unnormalised probabilities are in [0, 1], so 448 and 1/448."""
    import torch

    if device not in _CONSTANTS:
        one = torch.ones(1, 1, 1, 1, dtype=torch.float32, device=device)
        _CONSTANTS[device] = (one * E4M3_MAX, one / E4M3_MAX, torch.empty_like(one), torch.empty_like(one))
    return _CONSTANTS[device]


def _cudnn_fp8_sdpa(q8, k8, v8, descale_q, descale_k, descale_v, scale_o, attn_scale: float):
    import torch

    scale_s, descale_s, amax_s, amax_o = _softmax_scales(q8.device)
    out = torch.empty_like(q8)
    # One stride pattern per graph: K and V are laid out as Q is.
    k8 = k8 if k8.stride() == q8.stride() else k8.contiguous()
    v8 = v8 if v8.stride() == q8.stride() else v8.contiguous()
    inputs = {
        "q": q8,
        "k": k8,
        "v": v8,
        "descale_q": descale_q,
        "descale_k": descale_k,
        "descale_v": descale_v,
        "descale_s": descale_s,
        "scale_s": scale_s,
        "scale_o": scale_o,
        "out": out,
        "amax_s": amax_s,
        "amax_o": amax_o,
    }
    _GRAPHS.run(inputs, attn_scale)
    return out


def cudnn_plan_times() -> dict[str, dict[str, float]]:
    """Per shape, the ms of every cuDNN plan tried and which was chosen (for /healthz and benches)."""
    return {"x".join(map(str, key[0])): plans for key, plans in _GRAPHS.plans.items()}


def register_cudnn_op() -> None:
    """Register `torch.ops.wan_serve.cudnn_fp8_sdpa` (once per process)."""
    import torch

    if hasattr(torch.ops.wan_serve, "cudnn_fp8_sdpa"):
        return
    op = torch.library.custom_op(OP_NAME, _cudnn_fp8_sdpa, mutates_args=(), schema=OP_SCHEMA)
    op.register_fake(lambda q8, *args: q8.new_empty(q8.shape))


# Spelled out: this module's annotations are strings (PEP 563), which infer_schema cannot read.
OP_SCHEMA = (
    "(Tensor q8, Tensor k8, Tensor v8, Tensor descale_q, Tensor descale_k, Tensor descale_v, "
    "Tensor scale_o, float attn_scale) -> Tensor"
)


# --- wiring into the DiT ------------------------------------------------------------------


class Fp8SelfAttnProcessor:
    """A WanAttention processor for self-attention (`attn1`) that attends in FP8.

    The projections, q/k RMS norms, rotary embedding and output projection are
    WanAttnProcessor's arithmetic; only the attention call differs. `attention`
    (BSHD q, k, v -> BSHD out) is `fp8_sdpa` unless a test passes another.
    """

    def __init__(self, attention=None, min_tokens: int = 0) -> None:
        self.attention = attention or fp8_sdpa
        self.min_tokens = min_tokens  # below it, exact bf16 attention (FP8 does not pay there)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        if encoder_hidden_states is not None or attention_mask is not None or attn.add_k_proj is not None:
            raise ValueError("Fp8SelfAttnProcessor serves unmasked self-attention only (the blocks' attn1)")
        if attn.fused_projections:
            query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        query = attn.norm_q(query).unflatten(2, (attn.heads, -1))
        key = attn.norm_k(key).unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))
        if rotary_emb is not None:
            query = rotate(query, *rotary_emb)
            key = rotate(key, *rotary_emb)
        if query.shape[1] >= self.min_tokens:
            out = self.attention(query, key, value)
        else:
            out = bf16_sdpa(query, key, value)
        out = out.flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))


def bf16_sdpa(query, key, value):
    """Exact attention of BSHD tensors, as diffusers' native backend computes it (SDPA picks
    the kernel; the DiT's compiled blocks run inside the profile's pinned one)."""
    import torch

    out = torch.nn.functional.scaled_dot_product_attention(
        query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)
    )
    return out.transpose(1, 2)


def rotate(x, freqs_cos, freqs_sin):
    """Wan's rotary embedding on BSHD `x`: pairs (x[2i], x[2i+1]) rotated by the i-th angle."""
    import torch

    even, odd = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = freqs_cos[..., 0::2], freqs_sin[..., 1::2]
    return torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2).type_as(x)


def use_fp8_self_attention(transformer, attention=None, min_tokens: int = 0) -> int:
    """Point every block's self-attention at `Fp8SelfAttnProcessor`; how many blocks.

    On a copy that shares the original's weights (`sharing_weights`), exact
    requests keep the original's processors. Registers the cuDNN op first
    when the kernel is the default one. Sequences under `min_tokens` attend exactly.
    """
    if attention is None:
        register_cudnn_op()
    processor = Fp8SelfAttnProcessor(attention, min_tokens)
    count = 0
    for block in transformer.blocks:
        block.attn1.processor = processor
        count += 1
    return count


def sharing_weights(module):
    """A deep copy of `module` whose parameters and buffers are the original's tensors:
    new submodules (so their processors and compiled forwards can differ), no new memory."""
    import copy

    memo: dict[int, Any] = {id(t): t for t in module.parameters()}
    memo.update({id(t): t for t in module.buffers()})
    return copy.deepcopy(module, memo)
