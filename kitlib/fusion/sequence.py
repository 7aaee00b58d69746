"""Window-level (sequence) fusion heads: sliding windows, focal loss, modality dropout and seed 004's
dual-branch transformer with safe cross-attention.

Frame heads (``kitlib.fusion``) see one frame at a time. The two alternative recipes see a window
of ``W`` consecutive frames: seed 004 (dual-branch transformer with safe cross-attention, sliding
windows W=64 / stride 8) and seed 003 (TCN + bi-directional cross-attention + label-prompt
contrastive loss). Both subclass ``SequenceHead``:

- ``forward(visual (B, W, Dv), audio (B, W, Da), visual_mask (B, W) bool, frame_mask=None) -> logits (B, W, C)``;
- ``training_loss(visual, audio, visual_mask, labels (B, W), criterion, frame_mask=None) -> scalar``:
  the head's own training objective given the frame criterion (focal or cross-entropy, -1 labels
  ignored); a head with an auxiliary term (seed 003's prompt contrastive loss) adds it here.

``frame_mask`` (B, W) bool is False at the padded positions of a window of a track shorter than
``W`` (``frame_mask_of(rows)``); None = every position is a frame. Padded positions are never keys
of any attention, for the audio stream as for the visual one, so a frame's output does not depend
on how much padding its window has.

``SafeCrossAttention`` is seed 004 sec. 3.4: when a window has no valid key at all (no visual frame),
the first key is unmasked so the softmax stays finite, the attention output is set to zero and the
residual ``LN(Q + Drop(0)) = LN(Q)`` carries the query: no NaN, and the audio branch is kept intact.

What else lives here (seed 004):

- ``sliding_windows`` / ``training_windows`` (sec. 3.6, 4.4): windows of ``W`` frames, stride ``S``,
  inside each track; the last window is aligned to the track's end so every frame is covered, a
  track shorter than ``W`` gives one window padded with row -1 (label -1, no face, silent audio);
  training drops windows whose share of -1 labels among their real frames exceeds ``max_invalid``
  (0.25), so a short track still trains (padded and masked).
- ``focal_loss`` (eq. 5): ``sum_i w_{y_i} (1 - p_t,i)^gamma (-log p_t,i) / #{i: y_i != -1}``, with the
  class weights from the effective number of samples (Cui et al. 2019, ``fusion.class_weights_for``).
- ``ModalityDropout`` (sec. 3.4): in training, each window's visual input is dropped with prob. ``p``.
- ``SafeXAttnTransformer`` (eqs. 1-4): projections + sinusoidal positions, ``l`` self-attention
  layers per modality, cross-attention both ways, the learnable gates, concat -> MLP -> 8 logits.
- ``soft_vote`` (sec. 3.6): frame logits = mean of the logits of every window covering the frame.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)


FrameCriterion = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

LOSSES = ("ce", "focal")


class SequenceHead(nn.Module):
    """Base of the window-level fusion heads (see the module docstring for the contract)."""

    def forward(self, visual: torch.Tensor, audio: torch.Tensor, visual_mask: torch.Tensor,
                frame_mask: torch.Tensor | None = None) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def training_loss(self, visual: torch.Tensor, audio: torch.Tensor, visual_mask: torch.Tensor,
                      labels: torch.Tensor, criterion: FrameCriterion,
                      frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The frame criterion on this head's logits; heads with auxiliary losses override this."""
        return criterion(self(visual, audio, visual_mask, frame_mask=frame_mask), labels)


def frame_mask_of(rows: np.ndarray | torch.Tensor, *, device: torch.device | str = "cpu") -> torch.Tensor:
    """(B, W) bool, True where a window row ``rows`` (as from ``sliding_windows``) is a frame, not padding.
    ``rows`` may already be a tensor on the device (a resident table's batches are): it stays there."""
    if isinstance(rows, torch.Tensor):
        return (rows >= 0).to(device)
    return torch.from_numpy(np.asarray(rows) >= 0).to(device)


