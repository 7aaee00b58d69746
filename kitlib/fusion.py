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

Window-level heads (``SEQUENCE_HEADS``, ``kitlib.sequence.SequenceHead``): ``safe_xattn`` (seed 004's
dual-branch transformer with safe cross-attention, eqs. 1-4) and ``tcn_prompt`` (seed 003, in
``kitlib.tcn_prompt``, imported when built). ``train_head`` / ``predict_logits`` / ``cross_validate`` /
``evaluate_heads`` take either kind: one training loop, where a frame head's batch is a set of
labelled frames and a sequence head's batch a set of windows (``sequence.training_windows``), and
sequence-head logits come back frame-aligned (N, C) by soft voting over windows of stride ``S``.

Evaluation: ``evaluate_heads`` trains every head on the official split (early stopping on the
validation macro F1) and, given folds, runs the K-fold cross-validation of Table 3 over the
train+val pool; a fold's model is trained for the official run's best epoch count WITHOUT looking
at the held-out fold (no early stopping on the data it is scored on).
"""
from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from kitlib import NUM_CLASSES
from kitlib.data import Track
from kitlib.metrics import macro_f1
from kitlib.runtime import seed_everything
from kitlib.sequence import (SafeXAttnTransformer, SequenceHead, add_votes, frame_criterion, sliding_windows,
                             training_windows, vote_buffers)
from kitlib.store import FeatureStore, RowView, consolidate, take_rows

log = logging.getLogger("kitlib.fusion")

# ----------------------------------------------------------------------------- heads


class FusionHead(nn.Module):
    """Base: zeroes the visual feature of frames without a face, then ``fuse`` gives the logits."""

    def forward(self, visual: torch.Tensor, audio: torch.Tensor, visual_mask: torch.Tensor) -> torch.Tensor:
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


class ConcatLinearHead(FusionHead):
    def __init__(self, *, visual_dim, audio_dim, hidden, dropout, num_classes):
        super().__init__()
        self.linear = nn.Linear(visual_dim + audio_dim, num_classes)

    def fuse(self, visual, audio):
        return self.linear(torch.cat([visual, audio], dim=-1))


class ConcatMLPHead(FusionHead):
    def __init__(self, *, visual_dim, audio_dim, hidden, dropout, num_classes):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(visual_dim + audio_dim, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, num_classes))

    def fuse(self, visual, audio):
        return self.mlp(torch.cat([visual, audio], dim=-1))


class BilinearHead(FusionHead):
    def __init__(self, *, visual_dim, audio_dim, hidden, dropout, num_classes):
        super().__init__()
        self.proj_v = nn.Linear(visual_dim, hidden)
        self.proj_a = nn.Linear(audio_dim, hidden)
        self.classifier = _classifier(hidden, dropout, num_classes)

    def fuse(self, visual, audio):
        return self.classifier(torch.tanh(self.proj_v(visual)) * torch.tanh(self.proj_a(audio)))


class DynamicWeightingHead(FusionHead):
    def __init__(self, *, visual_dim, audio_dim, hidden, dropout, num_classes):
        super().__init__()
        self.proj_v = nn.Sequential(nn.Linear(visual_dim, hidden), nn.GELU())
        self.proj_a = nn.Sequential(nn.Linear(audio_dim, hidden), nn.GELU())
        self.weigher = nn.Linear(2 * hidden, 2)
        self.classifier = _classifier(hidden, dropout, num_classes)

    def fuse(self, visual, audio):
        z_v, z_a = self.proj_v(visual), self.proj_a(audio)
        w = torch.softmax(self.weigher(torch.cat([z_v, z_a], dim=-1)), dim=-1)
        return self.classifier(w[:, :1] * z_v + w[:, 1:] * z_a)


class GatedFusionHead(FusionHead):
    """Gated audio-visual fusion, exactly eqs. 9-12."""

    def __init__(self, *, visual_dim, audio_dim, hidden, dropout, num_classes):
        super().__init__()
        self.proj_v = nn.Linear(visual_dim, hidden)              # P_v, eq. 9
        self.proj_a = nn.Linear(audio_dim, hidden)               # P_a, eq. 9
        self.gate = nn.Linear(visual_dim + audio_dim, hidden)    # G, eq. 10
        self.norm = nn.LayerNorm(hidden)                         # eq. 12
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, num_classes)                # W_o, b_o

    def fuse(self, visual, audio):
        z_v, z_a = self.proj_v(visual), self.proj_a(audio)
        g = torch.sigmoid(self.gate(torch.cat([visual, audio], dim=-1)))
        h = g * z_v + (1.0 - g) * z_a                            # eq. 11
        return self.out(self.dropout(self.norm(h)))


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
    from kitlib.tcn_prompt import TCNPromptHead

    return TCNPromptHead(**kwargs)


# window-level heads: (B, W, D) windows in, (B, W, C) logits out (kitlib.sequence)
SEQUENCE_HEADS: dict[str, Callable[..., SequenceHead]] = {
    "safe_xattn": SafeXAttnTransformer,
    "tcn_prompt": _tcn_prompt,
}

# the keyword options each sequence head takes beyond (visual_dim, audio_dim, hidden, dropout, num_classes)
SEQUENCE_HEAD_OPTIONS: dict[str, tuple[str, ...]] = {
    "safe_xattn": ("d_model", "layers", "n_heads", "modality_dropout"),
    "tcn_prompt": ("tcn_levels", "tcn_kernel", "n_heads", "prompt_embeddings", "contrastive_weight", "temperature"),
}


def known_heads() -> list[str]:
    """Every head ``build_head`` knows: the frame heads, then the sequence heads."""
    return [*HEADS, *SEQUENCE_HEADS]


def is_sequence_head(name_or_module: str | nn.Module) -> bool:
    """Whether a head (by name or instance) works on windows rather than single frames."""
    if isinstance(name_or_module, nn.Module):
        return isinstance(name_or_module, SequenceHead)
    return name_or_module in SEQUENCE_HEADS


def build_head(name: str, *, visual_dim: int, audio_dim: int, hidden: int = 512, dropout: float = 0.2,
               num_classes: int = NUM_CLASSES, options: Mapping[str, Any] | None = None) -> nn.Module:
    """A fresh (randomly initialised) head from ``HEADS`` or ``SEQUENCE_HEADS``.

    ``options`` are a sequence head's own keywords (``SEQUENCE_HEAD_OPTIONS``, e.g. ``d_model``); a
    frame head takes none. An unknown option is an error naming the valid ones.
    """
    options = dict(options or {})
    if name not in HEADS and name not in SEQUENCE_HEADS:
        raise ValueError(f"unknown fusion head {name!r}; choose one of {', '.join(known_heads())}")
    valid = SEQUENCE_HEAD_OPTIONS.get(name, ())
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"fusion head {name!r} has no option(s) {unknown}; "
                         + (f"valid: {', '.join(valid)}" if valid else "it takes none"))
    builder = HEADS.get(name) or SEQUENCE_HEADS[name]
    return builder(visual_dim=visual_dim, audio_dim=audio_dim, hidden=hidden, dropout=dropout,
                   num_classes=num_classes, **options)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters (the Params column of Table 3)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


# ----------------------------------------------------------------------------- data

FeatureKey = str | Callable[[Mapping[str, np.ndarray]], np.ndarray]


@dataclass
class FrameTable:
    """Aligned per-frame arrays of many tracks, one row per annotation frame, tracks one after another.

    Track ``i`` (``txtids[i]``) holds rows ``offsets[i]:offsets[i+1]``. Features keep their stored
    dtype (float16) until a batch is moved to the device. ``labels`` is -1 where invalid / unknown.
    ``visual`` / ``audio`` are arrays, or ``store.RowView``s of a memory-mapped consolidated cache
    (``load_frame_table(memmap=True)``): indexing them with rows gives just those rows, and
    ``subset`` narrows the view without copying features.
    """

    txtids: tuple[str, ...]
    offsets: np.ndarray       # (T+1,) int64
    frame_index: np.ndarray   # (N,) int32, 1-based
    visual: np.ndarray | RowView  # (N, Dv)
    visual_mask: np.ndarray   # (N,) bool: a face was found
    audio: np.ndarray | RowView   # (N, Da)
    audio_mask: np.ndarray    # (N,) bool: real audio
    labels: np.ndarray        # (N,) int64, -1 invalid

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def visual_dim(self) -> int:
        return int(self.visual.shape[1])

    @property
    def audio_dim(self) -> int:
        return int(self.audio.shape[1])

    def track_rows(self) -> np.ndarray:
        """(N,) index into ``txtids`` of every row."""
        return np.repeat(np.arange(len(self.txtids)), np.diff(self.offsets))

    def subset(self, txtids: Sequence[str]) -> FrameTable:
        """A new table with only the given tracks (in the given order)."""
        where = {t: i for i, t in enumerate(self.txtids)}
        missing = [t for t in txtids if t not in where]
        if missing:
            raise KeyError(f"tracks not in this frame table: {missing[:10]}")
        idx = [where[t] for t in txtids]
        lengths = np.diff(self.offsets)[idx]
        rows = np.concatenate([np.arange(self.offsets[i], self.offsets[i + 1]) for i in idx]) if idx \
            else np.zeros(0, dtype=np.int64)
        return FrameTable(txtids=tuple(txtids), offsets=np.r_[0, np.cumsum(lengths)].astype(np.int64),
                          frame_index=self.frame_index[rows], visual=take_rows(self.visual, rows),
                          visual_mask=self.visual_mask[rows], audio=take_rows(self.audio, rows),
                          audio_mask=self.audio_mask[rows], labels=self.labels[rows])


def _features(entry: Mapping[str, np.ndarray], key: FeatureKey, *, what: str) -> np.ndarray:
    if callable(key):
        out = np.asarray(key(entry))
    elif key in entry:
        out = entry[key]
    else:
        raise KeyError(f"{what}: no array {key!r} in the feature file (it has {sorted(entry)})")
    if out.ndim != 2:
        raise ValueError(f"{what}: features must be (frames, dim), got shape {out.shape}")
    return out


def _load_modality(store: FeatureStore, txtid: str, key: FeatureKey) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not store.done(txtid):
        raise FileNotFoundError(f"track {txtid!r}: no {store.kind} feature file {store.path(txtid).name} in "
                                f"{store.root} (run the {store.kind} extraction for it first)")
    entry = store.load(txtid)
    what = f"track {txtid!r} ({store.path(txtid)})"
    feats = _features(entry, key, what=what)
    mask = entry["mask"].astype(bool) if "mask" in entry else np.ones(len(feats), dtype=bool)
    frame_index = entry["frame_index"].astype(np.int32) if "frame_index" in entry \
        else np.arange(1, len(feats) + 1, dtype=np.int32)
    if not len(feats) == len(mask) == len(frame_index):
        raise ValueError(f"{what}: {len(feats)} feature rows, {len(mask)} mask rows, {len(frame_index)} frames")
    return frame_index, feats, mask


def load_frame_table(tracks: Sequence[Track], *, visual_store: FeatureStore | None,
                     audio_store: FeatureStore | None, labels: Mapping[str, np.ndarray] | None,
                     visual_key: FeatureKey = "features", audio_key: FeatureKey = "features",
                     memmap: bool = False) -> FrameTable:
    """Stack the stored features (and labels) of ``tracks`` into one ``FrameTable``.

    A store given as None gives a (N, 0) modality with an all-False mask (for the one-modality
    heads). ``visual_key`` / ``audio_key`` name the array in each feature file, or are callables
    taking the loaded file's arrays (e.g. one crop scale of ``features_by_scale`` for Table 1).
    Both stores must list the same frames per track; ``labels[txtid]`` must have one label per row.

    ``memmap``: the features stay on disk, in one memory-mapped ``.npy`` per store and array key
    (``store.consolidate``, built once per store contents), and the table holds ``RowView``s of it:
    loading costs the small per-frame arrays only, whatever the release size.
    """
    if visual_store is None and audio_store is None:
        raise ValueError("load_frame_table needs at least one of visual_store / audio_store")
    if memmap:
        return _memmap_frame_table(tracks, visual_store=visual_store, audio_store=audio_store, labels=labels,
                                   visual_key=visual_key, audio_key=audio_key)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("frame_index", "visual", "vmask", "audio", "amask", "y")}
    dims: dict[str, tuple[int, str]] = {}
    lengths = []
    for track in tqdm(tracks, desc="load features", unit="track", leave=False):
        txtid = track.txtid
        loaded = {}
        for name, store, key in (("visual", visual_store, visual_key), ("audio", audio_store, audio_key)):
            if store is None:
                continue
            frame_index, feats, mask = _load_modality(store, txtid, key)
            first = dims.setdefault(name, (feats.shape[1], txtid))
            if feats.shape[1] != first[0]:
                raise ValueError(f"track {txtid!r}: {name} features have dim {feats.shape[1]} but track "
                                 f"{first[1]!r} has {first[0]} ({store.root})")
            loaded[name] = (frame_index, feats, mask)
        if len(loaded) == 2 and not np.array_equal(loaded["visual"][0], loaded["audio"][0]):
            raise ValueError(f"track {txtid!r}: the visual ({len(loaded['visual'][0])} rows) and audio "
                             f"({len(loaded['audio'][0])} rows) feature files list different frames")
        frame_index = next(iter(loaded.values()))[0]
        n = len(frame_index)
        for name, fkey, mkey in (("visual", "visual", "vmask"), ("audio", "audio", "amask")):
            if name in loaded:
                parts[fkey].append(loaded[name][1])
                parts[mkey].append(loaded[name][2])
            else:
                parts[fkey].append(np.zeros((n, 0), dtype=np.float16))
                parts[mkey].append(np.zeros(n, dtype=bool))
        if labels is None:
            y = np.full(n, -1, dtype=np.int64)
        else:
            if txtid not in labels:
                raise KeyError(f"track {txtid!r}: no labels given for it")
            y = np.asarray(labels[txtid], dtype=np.int64).ravel()
            if len(y) != n:
                raise ValueError(f"track {txtid!r}: {len(y)} labels but {n} feature rows")
        parts["frame_index"].append(frame_index)
        parts["y"].append(y)
        lengths.append(n)
    if not lengths:
        raise ValueError("load_frame_table got no tracks")
    table = FrameTable(
        txtids=tuple(t.txtid for t in tracks), offsets=np.r_[0, np.cumsum(lengths)].astype(np.int64),
        frame_index=np.concatenate(parts["frame_index"]), visual=np.concatenate(parts["visual"]),
        visual_mask=np.concatenate(parts["vmask"]), audio=np.concatenate(parts["audio"]),
        audio_mask=np.concatenate(parts["amask"]), labels=np.concatenate(parts["y"]))
    log.info("frame table: %d tracks, %d frames (%d labelled), visual dim %d (%d with a face), audio dim %d "
             "(%d with audio)", len(lengths), len(table), int((table.labels >= 0).sum()), table.visual_dim,
             int(table.visual_mask.sum()), table.audio_dim, int(table.audio_mask.sum()))
    return table


def _memmap_frame_table(tracks: Sequence[Track], *, visual_store: FeatureStore | None,
                        audio_store: FeatureStore | None, labels: Mapping[str, np.ndarray] | None,
                        visual_key: FeatureKey, audio_key: FeatureKey) -> FrameTable:
    """``load_frame_table(memmap=True)``: row views of the stores' consolidated caches."""
    txtids = [t.txtid for t in tracks]
    if not txtids:
        raise ValueError("load_frame_table got no tracks")
    loaded = {}
    for name, store, key in (("visual", visual_store, visual_key), ("audio", audio_store, audio_key)):
        if store is None:
            continue
        if callable(key):
            raise TypeError(f"load_frame_table(memmap=True) needs the name of a stored array as {name}_key, "
                            f"not a callable")
        missing = [t for t in txtids if not store.done(t)]
        if missing:
            raise FileNotFoundError(f"track(s) {missing[:5]}: no {store.kind} feature file in {store.root} "
                                    f"(run the {store.kind} extraction for them first)")
        cache = consolidate(store, key)
        rows, lengths = cache.rows(txtids)
        loaded[name] = (cache, rows, lengths)
    first = next(iter(loaded.values()))
    lengths = first[2]
    if len(loaded) == 2:
        (_, v_rows, v_len), (_, a_rows, a_len) = loaded["visual"], loaded["audio"]
        differ = np.flatnonzero(v_len != a_len)
        if len(differ) == 0:
            same = loaded["visual"][0].frame_index[v_rows] == loaded["audio"][0].frame_index[a_rows]
            offsets = np.r_[0, np.cumsum(v_len)]
            differ = np.unique(np.searchsorted(offsets, np.flatnonzero(~same), side="right") - 1)
        if len(differ):
            t = int(differ[0])
            raise ValueError(f"track {txtids[t]!r}: the visual ({v_len[t]} rows) and audio ({a_len[t]} rows) "
                             f"feature files list different frames")
    n = int(lengths.sum())
    cache, rows, _ = first
    parts = {}
    for name in ("visual", "audio"):
        if name in loaded:
            c, r, _ = loaded[name]
            parts[name], parts[f"{name}_mask"] = RowView(c.features, r), c.mask[r]
        else:
            parts[name], parts[f"{name}_mask"] = np.zeros((n, 0), dtype=np.float16), np.zeros(n, dtype=bool)
    if labels is None:
        y = np.full(n, -1, dtype=np.int64)
    else:
        absent = [t for t in txtids if t not in labels]
        if absent:
            raise KeyError(f"track {absent[0]!r}: no labels given for it")
        y = [np.asarray(labels[t], dtype=np.int64).ravel() for t in txtids]
        wrong = [i for i, (t, part) in enumerate(zip(txtids, y)) if len(part) != lengths[i]]
        if wrong:
            raise ValueError(f"track {txtids[wrong[0]]!r}: {len(y[wrong[0]])} labels but {lengths[wrong[0]]} feature rows")
        y = np.concatenate(y)
    table = FrameTable(txtids=tuple(txtids), offsets=np.r_[0, np.cumsum(lengths)].astype(np.int64),
                       frame_index=cache.frame_index[rows], labels=y, **parts)
    log.info("frame table (memory-mapped): %d tracks, %d frames (%d labelled), visual dim %d, audio dim %d",
             len(txtids), n, int((y >= 0).sum()), table.visual_dim, table.audio_dim)
    return table


