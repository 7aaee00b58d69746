"""One training loop for every fusion head (frame heads and window heads), prediction, cross-validation
and the head comparison of Table 3 (seed 000 sec. 3.2.4, eq. 13; sec. 4.6).

A frame head's batch is a set of labelled frames; a sequence head's batch a set of windows
(``sequence.training_windows``), and sequence-head logits come back frame-aligned (N, C) by soft
voting over windows of stride ``S``.

Evaluation: ``evaluate_heads`` trains every head on the official split (early stopping on the
validation macro F1) and, given folds, runs the K-fold cross-validation of Table 3 over the
train+val pool; a fold's model is trained for the official run's best epoch count WITHOUT looking
at the held-out fold (no early stopping on the data it is scored on).
"""
from __future__ import annotations

import copy
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from kitlib.progress import tqdm

from kitlib import NUM_CLASSES
from kitlib.fusion.heads import HEADS, SEQUENCE_HEADS, FusionHead, build_head, count_parameters, known_heads
from kitlib.fusion.sequence import (SequenceHead, add_votes, frame_criterion, frame_mask_of, sliding_windows,
                                    training_windows, vote_buffers)
from kitlib.fusion.table import FrameTable
from kitlib.metrics import macro_f1
from kitlib.runtime import seed_everything

log = logging.getLogger(__name__)


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
AUTO_BETA = "auto"     # effective_beta chosen from the largest class count (``effective_beta_for``)


def effective_beta_for(counts: np.ndarray) -> float:
    """``beta = 1 - 1 / max(n_c)``: the beta at which the largest class's effective number is
    ``(1 - 1/e) n_max``, so no class saturates and the weights keep the spread of the counts.

    A fixed beta stops meaning anything once every class has ``n_c >> 1 / (1 - beta)``: with 0.999,
    the ABAW release's ~0.6-0.9 M labelled frames (its smallest class ~16 k) give weights within
    0.1 % of each other. Seed 004 (sec. 4.4) uses effective-number weights but gives no beta.
    """
    n_max = float(np.max(counts))
    if n_max < 2:
        raise ValueError(f"effective_beta {AUTO_BETA!r} needs a class with at least 2 labelled frames")
    return 1.0 - 1.0 / n_max


def weight_ratio(weights: np.ndarray) -> float:
    """max / min over the classes that have a weight (> 0): how much the class weights reweight the loss."""
    present = np.asarray(weights)[np.asarray(weights) > 0]
    return float(present.max() / present.min()) if len(present) else float("nan")


def class_weights_for(labels: np.ndarray, scheme: str | None, num_classes: int = NUM_CLASSES, *,
                      beta: float | str = 0.999) -> np.ndarray:
    """Per-class weights ``w_c`` of eq. 13 from the training label counts ``n_c`` (valid frames).

    ``inverse``: ``w_c ~ 1 / n_c``; ``inverse_sqrt``: ``w_c ~ 1 / sqrt(n_c)``; ``effective_number``
    (Cui et al. 2019, seed 004 sec. 4.4): ``w_c ~ (1 - beta) / (1 - beta^n_c)``, the inverse of the
    effective number of samples, ``beta`` a float in (0, 1) or ``"auto"`` (``effective_beta_for``
    the counts); None: all 1. Normalised to mean 1 over the classes present; absent classes get 0.
    """
    if scheme is None:
        return np.ones(num_classes, dtype=np.float32)
    if scheme not in CLASS_WEIGHTS:
        raise ValueError(f"unknown class_weights {scheme!r}; choose one of {', '.join(CLASS_WEIGHTS)} or None")
    counts = np.bincount(labels[labels >= 0], minlength=num_classes).astype(np.float64)
    present = counts > 0
    if scheme == "effective_number":
        beta = resolve_beta(beta, counts)
        w = np.divide(1.0 - beta, 1.0 - beta**counts, out=np.zeros(num_classes), where=present)
    else:
        power = 1.0 if scheme == "inverse" else 0.5
        w = np.divide(1.0, counts**power, out=np.zeros(num_classes), where=present)
    return (w / w[present].mean()).astype(np.float32)