def _frames(visual_mask: torch.Tensor, frame_mask: torch.Tensor | None) -> torch.Tensor:
    """The frame mask to use: ``frame_mask`` as bool, or every position when None."""
    return torch.ones_like(visual_mask, dtype=torch.bool) if frame_mask is None else frame_mask.bool()


class SafeCrossAttention(nn.Module):
    """``LN(Q + Drop(CrossAttn(Q, K, V)))`` with key padding, safe when every key is masked (seed 004 sec. 3.4)."""

    def __init__(self, dim: int, n_heads: int, dropout: float = 0.1):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, n_heads, dropout=dropout, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, query: torch.Tensor, key_value: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """``query`` (B, Lq, D), ``key_value`` (B, Lk, D), ``key_mask`` (B, Lk) bool, True = a valid key."""
        empty = ~key_mask.any(dim=1)                       # (B,) windows with no valid key
        padding = ~key_mask
        if bool(empty.any()):
            padding = padding.clone()
            padding[empty, 0] = False                      # unmask one key: the softmax stays finite
        out = self.attn(query, key_value, key_value, key_padding_mask=padding, need_weights=False)[0]
        out = out.masked_fill(empty[:, None, None], 0.0)   # ... and its output is discarded
        return self.norm(query + self.dropout(out))


# ----------------------------------------------------------------------------- windows


