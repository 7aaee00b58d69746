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
from kitlib.stages.common import (data_problems_note, amp_dtype, data_index, device, feature_store, folds, frame_labels, frame_table,
                                  load_logits, probe_table, read_report, report, save_logits, start, with_features)

log = logging.getLogger(__name__)

# what the notebook calls: the shared first steps, then this stage's own functions
__all__ = ['notebook_config', 'start', 'data_index', 'data_problems_note', 'frame_labels', 'folds', 'read_report', 'train_kwargs',
           'text_encoder_path', 'label_prompts', 'head_kwargs', 'check_head_names', 'fusion_tables',
           'fusion_ablation', 'xattn_grid', 'final_head_report', 'lambda_fusion', 'backbone_comparison']


def train_kwargs(cfg: Config) -> dict:
    """``fusion.train_head`` keywords of every head (a frame head's settings; ``head_kwargs`` adds the rest)."""
    f = cfg.fusion
    return dict(hidden=f.hidden, dropout=f.dropout, epochs=f.epochs, batch_size=f.batch_size, lr=f.lr,
                weight_decay=f.weight_decay, patience=f.patience, seed=cfg.run.seed, device=device(cfg),
                class_weights=None if f.class_weights == "none" else f.class_weights,
                effective_beta=f.effective_beta, loss=f.loss, focal_gamma=f.focal_gamma,
                structure=f.head_structure, input_norm=f.input_norm, input_dropout=tuple(f.input_dropout),
                lr_schedule=f.lr_schedule, lr_min=f.lr_min, complete_frames_only=f.missing_frames == "impute",
                resident_features=f.resident_features)


def evaluation_table(cfg: Config, table):
    """A validation / test frame table as the final model sees it: with ``fusion.missing_frames: impute``
    faceless (and silent) frames take the nearest frame's features and are marked imputed."""
    from kitlib.fusion.table import impute_nearest

    if cfg.fusion.missing_frames not in ("mask", "impute"):
        raise config.ConfigError(f"fusion.missing_frames = {cfg.fusion.missing_frames!r}; valid: mask, impute")
    return impute_nearest(table) if cfg.fusion.missing_frames == "impute" else table


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
            if name in cfg.fusion.frame_head_overrides:
                out[name] = frame_head_overrides(cfg, name)
            continue
        options = dataclasses.asdict(getattr(cfg.fusion.head_options, name))
        if name == "tcn_prompt":
            options["prompt_embeddings"] = label_prompts(cfg)
        out[name] = dict(batch_size=s.batch_size, lr=s.lr, epochs=s.epochs, patience=s.patience, loss=s.loss,
                         class_weights=None if s.class_weights == "none" else s.class_weights,
                         window=s.window, stride=s.stride, max_invalid=s.max_invalid, options=options)
    return out


FRAME_HEAD_OVERRIDES = ("lr", "weight_decay", "dropout")


def frame_head_overrides(cfg: Config, name: str) -> dict:
    """``fusion.frame_head_overrides[name]``: a frame head's own lr / weight_decay / dropout (the
    reference code trains some Table 3 heads with their own values)."""
    values = dict(cfg.fusion.frame_head_overrides[name] or {})
    unknown = sorted(set(values) - set(FRAME_HEAD_OVERRIDES))
    if unknown:
        raise config.ConfigError(f"fusion.frame_head_overrides.{name} has unknown key(s) {unknown}; "
                                 f"valid: {', '.join(FRAME_HEAD_OVERRIDES)}")
    return {k: float(v) for k, v in values.items()}


def check_head_names(cfg: Config, names: list[str]) -> None:
    from kitlib import fusion

    unknown = [h for h in [*names, *cfg.fusion.frame_head_overrides] if h not in fusion.known_heads()]
    if unknown:
        raise config.ConfigError(f"fusion.heads / fusion.final_head name unknown head(s) {unknown}; "
                                 f"valid: {', '.join(fusion.known_heads())}")


