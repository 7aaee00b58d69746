"""Seaborn figures shown by the notebooks and saved, as PNG, into ``<run>/figures/``."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from kitlib import CLASSES

sns.set_theme(context="notebook", style="whitegrid")

# column names -> axis labels in words
LABELS = {"val_f1": "validation macro F1", "official_val_f1": "official validation macro F1", "f1": "macro F1",
          "train_loss": "training loss", "val_loss": "validation loss", "epoch": "epoch", "window": "window (frames)",
          "frames": "frames", "crop": "crop", "alignment": "audio alignment", "head": "fusion head",
          "cv_mean_f1": "5-fold mean macro F1", "lr": "learning rate"}
WORST_SHOWN = 12       # per-track figures name this many worst tracks; the rest is a distribution


def label(name: str) -> str:
    """The words for a column name on an axis."""
    return LABELS.get(name, name.replace("_", " "))


def legend_outside(ax: plt.Axes, **kwargs) -> None:
    """Move the axes' legend to the right of the plot, off the data."""
    if ax.get_legend() is not None:
        sns.move_legend(ax, "upper left", bbox_to_anchor=(1.01, 1), frameon=False, **kwargs)


def rotate_x_labels(ax: plt.Axes, degrees: float = 30) -> None:
    """Slant the x tick labels, anchored at their right end under their tick, so long names do not collide."""
    plt.setp(ax.get_xticklabels(), rotation=degrees, ha="right", rotation_mode="anchor")


def save(fig: plt.Figure, run_dir: Path, name: str) -> Path:
    """Save ``fig`` as ``<run_dir>/figures/<name>.png`` and return the path."""
    path = Path(run_dir) / "figures" / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def class_histogram(hist: pd.DataFrame) -> plt.Figure:
    """Valid frames per class and split (the class imbalance the folds must respect)."""
    cols = [f"class_{c}" for c in range(len(CLASSES))]
    per_split = hist.groupby("split")[cols].sum()
    per_split = per_split[per_split.sum(axis=1) > 0]    # a split without labels (the test set) has no bars
    long = per_split.rename(columns=dict(zip(cols, CLASSES))).reset_index().melt(
        id_vars="split", var_name="class", value_name="frames")
    fig, ax = plt.subplots(figsize=(9, 3.4))
    sns.barplot(long, x="class", y="frames", hue="split", ax=ax)
    rotate_x_labels(ax)
    ax.set_xlabel("expression class"), ax.set_ylabel("valid frames")
    legend_outside(ax)
    ax.set_title("Valid frames per class")
    fig.tight_layout()
    return fig


def image_grid(grid: np.ndarray, *, title: str, row_labels: list[str] | None = None) -> plt.Figure:
    """A grid of images (rows x cols x H x W x 3, floats 0..1 or uint8) like the paper's Fig. 3."""
    rows, cols = grid.shape[:2]
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.6 * rows + 0.4), squeeze=False)
    for r in range(rows):
        for c in range(cols):
            axes[r, c].imshow(grid[r, c])
            axes[r, c].set_xticks([]), axes[r, c].set_yticks([])
        if row_labels:
            axes[r, 0].set_ylabel(row_labels[r], fontsize=9)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def training_curves(history: pd.DataFrame, *, x: str = "epoch", metrics: tuple[str, ...] = ("train_loss", "val_f1"),
                    title: str = "") -> plt.Figure:
    """One panel per metric over epochs (Stage I, fusion heads); an empty history (nothing trained,
    e.g. ``stage1.train: false``) gives one panel that says so."""
    present = [m for m in metrics if m in history]
    if not present:
        fig, ax = plt.subplots(figsize=(4.2, 3.2))
        ax.text(0.5, 0.5, "nothing trained\n(no epochs recorded)", ha="center", va="center")
        ax.set_axis_off()
        fig.suptitle(title)
        return fig
    fig, axes = plt.subplots(1, len(present), figsize=(4.2 * len(present), 3.2), squeeze=False)
    hue = "head" if "head" in history else None
    from matplotlib.ticker import MaxNLocator

    for ax, metric in zip(axes[0], present):
        sns.lineplot(history, x=x, y=metric, hue=hue, marker="o", ax=ax, legend=ax is axes[0][-1])
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(label(x)), ax.set_ylabel(label(metric)), ax.set_title(label(metric))
    legend_outside(axes[0][-1])
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def bar_table(table: pd.DataFrame, *, x: str, y: str, hue: str | None = None, title: str = "",
              err: str | None = None) -> plt.Figure:
    """A bar per row of an ablation table (Tables 1-4), optional error bars from column ``err``."""
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(table)), 3.4))
    sns.barplot(table, x=x, y=y, hue=hue, ax=ax)
    if err is not None and hue is None:
        ax.errorbar(np.arange(len(table)), table[y], yerr=table[err].fillna(0), fmt="none", ecolor="black", capsize=3)
    ax.set_xlabel(label(x)), ax.set_ylabel(label(y))
    legend_outside(ax)
    ax.set_title(title)
    rotate_x_labels(ax)
    fig.tight_layout()
    return fig


