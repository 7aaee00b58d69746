"""Stage I: MoE-assisted DINOv2 adaptation on face images (seed 000, sec. 3.1.2-3.1.3, sec. 4.2).

* ``MoEHead`` - the training-only head, eqs. 2-4:
  alpha = softmax(R(LN(u))),  u~ = sum_m alpha_m e_m(u),  logits = W_c Drop(LN(u~)) + b_c.
  ``MLPHead`` is the single-branch head of the Table 1 ablation.
* ``soft_target_cross_entropy`` - eq. 5, L = -sum_c w_c y~_c log p_c, with soft targets y~ from
  label smoothing and mixup, and class-balanced weights w_c.
* ``train_stage1`` - AdamW (backbone / head learning rates), cosine schedule, the first blocks
  frozen, best epoch chosen by validation macro F1; only the backbone is saved (the head is
  discarded after Stage I). Runs under torchrun with DistributedDataParallel when
  ``torch.distributed`` is initialised.

The reference system's published code differs from the text in ways that are options here
(``params/abaw10.yaml`` sets them): the MoE head structure ``ReferenceMoEHead`` (``moe_structure=
"authors"``), layer-wise learning-rate decay from the last block down (``layer_decay``, see
``param_groups``), no weight decay on biases and norms, gradient clipping, a per-epoch cosine
schedule to ``lr_min`` and trainable class / position tokens.
"""
from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Subset
from kitlib.progress import tqdm

from kitlib import NUM_CLASSES
from kitlib.metrics import macro_f1
from kitlib.runtime import seed_everything
from kitlib.visual.backbones import checkpoint_hash, feature_dim, freeze_backbone_blocks, input_mean_std, save_backbone, unwrap
from kitlib.visual.images import FaceImageDataset, Item, label_counts
from kitlib.visual.padaug import PadAug

log = logging.getLogger(__name__)
SYNC_EVERY = 25  # training steps between host reads of the running loss (each read waits for the GPU)


HEAD_KINDS: tuple[str, ...] = ("moe", "mlp")
LR_SCHEDULES: tuple[str, ...] = ("step_cosine", "epoch_cosine")


class MoEHead(nn.Module):
    """Router + M MLP experts + LN-Dropout-Linear classifier (eqs. 2-4)."""

    def __init__(self, dim: int, num_classes: int = NUM_CLASSES, num_experts: int = 4, hidden: int | None = None,
                 dropout: float = 0.1):
        super().__init__()
        hidden = hidden or dim
        self.router_norm = nn.LayerNorm(dim)
        self.router = nn.Linear(dim, num_experts)                      # R in eq. 2
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)) for _ in range(num_experts))
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)
        self.classifier = nn.Linear(dim, num_classes)                  # W_c, b_c in eq. 4

    def forward(self, u: torch.Tensor, *,
                return_alpha: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        alpha = torch.softmax(self.router(self.router_norm(u)), dim=-1)          # (B, M), eq. 2
        experts = torch.stack([expert(u) for expert in self.experts], dim=1)     # (B, M, D)
        mixed = torch.einsum("bm,bmd->bd", alpha.to(experts.dtype), experts)     # eq. 3
        logits = self.classifier(self.drop(self.norm(mixed)))                    # eq. 4
        return (logits, alpha) if return_alpha else logits


class MLPHead(nn.Module):
    """Single-branch head LN-Linear-GELU-Dropout-Linear (the "Fine-tune" rows of Table 1)."""

    def __init__(self, dim: int, num_classes: int = NUM_CLASSES, hidden: int | None = None, dropout: float = 0.1):
        super().__init__()
        hidden = hidden or dim
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, num_classes))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.net(u)


