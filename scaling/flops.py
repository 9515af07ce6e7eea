"""Training compute of a trial: analytic forward FLOPs of a DiT and the 6ND / exact conventions.

A multiply-add counts as 2 FLOPs everywhere. Forward FLOPs count every matmul: the patch embedding,
text projection and timestep MLP, the attention projections, attention scores (Q K^T) and values
(A V) over the whole sequence including condition tokens, cross-attention, the MLPs and the head.
Norms, activations and the softmax are elementwise and not counted (they are <1% at these widths).

Conventions (DESIGN.md): D = image tokens seen in training; `6ND` is C = 6 N D, the paper's;
`exact` is C = 3 x forward FLOPs x samples (backward = 2 x forward).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scaling.model import FREQ_DIM, DiTConfig, parameter_count

CONVENTIONS = ("6ND", "exact")


def forward_flops(cfg: DiTConfig) -> int:
    """Forward FLOPs of one sample (multiply-add = 2 FLOPs)."""
    w, d = cfg.shape.width, cfg.shape.depth
    hidden = cfg.mlp_ratio * w
    img, txt = cfg.image_tokens, cfg.text_len
    embed = img * cfg.patch_dim * w + txt * cfg.text_dim * w + FREQ_DIM * w + w * w
    head = img * w * cfg.patch_dim
    if cfg.conditioning == "in_context":
        s = 1 + txt + img
        block = 4 * s * w * w + 2 * s * s * w + 2 * s * w * hidden
    else:
        keys = 1 + txt
        self_attn = 4 * img * w * w + 2 * img * img * w
        cross = 2 * img * w * w + 2 * keys * w * w + 2 * img * keys * w
        block = self_attn + cross + 2 * img * w * hidden
        embed += w * 6 * w  # adaLN-single projection
    return 2 * (embed + head + d * block)


def compute_6nd(params: float, tokens: float) -> float:
    """C = 6 N D (FLOPs), N parameters, D tokens."""
    return 6.0 * params * tokens


def compute_exact(cfg: DiTConfig, samples: float) -> float:
    """C = 3 x forward FLOPs x samples (FLOPs): forward plus a backward of twice its cost."""
    return 3.0 * forward_flops(cfg) * samples


@dataclass(frozen=True)
class TrialPlan:
    """How long one trial trains to spend its budget.

    budget is FLOPs in `convention`; params is N; tokens is D (image tokens seen); compute_6nd and
    compute_exact are the FLOPs of the whole steps actually trained, in both conventions.
    """

    budget: float
    convention: str
    params: int
    non_embedding_params: int
    tokens: int
    samples: int
    steps: int
    batch_size: int
    compute_6nd: float
    compute_exact: float


def plan_trial(cfg: DiTConfig, budget: float, batch_size: int,
               convention: str = "6ND") -> TrialPlan:
    """Steps = ceil(D / (batch x image tokens per sample)) with D from the budget and convention."""
    if not (math.isfinite(budget) and budget > 0):
        raise ValueError(f"budget={budget} is not a positive number of FLOPs")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be at least 1")
    if convention not in CONVENTIONS:
        raise ValueError(f"convention {convention!r} is not one of {', '.join(CONVENTIONS)}")
    counts = parameter_count(cfg)
    if convention == "6ND":
        samples_wanted = budget / (6.0 * counts.total) / cfg.image_tokens
    else:
        samples_wanted = budget / (3.0 * forward_flops(cfg))
    steps = max(1, math.ceil(samples_wanted / batch_size - 1e-9))
    samples = steps * batch_size
    tokens = samples * cfg.image_tokens
    return TrialPlan(budget=budget, convention=convention, params=counts.total,
                     non_embedding_params=counts.non_embedding, tokens=tokens, samples=samples,
                     steps=steps, batch_size=batch_size,
                     compute_6nd=compute_6nd(counts.total, tokens),
                     compute_exact=compute_exact(cfg, samples))