def split_by_track(table: FrameTable, logits: np.ndarray) -> dict[str, np.ndarray]:
    """Per-track views of row-aligned ``logits`` (N, C), keyed by txtid."""
    if len(logits) != len(table):
        raise ValueError(f"{len(logits)} rows of logits for a frame table of {len(table)} rows")
    return {t: logits[a:b] for t, a, b in zip(table.txtids, table.offsets[:-1], table.offsets[1:])}


# ----------------------------------------------------------------------------- training


@dataclass
class TrainedHead:
    """A trained head with its training record."""

    name: str
    module: nn.Module          # a FusionHead or a sequence.SequenceHead
    history: list[dict[str, float]]
    best_epoch: int
    best_val_f1: float
    n_params: int
    config: dict[str, Any] = field(default_factory=dict)

    def predict(self, table: FrameTable, *, device: torch.device | str = "cpu") -> np.ndarray:
        """Frame logits (N, C) of ``table`` with the batch size, window and stride it was trained with."""
        c = self.config
        return predict_logits(self.module, table, batch_size=4 * c.get("batch_size", 1024), device=device,
                              window=c.get("window", 64), stride=c.get("stride", 8))


CLASS_WEIGHTS = ("inverse", "inverse_sqrt", "effective_number")


def class_weights_for(labels: np.ndarray, scheme: str | None, num_classes: int = NUM_CLASSES, *,
                      beta: float = 0.999) -> np.ndarray:
    """Per-class weights ``w_c`` of eq. 13 from the training label counts ``n_c`` (valid frames).

    ``inverse``: ``w_c ~ 1 / n_c``; ``inverse_sqrt``: ``w_c ~ 1 / sqrt(n_c)``; ``effective_number``
    (Cui et al. 2019, seed 004 sec. 4.4): ``w_c ~ (1 - beta) / (1 - beta^n_c)``, the inverse of the
    effective number of samples; None: all 1. Normalised to mean 1 over the classes present; absent
    classes get 0.
    """
    if scheme is None:
        return np.ones(num_classes, dtype=np.float32)
    if scheme not in CLASS_WEIGHTS:
        raise ValueError(f"unknown class_weights {scheme!r}; choose one of {', '.join(CLASS_WEIGHTS)} or None")
    counts = np.bincount(labels[labels >= 0], minlength=num_classes).astype(np.float64)
    present = counts > 0
    if scheme == "effective_number":
        if not 0.0 < beta < 1.0:
            raise ValueError(f"effective-number class weights need 0 < beta < 1, got {beta}")
        w = np.divide(1.0 - beta, 1.0 - beta**counts, out=np.zeros(num_classes), where=present)
    else:
        power = 1.0 if scheme == "inverse" else 0.5
        w = np.divide(1.0, counts**power, out=np.zeros(num_classes), where=present)
    return (w / w[present].mean()).astype(np.float32)