def confusion_matrix(cm: np.ndarray, *, title: str = "Confusion matrix (row-normalised)") -> plt.Figure:
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6, 5))
    sns.heatmap(pd.DataFrame(norm, index=CLASSES, columns=CLASSES), annot=True, fmt=".2f", cmap="Blues",
                vmin=0, vmax=1, ax=ax, cbar=False)
    ax.set_xlabel("predicted"), ax.set_ylabel("true"), ax.set_title(title)
    fig.tight_layout()
    return fig


def smoothing_sweep(sweep: pd.DataFrame, *, title: str = "") -> plt.Figure:
    """Macro F1 against window size per strategy (the paper's Fig. 4): official validation split on the
    left, mean ± std over the cross-validation folds on the right; dashed: the single-frame baseline."""
    official = sweep[sweep["split"] == "official val"]
    folds = sweep[sweep["split"].str.startswith("fold")]
    panels = [("official validation", official, None)] + ([("folds: mean ± std", folds, "sd")] if len(folds) else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 3.8), squeeze=False, sharey=True)
    for ax, (name, part, errorbar) in zip(axes[0], panels):
        lines = part[part["strategy"] != "none"]
        sns.lineplot(lines, x="window", y="f1", hue="strategy", errorbar=errorbar, ax=ax, legend=ax is axes[0][-1])
        ax.axhline(part.loc[part["strategy"] == "none", "f1"].mean(), color="grey", ls="--", lw=1,
                   label="single frame (no smoothing)")
        ax.set_xlabel(label("window")), ax.set_ylabel(label("f1")), ax.set_title(name)
    last = axes[0][-1]
    last.legend(*last.get_legend_handles_labels(), loc="upper left", bbox_to_anchor=(1, 1), title="strategy",
                frameon=False)
    fig.suptitle(title or "Temporal smoothing: macro F1 by window size")
    fig.tight_layout()
    return fig


def timeline(labels: np.ndarray, rows: dict[str, np.ndarray], *, title: str = "") -> plt.Figure:
    """Per-frame class sequences of one video: truth and predictions, one strip each."""
    names = ["truth", *rows]
    data = np.vstack([labels, *rows.values()]).astype(float)
    data[data < 0] = np.nan
    fig, ax = plt.subplots(figsize=(9, 0.5 * len(names) + 0.8))
    sns.heatmap(data, cmap=sns.color_palette("tab10", len(CLASSES)), vmin=-0.5, vmax=len(CLASSES) - 0.5,
                yticklabels=names, xticklabels=False, ax=ax, cbar_kws={"ticks": range(len(CLASSES))})
    ax.collections[0].colorbar.set_ticklabels(CLASSES)
    ax.set_xlabel("frame"), ax.set_title(title)
    fig.tight_layout()
    return fig


def image(array: np.ndarray, *, title: str = "") -> plt.Figure:
    """One image (H x W x 3, uint8 or floats 0..1), e.g. the PadAug grid."""
    fig, ax = plt.subplots(figsize=(min(14, array.shape[1] / 60), min(10, array.shape[0] / 60)))
    ax.imshow(array)
    ax.set_axis_off(), ax.set_title(title)
    fig.tight_layout()
    return fig


def face_coverage(extraction: pd.DataFrame) -> plt.Figure:
    """Face coverage per annotation file, readable at the release's size (~600 tracks): the distribution of
    the share of frames with a detected, followed, bridged, interpolated or no face (left), and the tracks with the
    most frames without a face, named, with their parts stacked (right)."""
    parts = [c for c in ("detected", "followed", "bridged", "interpolated", "missing") if c in extraction]
    table = extraction.set_index("txtid")[parts].astype(float).fillna(0)
    table = table[table.sum(axis=1) > 0]
    share = table.div(table.sum(axis=1), axis=0)
    return _distribution_and_worst(share, table, worst_by="missing" if "missing" in parts else parts[-1],
                                   what="frames", title="Face track per annotation file",
                                   share_label="share of the track's frames", worst_title="most frames without a face")


