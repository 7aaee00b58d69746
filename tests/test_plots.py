"""Pictures for people: per-track figures read at the release's size (600 tracks), axis labels in words,
legends outside the data, integer epochs."""
import matplotlib
import numpy as np
import pandas as pd
import pytest

matplotlib.use("Agg")

from kitlib import plots  # noqa: E402


def tracks(n, rng):
    frames = rng.integers(300, 20000, n)
    missing = (frames * rng.beta(1, 8, n)).astype(int)
    worst = min(7, n - 1)
    missing[worst] = frames[worst] - 1                           # one track almost without a face
    followed = (frames * 0.02).astype(int)
    bridged = (frames * 0.01).astype(int)
    return pd.DataFrame({"txtid": [f"{i:03d}-30-1280x720" for i in range(n)], "frames": frames,
                         "detected": frames - missing - followed - bridged, "followed": followed, "bridged": bridged,
                         "missing": missing})


def _tick_texts(ax, axis="y"):
    return [t.get_text() for t in (ax.get_yticklabels() if axis == "y" else ax.get_xticklabels())]


def _legend_outside(fig, ax):
    fig.canvas.draw()
    legend = ax.get_legend()
    return legend is not None and legend.get_window_extent().x0 >= ax.get_window_extent().x1


@pytest.mark.parametrize("n", [5, 600])
def test_face_coverage_reads_at_600_tracks_and_names_the_worst(n, rng):
    table = tracks(n, rng)
    fig = plots.face_coverage(table)
    width, height = fig.get_size_inches()
    assert width <= 14 and height <= 8                           # was 0.45 in per track: 270 in at 600 tracks
    left, right = fig.axes[:2]
    named = _tick_texts(right)
    assert len(named) == min(n, plots.WORST_SHOWN) and f"{min(7, n - 1):03d}-30-1280x720" == named[-1]   # worst on top
    assert left.get_xlabel() == "share of the track's frames" and right.get_xlabel() == "frames"
    assert f"all {n} tracks" == left.get_title()
    assert _legend_outside(fig, right)


def test_submission_coverage_names_the_most_filled_tracks(rng):
    n = 600
    frames = rng.integers(300, 5000, n)
    filled = np.zeros(n, int)
    filled[[3, 400]] = [frames[3] // 2, frames[400] - 10]
    table = pd.DataFrame({"txtid": [f"t{i}" for i in range(n)], "template_frames": frames,
                          "from_face": frames - filled - 20, "from_audio": 20, "filled": filled})
    fig = plots.coverage(table)
    right = fig.axes[1]
    assert _tick_texts(right)[-2:] == ["t3", "t400"]
    assert fig.get_size_inches()[0] <= 14


def test_training_curves_integer_epochs_words_and_legend_outside():
    history = pd.DataFrame({"epoch": [1, 2, 3, 1, 2, 3], "train_loss": [2, 1.5, 1.2, 2.1, 1.7, 1.4],
                            "val_f1": [0.2, 0.3, 0.35, 0.1, 0.2, 0.25], "head": ["gated"] * 3 + ["concat"] * 3})
    fig = plots.training_curves(history)
    loss_ax, f1_ax = fig.axes
    fig.canvas.draw()
    ticks = [t for t in loss_ax.get_xticks() if loss_ax.get_xlim()[0] <= t <= loss_ax.get_xlim()[1]]
    assert all(float(t).is_integer() for t in ticks)
    assert (loss_ax.get_ylabel(), f1_ax.get_ylabel(), f1_ax.get_xlabel()) == ("training loss", "validation macro F1", "epoch")
    assert loss_ax.get_legend() is None and _legend_outside(fig, f1_ax)


def test_bar_table_labels_in_words_and_legend_outside():
    table = pd.DataFrame({"crop": ["crop 0.9", "crop 1.2"] * 2, "val_f1": [0.3, 0.4, 0.2, 0.35],
                          "backbone": ["moe", "moe", "pretrained", "pretrained"]})
    fig = plots.bar_table(table, x="crop", y="val_f1", hue="backbone")
    ax = fig.axes[0]
    assert ax.get_ylabel() == "validation macro F1" and _legend_outside(fig, ax)
