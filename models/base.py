"""Shared pieces of the skeleton encoders: the output tuple, tokenisation and transformer blocks.

Shapes: N clips, C channels, L frames, V joints, M bodies, S tokens, H hidden width.
Every module here autocasts cleanly to bf16/fp16: fixed or learned tables are cast to the
activation dtype before being added, so the residual stream never silently returns to fp32.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count


class EncoderOutput(NamedTuple):
    """What every encoder returns (see docs/design.md).

    global_feat: (N, Dt + Ds) = cat(temporal, spatial)
    temporal:    (N, Dt) pooled temporal feature
    spatial:     (N, Ds) pooled spatial feature
    frames:      (N, L', Dt) dense per-frame features
    joints:      (N, M*V, Ds) dense per-joint-token features (token index m*V + v)
    """

    global_feat: torch.Tensor
    temporal: torch.Tensor
    spatial: torch.Tensor
    frames: torch.Tensor
    joints: torch.Tensor


def check_clip(x: torch.Tensor, channels: int, clip_len: int, joints: int, bodies: int) -> None:
    """Raise a ValueError unless x is a batch of clips of shape (N, C, L, V, M)."""
    expected = (channels, clip_len, joints, bodies)
    if x.dim() != 5 or tuple(x.shape[1:]) != expected:
        raise ValueError(
            f"encoder input: expected shape (N, C, L, V, M) = (N, {', '.join(map(str, expected))}), "
            f"got {tuple(x.shape)}"
        )


def temporal_tokens(x: torch.Tensor) -> torch.Tensor:
    """(N, C, L, V, M) -> (N, L, M*V*C): one token per frame, the flattened (M, V, C) pose."""
    n, c, length, v, m = x.shape
    return x.permute(0, 2, 4, 3, 1).reshape(n, length, m * v * c)


def spatial_tokens(x: torch.Tensor) -> torch.Tensor:
    """(N, C, L, V, M) -> (N, M*V, L*C): one token per body joint, its flattened (L, C) trajectory."""
    n, c, length, v, m = x.shape
    return x.permute(0, 4, 3, 2, 1).reshape(n, m * v, length * c)


def sinusoidal_encoding(length: int, dim: int) -> torch.Tensor:
    """(length, dim) float32 table: sin on even and cos on odd channels, base 10000."""
    position = torch.arange(length, dtype=torch.float64)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq[: dim // 2])
    return table.float()


class DropPath(nn.Module):
    """Stochastic depth: zero a whole sample's branch with probability p, rescale the rest by 1/(1-p).

    Identity in eval mode or when p == 0. The mask is drawn from torch's RNG.
    """

    def __init__(self, p: float = 0.0):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"DropPath: p must be in [0, 1), got {p}")
        self.p = p

    def active(self) -> bool:
        return self.training and self.p > 0.0

    def mask(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, ..., 1) in x's dtype: 0 with probability p, else 1/(1-p)."""
        keep = 1.0 - self.p
        mask = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), device=x.device, dtype=x.dtype)
        return mask.bernoulli_(keep).div_(keep)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, ...) -> same shape."""
        return x * self.mask(x) if self.active() else x

    def residual(self, x: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        """x + self(branch) as one kernel (addcmul) when active. x, branch: (B, ...)."""
        return torch.addcmul(x, branch, self.mask(branch)) if self.active() else x + branch

    def extra_repr(self) -> str:
        return f"p={self.p}"


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v for q, k, v: (B, heads, S, d) -> (B, heads, S, d).

    F.scaled_dot_product_attention, except in bf16 / fp16 on the CPU, where it is written out
    as two batched products (``attention_products``): for the encoders' short sequences (S =
    clip length or M * V tokens, tens) and wide heads torch's fused CPU kernel is slow in low
    precision, its backward most of all (`python benchmarks/attention.py --step`, AMD EPYC with
    AVX-512 bf16, one thread: forward + backward of the calls of DSTE small 1.6-3.9x faster at
    clips of 16 and 32 frames, of the paper preset 1.1-2.0x at 64; the bf16 pretraining step of
    DSTE small 1.14-1.17x; only the tiny preset's width-32 heads are slower written out; in fp32
    the fused kernel is as fast or faster, and is kept).
    """
    if q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16):
        return attention_products(q, k, v)
    return F.scaled_dot_product_attention(q, k, v)


