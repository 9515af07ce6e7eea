"""Diffusion Transformers for text-to-image rectified flow, in the paper's two conditioning designs.

- `in_context` (the paper's base design): one sequence [timestep token, text tokens, image tokens]
  through plain pre-norm transformer blocks; the head reads the image tokens.
- `cross_attention` (PixArt-alpha style): self-attention over image tokens, cross-attention from
  image tokens to [a learned null token, text tokens], MLP; the timestep enters through
  adaLN-single (one shared modulation projection plus a learned per-block table).

Both share the patch embedding, fixed 2-D sin-cos positions, the timestep embedder and the size
ladder, so their scaling exponents can be compared (the paper's Table 1). The model predicts the
velocity v = eps - x0 (see `scaling.objective`).

Parameter count N (DESIGN.md): all trainable DiT parameters, embeddings included; the frozen text
encoder is not part of N. `embedding` counts everything outside the transformer stack (patch
embedding, text projection, timestep embedder, null token, adaLN-single projection, head);
`non_embedding` counts the blocks and the final norm.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Conditioning = Literal["in_context", "cross_attention"]
FREQ_DIM = 256  # sinusoidal timestep features, as in facebookresearch/DiT
_GELU_C = 0.044715  # the cubic term of GELU's tanh approximation
_GELU_K = 2.0 * math.sqrt(2.0 / math.pi)  # tanh(a) = 2 sigmoid(2a) - 1: the doubled slope

_fast_paths = True


@contextmanager
def reference_ops() -> Iterator[None]:
    """Run the plain PyTorch formulation of every layer inside this block: one `nn.Linear` per
    projection, `F.gelu` and `scaled_dot_product_attention`, instead of the fused projections,
    the CPU GELU and the CPU attention of small heads used by default.

    Both compute the same functions with the same parameters (results differ by float rounding
    only); tests and the throughput benchmark compare them side by side.
    """
    global _fast_paths
    saved, _fast_paths = _fast_paths, False
    try:
        yield
    finally:
        _fast_paths = saved


def fast_paths_enabled() -> bool:
    """Whether layers take their fused / CPU-specific forms (see `reference_ops`)."""
    return _fast_paths


@dataclass(frozen=True)
class ModelShape:
    """Depth (blocks), width (model dimension) and attention heads of one DiT."""

    depth: int
    width: int
    heads: int

    def __post_init__(self) -> None:
        for name in ("depth", "width", "heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1")
        if self.width % self.heads:
            raise ValueError(f"width={self.width} is not divisible by heads={self.heads}")


@dataclass(frozen=True)
class DiTConfig:
    """A DiT: its shape, its conditioning design and the dimensions of its inputs."""

    shape: ModelShape
    conditioning: Conditioning = "in_context"
    image_size: int = 32  # pixels, or latent side length
    in_channels: int = 3
    patch_size: int = 4
    text_dim: int = 384  # width of the frozen text encoder's token features
    text_len: int = 16  # text tokens per sample, padded
    mlp_ratio: int = 4

    def __post_init__(self) -> None:
        if self.conditioning not in ("in_context", "cross_attention"):
            raise ValueError(f"conditioning {self.conditioning!r} is not in_context or "
                             "cross_attention")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size={self.image_size} is not divisible by "
                             f"patch_size={self.patch_size}")
        for name in ("in_channels", "text_dim", "text_len", "mlp_ratio"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1")

    @property
    def image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def patch_dim(self) -> int:
        return self.in_channels * self.patch_size**2


@dataclass(frozen=True)
class ParamCount:
    """Parameters of a DiT: total (N), embedding (outside the blocks) and non-embedding."""

    total: int
    embedding: int
    non_embedding: int


def parameter_count(cfg: DiTConfig) -> ParamCount:
    """N in closed form, without building the model (equal to summing `DiT(cfg).parameters()`)."""
    w, d, h = cfg.shape.width, cfg.shape.depth, cfg.mlp_ratio * cfg.shape.width
    linear = lambda i, o: i * o + o  # noqa: E731
    attention = 4 * linear(w, w)
    mlp = linear(w, h) + linear(h, w)
    norm = 2 * w
    embed = (linear(cfg.patch_dim, w) + linear(cfg.text_dim, w)
             + linear(FREQ_DIM, w) + linear(w, w) + linear(w, cfg.patch_dim))
    if cfg.conditioning == "in_context":
        block = 2 * norm + attention + mlp
    else:
        # Only the cross-attention norm is affine (adaLN modulates the other two); a 6 w table.
        block = norm + 2 * attention + mlp + 6 * w
        embed += w + linear(w, 6 * w)  # null text token, shared adaLN-single projection
    stack = d * block + norm  # blocks and the final norm
    return ParamCount(total=embed + stack, embedding=embed, non_embedding=stack)


def sincos_2d(width: int, grid: int) -> Tensor:
    """Fixed 2-D sin-cos position embedding [grid * grid, width] (MAE / DiT style)."""
    quarter = width // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / max(1, quarter))
    ys, xs = torch.meshgrid(torch.arange(grid, dtype=torch.float64),
                            torch.arange(grid, dtype=torch.float64), indexing="ij")
    parts = []
    for pos in (ys.flatten(), xs.flatten()):
        angles = pos[:, None] * omega[None, :]
        parts += [angles.sin(), angles.cos()]
    emb = torch.cat(parts, dim=1)
    return F.pad(emb, (0, width - emb.shape[1])).float()


def timestep_features(t: Tensor, dim: int = FREQ_DIM) -> Tensor:
    """Sinusoidal features of t in [0, 1], scaled to DiT's 0..1000 timestep range."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None, :]
    return torch.cat([args.cos(), args.sin()], dim=1)


