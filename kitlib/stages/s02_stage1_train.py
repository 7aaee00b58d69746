"""Notebook 02: Stage I (seed 000 sec. 3.1): the image set, adaptation of the backbone, and the
backbone states of Table 1.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from kitlib import config
from kitlib.config import Config, notebook_config
from kitlib.stages.common import data_problems_note, amp_dtype, data_index, device, padaug, report, stage1_items, start

log = logging.getLogger(__name__)

# what the notebook calls: the shared first steps, then this stage's own functions
__all__ = ['notebook_config', 'start', 'data_index', 'data_problems_note', 'stage1_items', 'backbone_path', 'pretrained_backbone',
           'train_stage1', 'adapted_backbone', 'image_set_table', 'run_stage1', 'history_table',
           'backbone_record', 'main_state', 'state_label', 'table1_states', 'state_path',
           'train_table1_states', 'chain_configs', 'chain_path', 'run_stage1_chain']






def backbone_path(cfg: Config) -> Path:
    """The adapted backbone this run uses: ``stage1.checkpoint`` or the one Stage I wrote."""
    return cfg.path(cfg.stage1.checkpoint) if cfg.stage1.checkpoint else cfg.run_dir / "stage1" / "backbone.safetensors"


def pretrained_backbone(cfg: Config) -> torch.nn.Module:
    """The ``stage1.arch`` backbone before adaptation (local ``stage1.weights``; random init when null, or
    on purpose with ``random``: a rehearsal, said loudly)."""
    from kitlib.visual.backbones import build_backbone

    if cfg.stage1.weights == config.RANDOM_WEIGHTS:
        log.warning("backbone %s with RANDOM weights (stage1.weights: random): a rehearsal, its features and "
                    "scores carry no meaning", cfg.stage1.arch)
    weights = cfg.path(cfg.stage1.weights) if cfg.stage1.weights not in (None, config.RANDOM_WEIGHTS) else None
    return build_backbone(arch=cfg.stage1.arch, weights=weights, img_size=cfg.stage1.image_size,
                          overrides=cfg.stage1.arch_overrides)


def train_stage1(cfg: Config, *, head: str | None = None, use_padaug: bool | None = None,
                 out_path: Path | None = None, backbone: torch.nn.Module | None = None,
                 record_extra: dict | None = None) -> dict:
    """Stage-I adaptation with the params (head / PadAug can be switched for the Table-1 ablation).

    ``backbone``: start from this one instead of ``pretrained_backbone(cfg)`` (a chained run).
    """
    from kitlib.visual import stage1

    s, dev = cfg.stage1, device(cfg)
    train_items, val_items = stage1_items(cfg)
    use_padaug = s.padaug if use_padaug is None else use_padaug
    result = stage1.train_stage1(
        backbone=pretrained_backbone(cfg) if backbone is None else backbone, train_items=train_items, val_items=val_items, head_kind=head or s.head,
        num_experts=s.num_experts, epochs=s.epochs, batch_size=s.batch_size, lr_backbone=s.lr_backbone,
        lr_head=s.lr_head, weight_decay=s.weight_decay, mixup_alpha=s.mixup_alpha, label_smoothing=s.label_smoothing,
        padaug=padaug(cfg) if use_padaug else None, n_frozen_blocks=s.n_frozen_blocks, image_size=s.image_size,
        device=dev, amp_dtype=amp_dtype(s.amp, dev, on_cpu=cfg.run.amp_on_cpu) or torch.float32, seed=cfg.run.seed, out_path=out_path or backbone_path(cfg),
        max_steps_per_epoch=s.max_steps_per_epoch, moe_structure=s.moe_structure, head_dropout=s.head_dropout,
        layer_decay=s.layer_decay, no_decay_bias_norm=s.no_decay_bias_norm, grad_clip=s.grad_clip,
        lr_schedule=s.lr_schedule, lr_min=s.lr_min, trainable_tokens=s.trainable_tokens, augment=s.augment,
        class_weight_norm=s.class_weight_norm, num_workers=s.num_workers, prefetch_factor=s.prefetch_factor,
        record_extra={"dataset": s.dataset, "images_root": s.images_root, **(record_extra or {})})
    return result


_NOT_CHAINABLE = ("arch", "arch_overrides", "weights", "train", "checkpoint", "table1_states", "chain")


def chain_configs(cfg: Config) -> list[Config]:
    """The params of each Stage-I run of the chain: ``cfg`` itself, then one per ``stage1.chain`` row
    (``cfg.stage1`` with the row's keys replaced). A row naming an unknown key, or one fixed for the
    whole chain (arch, weights, ...), is an error."""
    import dataclasses

    valid = [f.name for f in dataclasses.fields(config.Stage1Params) if f.name not in _NOT_CHAINABLE]
    out = [cfg]
    for i, row in enumerate(cfg.stage1.chain):
        bad = sorted(set(row) - set(valid))
        if bad:
            raise config.ConfigError(f"stage1.chain[{i}] = {row} names {bad}; a chained Stage I may set: "
                                     f"{', '.join(valid)}")
        merged = {**dataclasses.asdict(cfg.stage1), **row}
        stage = config.from_dict({**cfg.to_dict(), "stage1": merged}, f"stage1.chain[{i}]").stage1
        out.append(dataclasses.replace(cfg, stage1=stage))
    return out


def chain_path(cfg: Config, step: int) -> Path:
    """Where chained run ``step`` (0-based) writes its backbone; the last one writes ``backbone_path``."""
    if step == len(cfg.stage1.chain):
        return backbone_path(cfg)
    return cfg.run_dir / "stage1" / "chain" / f"{step}_{chain_configs(cfg)[step].stage1.dataset}.safetensors"


def run_stage1_chain(cfg: Config) -> dict:
    """Stage I on ``stage1.dataset``, then once more per ``stage1.chain`` row, each run starting from
    the backbone the previous one saved (its best epoch). Resumable: a step whose backbone exists
    is not trained again. Returns the last run's result with ``chain``: one summary row per run."""
    from kitlib.visual.backbones import load_backbone

    steps, summary, result = chain_configs(cfg), [], {}
    for step, step_cfg in enumerate(steps):
        out = chain_path(cfg, step)
        s = step_cfg.stage1
        if out.is_file() and step < len(steps) - 1:
            log.info("stage I chain step %d (%s): %s exists, not trained again", step, s.dataset, out)
            summary.append({"step": step, "dataset": s.dataset, "status": "exists", "out_path": str(out)})
            continue
        start_from = None if step == 0 else load_backbone(chain_path(cfg, step - 1), device="cpu")[0]
        result = train_stage1(step_cfg, out_path=out, backbone=start_from, record_extra={
            "chain_step": step, "started_from": str(chain_path(cfg, step - 1)) if step else (s.weights or "random init")})
        summary.append({"step": step, "dataset": s.dataset, "status": "trained", "epochs": s.epochs,
                        "best_epoch": result["best_epoch"], "best_val_f1": result["best_val_f1"], "out_path": str(out)})
    report(cfg, "stage1_chain", pd.DataFrame(summary))
    return {**result, "chain": summary}


def adapted_backbone(cfg: Config) -> tuple[torch.nn.Module, dict]:
    """The backbone for feature extraction: the adapted one if it exists, else (train: false) the pretrained one."""
    from kitlib.visual.backbones import checkpoint_hash, load_backbone

    path = backbone_path(cfg)
    if path.is_file():
        model, record = load_backbone(path, device=device(cfg))
        return model.eval(), {**record, "checkpoint": str(path), "checkpoint_hash": checkpoint_hash(path)}
    if cfg.stage1.train:
        raise FileNotFoundError(f"{path} is missing: run 02_stage1_train first (or set stage1.checkpoint)")
    model = pretrained_backbone(cfg).to(device(cfg)).eval()
    return model, {"arch": cfg.stage1.arch, "checkpoint": cfg.stage1.weights, "adapted": False}


def image_set_table(train_items: list, val_items: list) -> pd.DataFrame:
    """Images per class in the Stage-I train and validation sets."""
    from kitlib import CLASSES
    from kitlib.visual.images import label_counts

    return pd.DataFrame({"train": label_counts(train_items), "val": label_counts(val_items)}, index=list(CLASSES))


def run_stage1(cfg: Config) -> dict:
    """Stage I as the params say: train (``stage1.train``), or record that an existing backbone is used."""
    if cfg.stage1.train:
        return run_stage1_chain(cfg) if cfg.stage1.chain else train_stage1(cfg)
    source = cfg.stage1.checkpoint or cfg.stage1.weights or "random init"
    log.info("stage1.train is false: features will come from %s", source)
    return {"history": [], "best_epoch": None, "best_val_f1": None, "out_path": source}


def history_table(result: dict) -> pd.DataFrame:
    return pd.DataFrame(result.get("history", []))


def backbone_record(cfg: Config) -> pd.Series:
    """How the backbone used by this run was made (record saved with it), without the per-epoch history."""
    from kitlib.visual.backbones import read_record

    path = backbone_path(cfg)
    if not path.is_file():
        return pd.Series({"backbone": cfg.stage1.checkpoint or cfg.stage1.weights or "random init", "adapted": False})
    record = {k: v for k, v in read_record(path).items() if k != "history"}
    return pd.Series({k: (v if np.isscalar(v) or v is None else str(v)) for k, v in record.items()})


def main_state(cfg: Config) -> str:
    """This run's own backbone state: ``<head>[_padaug]`` when Stage I trains, else ``pretrained``."""
    return f"{cfg.stage1.head}{'_padaug' if cfg.stage1.padaug else ''}" if cfg.stage1.train else "pretrained"


def _check_state(state: str) -> tuple[str, bool] | None:
    """(head, use PadAug) of a fine-tuned state; None for ``pretrained``."""
    if state == "pretrained":
        return None
    head, _, padaug_flag = state.partition("_")
    if head not in ("moe", "mlp") or padaug_flag not in ("", "padaug"):
        raise config.ConfigError(f"stage1.table1_states: unknown state {state!r}; valid: pretrained, moe, mlp, "
                                 f"moe_padaug, mlp_padaug")
    return head, bool(padaug_flag)


def state_label(state: str) -> str:
    """Table 1's row name: ``moe_padaug`` -> ``fine-tuned + MoE + PadAug``."""
    spec = _check_state(state)
    if spec is None:
        return "pretrained"
    head, use_padaug = spec
    return f"fine-tuned + {'MoE' if head == 'moe' else head.upper()}" + (" + PadAug" if use_padaug else "")


def table1_states(cfg: Config) -> list[str]:
    """The backbone states of Table 1: this run's own, then ``stage1.table1_states``."""
    for state in cfg.stage1.table1_states:
        _check_state(state)
    return list(dict.fromkeys([main_state(cfg), *cfg.stage1.table1_states]))


def state_path(cfg: Config, state: str) -> Path:
    """Where the backbone of a Table-1 state is (this run's own: ``backbone_path``)."""
    return backbone_path(cfg) if state == main_state(cfg) else cfg.run_dir / "stage1" / "states" / f"{state}.safetensors"


def train_table1_states(cfg: Config) -> pd.DataFrame:
    """Stage I once more for every fine-tuned Table-1 state other than this run's own (resumable)."""
    rows = []
    for state in table1_states(cfg)[1:]:
        spec = _check_state(state)
        path = state_path(cfg, state)
        if spec is None:
            rows.append({"state": state_label(state), "status": "no training", "best_val_f1": None})
        elif path.is_file():
            rows.append({"state": state_label(state), "status": "exists", "best_val_f1": None})
        else:
            result = train_stage1(cfg, head=spec[0], use_padaug=spec[1], out_path=path)
            rows.append({"state": state_label(state), "status": "trained", "best_val_f1": result["best_val_f1"]})
    table = pd.DataFrame(rows, columns=["state", "status", "best_val_f1"])
    report(cfg, "stage1_states", table)
    return table
