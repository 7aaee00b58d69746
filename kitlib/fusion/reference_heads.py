"""Stage II frame heads with the layer structure of the reference system's published code (seed 000, Table 3).

The paper's text describes the gated head as eqs. 9-12 with a single linear gate ``G``; the
authors' code (and the parameter counts of the paper's Table 3) use the structures below. They are
selected with ``fusion.head_structure: authors`` (``kitlib.fusion.heads.build_head(structure=...)``);
``kit`` keeps the structures of ``kitlib.fusion.heads``. Parameter counts at Dv = Da = 1024, H = 512,
8 classes (tested exactly in tests/test_reference_fusion.py):

- ``concat_linear`` 16,392: ``W [f_v; f_a] + b`` (the same as the kit's);
- ``concat_mlp`` 1,053,192: ``W2 Drop(ReLU(W1 [f_v; f_a]))``;
- ``bilinear`` 1,317,384: ``h = (P_v f_v) * (P_a f_a)``, then LN-ReLU-Drop-Linear(H, H)-ReLU-Drop-Linear;
- ``dynamic_weighting`` 2,104,842: ``(w_v, w_a) = softmax(MLP([f_v; f_a]))`` on the RAW features
  (Linear(Dv+Da, H)-ReLU-Drop-Linear(H, 2)), ``h = w_v P_v f_v + w_a P_a f_a``, LN-Drop-Linear;
- ``gated`` 2,366,472: eqs. 9-12 with ``G`` = Linear(Dv+Da, H)-ReLU-Drop-Linear(H, H) before the sigmoid;
- ``cross_attention`` 6,313,480: each modality Linear+LN to H; one block V<-A then one A<-V of
  per-head scalar "vector attention" (``a = sigmoid(<q_h, k_h> / sqrt(d_h))``, ``a v_h + (1-a) q_h``)
  with output projection, residual + LN, a GELU FFN (H -> 2H -> H) with residual + LN; a gate MLP
  fuses the two, then LN-Linear-GELU-Drop and LN-Drop-Linear.

The single-modality rows (``a_only``, ``v_only``) are the kit's in both structures. The heads build on the
kit's: ``ProjectedHead`` (P_v, P_a, a mix, a classifier), ``GatedFusionHead`` (only the gate differs) and
``ConcatMLPHead`` (ReLU instead of GELU).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from kitlib.fusion.heads import (STRUCTURE_HEADS, ConcatMLPHead, FusionHead, GatedFusionHead, ProjectedHead,
                                 _classifier)


def _reference_concat_mlp(**kwargs) -> FusionHead:
    return ConcatMLPHead(activation=nn.ReLU, **kwargs)


class ReferenceBilinearHead(ProjectedHead):
    """The plain product ``(P_v f_v) * (P_a f_a)``, then LN-ReLU-Drop-Linear(H, H)-ReLU-Drop-Linear."""

    renamed = {"post.": "classifier."}

    def __init__(self, *, visual_dim, audio_dim, hidden, dropout, num_classes):
        super().__init__(visual_dim=visual_dim, audio_dim=audio_dim, hidden=hidden, dropout=dropout,
                         num_classes=num_classes,
                         classifier=lambda: nn.Sequential(nn.LayerNorm(hidden), nn.ReLU(), nn.Dropout(dropout),
                                                          nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout),
                                                          nn.Linear(hidden, num_classes)))

    def combine(self, visual, audio, z_v, z_a):
        return z_v * z_a


class ReferenceDynamicWeightingHead(ProjectedHead):
    """The modality weights from an MLP on the RAW features."""

    def mix_layers(self, *, visual_dim, audio_dim, hidden, dropout):
        self.weigher = nn.Sequential(nn.Linear(visual_dim + audio_dim, hidden), nn.ReLU(), nn.Dropout(dropout),
                                     nn.Linear(hidden, 2))

    def combine(self, visual, audio, z_v, z_a):
        w = torch.softmax(self.weigher(torch.cat([visual, audio], dim=-1)), dim=-1)
        return w[:, :1] * z_v + w[:, 1:] * z_a


class ReferenceGatedFusionHead(GatedFusionHead):
    """Eqs. 9-12 with a two-layer gate network ``G`` (the authors' code; Table 3's 2.37M parameters)."""

    @staticmethod
    def gate_network(in_dim: int, hidden: int, dropout: float) -> nn.Module:
        return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, hidden))


class _VectorCrossBlock(nn.Module):
    """One direction of the reference cross-attention: queries of one modality mixed with the other's values."""

    def __init__(self, hidden: int, n_heads: int, dropout: float):
        super().__init__()
        if hidden % n_heads:
            raise ValueError(f"cross_attention: hidden {hidden} is not divisible by n_heads {n_heads}")
        self.n_heads, self.head_dim = n_heads, hidden // n_heads
        self.q, self.k, self.v = (nn.Linear(hidden, hidden) for _ in range(3))
        self.proj = nn.Linear(hidden, hidden)
        self.norm1, self.norm2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.ffn = nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(2 * hidden, hidden))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        shape = (x.shape[0], self.n_heads, self.head_dim)
        q, k, v = self.q(x).view(shape), self.k(other).view(shape), self.v(other).view(shape)
        a = torch.sigmoid((q * k).sum(-1, keepdim=True) * self.head_dim ** -0.5)   # one weight per head
        mixed = (a * v + (1.0 - a) * q).reshape(x.shape)
        x = self.norm1(x + self.drop(self.proj(mixed)))
        return self.norm2(x + self.drop(self.ffn(x)))


class ReferenceCrossAttentionHead(FusionHead):
    def __init__(self, *, visual_dim, audio_dim, hidden, dropout, num_classes, n_heads: int = 8):
        super().__init__()
        self.in_v = nn.Sequential(nn.Linear(visual_dim, hidden), nn.LayerNorm(hidden))
        self.in_a = nn.Sequential(nn.Linear(audio_dim, hidden), nn.LayerNorm(hidden))
        self.v_from_a = _VectorCrossBlock(hidden, n_heads, dropout)
        self.a_from_v = _VectorCrossBlock(hidden, n_heads, dropout)
        self.fuse_gate = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.GELU(), nn.Dropout(dropout),
                                       nn.Linear(hidden, hidden))
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, hidden), nn.GELU(), nn.Dropout(dropout))
        self.classifier = _classifier(hidden, dropout, num_classes)

    def fuse(self, visual, audio):
        a = self.in_a(audio)
        v = self.v_from_a(self.in_v(visual), a)
        a = self.a_from_v(a, v)
        g = torch.sigmoid(self.fuse_gate(torch.cat([v, a], dim=-1)))
        return self.classifier(self.out(g * v + (1.0 - g) * a))


# heads whose structure differs under ``structure="authors"``; every other name keeps the kit's
REFERENCE_HEADS: dict[str, Callable[..., FusionHead]] = STRUCTURE_HEADS["authors"]
REFERENCE_HEADS.update({
    "concat_mlp": _reference_concat_mlp,
    "bilinear": ReferenceBilinearHead,
    "dynamic_weighting": ReferenceDynamicWeightingHead,
    "gated": ReferenceGatedFusionHead,
    "cross_attention": ReferenceCrossAttentionHead,
})
