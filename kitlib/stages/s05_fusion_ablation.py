"""Notebook 05: the fusion heads of Table 3 (seed 000 sec. 3.2.3-3.2.4, seeds 004 and 003's window heads),
seed 004's p/d/l grid and the final head's per-class report.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from kitlib import config, data
from kitlib.config import Config, notebook_config
from kitlib.stages.common import (data_index, device, folds, frame_labels, frame_table, load_logits, read_report,
                                  report, save_logits, start, with_features)

log = logging.getLogger(__name__)

# what the notebook calls: the shared first steps, then this stage's own functions
__all__ = ['notebook_config', 'start', 'data_index', 'frame_labels', 'folds', 'read_report', 'train_kwargs',
           'text_encoder_path', 'label_prompts', 'head_kwargs', 'check_head_names', 'fusion_tables',
           'fusion_ablation', 'xattn_grid', 'final_head_report']


def train_kwargs(cfg: Config) -> dict:
    """``fusion.train_head`` keywords of every head (a frame head's settings; ``head_kwargs`` adds the rest)."""
    f = cfg.fusion
    return dict(hidden=f.hidden, dropout=f.dropout, epochs=f.epochs, batch_size=f.batch_size, lr=f.lr,
                weight_decay=f.weight_decay, patience=f.patience, seed=cfg.run.seed, device=device(cfg),
                class_weights=None if f.class_weights == "none" else f.class_weights,
                effective_beta=f.effective_beta, loss=f.loss, focal_gamma=f.focal_gamma,
                resident_features=f.resident_features)


def text_encoder_path(cfg: Config) -> Path:
    """The local text encoder folder (tcn_prompt's label prompts); the demo builds a tiny one there if absent."""
    path = cfg.path(cfg.fusion.text_encoder)
    if cfg.fusion.make_tiny_text_encoder and not (path / "config.json").is_file():
        from kitlib import CLASSES
        from kitlib.fusion.tcn_prompt import make_tiny_text_encoder

        make_tiny_text_encoder(path, seed=cfg.run.seed, classes=CLASSES, template=cfg.fusion.prompt_template)
    return path


def label_prompts(cfg: Config) -> torch.Tensor:
    """(C, D) text embeddings of ``fusion.prompt_template`` for every class name (seed 003), on the CPU."""
    from kitlib import CLASSES
    from kitlib.fusion.tcn_prompt import prompt_embeddings

    return prompt_embeddings(text_encoder_path(cfg), classes=CLASSES, template=cfg.fusion.prompt_template,
                             device=device(cfg)).detach().float().cpu()


def head_kwargs(cfg: Config, names: list[str]) -> dict[str, dict]:
    """Per-head ``train_head`` overrides for the window heads among ``names``: ``fusion.sequence`` and
    the head's ``fusion.head_options`` (tcn_prompt: plus the label prompt embeddings)."""
    import dataclasses

    from kitlib import fusion

    s, out = cfg.fusion.sequence, {}
    for name in names:
        if not fusion.is_sequence_head(name):
            continue
        options = dataclasses.asdict(getattr(cfg.fusion.head_options, name))
        if name == "tcn_prompt":
            options["prompt_embeddings"] = label_prompts(cfg)
        out[name] = dict(batch_size=s.batch_size, lr=s.lr, epochs=s.epochs, patience=s.patience, loss=s.loss,
                         class_weights=None if s.class_weights == "none" else s.class_weights,
                         window=s.window, stride=s.stride, max_invalid=s.max_invalid, options=options)
    return out


def check_head_names(cfg: Config, names: list[str]) -> None:
    from kitlib import fusion

    unknown = [h for h in names if h not in fusion.known_heads()]
    if unknown:
        raise config.ConfigError(f"fusion.heads / fusion.final_head name unknown head(s) {unknown}; "
                                 f"valid: {', '.join(fusion.known_heads())}")


def fusion_tables(cfg: Config, index: data.DataIndex, labels: dict[str, np.ndarray]) -> tuple:
    """(train, val, train+val pool or None without cross-validation) frame tables of the annotated tracks."""
    annotated = with_features(cfg, [t for t in index.tracks if t.labels_path is not None], "fusion")
    train = frame_table(cfg, [t for t in annotated if t.split == "Train_Set"], labels)
    val = frame_table(cfg, [t for t in annotated if t.split == "Validation_Set"], labels)
    pool = frame_table(cfg, annotated, labels) if cfg.fusion.cross_validation else None
    return train, val, pool


def fusion_ablation(cfg: Config, index: data.DataIndex, labels: dict[str, np.ndarray],
                    folds: dict[str, int]) -> pd.DataFrame:
    """Table 3: every head of ``fusion.heads`` on the official split (and the folds); keeps the final head."""
    from kitlib import fusion

    f = cfg.fusion
    names = list(dict.fromkeys([*f.heads, f.final_head]))
    check_head_names(cfg, names)
    train, val, pool = fusion_tables(cfg, index, labels)
    comparison = fusion.evaluate_heads(names, train=train, val=val, folds=folds if pool is not None else None,
                                       table_all=pool, head_kwargs=head_kwargs(cfg, names), **train_kwargs(cfg))
    out = cfg.run_dir / "fusion"
    out.mkdir(parents=True, exist_ok=True)
    final = comparison.trained[f.final_head]
    from kitlib.store import atomic_path

    with atomic_path(out / "final_head.pt") as tmp:
        torch.save({"name": final.name, "config": final.config, "state_dict": final.module.state_dict(),
                    "best_epoch": final.best_epoch, "best_val_f1": final.best_val_f1,
                    "visual_dim": val.visual_dim, "audio_dim": val.audio_dim}, tmp)
    save_logits(out / "val_logits.npz", fusion.split_by_track(val, comparison.val_logits[f.final_head]))
    if pool is not None:
        save_logits(out / "oof_logits.npz", fusion.split_by_track(pool, comparison.fold_logits[f.final_head]))
    history = pd.DataFrame([{**row, "head": name} for name, head in comparison.trained.items() for row in head.history])
    report(cfg, "fusion_history", history)
    table = comparison.table[comparison.table["head"].isin(f.heads)].reset_index(drop=True)
    report(cfg, "table3_fusion", table)
    return table


def xattn_grid(cfg: Config, index: data.DataIndex, labels: dict[str, np.ndarray],
               folds: dict[str, int]) -> pd.DataFrame:
    """Seed 004 Table 3: ``safe_xattn`` for each row of ``fusion.xattn_grid`` (modality dropout p,
    d_model d, layers l; other options from ``fusion.head_options.safe_xattn``) on the official split,
    plus the folds when ``fusion.cross_validation`` and ``fusion.xattn_grid_folds``. Written to
    ``reports/table3_xattn_grid.csv``."""
    import dataclasses

    from tqdm.auto import tqdm

    from kitlib import fusion

    grid = cfg.fusion.xattn_grid
    valid = [fld.name for fld in dataclasses.fields(config.SafeXAttnOptions)]
    for i, row in enumerate(grid):
        unknown = sorted(set(row) - set(valid))
        if unknown:
            raise config.ConfigError(f"fusion.xattn_grid[{i}] = {row} has unknown option(s) {unknown}; "
                                     f"valid: {', '.join(valid)}")
    if not grid:
        empty = pd.DataFrame(columns=["modality_dropout", "d_model", "layers", "n_heads", "params",
                                      "official_val_acc", "official_val_f1", "best_epoch"])
        report(cfg, "table3_xattn_grid", empty)
        return empty
    train, val, pool = fusion_tables(cfg, index, labels)
    if not cfg.fusion.xattn_grid_folds:
        pool = None
    base = head_kwargs(cfg, ["safe_xattn"])["safe_xattn"]
    valid_val = val.labels >= 0
    rows = []
    for row in tqdm(grid, desc="safe_xattn grid", unit="row"):
        options = {**base["options"], **row}
        comparison = fusion.evaluate_heads(["safe_xattn"], train=train, val=val,
                                           folds=folds if pool is not None else None, table_all=pool,
                                           head_kwargs={"safe_xattn": {**base, "options": options}},
                                           **train_kwargs(cfg))
        result = comparison.table.iloc[0].drop("head").to_dict()
        pred = comparison.val_logits["safe_xattn"].argmax(1)
        accuracy = float((pred[valid_val] == val.labels[valid_val]).mean())
        settings = {k: options[k] for k in ("modality_dropout", "d_model", "layers", "n_heads")}  # p, d, l first
        rows.append({**settings, "params": result.pop("params"), "official_val_acc": accuracy, **result})
    table = pd.DataFrame(rows)
    report(cfg, "table3_xattn_grid", table)
    return table


def final_head_report(cfg: Config, index: data.DataIndex, labels: dict[str, np.ndarray]) -> dict:
    """Per-class F1 and the confusion matrix of the final head on the official validation split."""
    from kitlib import CLASSES, metrics

    logits = load_logits(cfg, "val")
    y = np.concatenate([labels[t][: len(x)] for t, x in logits.items()])
    pred = np.concatenate([x.argmax(1) for x in logits.values()])
    per_class = pd.DataFrame({"f1": metrics.per_class_f1(y, pred), "frames": np.bincount(y[y >= 0], minlength=len(CLASSES))},
                             index=list(CLASSES))
    per_class.loc["macro"] = [metrics.macro_f1(y, pred), int((y >= 0).sum())]
    report(cfg, "final_head_per_class", per_class.reset_index(names="class"))
    return {"per_class": per_class, "confusion": metrics.confusion(y, pred)}
