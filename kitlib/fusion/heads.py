"""Stage II: frame-level audio-visual fusion heads, their training and evaluation (seed 000).

Implements sec. 3.2.3 (gated fusion, eqs. 9-12), sec. 3.2.4 (class-weighted cross-entropy over
valid frames, eq. 13) and the fusion comparison of sec. 4.6 / Table 3: every head maps a frame's
visual feature ``f_v`` (B, Dv), audio feature ``f_a`` (B, Da) and face mask (B,) to 8 logits.
Frames without a face have their visual feature zeroed before the head (audio is still used);
frames whose audio is filled have their audio zeroed the same way.

Heads (``HEADS``; hidden size ``H``, default 512):

- ``a_only`` / ``v_only``: one modality, ``W Drop(LN(P f)) + b``.
- ``concat_linear``: ``W [f_v; f_a] + b`` (16K parameters at Dv = Da = 1024).
- ``concat_mlp``: ``W2 Drop(GELU(W1 [f_v; f_a]))``.
- ``bilinear``: low-rank bilinear pooling, ``h = tanh(P_v f_v) * tanh(P_a f_a)``, then LN-Drop-linear.
- ``dynamic_weighting``: per-frame scalar modality weights, ``h = w_v z_v + w_a z_a`` with
  ``(w_v, w_a) = softmax(W_w [z_v; z_a])`` and ``z = GELU(P f)``.
- ``gated`` (eqs. 9-12): ``z_v = P_v f_v``, ``z_a = P_a f_a`` (linear), ``g = sigmoid(G [f_v; f_a])``
  from the concatenated RAW features, ``h = g * z_v + (1 - g) * z_a``, ``logits = W_o Drop(LN(h)) + b_o``.
- ``cross_attention``: each modality projected to ``n_tokens`` tokens of size H; visual tokens
  attend to audio tokens and vice versa (multi-head, residual + LN), both token sets mean-pooled
  and concatenated, then LN-Drop-linear.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from kitlib import NUM_CLASSES
from kitlib.fusion.sequence import SafeXAttnTransformer, SequenceHead

log = logging.getLogger(__name__)


INPUT_NORMS = ("none", "l2_zscore")


class InputNorm(nn.Module):
    """Per-branch input normalisation stored with the head: each branch L2-normalised, then z-scored
    with the mean / population std of the training split (the reference code's ``DO_BRANCH_L2_NORM``
    + ``DO_ZSCORE``). The statistics are buffers: saved in the state dict, not trained."""

    def __init__(self, visual_dim: int, audio_dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        for name, dim in (("visual", visual_dim), ("audio", audio_dim)):
            self.register_buffer(f"{name}_mean", torch.zeros(dim))
            self.register_buffer(f"{name}_std", torch.ones(dim))

    @staticmethod
    def l2(x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(x, dim=-1) if x.shape[-1] else x

    @torch.no_grad()
    def fit(self, visual: torch.Tensor, audio: torch.Tensor) -> None:
        """Set the statistics from training rows (L2-normalised here); empty sets leave 0 / 1."""
        for name, x in (("visual", visual), ("audio", audio)):
            if len(x) == 0 or x.shape[-1] == 0:
                continue
            x = self.l2(x.float())
            getattr(self, f"{name}_mean").copy_(x.mean(0))
            getattr(self, f"{name}_std").copy_(x.std(0, unbiased=False).clamp(min=self.eps))

    def forward(self, visual: torch.Tensor, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return ((self.l2(visual) - self.visual_mean) / self.visual_std,
                (self.l2(audio) - self.audio_mean) / self.audio_std)


class FusionHead(nn.Module):
    """Base: normalises the inputs (``input_norm``, when configured), drops input elements in training
    (``input_dropout`` = (visual p, audio p)), zeroes the visual feature of frames without a face, then
    ``fuse`` gives the logits."""

    input_dropout: tuple[float, float] = (0.0, 0.0)
    # state-dict prefixes a head had in earlier kits -> their names now (checkpoints of older runs still load)
    renamed: Mapping[str, str] = {}

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for old, new in self.renamed.items():
            for key in [k for k in state_dict if k.startswith(prefix + old)]:
                state_dict[prefix + new + key[len(prefix + old):]] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def configure_inputs(self, *, input_norm: str = "none", input_dropout: tuple[float, float] = (0.0, 0.0),
                         visual_dim: int, audio_dim: int) -> FusionHead:
        """Add the ``InputNorm`` (``input_norm="l2_zscore"``) and the element dropout of the inputs."""
        if input_norm not in INPUT_NORMS:
            raise ValueError(f"unknown input_norm {input_norm!r}; choose one of {', '.join(INPUT_NORMS)}")
        if input_norm == "l2_zscore":
            self.input_norm = InputNorm(visual_dim, audio_dim)
        self.input_dropout = (float(input_dropout[0]), float(input_dropout[1]))
        return self

    def forward(self, visual: torch.Tensor, audio: torch.Tensor, visual_mask: torch.Tensor) -> torch.Tensor:
        norm = getattr(self, "input_norm", None)
        if norm is not None:
            visual, audio = norm(visual, audio)
        if self.training and any(self.input_dropout):
            visual = nn.functional.dropout(visual, self.input_dropout[0], training=True)
            audio = nn.functional.dropout(audio, self.input_dropout[1], training=True)
        visual = visual * visual_mask.to(visual.dtype).unsqueeze(-1)
        return self.fuse(visual, audio)

    def fuse(self, visual: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


def _classifier(width: int, dropout: float, num_classes: int) -> nn.Sequential:
    """The normalisation-dropout-linear output layer of eq. 12."""
    return nn.Sequential(nn.LayerNorm(width), nn.Dropout(dropout), nn.Linear(width, num_classes))


class SingleModalityHead(FusionHead):
    """``W Drop(LN(P f)) + b`` on one modality (the A-only / V-only rows of Table 3)."""

    def __init__(self, *, modality: str, visual_dim: int, audio_dim: int, hidden: int, dropout: float,
                 num_classes: int):
        super().__init__()
        self.modality = modality
        self.proj = nn.Linear(visual_dim if modality == "visual" else audio_dim, hidden)
        self.classifier = _classifier(hidden, dropout, num_classes)

    def fuse(self, visual, audio):
        return self.classifier(self.proj(visual if self.modality == "visual" else audio))


class ProjectedHead(FusionHead):
    """The base of the heads (of both structures) that project each modality to ``hidden`` (``proj_v``,
    ``proj_a``: eq. 9's P_v, P_a; followed by ``activation`` when given), mix the two projections
    (``combine``) and classify the mix (``classifier``: LN-Drop-Linear, eq. 12)."""

    def __init__(self, *, visual_dim: int, audio_dim: int, hidden: int, dropout: float, num_classes: int,
                 activation: Callable[[], nn.Module] | None = None,
                 classifier: Callable[[], nn.Module] | None = None):
        super().__init__()
        # made in this order (projections, the mix's own layers, the classifier): the order the heads drew
        # their random initial weights in before this base, so a seed gives the same head as before
        self.proj_v = _projection(visual_dim, hidden, activation)
        self.proj_a = _projection(audio_dim, hidden, activation)
        self.mix_layers(visual_dim=visual_dim, audio_dim=audio_dim, hidden=hidden, dropout=dropout)
        self.classifier = classifier() if classifier is not None else _classifier(hidden, dropout, num_classes)

    def mix_layers(self, *, visual_dim: int, audio_dim: int, hidden: int, dropout: float) -> None:
        """The layers ``combine`` uses besides the projections (a gate, a weigher); none by default."""

    def fuse(self, visual, audio):
        return self.classifier(self.combine(visual, audio, self.proj_v(visual), self.proj_a(audio)))

    def combine(self, visual: torch.Tensor, audio: torch.Tensor, z_v: torch.Tensor,
                z_a: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """The (B, hidden) mix of the projections ``z_v``, ``z_a`` (the raw ``visual``, ``audio`` at hand)."""
        raise NotImplementedError


def _projection(dim: int, hidden: int, activation: Callable[[], nn.Module] | None) -> nn.Module:
    return nn.Linear(dim, hidden) if activation is None else nn.Sequential(nn.Linear(dim, hidden), activation())


class ConcatLinearHead(FusionHead):
    def __init__(self, *, visual_dim, audio_dim, hidden, dropout, num_classes):
        super().__init__()
        self.linear = nn.Linear(visual_dim + audio_dim, num_classes)

    def fuse(self, visual, audio):
        return self.linear(torch.cat([visual, audio], dim=-1))


class ConcatMLPHead(FusionHead):
    """``W2 Drop(act(W1 [f_v; f_a]))``: GELU in the kit's structure, ReLU in the authors'."""

    def __init__(self, *, visual_dim, audio_dim, hidden, dropout, num_classes,
                 activation: Callable[[], nn.Module] = nn.GELU):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(visual_dim + audio_dim, hidden), activation(), nn.Dropout(dropout),
                                 nn.Linear(hidden, num_classes))

    def fuse(self, visual, audio):
        return self.mlp(torch.cat([visual, audio], dim=-1))


class BilinearHead(ProjectedHead):
    """Low-rank bilinear pooling: ``tanh(P_v f_v) * tanh(P_a f_a)``."""

    def combine(self, visual, audio, z_v, z_a):
        return torch.tanh(z_v) * torch.tanh(z_a)


class DynamicWeightingHead(ProjectedHead):
    """``w_v z_v + w_a z_a`` with per-frame weights ``softmax(W_w [z_v; z_a])``, ``z = GELU(P f)``."""

    def __init__(self, *, visual_dim, audio_dim, hidden, dropout, num_classes):
        super().__init__(visual_dim=visual_dim, audio_dim=audio_dim, hidden=hidden, dropout=dropout,
                         num_classes=num_classes, activation=nn.GELU)

    def mix_layers(self, *, visual_dim, audio_dim, hidden, dropout):
        self.weigher = nn.Linear(2 * hidden, 2)

    def combine(self, visual, audio, z_v, z_a):
        w = torch.softmax(self.weigher(torch.cat([z_v, z_a], dim=-1)), dim=-1)
        return w[:, :1] * z_v + w[:, 1:] * z_a


class GatedFusionHead(ProjectedHead):
    """Gated audio-visual fusion, exactly eqs. 9-12: the gate ``G`` is one linear layer on the raw features
    (the authors' code uses a two-layer one: ``kitlib.fusion.reference_heads``)."""

    renamed = {"norm.": "classifier.0.", "out.": "classifier.2."}    # the kit's names before ProjectedHead

    def mix_layers(self, *, visual_dim, audio_dim, hidden, dropout):
        self.gate = self.gate_network(visual_dim + audio_dim, hidden, dropout)   # G, eq. 10

    @staticmethod
    def gate_network(in_dim: int, hidden: int, dropout: float) -> nn.Module:
        return nn.Linear(in_dim, hidden)

    def combine(self, visual, audio, z_v, z_a):
        g = torch.sigmoid(self.gate(torch.cat([visual, audio], dim=-1)))     # eq. 10
        return g * z_v + (1.0 - g) * z_a                                      # eq. 11


class CrossAttentionHead(FusionHead):
    def __init__(self, *, visual_dim, audio_dim, hidden, dropout, num_classes, n_tokens: int = 4,
                 n_heads: int = 8):
        super().__init__()
        self.n_tokens, self.hidden = n_tokens, hidden
        self.proj_v = nn.Linear(visual_dim, n_tokens * hidden)
        self.proj_a = nn.Linear(audio_dim, n_tokens * hidden)
        self.v_from_a = nn.MultiheadAttention(hidden, n_heads, dropout=dropout, batch_first=True)
        self.a_from_v = nn.MultiheadAttention(hidden, n_heads, dropout=dropout, batch_first=True)
        self.norm_v, self.norm_a = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.classifier = _classifier(2 * hidden, dropout, num_classes)

    def fuse(self, visual, audio):
        tv = self.proj_v(visual).view(-1, self.n_tokens, self.hidden)
        ta = self.proj_a(audio).view(-1, self.n_tokens, self.hidden)
        v = self.norm_v(tv + self.v_from_a(tv, ta, ta, need_weights=False)[0])
        a = self.norm_a(ta + self.a_from_v(ta, tv, tv, need_weights=False)[0])
        return self.classifier(torch.cat([v.mean(1), a.mean(1)], dim=-1))


def _single(modality: str) -> Callable[..., FusionHead]:
    def build(**kwargs) -> FusionHead:
        return SingleModalityHead(modality=modality, **kwargs)
    return build


HEADS: dict[str, Callable[..., FusionHead]] = {
    "a_only": _single("audio"),
    "v_only": _single("visual"),
    "concat_linear": ConcatLinearHead,
    "concat_mlp": ConcatMLPHead,
    "bilinear": BilinearHead,
    "dynamic_weighting": DynamicWeightingHead,
    "gated": GatedFusionHead,
    "cross_attention": CrossAttentionHead,
}


def _tcn_prompt(**kwargs: Any) -> SequenceHead:
    """Seed 003's TCN + cross-attention + label-prompt head, imported only when it is built."""
    from kitlib.fusion.tcn_prompt import TCNPromptHead

    return TCNPromptHead(**kwargs)


# window-level heads: (B, W, D) windows in, (B, W, C) logits out (kitlib.fusion.sequence)
SEQUENCE_HEADS: dict[str, Callable[..., SequenceHead]] = {
    "safe_xattn": SafeXAttnTransformer,
    "tcn_prompt": _tcn_prompt,
}

# the keyword options each sequence head takes beyond (visual_dim, audio_dim, hidden, dropout, num_classes)
SEQUENCE_HEAD_OPTIONS: dict[str, tuple[str, ...]] = {
    "safe_xattn": ("d_model", "layers", "n_heads", "modality_dropout", "mask_visual_self_attention"),
    "tcn_prompt": ("tcn_levels", "tcn_kernel", "n_heads", "prompt_embeddings", "contrastive_weight", "temperature",
                   "classify", "contrastive", "learnable_temperature"),
}


def known_heads() -> list[str]:
    """Every head ``build_head`` knows: the frame heads, then the sequence heads."""
    return [*HEADS, *SEQUENCE_HEADS]


def is_sequence_head(name_or_module: str | nn.Module) -> bool:
    """Whether a head (by name or instance) works on windows rather than single frames."""
    if isinstance(name_or_module, nn.Module):
        return isinstance(name_or_module, SequenceHead)
    return name_or_module in SEQUENCE_HEADS


HEAD_STRUCTURES = ("kit", "authors")
# per structure, the frame heads built differently from ``HEADS`` (``authors``: filled by
# ``kitlib.fusion.reference_heads``, imported with the package)
STRUCTURE_HEADS: dict[str, dict[str, Callable[..., FusionHead]]] = {"authors": {}}


def build_head(name: str, *, visual_dim: int, audio_dim: int, hidden: int = 512, dropout: float = 0.2,
               num_classes: int = NUM_CLASSES, options: Mapping[str, Any] | None = None,
               structure: str = "kit", input_norm: str = "none",
               input_dropout: tuple[float, float] = (0.0, 0.0)) -> nn.Module:
    """A fresh (randomly initialised) head from ``HEADS`` or ``SEQUENCE_HEADS``.

    ``options`` are a sequence head's own keywords (``SEQUENCE_HEAD_OPTIONS``, e.g. ``d_model``); a
    frame head takes none. An unknown option is an error naming the valid ones. ``structure``:
    ``kit`` (this module's frame heads) or ``authors`` (the reference code's layer structure,
    ``kitlib.fusion.reference_heads``). ``input_norm`` / ``input_dropout``: see
    ``FusionHead.configure_inputs`` (frame heads only).
    """
    options = dict(options or {})
    if name not in HEADS and name not in SEQUENCE_HEADS:
        raise ValueError(f"unknown fusion head {name!r}; choose one of {', '.join(known_heads())}")
    if structure not in HEAD_STRUCTURES:
        raise ValueError(f"unknown head structure {structure!r}; choose one of {', '.join(HEAD_STRUCTURES)}")
    valid = SEQUENCE_HEAD_OPTIONS.get(name, ())
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"fusion head {name!r} has no option(s) {unknown}; "
                         + (f"valid: {', '.join(valid)}" if valid else "it takes none"))
    builder = HEADS.get(name) or SEQUENCE_HEADS[name]
    builder = STRUCTURE_HEADS.get(structure, {}).get(name, builder)
    module = builder(visual_dim=visual_dim, audio_dim=audio_dim, hidden=hidden, dropout=dropout,
                     num_classes=num_classes, **options)
    if isinstance(module, FusionHead):
        module.configure_inputs(input_norm=input_norm, input_dropout=input_dropout, visual_dim=visual_dim,
                                audio_dim=audio_dim)
    elif input_norm != "none" or any(input_dropout):
        raise ValueError(f"fusion head {name!r} is a window head: input_norm / input_dropout apply to frame heads")
    return module


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters (the Params column of Table 3)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