def _distribution_and_worst(share: pd.DataFrame, counts: pd.DataFrame, *, worst_by: str, what: str, title: str,
                            share_label: str, worst_title: str) -> plt.Figure:
    """Left: a box per part over all tracks (points when there are few); right: the ``WORST_SHOWN`` tracks
    with the largest ``worst_by`` share as named horizontal stacked bars."""
    colours = dict(zip(share.columns, sns.color_palette("deep", len(share.columns))))
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 0.28 * min(len(share), WORST_SHOWN) + 2.6),
                                      gridspec_kw={"width_ratios": [1, 1.3]})
    long = share.reset_index(names="track").melt(id_vars="track", var_name="part", value_name="share")
    # Matplotlib's own box plot (seaborn 0.13's passes the ``vert`` Matplotlib 3.11 deprecates), first part on top
    boxes = left.boxplot([share[part].to_numpy() for part in share.columns], positions=np.arange(share.shape[1]),
                         orientation="horizontal", tick_labels=list(share.columns), patch_artist=True, widths=0.6,
                         flierprops={"markersize": 2}, medianprops={"color": "black"})
    for patch, part in zip(boxes["boxes"], share.columns):
        patch.set_facecolor(colours[part])
    if len(share) <= 60:
        sns.stripplot(long, x="share", y="part", color="black", size=2.5, ax=left)
    left.set_ylim(share.shape[1] - 0.5, -0.5)
    left.set_xlim(-0.02, 1.02), left.set_xlabel(share_label), left.set_ylabel("")
    left.set_title(f"all {len(share)} tracks")
    worst = share.sort_values(worst_by, ascending=False).head(WORST_SHOWN)
    rows = counts.loc[worst.index][::-1]
    left_edge = np.zeros(len(rows))
    for part in rows.columns:
        right.barh(rows.index, rows[part], left=left_edge, color=colours[part], label=part)
        left_edge += rows[part].to_numpy()
    for y, (track, frac) in enumerate(worst[worst_by][::-1].items()):
        right.text(left_edge[y], y, f" {frac:.0%}", va="center", fontsize=8)
    right.set_xlabel(what), right.set_title(f"{len(worst)} tracks with the {worst_title} (% of the track)")
    right.tick_params(axis="y", labelsize=8)
    right.legend(loc="upper left", bbox_to_anchor=(1.08, 1), frameon=False)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def fold_scores(table: pd.DataFrame) -> plt.Figure:
    """Table 3's cross-validation: macro F1 of each head on each fold (points) and the mean (bar)."""
    folds = [c for c in table.columns if c.startswith("fold_")]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(table)), 3.4))
    if not folds:
        ax.text(0.5, 0.5, "no cross-validation in this run (fusion.cross_validation: false)", ha="center")
        ax.set_axis_off()
        return fig
    long = table.melt(id_vars="head", value_vars=folds, var_name="fold", value_name="f1")
    sns.barplot(long, x="head", y="f1", errorbar="sd", color="lightsteelblue", ax=ax)
    sns.stripplot(long, x="head", y="f1", hue="fold", dodge=False, ax=ax)
    sns.move_legend(ax, "upper left", bbox_to_anchor=(1, 1))
    ax.set_xlabel(label("head")), ax.set_ylabel(label("f1"))
    ax.set_title("Fusion heads: video-level cross-validation (mean ± std, folds as points)")
    rotate_x_labels(ax)
    fig.tight_layout()
    return fig


def coverage(table: pd.DataFrame) -> plt.Figure:
    """Submission coverage: where each test frame's label came from, as a distribution over tracks, and
    the tracks with the most frames filled by the fill policy, named."""
    parts = [c for c in table.columns if c.startswith("from_")] + ["filled"]
    counts = table.set_index("txtid")[parts].astype(float).rename(columns=lambda c: c.replace("from_", "from "))
    counts = counts[counts.sum(axis=1) > 0]
    share = counts.div(counts.sum(axis=1), axis=0)
    return _distribution_and_worst(share, counts, worst_by="filled", what="template frames",
                                   title="Test frames by prediction source", share_label="share of the track's template frames",
                                   worst_title="most filled frames")


def xattn_grid(table: pd.DataFrame) -> plt.Figure:
    """Seed 004 Table 3: macro F1 of each safe_xattn setting (modality dropout p, width d, layers l),
    official validation as bars, the cross-validation folds (when run) as points on them."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(table)), 3.6))
    if table.empty:
        ax.text(0.5, 0.5, "no safe_xattn grid in this run (fusion.xattn_grid: [])", ha="center")
        ax.set_axis_off()
        return fig
    rows = table.assign(setting=[f"p={p:g} d={d} l={n}" for p, d, n in
                                 zip(table["modality_dropout"], table["d_model"], table["layers"])])
    folds = [c for c in rows.columns if c.startswith("fold_")]
    sns.barplot(rows, x="setting", y="official_val_f1", color="lightsteelblue", ax=ax)
    handles = [Patch(color="lightsteelblue", label="official validation")]
    if folds:
        points = rows.melt(id_vars="setting", value_vars=folds, var_name="fold", value_name="f1")
        sns.stripplot(points, x="setting", y="f1", color="black", size=4, ax=ax)
        handles.append(Line2D([], [], marker="o", ls="", color="black", markersize=4, label="folds"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1, 1))
    ax.set_xlabel("modality dropout p, d_model d, self-attention layers l"), ax.set_ylabel("macro F1")
    ax.set_title("Safe cross-attention transformer (Yu et al.): settings")
    rotate_x_labels(ax)
    fig.tight_layout()
    return fig


def video(path: Path, *, width: int = 480):
    """An MP4 embedded in the notebook (so the executed copy in the run folder plays it too). Outside a
    notebook environment (no IPython, as on a bare GPU image running the stages as scripts) the path itself."""
    try:
        from IPython.display import Video
    except ImportError:
        return Path(path)
    return Video(str(path), embed=True, width=width, html_attributes="controls loop muted")