class DropPath(nn.Module):
    """Stochastic depth: drop a sample's residual branch with probability ``p`` while training."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1.0 - self.p)
        return x * keep / (1.0 - self.p)


class SwiGLUBlock(nn.Module):
    """Residual pre-LN SwiGLU block: ``x + DropPath(W_p Drop(W_1 LN(x) * SiLU(W_2 LN(x))))``."""

    def __init__(self, dim: int, hidden: int, dropout: float, drop_path: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(dim, hidden)
        self.proj = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(x)
        return x + self.drop_path(self.proj(self.drop(self.fc1(y) * F.silu(self.fc2(y)))))


class ReferenceMoEHead(nn.Module):
    """The MoE head of the reference code (``GatedMoEMLPHead``): eqs. 2-4 with a deeper router and experts.

    ``u' = LN(u)``; router ``Linear(D, D/4) -> LN -> GELU -> Linear(D/4, M)`` on ``u'`` (eq. 2); each
    expert ``depth`` residual SwiGLU blocks (D -> ratio*D -> D, drop-path rising linearly from 0 to
    ``drop_path``) on ``u'`` (eq. 3); ``logits = W_c Drop(LN(sum_m alpha_m e_m))`` (eq. 4), with
    ``dropout`` both inside the blocks and before the classifier.
    """

    def __init__(self, dim: int, num_classes: int = NUM_CLASSES, num_experts: int = 4, *, depth: int = 3,
                 mlp_ratio: float = 2.0, dropout: float = 0.6, drop_path: float = 0.1):
        super().__init__()
        self.in_norm = nn.LayerNorm(dim)
        self.router = nn.Sequential(nn.Linear(dim, dim // 4), nn.LayerNorm(dim // 4), nn.GELU(),
                                    nn.Linear(dim // 4, num_experts))
        rates = torch.linspace(0, drop_path, depth).tolist()
        self.experts = nn.ModuleList(
            nn.Sequential(*[SwiGLUBlock(dim, int(dim * mlp_ratio), dropout, r) for r in rates])
            for _ in range(num_experts))
        self.out_norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)
        self.classifier = nn.Linear(dim, num_classes)

    def forward(self, u: torch.Tensor, *,
                return_alpha: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        u = self.in_norm(u)
        alpha = torch.softmax(self.router(u), dim=-1)
        experts = torch.stack([expert(u) for expert in self.experts], dim=1)
        logits = self.classifier(self.drop(self.out_norm(torch.einsum("bm,bmd->bd", alpha.to(experts.dtype), experts))))
        return (logits, alpha) if return_alpha else logits


MOE_STRUCTURES: tuple[str, ...] = ("kit", "authors")


def build_head(kind: str, *, dim: int, num_classes: int = NUM_CLASSES, num_experts: int = 4,
               hidden: int | None = None, dropout: float = 0.1, moe_structure: str = "kit") -> nn.Module:
    """The Stage-I head: ``moe`` (eqs. 2-4; ``moe_structure`` ``kit`` or ``authors``) or ``mlp`` (ablation)."""
    if moe_structure not in MOE_STRUCTURES:
        raise ValueError(f"moe_structure must be one of {MOE_STRUCTURES}, got {moe_structure!r}")
    if kind == "moe" and moe_structure == "authors":
        return ReferenceMoEHead(dim, num_classes, num_experts=num_experts, dropout=dropout)
    if kind == "moe":
        return MoEHead(dim, num_classes, num_experts=num_experts, hidden=hidden, dropout=dropout)
    if kind == "mlp":
        return MLPHead(dim, num_classes, hidden=hidden, dropout=dropout)
    raise ValueError(f"head_kind must be one of {HEAD_KINDS}, got {kind!r}")


class Stage1Model(nn.Module):
    """Backbone E_v followed by the training-only head."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))


# ----------------------------------------------------------------------------- objective (eq. 5)