def sliding_windows(offsets: np.ndarray, *, window: int, stride: int) -> np.ndarray:
    """Row indices (n_windows, window) int64 of every window of every track; -1 marks padding.

    Track ``t`` holds rows ``offsets[t]:offsets[t+1]`` (a ``FrameTable``'s layout). Window starts are
    ``0, S, 2S, ...`` and the last one is moved to ``L - W`` so the track's end is covered; a track
    shorter than ``W`` gives one window starting at 0, padded with -1. Empty tracks give none.
    """
    if window < 1 or stride < 1:
        raise ValueError(f"window ({window}) and stride ({stride}) must be >= 1")
    offsets = np.asarray(offsets, dtype=np.int64)
    lengths = np.diff(offsets)
    span = np.maximum(lengths - window, 0)                              # last start of each track
    per_track = np.where(lengths > 0, -(-span // stride) + 1, 0)        # ceil(span / S) + 1
    track = np.repeat(np.arange(len(lengths)), per_track)
    k = np.arange(per_track.sum()) - np.repeat(np.cumsum(per_track) - per_track, per_track)
    start = np.minimum(k * stride, span[track])                        # the last one is L - W
    position = start[:, None] + np.arange(window)[None, :]
    return np.where(position < lengths[track, None], offsets[track, None] + position, -1)


def training_windows(labels: np.ndarray, offsets: np.ndarray, *, window: int, stride: int,
                     max_invalid: float) -> np.ndarray:
    """``sliding_windows`` without those whose share of -1 labels among their frames exceeds ``max_invalid``.

    Padding is not counted: the one window of a track shorter than ``window`` is kept when its real
    frames are labelled well enough (the heads mask its padded positions, ``frame_mask_of``).
    """
    rows = sliding_windows(offsets, window=window, stride=stride)
    real = rows >= 0
    invalid = real & (np.asarray(labels)[np.maximum(rows, 0)] < 0)
    return rows[invalid.sum(axis=1) <= max_invalid * real.sum(axis=1)]


def soft_vote(rows: torch.Tensor, window_logits: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Frame logits (n_rows, C): the mean over every window covering a row (seed 004 sec. 3.6).

    ``rows`` (B, W) as from ``sliding_windows`` (-1 = padding, ignored), ``window_logits`` (B, W, C).
    Rows no window covers get 0.
    """
    total, count = vote_buffers(n_rows, window_logits.shape[-1], device=window_logits.device)
    add_votes(total, count, rows, window_logits)
    return total / count.clamp(min=1).unsqueeze(1)


def vote_buffers(n_rows: int, num_classes: int, *, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """Zeroed (sum of logits (N, C), number of votes (N,)) for ``add_votes``."""
    return (torch.zeros(n_rows, num_classes, dtype=torch.float32, device=device),
            torch.zeros(n_rows, dtype=torch.float32, device=device))


def add_votes(total: torch.Tensor, count: torch.Tensor, rows: torch.Tensor, window_logits: torch.Tensor) -> None:
    """Add one batch of windows' logits to the running per-row sums (in place)."""
    flat = rows.reshape(-1)
    keep = flat >= 0
    total.index_add_(0, flat[keep], window_logits.reshape(-1, window_logits.shape[-1])[keep].float())
    count.index_add_(0, flat[keep], torch.ones_like(flat[keep], dtype=count.dtype))


# ----------------------------------------------------------------------------- losses


def focal_loss(logits: torch.Tensor, labels: torch.Tensor, *, gamma: float = 2.0,
               weight: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 5: ``sum_i w_{y_i} (1 - p_t,i)^gamma (-log p_t,i)`` over frames with ``y_i != -1``, divided by
    their number. ``logits`` (..., C), ``labels`` (...) int, ``weight`` (C,) per-class factors or None."""
    logits = logits.reshape(-1, logits.shape[-1]).float()
    labels = labels.reshape(-1)
    valid = labels >= 0
    target = labels.clamp(min=0)
    log_pt = torch.log_softmax(logits, dim=-1).gather(1, target[:, None]).squeeze(1)
    loss = -((1.0 - log_pt.exp()) ** gamma) * log_pt
    if weight is not None:
        loss = loss * weight[target]
    return (loss * valid).sum() / valid.sum().clamp(min=1)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, *, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Class-weighted cross-entropy over frames with ``y != -1`` (eq. 13 of seed 000); 0 when there are none."""
    labels = labels.reshape(-1)
    if not bool((labels >= 0).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels, weight=weight, ignore_index=-1)


def frame_criterion(loss: str, *, weight: torch.Tensor | None = None, gamma: float = 2.0) -> FrameCriterion:
    """The frame criterion ``(logits (..., C), labels (...)) -> scalar`` named by ``loss`` (ce | focal)."""
    if loss == "ce":
        return lambda logits, labels: cross_entropy(logits, labels, weight=weight)
    if loss == "focal":
        return lambda logits, labels: focal_loss(logits, labels, gamma=gamma, weight=weight)
    raise ValueError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")


# ----------------------------------------------------------------------------- seed 004 head


class ModalityDropout(nn.Module):
    """Seed 004 sec. 3.4: in training, each window's whole visual input is dropped (features 0, mask
    False) with probability ``p``; in eval mode the input passes unchanged."""

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"modality_dropout must be in [0, 1), got {p}")
        self.p = p

    def forward(self, visual: torch.Tensor, visual_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.training or self.p == 0.0:
            return visual, visual_mask
        keep = torch.rand(visual.shape[0], device=visual.device) >= self.p     # (B,) one draw per window
        return visual * keep[:, None, None].to(visual.dtype), visual_mask & keep[:, None]


def sinusoidal_encoding(length: int, dim: int, *, device: torch.device | str | None = None) -> torch.Tensor:
    """The (length, dim) sinusoidal positional encoding of Vaswani et al. (seed 004 eq. 1's PE)."""
    position = torch.arange(length, dtype=torch.float32, device=device)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=device) * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim, device=device)
    pe[:, 0::2] = torch.sin(position * freq)
    pe[:, 1::2] = torch.cos(position * freq)[:, : dim // 2]
    return pe


class SafeEncoderLayer(nn.Module):
    """A post-norm Transformer encoder layer whose self-attention is ``SafeCrossAttention(x, x)``:
    frames with ``mask`` False are no keys, and a window with no valid frame keeps ``LN(x)``."""

    def __init__(self, dim: int, n_heads: int, dropout: float, ffn_mult: int = 4):
        super().__init__()
        self.attention = SafeCrossAttention(dim, n_heads, dropout)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_mult * dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(ffn_mult * dim, dim))
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.attention(x, x, mask)
        return self.norm(x + self.dropout(self.ffn(x)))


class SafeXAttnTransformer(SequenceHead):
    """Seed 004's dual-branch transformer (eqs. 1-4) with modality dropout and safe attention (sec. 3.4).

    ``H^(0) = X W + PE`` per modality (eq. 1); ``layers`` safe self-attention layers per modality (the
    visual one keyed by the face mask); ``H_{v->a} = CrossAttn(Q=H_v, K=V=H_a)`` (eq. 2) and
    ``H_{a->v} = CrossAttn(Q=H_a, K=V=H_v)`` keyed by the face mask (eq. 3); ``G = sigmoid(W_g [H; H_x])``,
    ``F = G * H + (1 - G) * H_x`` per branch (eq. 4); ``MLP([F_v; F_a])`` -> logits per frame.
    ``hidden`` is the MLP's width. Frames without a face have their visual input zeroed.

    ``mask_visual_self_attention``: True (the kit's default) also keys the visual self-attention by
    the face mask; False masks frames without a face only where seed 004 sec. 3.4 does, as keys of
    the audio -> visual cross-attention (eq. 3). Padding (``frame_mask``) is masked everywhere.
    """

    def __init__(self, *, visual_dim: int, audio_dim: int, hidden: int, dropout: float, num_classes: int,
                 d_model: int = 256, layers: int = 3, n_heads: int = 4, modality_dropout: float = 0.1,
                 mask_visual_self_attention: bool = True):
        super().__init__()
        self.mask_visual_self_attention = mask_visual_self_attention
        if d_model % n_heads or d_model % 2:
            raise ValueError(f"d_model ({d_model}) must be even and divisible by n_heads ({n_heads})")
        self.d_model = d_model
        self.modality_dropout = ModalityDropout(modality_dropout)
        self.proj_v = nn.Linear(visual_dim, d_model)                          # W_v, eq. 1
        self.proj_a = nn.Linear(audio_dim, d_model)                           # W_a, eq. 1
        self.encoder_v = nn.ModuleList(SafeEncoderLayer(d_model, n_heads, dropout) for _ in range(layers))
        self.encoder_a = nn.ModuleList(SafeEncoderLayer(d_model, n_heads, dropout) for _ in range(layers))
        self.v_from_a = SafeCrossAttention(d_model, n_heads, dropout)         # eq. 2
        self.a_from_v = SafeCrossAttention(d_model, n_heads, dropout)         # eq. 3
        self.gate_v = nn.Linear(2 * d_model, d_model)                         # W_gv, eq. 4
        self.gate_a = nn.Linear(2 * d_model, d_model)
        self.mlp = nn.Sequential(nn.Linear(2 * d_model, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, num_classes))

    def forward(self, visual: torch.Tensor, audio: torch.Tensor, visual_mask: torch.Tensor,
                frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        frames = _frames(visual_mask, frame_mask)
        visual, visual_mask = self.modality_dropout(visual, visual_mask.bool() & frames)
        visual = visual * visual_mask.unsqueeze(-1).to(visual.dtype)
        pe = sinusoidal_encoding(visual.shape[1], self.d_model, device=visual.device)
        h_v, h_a = self.proj_v(visual) + pe, self.proj_a(audio) + pe
        visual_keys = visual_mask if self.mask_visual_self_attention else frames
        for layer in self.encoder_v:
            h_v = layer(h_v, visual_keys)
        for layer in self.encoder_a:
            h_a = layer(h_a, frames)
        h_va = self.v_from_a(h_v, h_a, frames)                                # eq. 2
        h_av = self.a_from_v(h_a, h_v, visual_mask)                           # eq. 3: LN(H_a) if no face at all
        g_v = torch.sigmoid(self.gate_v(torch.cat([h_v, h_va], dim=-1)))      # eq. 4
        g_a = torch.sigmoid(self.gate_a(torch.cat([h_a, h_av], dim=-1)))
        f_v = g_v * h_v + (1.0 - g_v) * h_va
        f_a = g_a * h_a + (1.0 - g_a) * h_av
        return self.mlp(torch.cat([f_v, f_a], dim=-1))