def _batch(table: FrameTable, rows: np.ndarray, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Rows of ``table`` as float32 tensors on ``device``; filled audio is zeroed like missing faces."""
    def move(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(device, non_blocking=True)
    visual = move(table.visual[rows]).float()
    audio = move(table.audio[rows]).float()
    vmask = move(table.visual_mask[rows])
    audio = audio * move(table.audio_mask[rows]).to(audio.dtype).unsqueeze(-1)
    return visual, audio, vmask


def _labelled_batch(table: FrameTable, rows: np.ndarray,
                    device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``_batch`` plus labels, for frame rows (B,) or window rows (B, W) with -1 = padding.

    Padded positions get no face, silent audio and label -1, so heads and losses ignore them.
    """
    padded = rows < 0
    safe = np.where(padded, 0, rows).reshape(-1)
    visual, audio, vmask = _batch(table, safe, device)
    labels = np.where(padded.reshape(-1), -1, table.labels[safe])
    if padded.any():
        keep = torch.from_numpy(~padded.reshape(-1)).to(device)
        vmask = vmask & keep
        audio = audio * keep.to(audio.dtype).unsqueeze(-1)
    shape = rows.shape
    return (visual.view(*shape, -1), audio.view(*shape, -1), vmask.view(shape),
            torch.from_numpy(labels).to(device).view(shape))


@torch.inference_mode()
def predict_logits(module: nn.Module, table: FrameTable, *, batch_size: int = 4096,
                   device: torch.device | str = "cpu", window: int = 64, stride: int = 8) -> np.ndarray:
    """Logits (N, C) float32 of every row of ``table`` (eval mode).

    A frame head scores ``batch_size`` rows at a time. A sequence head scores every window of
    ``window`` frames, stride ``stride`` (``sequence.sliding_windows``), ``batch_size`` windows at a
    time, and a frame's logits are the mean over the windows covering it (soft voting, seed 004 sec. 3.6).
    """
    device = torch.device(device)
    module.eval().to(device)
    if isinstance(module, SequenceHead):
        windows = sliding_windows(table.offsets, window=window, stride=stride)
        total, count = vote_buffers(len(table), NUM_CLASSES, device=device)
        starts = range(0, len(windows), batch_size)
        for start in tqdm(starts, desc="predict windows", unit="batch", leave=False, disable=len(starts) < 20):
            rows = windows[start:start + batch_size]
            visual, audio, vmask, _ = _labelled_batch(table, rows, device)
            add_votes(total, count, torch.from_numpy(rows).to(device), module(visual, audio, vmask))
        return (total / count.clamp(min=1).unsqueeze(1)).cpu().numpy()
    chunks = []
    starts = range(0, len(table), batch_size)
    for start in tqdm(starts, desc="predict", unit="batch", leave=False, disable=len(starts) < 20):
        rows = np.arange(start, min(start + batch_size, len(table)))
        chunks.append(module(*_batch(table, rows, device)).float().cpu().numpy())
    return np.concatenate(chunks) if chunks else np.zeros((0, NUM_CLASSES), dtype=np.float32)


def train_head(head_name: str, train: FrameTable, val: FrameTable | None, *, hidden: int = 512,
               dropout: float = 0.2, epochs: int = 30, batch_size: int = 1024, lr: float = 1e-3,
               weight_decay: float = 1e-4, patience: int = 5, seed: int = 0, device: torch.device | str = "cpu",
               class_weights: str | None = "inverse_sqrt", effective_beta: float = 0.999, loss: str = "ce",
               focal_gamma: float = 2.0, options: Mapping[str, Any] | None = None, window: int = 64,
               stride: int = 8, max_invalid: float = 0.25) -> TrainedHead:
    """Train one head (frame or sequence) with AdamW and a class-weighted frame criterion over valid frames.

    ``loss``: ``ce`` (eq. 13 of seed 000) or ``focal`` (eq. 5 of seed 004, ``focal_gamma``), both with
    the ``class_weights`` scheme (``effective_beta`` for ``effective_number``). A frame head trains on
    batches of ``batch_size`` labelled frames; a sequence head (``options`` = its own keywords) on
    batches of ``batch_size`` windows of ``window`` frames, stride ``stride``, without those whose
    share of -1 labels exceeds ``max_invalid``, through its ``training_loss``; it is validated by
    soft voting over windows of the same stride. With ``val``: early stopping on the validation macro
    F1 (``patience`` epochs without a gain) and the best epoch's weights are kept. With ``val=None``:
    exactly ``epochs`` epochs, last weights.
    """
    device = torch.device(device)
    seed_everything(seed)
    if not (train.labels >= 0).any():
        raise ValueError("train_head: the training table has no labelled frames")
    if val is not None and not (val.labels >= 0).any():
        raise ValueError("train_head: the validation table has no labelled frames")
    module = build_head(head_name, visual_dim=train.visual_dim, audio_dim=train.audio_dim, hidden=hidden,
                        dropout=dropout, options=options).to(device)
    sequence = isinstance(module, SequenceHead)
    if sequence:   # the training units: windows (n, W) of row indices, else labelled frames (n,)
        units = training_windows(train.labels, train.offsets, window=window, stride=stride, max_invalid=max_invalid)
        if len(units) == 0:
            raise ValueError(f"train_head {head_name}: no training window of {window} frames has at most "
                             f"{max_invalid:.0%} invalid labels")
    else:
        units = np.flatnonzero(train.labels >= 0)
    weights = torch.from_numpy(class_weights_for(train.labels, class_weights, beta=effective_beta)).to(device)
    criterion = frame_criterion(loss, weight=weights, gamma=focal_gamma)
    optimizer = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=weight_decay)
    generator = np.random.default_rng(seed)
    n_params = count_parameters(module)
    predict_kwargs = dict(batch_size=4 * batch_size, device=device, window=window, stride=stride)
    log.info("train %s (%d params): %d labelled train frames%s, %s val frames, up to %d epochs on %s",
             head_name, n_params, int((train.labels >= 0).sum()),
             f" in {len(units)} windows of {window} (stride {stride})" if sequence else "",
             "no" if val is None else int((val.labels >= 0).sum()), epochs, device)

    history: list[dict[str, float]] = []
    best_f1, best_epoch, best_state, stale = -1.0, 0, None, 0
    bar = tqdm(range(1, epochs + 1), desc=f"train {head_name}", unit="epoch", leave=False)
    for epoch in bar:
        start = time.perf_counter()
        module.train()
        order = generator.permutation(len(units))
        total, seen = 0.0, 0
        for first in range(0, len(order), batch_size):
            batch = units[np.sort(order[first:first + batch_size])]  # sorted rows: faster gathers, same batch
            visual, audio, vmask, labels = _labelled_batch(train, batch, device)
            if sequence:
                batch_loss = module.training_loss(visual, audio, vmask, labels, criterion)
            else:
                batch_loss = criterion(module(visual, audio, vmask), labels)
            optimizer.zero_grad(set_to_none=True)
            batch_loss.backward()
            optimizer.step()
            n_valid = len(batch) if not sequence else int((labels >= 0).sum())
            total += float(batch_loss.detach()) * n_valid
            seen += n_valid
        record = {"epoch": epoch, "train_loss": total / max(seen, 1)}
        if val is not None:
            pred = predict_logits(module, val, **predict_kwargs).argmax(1)
            record["val_f1"] = macro_f1(val.labels, pred)
        record["seconds"] = time.perf_counter() - start
        history.append(record)
        bar.set_postfix({k: round(v, 4) for k, v in record.items() if k in ("train_loss", "val_f1")})
        if val is None:
            continue
        if record["val_f1"] > best_f1:
            best_f1, best_epoch, stale = record["val_f1"], epoch, 0
            best_state = copy.deepcopy({k: v.detach().cpu() for k, v in module.state_dict().items()})
        else:
            stale += 1
            if stale >= patience:
                log.info("train %s: early stop at epoch %d (best %d, val F1 %.4f)", head_name, epoch,
                         best_epoch, best_f1)
                break
    if best_state is not None:
        module.load_state_dict(best_state)
    else:
        best_epoch, best_f1 = len(history), float("nan")
    module.eval()
    log.info("train %s done: %d epochs, best epoch %d, val F1 %.4f", head_name, len(history), best_epoch, best_f1)
    config = dict(head=head_name, hidden=hidden, dropout=dropout, epochs=epochs, batch_size=batch_size, lr=lr,
                  weight_decay=weight_decay, patience=patience, seed=seed, class_weights=class_weights,
                  effective_beta=effective_beta, loss=loss, focal_gamma=focal_gamma, options=dict(options or {}),
                  window=window, stride=stride, max_invalid=max_invalid,
                  visual_dim=train.visual_dim, audio_dim=train.audio_dim)
    return TrainedHead(name=head_name, module=module, history=history, best_epoch=best_epoch,
                       best_val_f1=float(best_f1), n_params=n_params, config=config)