def resolve_beta(beta: float | str, counts: np.ndarray) -> float:
    """The effective-number beta to use: ``beta`` itself (checked to lie in (0, 1)) or, for ``"auto"``, from the counts."""
    if isinstance(beta, str):
        if beta != AUTO_BETA:
            raise ValueError(f"effective_beta must be a number in (0, 1) or {AUTO_BETA!r}, got {beta!r}")
        return effective_beta_for(counts)
    if not 0.0 < beta < 1.0:
        raise ValueError(f"effective-number class weights need 0 < beta < 1, got {beta}")
    return float(beta)


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


@dataclass
class ResidentTable:
    """A frame table's rows on the GPU, gathered there by row index (no host gather, no per-batch copy).

    ``audio`` has its filled frames zeroed already (as ``_batch`` does per batch); the release is
    about 6 GB of float16 features, which an 80 GB GPU holds beside any head.
    """

    visual: torch.Tensor       # (N, Dv) float16
    audio: torch.Tensor        # (N, Da) float16, zeros where the audio was filled
    visual_mask: torch.Tensor  # (N,) bool
    labels: torch.Tensor       # (N,) int64


def resident_table(table: FrameTable, device: torch.device, *, max_fraction: float = 0.5,
                   on_cpu: bool = False) -> ResidentTable | None:
    """``table`` copied onto the CUDA ``device`` once; None on the CPU (host batches are already local; ``on_cpu``
    copies anyway, for tests) or when its features would take more than ``max_fraction`` of the free GPU
    memory (logged: host batches then)."""
    if (device.type != "cuda" and not on_cpu) or len(table) == 0:
        return None
    nbytes = len(table) * (table.visual_dim + table.audio_dim) * 2
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else float("inf")
    if nbytes > max_fraction * free:
        log.info("fusion: %.1f GiB of features would not fit in %.0f%% of the %.1f GiB free on %s; batches are "
                 "gathered on the host", nbytes / 2**30, 100 * max_fraction, free / 2**30, device)
        return None
    rows = 1 << 16  # copied in slices: a memory-mapped table is never read whole into host memory

    def upload(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        out = torch.empty((len(table), *array.shape[1:]), dtype=dtype, device=device)
        for start in range(0, len(table), rows):
            out[start:start + rows] = torch.from_numpy(np.ascontiguousarray(array[start:start + rows])).to(
                device, dtype=dtype)
        return out
    visual = upload(table.visual, torch.float16)
    audio = upload(table.audio, torch.float16) * upload(table.audio_mask, torch.float16).unsqueeze(-1)
    return ResidentTable(visual=visual, audio=audio, visual_mask=upload(table.visual_mask, torch.bool),
                         labels=upload(table.labels, torch.int64))


def _resident_batch(res: ResidentTable, rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``_labelled_batch`` on the device: rows (B,) or (B, W) of row indices on the device, -1 = padding."""
    shape = rows.shape
    keep = (rows >= 0).reshape(-1)
    safe = rows.clamp(min=0).reshape(-1)
    visual, audio = res.visual[safe].float(), res.audio[safe].float()
    vmask, labels = res.visual_mask[safe] & keep, torch.where(keep, res.labels[safe], -1)
    audio = audio * keep.to(audio.dtype).unsqueeze(-1)
    return visual.view(*shape, -1), audio.view(*shape, -1), vmask.view(shape), labels.view(shape)


@torch.inference_mode()
def predict_logits(module: nn.Module, table: FrameTable, *, batch_size: int = 4096,
                   device: torch.device | str = "cpu", window: int = 64, stride: int = 8,
                   resident: ResidentTable | None = None) -> np.ndarray:
    """Logits (N, C) float32 of every row of ``table`` (eval mode).

    A frame head scores ``batch_size`` rows at a time. A sequence head scores every window of
    ``window`` frames, stride ``stride`` (``sequence.sliding_windows``), ``batch_size`` windows at a
    time, and a frame's logits are the mean over the windows covering it (soft voting, seed 004 sec. 3.6).
    ``resident``: the table already on the device (``resident_table``): batches are gathered there.
    """
    device = torch.device(device)
    module.eval().to(device)
    if isinstance(module, SequenceHead):
        windows = sliding_windows(table.offsets, window=window, stride=stride)
        total, count = vote_buffers(len(table), NUM_CLASSES, device=device)
        starts = range(0, len(windows), batch_size)
        for start in tqdm(starts, desc="predict windows", unit="batch", leave=False, disable=len(starts) < 20):
            rows = windows[start:start + batch_size]
            visual, audio, vmask, _ = (_labelled_batch(table, rows, device) if resident is None else
                                       _resident_batch(resident, torch.from_numpy(rows).to(device)))
            add_votes(total, count, torch.from_numpy(rows).to(device),
                      module(visual, audio, vmask, frame_mask=frame_mask_of(rows, device=device)))
        return (total / count.clamp(min=1).unsqueeze(1)).cpu().numpy()
    chunks = []
    starts = range(0, len(table), batch_size)
    for start in tqdm(starts, desc="predict", unit="batch", leave=False, disable=len(starts) < 20):
        if resident is not None:  # on the device, copied to the host once at the end
            rows_t = torch.arange(start, min(start + batch_size, len(table)), device=device)
            chunks.append(module(*_resident_batch(resident, rows_t)[:3]).float())
            continue
        rows = np.arange(start, min(start + batch_size, len(table)))
        chunks.append(module(*_batch(table, rows, device)).float().cpu().numpy())
    if resident is not None:
        return torch.cat(chunks).cpu().numpy() if chunks else np.zeros((0, NUM_CLASSES), dtype=np.float32)
    return np.concatenate(chunks) if chunks else np.zeros((0, NUM_CLASSES), dtype=np.float32)


LR_SCHEDULES = ("constant", "cosine")


@torch.no_grad()
def fit_input_norm(module: FusionHead, table: FrameTable, rows: np.ndarray, *, chunk: int = 65536) -> None:
    """Set a frame head's ``InputNorm`` statistics from ``rows`` of ``table`` (the training split):
    per branch the mean and population std of the L2-normalised features of the rows that have that
    modality, accumulated in float64 chunk by chunk (memory-mapped tables stay on disk)."""
    norm = getattr(module, "input_norm", None)
    if norm is None:
        return
    for name, feats, mask in (("visual", table.visual, table.visual_mask), ("audio", table.audio, table.audio_mask)):
        use = rows[mask[rows]]
        if len(use) == 0 or feats.shape[1] == 0:
            continue
        total = np.zeros(feats.shape[1]); squares = np.zeros(feats.shape[1])
        for first in range(0, len(use), chunk):
            x = norm.l2(torch.from_numpy(np.asarray(feats[use[first:first + chunk]], dtype=np.float32))).double()
            total += x.sum(0).numpy(); squares += (x * x).sum(0).numpy()
        mean = total / len(use)
        std = np.sqrt(np.maximum(squares / len(use) - mean**2, 0.0))
        getattr(norm, f"{name}_mean").copy_(torch.from_numpy(mean).float())
        getattr(norm, f"{name}_std").copy_(torch.from_numpy(std).float().clamp(min=norm.eps))


def train_head(head_name: str, train: FrameTable, val: FrameTable | None, *, hidden: int = 512,
               dropout: float = 0.2, epochs: int = 30, batch_size: int = 1024, lr: float = 1e-3,
               weight_decay: float = 1e-4, patience: int = 5, seed: int = 0, device: torch.device | str = "cpu",
               class_weights: str | None = "inverse_sqrt", effective_beta: float | str = 0.999, loss: str = "ce",
               focal_gamma: float = 2.0, options: Mapping[str, Any] | None = None, window: int = 64,
               stride: int = 8, max_invalid: float = 0.25, structure: str = "kit", input_norm: str = "none",
               input_dropout: tuple[float, float] = (0.0, 0.0), lr_schedule: str = "constant",
               lr_min: float = 0.0, complete_frames_only: bool = False,
               resident_features: bool = True) -> TrainedHead:
    """Train one head (frame or sequence) with AdamW and a class-weighted frame criterion over valid frames.

    ``loss``: ``ce`` (eq. 13 of seed 000) or ``focal`` (eq. 5 of seed 004, ``focal_gamma``), both with
    the ``class_weights`` scheme (``effective_beta`` for ``effective_number``). A frame head trains on
    batches of ``batch_size`` labelled frames; a sequence head (``options`` = its own keywords) on
    batches of ``batch_size`` windows of ``window`` frames, stride ``stride``, without those whose
    share of -1 labels exceeds ``max_invalid``, through its ``training_loss``; it is validated by
    soft voting over windows of the same stride. With ``val``: early stopping on the validation macro
    F1 (``patience`` epochs without a gain) and the best epoch's weights are kept. With ``val=None``:
    exactly ``epochs`` epochs, last weights.

    Frame heads only: ``structure`` (``kit`` | ``authors``, see ``build_head``), ``input_norm``
    (``l2_zscore``: statistics fitted here on the labelled training rows and stored in the head, so
    prediction reuses them) and ``input_dropout`` (element dropout of the visual / audio inputs while
    training). ``lr_schedule``: ``constant`` or ``cosine`` (per epoch, from ``lr`` to ``lr_min`` over
    ``epochs``). ``complete_frames_only``: frame heads train on the labelled frames that have both a
    face and audio (the reference code's training set), not on every labelled frame, and the epoch
    is chosen on the validation frames that have both (not imputed), as the reference code scores.
    ``resident_features`` (CUDA): the tables are copied onto the GPU once (``resident_table``) and every
    batch is drawn there by row index, with the loss summed there too, so no step waits for the host;
    the batches are the same as without it.
    """
    device = torch.device(device)
    seed_everything(seed)
    if not (train.labels >= 0).any():
        raise ValueError("train_head: the training table has no labelled frames")
    if val is not None and not (val.labels >= 0).any():
        raise ValueError("train_head: the validation table has no labelled frames")
    if lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown lr_schedule {lr_schedule!r}; choose one of {', '.join(LR_SCHEDULES)}")
    frame_only = dict(structure=structure, input_norm=input_norm, input_dropout=tuple(input_dropout)) \
        if head_name in HEADS else {}
    module = build_head(head_name, visual_dim=train.visual_dim, audio_dim=train.audio_dim, hidden=hidden,
                        dropout=dropout, options=options, **frame_only)
    sequence = isinstance(module, SequenceHead)
    if sequence:   # the training units: windows (n, W) of row indices, else labelled frames (n,)
        units = training_windows(train.labels, train.offsets, window=window, stride=stride, max_invalid=max_invalid)
        if len(units) == 0:
            raise ValueError(f"train_head {head_name}: no training window of {window} frames has at most "
                             f"{max_invalid:.0%} invalid labels")
    else:
        keep = train.labels >= 0
        if complete_frames_only and train.visual_dim and train.audio_dim:
            keep &= train.visual_mask & train.audio_mask
        units = np.flatnonzero(keep)
        if len(units) == 0:
            raise ValueError(f"train_head {head_name}: no labelled training frame with a face and audio")
        fit_input_norm(module, train, units)
    module = module.to(device)
    class_weight_values = class_weights_for(train.labels, class_weights, beta=effective_beta)
    used_beta = (resolve_beta(effective_beta, np.bincount(train.labels[train.labels >= 0], minlength=NUM_CLASSES))
                 if class_weights == "effective_number" else None)
    log.info("train %s: class weights %s%s, max/min weight ratio %.3f", head_name, class_weights,
             f" (beta {used_beta:.6g})" if used_beta is not None else "", weight_ratio(class_weight_values))
    weights = torch.from_numpy(class_weight_values).to(device)
    criterion = frame_criterion(loss, weight=weights, gamma=focal_gamma)
    optimizer = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs, 1), eta_min=lr_min) \
        if lr_schedule == "cosine" else None
    generator = np.random.default_rng(seed)
    n_params = count_parameters(module)
    train_res = resident_table(train, device) if resident_features else None
    val_res = resident_table(val, device) if resident_features and val is not None and train_res is not None else None
    units_t = torch.from_numpy(units).to(device) if train_res is not None else None
    predict_kwargs = dict(batch_size=4 * batch_size, device=device, window=window, stride=stride, resident=val_res)
    log.info("train %s (%d params): %d labelled train frames%s, %s val frames, up to %d epochs on %s",
             head_name, n_params, int((train.labels >= 0).sum()),
             f" in {len(units)} windows of {window} (stride {stride})" if sequence else "",
             "no" if val is None else int((val.labels >= 0).sum()), epochs, device)

    scored = np.ones(0 if val is None else len(val), dtype=bool)   # validation frames the epoch is chosen on
    if val is not None and complete_frames_only and not sequence:   # the reference code: frames with both
        scored = ~val.imputed if val.imputed is not None else val.visual_mask & val.audio_mask
    history: list[dict[str, float]] = []
    best_f1, best_epoch, best_state, stale = -1.0, 0, None, 0
    bar = tqdm(range(1, epochs + 1), desc=f"train {head_name}", unit="epoch", leave=False)
    for epoch in bar:
        start = time.perf_counter()
        module.train()
        order = generator.permutation(len(units))
        order_t = torch.from_numpy(order).to(device) if train_res is not None else None
        total, seen = (torch.zeros((), device=device), 0) if train_res is not None else (0.0, 0)
        for first in range(0, len(order), batch_size):
            if train_res is not None:  # the same batch, gathered on the device
                batch = units_t[order_t[first:first + batch_size].sort().values]
                visual, audio, vmask, labels = _resident_batch(train_res, batch)
            else:
                batch = units[np.sort(order[first:first + batch_size])]  # sorted rows: faster gathers, same batch
                visual, audio, vmask, labels = _labelled_batch(train, batch, device)
            if sequence:
                batch_loss = module.training_loss(visual, audio, vmask, labels, criterion,
                                                  frame_mask=frame_mask_of(batch, device=device))
            else:
                batch_loss = criterion(module(visual, audio, vmask), labels)
            optimizer.zero_grad(set_to_none=True)
            batch_loss.backward()
            optimizer.step()
            if train_res is not None:  # summed on the device: no host synchronisation per step
                n_valid = len(batch) if not sequence else (labels >= 0).sum()
                total = total + batch_loss.detach() * n_valid
            else:
                n_valid = len(batch) if not sequence else int((labels >= 0).sum())
                total += float(batch_loss.detach()) * n_valid
            seen += n_valid
        record = {"epoch": epoch, "train_loss": float(total) / max(float(seen), 1),
                  "lr": optimizer.param_groups[0]["lr"]}
        if scheduler is not None:
            scheduler.step()
        if val is not None:
            pred = predict_logits(module, val, **predict_kwargs).argmax(1)
            record["val_f1"] = macro_f1(val.labels[scored], pred[scored])
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
    if val is None:     # nothing measured here (a CV fold: the caller scores the held-out fold)
        log.info("train %s done: %d epochs (no validation split: the last epoch is kept)", head_name, len(history))
    else:
        log.info("train %s done: %d epochs, best epoch %d, val F1 %.4f", head_name, len(history), best_epoch, best_f1)
    config = dict(head=head_name, hidden=hidden, dropout=dropout, epochs=epochs, batch_size=batch_size, lr=lr,
                  weight_decay=weight_decay, patience=patience, seed=seed, class_weights=class_weights,
                  effective_beta=effective_beta, loss=loss, focal_gamma=focal_gamma, options=dict(options or {}),
                  used_beta=used_beta, class_weight_ratio=weight_ratio(class_weight_values),
                  window=window, stride=stride, max_invalid=max_invalid,
                  visual_dim=train.visual_dim, audio_dim=train.audio_dim, lr_schedule=lr_schedule, lr_min=lr_min,
                  complete_frames_only=complete_frames_only,
                  **{k: (list(v) if isinstance(v, tuple) else v) for k, v in frame_only.items()})
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


CV_PROTOCOLS = ("kit", "authors")


def cross_validate(head_name: str, table_all: FrameTable, folds: Mapping[str, int], *, epochs: int,
                   batch_size: int = 1024, device: torch.device | str = "cpu", protocol: str = "kit",
                   **train_kwargs: Any) -> tuple[dict[int, float], np.ndarray]:
    """K-fold CV over the tracks of ``table_all``. Returns per-fold macro F1 and the out-of-fold
    logits (N_all, C).

    ``protocol="kit"``: fold k's model is trained on the other folds for ``epochs`` epochs (no early
    stopping) and scored on fold k. ``protocol="authors"`` (the reference code's ``eval_5fold``):
    fold k's model trains up to ``epochs`` epochs and keeps its best epoch on fold k itself (the
    held-out fold selects the epoch it is scored with; ``patience`` from ``train_kwargs``)."""
    if protocol not in CV_PROTOCOLS:
        raise ValueError(f"unknown CV protocol {protocol!r}; choose one of {', '.join(CV_PROTOCOLS)}")
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
        trained = train_head(head_name, train, held if protocol == "authors" else None, epochs=epochs,
                             batch_size=batch_size, device=device, **train_kwargs)
        logits = trained.predict(held, device=device)
        oof[row_fold == fold] = logits  # subset keeps the original track order, so rows line up
        # authors: the held-out fold's best-epoch score (on the frames it was chosen on)
        scores[fold] = trained.best_val_f1 if protocol == "authors" else macro_f1(held.labels, logits.argmax(1))
        log.info("CV %s fold %d: %d tracks, %d frames, F1 %.4f", head_name, fold, len(held.txtids), len(held),
                 scores[fold])
    return scores, oof


def evaluate_heads(head_names: Sequence[str], *, train: FrameTable, val: FrameTable,
                   folds: Mapping[str, int] | None = None, table_all: FrameTable | None = None,
                   head_kwargs: Mapping[str, Mapping[str, Any]] | None = None, cv_protocol: str = "kit",
                   **train_kwargs: Any) -> FusionComparison:
    """Table 3: per head its parameter count, official validation F1 and (with ``folds`` and
    ``table_all``, the train+val pool) per-fold / mean / std (sample, ddof=1) cross-validated F1.

    ``train_kwargs`` go to ``train_head`` (hidden, dropout, epochs, lr, device, ...) for every head;
    ``head_kwargs[name]`` override them for one head (a sequence head's options, window, batch
    size, loss). ``cv_protocol="kit"``: the CV models train for the official run's best epoch count,
    std over folds is the sample std (ddof=1); ``"authors"``: each fold keeps its best epoch on its
    held-out fold, population std (ddof=0), as the reference code reports (``cross_validate``). The
    table's ``cv_protocol`` column says which produced the numbers.
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
            authors = cv_protocol == "authors"
            cv_kwargs = {k: v for k, v in kwargs.items() if k not in ("epochs",) + (() if authors else ("patience",))}
            cv_epochs = kwargs.get("epochs", 30) if authors else max(head.best_epoch, 1)
            scores, fold_logits[name] = cross_validate(name, table_all, folds, epochs=cv_epochs,
                                                       protocol=cv_protocol, **cv_kwargs)
            values = np.array(list(scores.values()))
            row["cv_protocol"] = cv_protocol
            row["cv_mean_f1"] = float(values.mean())
            ddof = 0 if authors else 1
            row["cv_std_f1"] = float(values.std(ddof=ddof)) if len(values) > ddof else float("nan")
            row.update({f"fold_{k}": v for k, v in scores.items()})
        rows.append(row)
        log.info("fusion %s: %d params, official val F1 %.4f%s", name, head.n_params, head.best_val_f1,
                 f", CV {row['cv_mean_f1']:.4f} +- {row['cv_std_f1']:.4f}" if folds is not None else "")
    return FusionComparison(table=pd.DataFrame(rows), trained=trained, val_logits=val_logits,
                            fold_logits=fold_logits)


def fold_ensemble_logits(head_name: str, pool: FrameTable, folds: Mapping[str, int], table: FrameTable, *,
                         epochs: int, protocol: str = "kit", held_out: Any = None,
                         device: torch.device | str = "cpu", **train_kwargs: Any) -> np.ndarray:
    """Logits (N, C) of ``table`` averaged over the K fold models (the reference system's test-time model).

    Fold k's model trains on the other folds of ``pool`` (fitting its own input normalisation, when
    configured) for ``epochs`` epochs; with ``protocol="authors"`` it keeps its best epoch on fold k
    (``held_out`` maps the held-out table first, e.g. nearest-frame imputation), with ``"kit"`` its last.
    """
    if protocol not in CV_PROTOCOLS:
        raise ValueError(f"unknown CV protocol {protocol!r}; choose one of {', '.join(CV_PROTOCOLS)}")
    missing = [t for t in pool.txtids if t not in folds]
    if missing:
        raise KeyError(f"no fold given for {len(missing)} tracks, e.g. {missing[:5]}")
    outs = []
    for k in tqdm(sorted({int(folds[t]) for t in pool.txtids}), desc="fold models", unit="fold"):
        part = pool.subset([t for t in pool.txtids if int(folds[t]) != k])
        held = None
        if protocol == "authors":
            held = pool.subset([t for t in pool.txtids if int(folds[t]) == k])
            held = held_out(held) if held_out is not None else held
        trained = train_head(head_name, part, held, epochs=epochs, device=device, **train_kwargs)
        outs.append(trained.predict(table, device=device))
    log.info("%s: logits averaged over %d fold models (%s protocol)", head_name, len(outs), protocol)
    return np.mean(outs, axis=0)