def soft_target_cross_entropy(logits: torch.Tensor, soft_targets: torch.Tensor,
                              class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 5 averaged over the batch: mean_b ( -sum_c w_c y~_bc log p_bc ); w = 1 when None."""
    log_p = F.log_softmax(logits.float(), dim=-1)
    per_class = soft_targets.float() * log_p
    if class_weights is not None:
        per_class = per_class * class_weights.to(per_class)
    return -per_class.sum(dim=-1).mean()


def smooth_targets(labels: torch.Tensor, *, num_classes: int = NUM_CLASSES,
                   label_smoothing: float = 0.0) -> torch.Tensor:
    """One-hot targets with ``label_smoothing`` mass spread evenly over all classes."""
    one_hot = F.one_hot(labels.long(), num_classes).float()
    return one_hot * (1.0 - label_smoothing) + label_smoothing / num_classes


def mixup(images: torch.Tensor, soft_targets: torch.Tensor, alpha: float,
          generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Mix each sample with a random partner: lambda ~ Beta(alpha, alpha); alpha <= 0 leaves the batch as is."""
    if alpha <= 0 or len(images) < 2:
        return images, soft_targets, 1.0
    seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
    lam = float(np.random.default_rng(seed).beta(alpha, alpha))
    perm = torch.randperm(len(images), generator=generator).to(images.device)
    return (lam * images + (1 - lam) * images[perm], lam * soft_targets + (1 - lam) * soft_targets[perm], lam)


def class_weights_from_counts(counts: np.ndarray | list[int], *, power: float = 1.0,
                              normalise: str = "samples") -> np.ndarray:
    """Class-balanced w_c ∝ (1 / n_c)^power, scaled so the mean weight over the training samples is 1.

    Classes without samples get weight 0 (e.g. Other in RAF-DB). ``power`` 0.5 softens the
    inverse-frequency weighting for very skewed sets. ``normalise="classes"`` is the reference
    code's ``compute_class_weights``: ``w_c ∝ 1 / max(n_c, 1)`` scaled to a mean of 1 over the
    classes (the loss scale, and so gradient clipping, differ from ``samples``).
    """
    if normalise == "classes":
        inv = np.maximum(np.asarray(counts, dtype=np.float64), 1.0) ** -power
        return inv / inv.mean()
    if normalise != "samples":
        raise ValueError(f"normalise must be 'samples' or 'classes', got {normalise!r}")
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or (counts < 0).any() or counts.sum() == 0:
        raise ValueError(f"class counts must be a non-negative vector with some samples, got {counts.tolist()}")
    weights = np.zeros_like(counts)
    present = counts > 0
    weights[present] = counts[present] ** -power
    return weights * counts.sum() / float((weights * counts).sum())


# ----------------------------------------------------------------------------- training

def _no_weight_decay(name: str, param: torch.nn.Parameter) -> bool:
    """Biases, 1-D parameters (norm scales, LayerScale) and anything named ``norm`` (the reference rule)."""
    return name.endswith(".bias") or param.ndim <= 1 or "norm" in name.lower()


def param_groups(model: Stage1Model, *, lr_backbone: float, lr_head: float, weight_decay: float,
                 layer_decay: float | None = None, no_decay_bias_norm: bool = False) -> list[dict[str, Any]]:
    """AdamW parameter groups of the trainable weights of a ``Stage1Model``.

    Head at ``lr_head``; backbone at ``lr_backbone``, or with ``layer_decay`` (the reference code's
    LLRD) block ``i`` of ``n`` at ``lr_backbone * layer_decay ** (n - 1 - i)`` (the last block at
    ``lr_backbone``, each earlier one ``layer_decay`` times slower) and the other backbone weights
    (tokens, final norm) at ``lr_backbone``. ``no_decay_bias_norm``: no weight decay on biases,
    1-D parameters and norms. Each group records its ``name`` (``head``, ``block<i>``, ``backbone``).
    """
    bare = unwrap(model)
    backbone, head = bare.backbone, bare.head
    groups: dict[tuple[str, bool], dict[str, Any]] = {}

    def add(group: str, lr: float, name: str, p: torch.nn.Parameter) -> None:
        skip = no_decay_bias_norm and _no_weight_decay(name, p)
        entry = groups.setdefault((group, skip), {"name": group + ("_no_wd" if skip else ""), "params": [], "lr": lr,
                                                  "weight_decay": 0.0 if skip else weight_decay})
        entry["params"].append(p)

    for name, p in head.named_parameters():
        if p.requires_grad:
            add("head", lr_head, name, p)
    n_blocks = len(backbone.blocks) if hasattr(backbone, "blocks") else 0
    block_of = {id(p): i for i in range(n_blocks) for p in backbone.blocks[i].parameters()}
    for name, p in backbone.named_parameters():
        if not p.requires_grad:
            continue
        i = block_of.get(id(p))
        if layer_decay is not None and i is not None:
            add(f"block{i}", lr_backbone * layer_decay ** (n_blocks - 1 - i), name, p)
        else:
            add("backbone", lr_backbone, name, p)
    return [g for g in groups.values() if g["params"]]


def train_tokens(backbone: nn.Module) -> None:
    """Make the class / register tokens and the position embedding trainable (the reference code
    freezes only the patch embedding and the first blocks)."""
    backbone = unwrap(backbone)
    for name in ("cls_token", "reg_token", "pos_embed"):
        p = getattr(backbone, name, None)
        if isinstance(p, nn.Parameter):
            p.requires_grad_(True)


def _dist_info() -> tuple[bool, int, int]:
    ddp = dist.is_available() and dist.is_initialized()
    return ddp, (dist.get_rank() if ddp else 0), (dist.get_world_size() if ddp else 1)


def cosine_lambda(total_steps: int, warmup_steps: int = 0):
    """LR factor: linear warm-up, then cosine decay to 0 over ``total_steps``."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return factor


@torch.no_grad()
def predict_labels(model: nn.Module, loader: DataLoader, *, device: torch.device,
                   amp_dtype: torch.dtype | None, desc: str = "eval") -> np.ndarray:
    """Argmax class of every image of ``loader`` (in loader order)."""
    model.eval()
    preds = []
    for images, _ in tqdm(loader, desc=desc, unit="batch", leave=False, disable=not _is_main()):
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            preds.append(model(images.to(device, non_blocking=True)).argmax(-1).cpu())
    return torch.cat(preds).numpy() if preds else np.zeros(0, dtype=np.int64)


def _is_main() -> bool:
    return _dist_info()[1] == 0


def loader_options(num_workers: int | None, *, device: torch.device, prefetch_factor: int = 4,
                   persistent: bool = True) -> dict[str, Any]:
    """DataLoader keyword arguments that keep a GPU fed: ``num_workers`` processes (None: the
    machine's cores), pinned batches on CUDA, workers kept alive across epochs and ``prefetch_factor``
    batches decoded ahead per worker. 0 workers loads in the training process (the CPU demo)."""
    workers = (os.cpu_count() or 1) if num_workers is None else int(num_workers)
    if workers < 0:
        raise ValueError(f"num_workers must be >= 0 or None (the machine's cores), got {num_workers}")
    options: dict[str, Any] = dict(num_workers=workers, pin_memory=device.type == "cuda")
    if workers > 0:
        options.update(persistent_workers=persistent, prefetch_factor=prefetch_factor)
    return options


def _evaluate(model: nn.Module, val_set: FaceImageDataset, *, batch_size: int, num_workers: int | None,
              device: torch.device, amp_dtype: torch.dtype | None, prefetch_factor: int = 4) -> float:
    """Validation macro F1; under DDP each rank predicts a strided shard (with the unwrapped model)
    and the shards are gathered, so every rank gets the same score without padded duplicates."""
    ddp, rank, world = _dist_info()
    index = np.arange(rank, len(val_set), world)
    loader = DataLoader(Subset(val_set, index.tolist()), batch_size=batch_size, shuffle=False,
                        **loader_options(num_workers, device=device, prefetch_factor=prefetch_factor,
                                         persistent=False))
    preds = predict_labels(model, loader, device=device, amp_dtype=amp_dtype)
    if ddp:
        shards: list[Any] = [None] * world
        dist.all_gather_object(shards, (index, preds))
        index = np.concatenate([s[0] for s in shards])
        preds = np.concatenate([s[1] for s in shards])
    full = np.empty(len(val_set), dtype=np.int64)
    full[index] = preds
    return macro_f1(val_set.labels, full)


def loss_scaler(amp_dtype: torch.dtype | None, device: torch.device) -> torch.amp.GradScaler:
    """A gradient scaler, active for float16 autocast only: fp16 gradients underflow to zero without
    one (bfloat16 has float32's range and needs none); disabled it passes the loss and steps through."""
    return torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)


def train_stage1(*, backbone: nn.Module, train_items: list[Item], val_items: list[Item], head_kind: str = "moe",
                 num_experts: int = 4, epochs: int = 12, batch_size: int = 32, lr_backbone: float = 1e-5,
                 lr_head: float = 3e-4, weight_decay: float = 0.05, mixup_alpha: float = 0.2,
                 label_smoothing: float = 0.1, padaug: PadAug | None, n_frozen_blocks: int = 8, image_size: int,
                 device: torch.device | str, amp_dtype: torch.dtype | None = None, num_workers: int | None = 0,
                 prefetch_factor: int = 4, seed: int = 0, out_path: Path, max_steps_per_epoch: int | None = None,
                 class_weight_power: float = 1.0, warmup_steps: int = 0, moe_structure: str = "kit",
                 head_dropout: float = 0.1, layer_decay: float | None = None, no_decay_bias_norm: bool = False,
                 grad_clip: float | None = None, lr_schedule: str = "step_cosine", lr_min: float = 0.0,
                 trainable_tokens: bool = False, augment: str = "kit", class_weight_norm: str = "samples",
                 record_extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Adapt ``backbone`` on face images and save the best epoch's backbone to ``out_path``.

    ``lr_schedule``: ``step_cosine`` (the kit: warm-up then cosine to 0, stepped per batch) or
    ``epoch_cosine`` (the reference code: ``CosineAnnealingLR(T_max=epochs, eta_min=lr_min)``
    stepped per epoch). ``moe_structure``, ``head_dropout``, ``layer_decay``, ``no_decay_bias_norm``,
    ``grad_clip`` (max gradient norm), ``trainable_tokens`` and ``augment`` (``kit`` | ``authors``,
    ``images.face_transform``): the reference code's options, see the module docstring.
    ``record_extra`` joins the record saved with the backbone (a chained run says what it started
    from and on which image set it trained).

    ``amp_dtype`` None = bfloat16 autocast on CUDA and none on CPU; pass ``torch.float32`` to
    switch autocast off on CUDA. Returns ``{"history": [{epoch, train_loss, val_f1, seconds,
    images_per_s}], "best_epoch", "best_val_f1", "out_path", "sha256"}``.
    """
    device = torch.device(device)
    ddp, rank, world = _dist_info()
    main = rank == 0
    seed_everything(seed + rank)
    if amp_dtype is None:
        amp_dtype = torch.bfloat16 if device.type == "cuda" else None
    elif amp_dtype == torch.float32:
        amp_dtype = None
    mean, std = input_mean_std(backbone)
    if lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {lr_schedule!r}")
    train_set = FaceImageDataset(train_items, image_size=image_size, train=True, padaug=padaug, mean=mean, std=std,
                                 recipe=augment)
    val_set = FaceImageDataset(val_items, image_size=image_size, train=False, mean=mean, std=std, recipe=augment)
    counts = label_counts(train_items)
    class_weights = torch.tensor(class_weights_from_counts(counts, power=class_weight_power, normalise=class_weight_norm),
                                 dtype=torch.float32, device=device)

    freeze_backbone_blocks(backbone, n_frozen_blocks)
    if trainable_tokens:
        train_tokens(backbone)
    head = build_head(head_kind, dim=feature_dim(backbone), num_experts=num_experts, dropout=head_dropout,
                      moe_structure=moe_structure)
    model: nn.Module = Stage1Model(backbone, head).to(device)
    if ddp:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    bare = unwrap(model)
    optimizer = torch.optim.AdamW(param_groups(bare, lr_backbone=lr_backbone, lr_head=lr_head,
                                               weight_decay=weight_decay, layer_decay=layer_decay,
                                               no_decay_bias_norm=no_decay_bias_norm), weight_decay=weight_decay)

    sampler = DistributedSampler(train_set, shuffle=True, seed=seed, drop_last=True) if ddp else None
    loader_gen = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(train_set, batch_size=batch_size, shuffle=sampler is None, sampler=sampler,
                              generator=loader_gen, drop_last=len(train_set) // world > batch_size,
                              **loader_options(num_workers, device=device, prefetch_factor=prefetch_factor))
    steps_per_epoch = len(train_loader) if max_steps_per_epoch is None else min(len(train_loader), max_steps_per_epoch)
    if lr_schedule == "step_cosine":
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_lambda(epochs * steps_per_epoch, warmup_steps))
    else:
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs, 1), eta_min=lr_min)
    mix_gen = torch.Generator().manual_seed(seed + 1000 * rank)
    scaler = loss_scaler(amp_dtype, device)
    params = dict(head_kind=head_kind, num_experts=num_experts, epochs=epochs, batch_size=batch_size,
                  lr_backbone=lr_backbone, lr_head=lr_head, weight_decay=weight_decay, mixup_alpha=mixup_alpha,
                  label_smoothing=label_smoothing, padaug=repr(padaug), n_frozen_blocks=n_frozen_blocks,
                  image_size=image_size, amp_dtype=str(amp_dtype), seed=seed, world_size=world,
                  max_steps_per_epoch=max_steps_per_epoch, class_weight_power=class_weight_power,
                  warmup_steps=warmup_steps, moe_structure=moe_structure, head_dropout=head_dropout,
                  layer_decay=layer_decay, no_decay_bias_norm=no_decay_bias_norm, grad_clip=grad_clip,
                  lr_schedule=lr_schedule, lr_min=lr_min, trainable_tokens=trainable_tokens, augment=augment,
                  class_weight_norm=class_weight_norm)
    log.info("stage I: %d train / %d val images, class counts %s, head %s, %d steps/epoch x %d epochs, device %s%s",
             len(train_set), len(val_set), counts.tolist(), head_kind, steps_per_epoch, epochs, device,
             f", DDP x{world}" if ddp else "")

    history: list[dict[str, Any]] = []
    best_f1, best_epoch, sha = -1.0, -1, None
    for epoch in tqdm(range(1, epochs + 1), desc="stage I epochs", unit="epoch", disable=not main):
        if sampler is not None:
            sampler.set_epoch(epoch)
        model.train()
        start, n_seen = time.perf_counter(), 0
        loss_sum = torch.zeros((), device=device)  # summed on the device: the host reads it every SYNC_EVERY steps
        bar = tqdm(train_loader, total=steps_per_epoch, desc=f"epoch {epoch}", unit="batch", leave=False,
                   disable=not main)
        for step, (images, labels) in enumerate(bar):
            if step >= steps_per_epoch:
                break
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            targets = smooth_targets(labels, label_smoothing=label_smoothing)
            images, targets, _ = mixup(images, targets, mixup_alpha, mix_gen)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = model(images)
            loss = soft_target_cross_entropy(logits, targets, class_weights)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if grad_clip is not None:
                scaler.unscale_(optimizer)   # clip the true gradients, not the scaled ones
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            scale = scaler.get_scale() if scaler.is_enabled() else None   # fp16 only: one host read per step
            scaler.step(optimizer)           # skipped (and the scale lowered) when an fp16 gradient overflowed
            scaler.update()
            stepped = scale is None or scaler.get_scale() >= scale
            if lr_schedule == "step_cosine" and stepped:   # the schedule follows the steps actually taken
                scheduler.step()
            loss_sum += loss.detach() * len(images)
            n_seen += len(images)
            if (step + 1) % SYNC_EVERY == 0 or step + 1 == steps_per_epoch:
                mean_loss = loss_sum.item() / n_seen  # the one host sync per SYNC_EVERY steps
                if not math.isfinite(mean_loss):
                    raise FloatingPointError(f"stage I loss is {mean_loss} at epoch {epoch}, steps "
                                             f"{max(0, step + 1 - SYNC_EVERY)}-{step}")
                bar.set_postfix(loss=f"{mean_loss:.4f}")
        loss_sum = loss_sum.item()
        if not math.isfinite(loss_sum):
            raise FloatingPointError(f"stage I loss is {loss_sum} at epoch {epoch}")
        train_seconds = time.perf_counter() - start
        if lr_schedule == "epoch_cosine":
            scheduler.step()
        val_f1 = _evaluate(bare, val_set, batch_size=batch_size, num_workers=num_workers, device=device,
                           amp_dtype=amp_dtype, prefetch_factor=prefetch_factor)
        row = dict(epoch=epoch, train_loss=loss_sum / max(n_seen, 1), val_f1=val_f1,
                   seconds=time.perf_counter() - start, images_per_s=n_seen * world / max(train_seconds, 1e-9))
        history.append(row)
        improved = val_f1 > best_f1
        if improved:
            best_f1, best_epoch = val_f1, epoch
            if main:
                record = dict(trained_by="kitlib.stage1.train_stage1", head_kind=head_kind, epochs=epochs,
                              best_epoch=best_epoch, best_val_f1=best_f1, params=params, history=history,
                              n_train=len(train_set), n_val=len(val_set), class_counts=counts.tolist(),
                              **(record_extra or {}))
                save_backbone(bare.backbone, Path(out_path), record=record)
                sha = checkpoint_hash(Path(out_path))
        log.info("epoch %d/%d: train loss %.4f, val macro F1 %.4f%s, %.0f s, %.1f img/s", epoch, epochs,
                 row["train_loss"], val_f1, (" (best, saved)" if main else " (best)") if improved else "", row["seconds"], row["images_per_s"])
    if ddp:
        dist.barrier()
    log.info("stage I done: best epoch %d, val macro F1 %.4f, backbone %s", best_epoch, best_f1, out_path)
    return dict(history=history, best_epoch=best_epoch, best_val_f1=best_f1, out_path=str(out_path), sha256=sha)