# ----------------------------------------------------------------------------- Table 3


@dataclass
class FusionComparison:
    """What ``evaluate_heads`` produces: Table 3 and the logits later stages (smoothing) reuse."""

    table: pd.DataFrame                       # one row per head
    trained: dict[str, TrainedHead]           # official-split models
    val_logits: dict[str, np.ndarray]         # head -> (N_val, C), rows of the ``val`` table
    fold_logits: dict[str, np.ndarray] = field(default_factory=dict)  # head -> out-of-fold (N_all, C)


def cross_validate(head_name: str, table_all: FrameTable, folds: Mapping[str, int], *, epochs: int,
                   batch_size: int = 1024, device: torch.device | str = "cpu",
                   **train_kwargs: Any) -> tuple[dict[int, float], np.ndarray]:
    """K-fold CV over the tracks of ``table_all``: fold k's model is trained on the other folds for
    ``epochs`` epochs (no early stopping) and scored on fold k. Returns per-fold macro F1 and the
    out-of-fold logits (N_all, C)."""
    missing = [t for t in table_all.txtids if t not in folds]
    if missing:
        raise KeyError(f"no fold given for {len(missing)} tracks, e.g. {missing[:5]}")
    track_fold = np.array([int(folds[t]) for t in table_all.txtids])
    row_fold = track_fold[table_all.track_rows()]
    oof = np.zeros((len(table_all), NUM_CLASSES), dtype=np.float32)
    scores: dict[int, float] = {}
    for fold in sorted(set(track_fold.tolist())):
        train = table_all.subset([t for t, f in zip(table_all.txtids, track_fold) if f != fold])
        held = table_all.subset([t for t, f in zip(table_all.txtids, track_fold) if f == fold])
        trained = train_head(head_name, train, None, epochs=epochs, batch_size=batch_size, device=device,
                             **train_kwargs)
        logits = trained.predict(held, device=device)
        oof[row_fold == fold] = logits  # subset keeps the original track order, so rows line up
        scores[fold] = macro_f1(held.labels, logits.argmax(1))
        log.info("CV %s fold %d: %d tracks, %d frames, F1 %.4f", head_name, fold, len(held.txtids), len(held),
                 scores[fold])
    return scores, oof