def attention_products(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``attention`` as two batched products, the (S, S) softmax in fp32. The same function as
    F.scaled_dot_product_attention to rounding; in bf16 the weights are rounded to bf16 before
    the second product, where the fused kernel keeps them in fp32 (about 1.5x its error
    against fp32)."""
    logits = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)     # (B, heads, S, S)
    return torch.softmax(logits, dim=-1, dtype=torch.float32).to(v.dtype) @ v


class Attention(nn.Module):
    """Self-attention (``attention``), one fused qkv projection.

    Single head by default (the paper); num_heads splits H into equal heads.
    """

    def __init__(self, dim: int, num_heads: int = 1):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"Attention: hidden width {dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, S, H) -> (B, S, H)."""
        b, s, h = x.shape
        qkv = self.qkv(x).view(b, s, 3, self.num_heads, h // self.num_heads).permute(2, 0, 3, 1, 4)
        # unbind, not qkv[0..2]: its backward stacks the three gradients in one copy, where three
        # SelectBackwards would each zero-fill and add into a full-size (3, B, heads, S, H/heads).
        q, k, v = qkv.unbind(0)
        out = attention(q, k, v)  # (B, heads, S, H/heads)
        return self.proj(out.transpose(1, 2).reshape(b, s, h))


class MLP(nn.Module):
    """Per-token Linear(dim -> hidden) -> activation -> Linear(hidden -> dim)."""

    def __init__(self, dim: int, hidden: int, activation: type[nn.Module] = nn.GELU):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = activation()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., dim) -> (..., dim)."""
        return self.fc2(self.act(self.fc1(x)))


class TokenEmbedding(nn.Module):
    """Linear(in -> H) -> LayerNorm -> ReLU -> Linear(H -> H)."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.fc2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, S, in_dim) -> (N, S, H)."""
        return self.fc2(F.relu(self.norm(self.fc1(x))))


def add_table(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """x (N, S, H) + table (S, H), in x's dtype (keeps bf16 activations bf16 under autocast)."""
    return x + table.to(x.dtype)


class PointwiseConv(nn.Linear):
    """A kernel-1 convolution over tokens, (..., in) -> (..., out): a Linear that keeps PyTorch's
    Conv1d / Linear initialisation (Kaiming-uniform weight, uniform bias) in
    `init_transformer_weights`, as the USDRL release's Conv1d does (METHOD.md section 10)."""


def init_transformer_weights(module: nn.Module, seed: int) -> None:
    """The USDRL release's initialisation (METHOD.md section 10), from one seeded torch.Generator,
    in module order:

    - every Linear weight, attention output projections included: normal std 0.02 truncated at
      +-2 (absolute, so in effect untruncated); its bias 0;
    - attention input projections (Attention.qkv): Xavier-uniform weight (bound
      sqrt(6 / (H + 3H))), bias 0 (torch's MultiheadAttention in the release);
    - PointwiseConv: PyTorch's default, weight and bias ~ U(-1/sqrt(in), 1/sqrt(in));
    - LayerNorm weight 1 and bias 0;
    - any other parameter (a learned positional table): normal std 0.02 truncated at +-2.

    Parameters on the meta device are left alone (used for instant parameter counting).
    """
    generator = torch.Generator().manual_seed(seed)
    qkv = {sub.qkv for sub in module.modules() if isinstance(sub, Attention)}

    def draw(param: nn.Parameter, init) -> None:
        values = torch.empty(param.shape)
        init(values)
        param.copy_(values)

    def trunc_normal(values):
        nn.init.trunc_normal_(values, std=0.02, a=-2.0, b=2.0, generator=generator)

    def uniform(bound):
        return lambda values: nn.init.uniform_(values, -bound, bound, generator=generator)

    with torch.no_grad():
        for sub in module.modules():
            for name, param in sub.named_parameters(recurse=False):
                if param.is_meta:
                    continue
                if isinstance(sub, nn.LayerNorm):
                    param.fill_(1.0 if name == "weight" else 0.0)
                elif isinstance(sub, PointwiseConv):
                    draw(param, uniform(1.0 / math.sqrt(sub.in_features)))
                elif isinstance(sub, nn.Linear) and name == "bias":
                    param.zero_()
                elif sub in qkv:
                    draw(param, lambda values: nn.init.xavier_uniform_(values, generator=generator))
                else:
                    draw(param, trunc_normal)


def two_stream_layer_id(name: str) -> int:
    """Layer-decay id of a two-stream encoder's parameter `name`: i + 1 for layer i of either
    stream (`t_stream.layers.i.*`, `s_stream.layers.i.*`), 0 for everything else (token
    embeddings, positional table)."""
    parts = name.split(".")
    if parts[0] in ("t_stream", "s_stream") and parts[1] == "layers":
        return int(parts[2]) + 1
    return 0


def one_dim_parameter_names(module: nn.Module) -> set[str]:
    """Names of the parameters with at most one dimension (biases, norm scales and shifts)."""
    return {name for name, param in module.named_parameters() if param.ndim <= 1}


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (works on the meta device)."""
    return sum(p.numel() for p in module.parameters())


def _cpu_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of aten._scaled_dot_product_flash_attention_for_cpu (called with tensor shapes)."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def count_forward_flops(model: nn.Module, x: torch.Tensor) -> int:
    """Forward FLOPs (2 per multiply-add) of model(x), counting CPU fused attention too.

    torch's FlopCounterMode knows the CUDA attention kernels but not the CPU one, so it is mapped
    to the same formula here.
    """
    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops()


class Stream(nn.Module):
    """A stack of token layers with a positional table added before each. (B, S, H) -> (B, S, H)."""

    def __init__(self, layers: list[nn.Module]):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """x: (B, S, H), pos: (S, H)."""
        for layer in self.layers:
            x = layer(add_table(x, pos))
        return x


class TwoStreamTransformer(nn.Module):
    """Temporal and spatial token streams over a clip (docs/METHOD.md section 2).

    Temporal: L tokens (flattened (M, V, C) poses) -> embedding MLP -> t_stream with a fixed
    sinusoidal table. Spatial: M*V tokens (flattened (L, C) trajectories) -> embedding MLP ->
    s_stream with a learned table. forward(x (N, C, L, V, M)) -> EncoderOutput with frames
    (N, L, H), joints (N, M*V, H), temporal/spatial the max over tokens (N, H), global_feat
    (N, 2H). Subclasses supply the streams; initial weights are a function of `seed` only.
    """

    def __init__(
        self,
        clip_len: int,
        joints: int,
        bodies: int,
        channels: int,
        hidden: int,
        t_stream: Stream,
        s_stream: Stream,
        seed: int,
    ):
        super().__init__()
        self.clip_len, self.joints, self.bodies, self.channels = clip_len, joints, bodies, channels
        self.temporal_dim = self.spatial_dim = hidden
        self.feature_dim = 2 * hidden
        self.t_embed = TokenEmbedding(bodies * joints * channels, hidden)
        self.s_embed = TokenEmbedding(clip_len * channels, hidden)
        self.register_buffer("t_pos", sinusoidal_encoding(clip_len, hidden), persistent=False)
        self.s_pos = nn.Parameter(torch.zeros(bodies * joints, hidden))
        self.t_stream = t_stream
        self.s_stream = s_stream
        init_transformer_weights(self, seed)

    @property
    def num_layers(self) -> int:
        """Layer-decay depth: the stream depth (temporal and spatial layer i share a layer id)."""
        return len(self.t_stream.layers)

    def layer_id(self, name: str) -> int:
        """Layer id of parameter `name` (as in named_parameters()): see two_stream_layer_id."""
        return two_stream_layer_id(name)

    def no_weight_decay(self) -> set[str]:
        """Parameters exempt from weight decay: biases, LayerNorm weights, the positional table."""
        return one_dim_parameter_names(self) | {"s_pos"}

    def forward(self, x: torch.Tensor) -> EncoderOutput:
        """x: (N, C, L, V, M)."""
        check_clip(x, self.channels, self.clip_len, self.joints, self.bodies)
        frames = self.t_stream(self.t_embed(temporal_tokens(x)), self.t_pos)  # (N, L, H)
        joints = self.s_stream(self.s_embed(spatial_tokens(x)), self.s_pos)  # (N, M*V, H)
        temporal = frames.amax(dim=1)
        spatial = joints.amax(dim=1)
        return EncoderOutput(torch.cat([temporal, spatial], dim=1), temporal, spatial, frames, joints)


def preset_kwargs(encoder: str, presets: dict[str, dict], preset: str, overrides: dict) -> dict:
    """The constructor arguments of `preset` with `overrides` applied (any preset key, or seed).

    ValueError naming the valid presets / override keys otherwise.
    """
    if preset not in presets:
        raise ValueError(f"{encoder}: unknown preset {preset!r}; valid presets: {', '.join(presets)}")
    allowed = set(presets[preset]) | {"seed"}
    unknown = set(overrides) - allowed
    if unknown:
        raise ValueError(f"{encoder}: unknown overrides {sorted(unknown)}; valid: {sorted(allowed)}")
    return {**presets[preset], **overrides}