def fusion_tables(cfg: Config, index: data.DataIndex, labels: dict[str, np.ndarray]) -> tuple:
    """(train, val, train+val pool or None without cross-validation) frame tables of the annotated tracks."""
    annotated = with_features(cfg, [t for t in index.tracks if t.labels_path is not None], "fusion")
    train = frame_table(cfg, [t for t in annotated if t.split == "Train_Set"], labels)
    val = evaluation_table(cfg, frame_table(cfg, [t for t in annotated if t.split == "Validation_Set"], labels))
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
                                       table_all=pool, head_kwargs=head_kwargs(cfg, names),
                                       cv_protocol=cfg.fusion.cv_protocol, **train_kwargs(cfg))
    out = cfg.run_dir / "fusion"
    out.mkdir(parents=True, exist_ok=True)
    final = comparison.trained[f.final_head]
    from kitlib.store import atomic_path

    if val.imputed is not None:   # which validation frames smoothing skips (fusion.missing_frames: impute)
        np.savez_compressed(out / "val_imputed.npz", **{t: val.imputed[a:b] for t, a, b in
                                                        zip(val.txtids, val.offsets[:-1], val.offsets[1:])})
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

    from kitlib.progress import tqdm

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
                                           cv_protocol=cfg.fusion.cv_protocol, **train_kwargs(cfg))
        result = comparison.table.iloc[0].drop("head").to_dict()
        pred = comparison.val_logits["safe_xattn"].argmax(1)
        accuracy = float((pred[valid_val] == val.labels[valid_val]).mean())
        settings = {k: options[k] for k in ("modality_dropout", "d_model", "layers", "n_heads")}  # p, d, l first
        smoothed = _smoothed_scores(cfg, val, comparison.val_logits["safe_xattn"])
        rows.append({**settings, "params": result.pop("params"), "official_val_acc": accuracy, **result, **smoothed})
    table = pd.DataFrame(rows)
    report(cfg, "table3_xattn_grid", table)
    return table


def _smoothed_scores(cfg: Config, table, logits: np.ndarray) -> dict:
    """Official-validation accuracy and macro F1 after the final smoothing (``smoothing.final_strategy`` /
    ``final_window``, per track), beside the single-frame scores (seed 004 reports a median filter, k = 11)."""
    from kitlib import fusion, metrics
    from kitlib.smoothing import smooth_logits

    s = cfg.smoothing
    smoothed = np.concatenate([smooth_logits(x, s.final_window, s.final_strategy)
                               for x in fusion.split_by_track(table, logits).values()])
    pred, valid = smoothed.argmax(1), table.labels >= 0
    return {"smoothing": f"{s.final_strategy} {s.final_window}",
            "smoothed_val_acc": float((pred[valid] == table.labels[valid]).mean()),
            "smoothed_val_f1": metrics.macro_f1(table.labels, pred)}


def lambda_fusion(cfg: Config, index: data.DataIndex, labels: dict[str, np.ndarray]) -> pd.DataFrame:
    """Seed 004 Table 2 (sec. 4.3, eq. 6): a visual and an audio frame classifier (``v_only`` / ``a_only``,
    the audio a +-``fusion.lambda_audio_context``-frame mean), mixed as ``lambda P_v + (1 - lambda) P_a``
    for each ``fusion.lambda_grid`` value, on the official split; written to
    ``reports/table2_lambda_fusion.csv``. An empty grid writes an empty table (the main system's runs)."""
    from kitlib import fusion
    from kitlib.fusion.lambda_fusion import lambda_scores, with_audio_context

    f = cfg.fusion
    if not f.lambda_grid:
        table = pd.DataFrame(columns=["lambda", "accuracy", "f1"])
        report(cfg, "table2_lambda_fusion", table)
        return table
    train, val, _ = fusion_tables(cfg, index, labels)
    kwargs = train_kwargs(cfg)
    visual = fusion.train_head("v_only", train, val, **kwargs)
    train_a, val_a = (with_audio_context(t, radius=f.lambda_audio_context) for t in (train, val))
    audio = fusion.train_head("a_only", train_a, val_a, **kwargs)
    dev = kwargs["device"]
    table = lambda_scores(visual.predict(val, device=dev), audio.predict(val_a, device=dev), val.labels, f.lambda_grid)
    report(cfg, "table2_lambda_fusion", table)
    return table