class _SigmoidGELU(torch.autograd.Function):
    """GELU's tanh approximation as x * sigmoid(K (x + C x^3)), identical to
    0.5 x (1 + tanh(K/2 (x + C x^3))); torch's own backward kernel for the gradient.

    On this CPU's float32 path torch's tanh is several times slower than its sigmoid, which
    makes this forward about twice as fast as `F.gelu(approximate="tanh")`.
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        z = x * x
        z.mul_(_GELU_C * _GELU_K).add_(_GELU_K).mul_(x)
        return z.sigmoid_().mul_(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return torch.ops.aten.gelu_backward(grad, x, approximate="tanh")


def gelu_tanh(x: Tensor) -> Tensor:
    """GELU, tanh approximation; the sigmoid form for float32 CPU tensors outside compilation
    (elsewhere `F.gelu`: fused on GPUs, fused by the compiler, one rounding in bf16)."""
    if (_fast_paths and x.device.type == "cpu" and x.dtype == torch.float32
            and not torch.compiler.is_compiling()):
        return _SigmoidGELU.apply(x)
    return F.gelu(x, approximate="tanh")


class GELU(nn.Module):
    """`nn.GELU(approximate="tanh")` through `gelu_tanh` (no parameters)."""

    def forward(self, x: Tensor) -> Tensor:
        return gelu_tanh(x)


def _linears(x: Tensor, layers: tuple[nn.Linear, ...]) -> tuple[Tensor, ...]:
    """Several linear layers of one input as one matmul over their stacked weights: fewer,
    larger kernels, which is what tiny widths are short of. Parameters stay separate. CPU only:
    that is where it was measured (GPUs, DDP and FSDP take the plain layers)."""
    if not _fast_paths or len(layers) == 1 or x.device.type != "cpu":
        return tuple(layer(x) for layer in layers)
    weight = torch.cat([layer.weight for layer in layers])
    bias = torch.cat([layer.bias for layer in layers])
    return F.linear(x, weight, bias).split([layer.out_features for layer in layers], dim=-1)


SMALL_HEAD_DIM = 48  # at most this many dimensions per head, CPU attention runs as two bmm


def _small_cpu_heads(q: Tensor, head_dim: int) -> bool:
    return (_fast_paths and head_dim <= SMALL_HEAD_DIM and q.device.type == "cpu"
            and q.dtype == torch.float32 and not torch.compiler.is_compiling())


def _bmm_attention(q: Tensor, k: Tensor, v: Tensor, heads: int,
                   key_mask: Tensor | None) -> Tensor:
    """softmax(q k^T / sqrt(d) + mask) v for q [B, N, W], k and v [B, S, W] -> [B, N, W], as
    batched matmuls with the mask folded into the first (`baddbmm`). At 24-40 dimensions per
    head this step is 7-9% faster on the CPU than `scaled_dot_product_attention`'s flash kernel,
    whose blocking does not pay at that size; from 64 they are even."""
    b, n, w = q.shape
    s, d = k.shape[1], w // heads
    split = lambda y, length: (y.reshape(b, length, heads, d).transpose(1, 2)  # noqa: E731
                               .reshape(b * heads, length, d))
    q, k, v = split(q, n), split(k, s), split(v, s)
    if key_mask is None:
        scores = torch.bmm(q, k.transpose(1, 2)).mul_(d**-0.5)
    else:
        bias = torch.zeros(b, 1, s, dtype=q.dtype).masked_fill_(~key_mask[:, None, :],
                                                                 float("-inf"))
        scores = torch.baddbmm(bias.repeat_interleave(heads, 0) if heads > 1 else bias,
                               q, k.transpose(1, 2), alpha=d**-0.5)
    y = torch.bmm(scores.softmax(-1), v)
    return y.view(b, heads, n, d).transpose(1, 2).reshape(b, n, w)


class Attention(nn.Module):
    """Multi-head attention through `scaled_dot_product_attention` (flash kernels on GPU).

    Self-attention (`context is x`) projects q, k and v in one matmul, cross-attention k and v;
    masked self-attention of small float32 heads on the CPU goes through `_bmm_attention`.
    """

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.out = (nn.Linear(width, width) for _ in range(4))

    def forward(self, x: Tensor, context: Tensor, key_mask: Tensor | None = None) -> Tensor:
        b, n, w = x.shape
        split = lambda y: y.view(b, y.shape[1], self.heads, w // self.heads).transpose(1, 2)  # noqa: E731
        mask = None if key_mask is None else key_mask[:, None, None, :]
        if context is x:
            q, k, v = _linears(x, (self.q, self.k, self.v))
        else:
            (q,), (k, v) = _linears(x, (self.q,)), _linears(context, (self.k, self.v))
        # Measured faster for the in-context design's masked self-attention only; the
        # cross-attention design's two attentions gain nothing from it on this CPU.
        if context is x and key_mask is not None and _small_cpu_heads(q, w // self.heads):
            return self.out(_bmm_attention(q, k, v, self.heads, key_mask))
        y = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=mask)
        return self.out(y.transpose(1, 2).reshape(b, n, w))


class MLP(nn.Sequential):
    def __init__(self, width: int, hidden: int):
        super().__init__(nn.Linear(width, hidden), GELU(), nn.Linear(hidden, width))


class InContextBlock(nn.Module):
    """Pre-norm transformer block over the joint [time, text, image] sequence."""

    def __init__(self, width: int, heads: int, hidden: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.mlp = MLP(width, hidden)

    def forward(self, x: Tensor, key_mask: Tensor) -> Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, key_mask)
        return x + self.mlp(self.norm2(x))


class CrossAttentionBlock(nn.Module):
    """Self-attention, cross-attention to text, MLP; timestep by adaLN-single (PixArt-alpha)."""

    def __init__(self, width: int, heads: int, hidden: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False)
        self.norm2 = nn.LayerNorm(width)
        self.norm3 = nn.LayerNorm(width, elementwise_affine=False)
        self.attn = Attention(width, heads)
        self.cross = Attention(width, heads)
        self.mlp = MLP(width, hidden)
        self.table = nn.Parameter(torch.randn(6, width) / math.sqrt(width))

    def forward(self, x: Tensor, text: Tensor, text_mask: Tensor, t_mod: Tensor) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = (self.table[None] + t_mod).unbind(1)
        h = self.norm1(x) * (1 + scale1[:, None]) + shift1[:, None]
        x = x + gate1[:, None] * self.attn(h, h)
        x = x + self.cross(self.norm2(x), text, text_mask)
        h = self.norm3(x) * (1 + scale2[:, None]) + shift2[:, None]
        return x + gate2[:, None] * self.mlp(h)


class DiT(nn.Module):
    """Predicts the rectified-flow velocity for images x_t, timesteps t and text token features."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.cfg = cfg
        w, hidden = cfg.shape.width, cfg.mlp_ratio * cfg.shape.width
        self.patch = nn.Linear(cfg.patch_dim, w)
        self.register_buffer("pos", sincos_2d(w, cfg.image_size // cfg.patch_size),
                             persistent=False)
        self.text_proj = nn.Linear(cfg.text_dim, w)
        self.time = nn.Sequential(nn.Linear(FREQ_DIM, w), nn.SiLU(), nn.Linear(w, w))
        if cfg.conditioning == "in_context":
            self.blocks = nn.ModuleList(InContextBlock(w, cfg.shape.heads, hidden)
                                        for _ in range(cfg.shape.depth))
        else:
            self.null_text = nn.Parameter(torch.zeros(1, 1, w))
            self.adaln = nn.Sequential(nn.SiLU(), nn.Linear(w, 6 * w))
            self.blocks = nn.ModuleList(CrossAttentionBlock(w, cfg.shape.heads, hidden)
                                        for _ in range(cfg.shape.depth))
        self.norm = nn.LayerNorm(w)
        self.head = nn.Linear(w, cfg.patch_dim)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.time[0].weight, std=0.02)
        nn.init.normal_(self.time[2].weight, std=0.02)
        # As in DiT: the zero head starts the model at v = 0, zero gates close adaLN branches.
        nn.init.zeros_(self.head.weight)
        if self.cfg.conditioning == "cross_attention":
            nn.init.zeros_(self.adaln[1].weight)
            nn.init.normal_(self.null_text, std=0.02)
            for block in self.blocks:  # gate rows of each table (adaLN-Zero)
                nn.init.zeros_(block.table[2::3])

    def patchify(self, x: Tensor) -> Tensor:
        p = self.cfg.patch_size
        b, c, hgt, wid = x.shape
        x = x.reshape(b, c, hgt // p, p, wid // p, p).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(b, (hgt // p) * (wid // p), p * p * c)

    def unpatchify(self, tokens: Tensor) -> Tensor:
        p, c = self.cfg.patch_size, self.cfg.in_channels
        g = self.cfg.image_size // p
        x = tokens.reshape(tokens.shape[0], g, g, p, p, c).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(tokens.shape[0], c, g * p, g * p)

    def forward(self, x: Tensor, t: Tensor, text: Tensor, text_mask: Tensor) -> Tensor:
        """x [B,C,H,W], t [B] in [0, 1], text [B,L,text_dim], text_mask [B,L] (True = real token).
        Returns the velocity, shaped like x."""
        image = self.patch(self.patchify(x)) + self.pos.to(x.dtype)
        temb = self.time(timestep_features(t).to(image.dtype))
        txt = self.text_proj(text.to(image.dtype))
        if self.cfg.conditioning == "in_context":
            n_img = image.shape[1]
            seq = torch.cat([temb[:, None], txt, image], dim=1)
            ones = torch.ones(x.shape[0], 1, dtype=torch.bool, device=x.device)
            key_mask = torch.cat([ones, text_mask, ones.expand(-1, n_img)], dim=1)
            for block in self.blocks:
                seq = block(seq, key_mask)
            out = seq[:, -n_img:]
        else:
            keys = torch.cat([self.null_text.expand(x.shape[0], -1, -1).to(txt.dtype), txt], 1)
            ones = torch.ones(x.shape[0], 1, dtype=torch.bool, device=x.device)
            key_mask = torch.cat([ones, text_mask], dim=1)
            t_mod = self.adaln(temb).view(-1, 6, temb.shape[-1])
            out = image
            for block in self.blocks:
                out = block(out, keys, key_mask, t_mod)
        return self.unpatchify(self.head(self.norm(out)))