def evaluate_heads(head_names: Sequence[str], *, train: FrameTable, val: FrameTable,
                   folds: Mapping[str, int] | None = None, table_all: FrameTable | None = None,
                   head_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
                   **train_kwargs: Any) -> FusionComparison:
    """Table 3: per head its parameter count, official validation F1 and (with ``folds`` and
    ``table_all``, the train+val pool) per-fold / mean / std (sample, ddof=1) cross-validated F1.

    ``train_kwargs`` go to ``train_head`` (hidden, dropout, epochs, lr, device, ...) for every head;
    ``head_kwargs[name]`` override them for one head (a sequence head's options, window, batch
    size, loss). The CV models train for the official run's best epoch count.
    """
    unknown = [h for h in head_names if h not in HEADS and h not in SEQUENCE_HEADS]
    if unknown:
        raise ValueError(f"unknown fusion heads {unknown}; choose from {', '.join(known_heads())}")
    if (folds is None) != (table_all is None):
        raise ValueError("cross-validation needs both folds and table_all (or neither)")
    head_kwargs = head_kwargs or {}
    rows, trained, val_logits, fold_logits = [], {}, {}, {}
    for name in head_names:
        kwargs = {**train_kwargs, **head_kwargs.get(name, {})}
        head = train_head(name, train, val, **kwargs)
        logits = head.predict(val, device=kwargs.get("device", "cpu"))
        trained[name], val_logits[name] = head, logits
        row: dict[str, Any] = {"head": name, "params": head.n_params, "official_val_f1": head.best_val_f1,
                               "best_epoch": head.best_epoch}
        if folds is not None:
            cv_kwargs = {k: v for k, v in kwargs.items() if k not in ("epochs", "patience")}
            scores, fold_logits[name] = cross_validate(name, table_all, folds, epochs=max(head.best_epoch, 1),
                                                       **cv_kwargs)
            values = np.array(list(scores.values()))
            row["cv_mean_f1"] = float(values.mean())
            row["cv_std_f1"] = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
            row.update({f"fold_{k}": v for k, v in scores.items()})
        rows.append(row)
        log.info("fusion %s: %d params, official val F1 %.4f%s", name, head.n_params, head.best_val_f1,
                 f", CV {row['cv_mean_f1']:.4f} +- {row['cv_std_f1']:.4f}" if folds is not None else "")
    return FusionComparison(table=pd.DataFrame(rows), trained=trained, val_logits=val_logits,
                            fold_logits=fold_logits)