COMPARISON_KEYS = ("name", "arch", "weights", "checkpoint", "image_size", "arch_overrides")


def _comparison_store(cfg: Config, index: data.DataIndex, row: dict):
    """Visual features of Train+Validation from one ``visual.compare_backbones`` backbone, on this run's
    detected faces (the same boxes, crops and tracks as this run's own features); resumable."""
    from kitlib.faces import build_detector
    from kitlib.stages.s03_crop_extract import export_boxes, follow_settings
    from kitlib.visual.backbones import build_backbone, input_mean_std, load_backbone
    from kitlib.visual.extract import extract_visual_features

    dev = device(cfg)
    image_size = int(row.get("image_size", cfg.stage1.image_size))
    if row.get("checkpoint"):
        backbone, record = load_backbone(cfg.path(row["checkpoint"]), device=dev)
    else:
        weights = cfg.path(row["weights"]) if row.get("weights") else None
        backbone = build_backbone(arch=row["arch"], weights=weights, img_size=image_size,
                                  overrides=row.get("arch_overrides") or {}).to(dev).eval()
        record = {"arch": row["arch"], "weights": row.get("weights")}
    mean, std = input_mean_std(backbone)
    store = feature_store(cfg, f"visual_backbone_{row['name']}")
    tracks = [t for t in index.tracks if t.split in ("Train_Set", "Validation_Set")]
    table = extract_visual_features(
        tracks, store, backbone.eval(), detector=build_detector("boxes", path=export_boxes(cfg)),
        crop_scales=cfg.faces.crop_scales, image_size=image_size, mean=mean, std=std,
        batch_size=cfg.visual.batch_size, max_gap=cfg.faces.max_gap, follow=follow_settings(cfg), device=dev,
        dtype=amp_dtype(cfg.visual.amp, dev, on_cpu=cfg.run.amp_on_cpu) or torch.float32, decode_batch=cfg.faces.decode_batch,
        manifest={"backbone": record, "params_digest": cfg.digest()})
    report(cfg, f"visual_extraction_backbone_{row['name']}", table)
    return store


def backbone_comparison(cfg: Config, index: data.DataIndex, labels: dict[str, np.ndarray]) -> pd.DataFrame:
    """Seed 004 Table 1: this run's backbone and each ``visual.compare_backbones`` entry on the same faces,
    scored by the linear probe (multi-scale mean feature, Train_Set -> Validation_Set macro F1).
    Written to ``reports/table1_backbones.csv``; an empty list writes an empty table."""
    columns = ["backbone", "arch", "val_f1", "train_frames", "val_frames"]
    rows = cfg.visual.compare_backbones
    if not rows:
        table = pd.DataFrame(columns=columns)
        report(cfg, "table1_backbones", table)
        return table
    for i, row in enumerate(rows):
        unknown = sorted(set(row) - set(COMPARISON_KEYS))
        if unknown or "name" not in row or not (row.get("arch") or row.get("checkpoint")):
            raise config.ConfigError(f"visual.compare_backbones[{i}] = {row}: needs a name and an arch (or a "
                                     f"checkpoint); valid keys: {', '.join(COMPARISON_KEYS)}")
    settings = {"multi-scale mean": ("features", None)}
    tables = [probe_table(cfg, index, labels, "visual", settings, "crop")
              .assign(backbone=f"this run ({cfg.stage1.arch})", arch=cfg.stage1.arch)]
    for row in rows:
        store = _comparison_store(cfg, index, row)
        tables.append(probe_table(cfg, index, labels, store.kind, settings, "crop")
                      .assign(backbone=row["name"], arch=row.get("arch") or row.get("checkpoint")))
    table = pd.concat(tables, ignore_index=True)[columns]
    report(cfg, "table1_backbones", table)
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
