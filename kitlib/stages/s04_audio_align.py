"""Notebook 04: audio features aligned to frames (seed 000 sec. 3.2.2); Table 2.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from kitlib import data
from kitlib.config import Config, notebook_config
from kitlib.stages.common import (amp_dtype, data_index, device, extraction_report, feature_store, frame_labels,
                                  probe_table, read_report, report, start)

log = logging.getLogger(__name__)

# what the notebook calls: the shared first steps, then this stage's own functions
__all__ = ['notebook_config', 'start', 'data_index', 'frame_labels', 'read_report', 'audio_encoder_path',
           'extract_audio', 'alignment_probe']


def audio_encoder_path(cfg: Config) -> Path:
    """The local audio encoder folder; the demo builds its tiny random-init one there if absent."""
    from kitlib.audio import make_tiny_encoder

    path = cfg.path(cfg.audio.encoder)
    if cfg.audio.make_tiny_encoder and not (path / "config.json").is_file():
        make_tiny_encoder(path, seed=cfg.run.seed)
    return path


def extract_audio(cfg: Config, index: data.DataIndex, *, tracks: list[data.Track] | None = None,
                  rank: int | None = None, dev: torch.device | None = None) -> pd.DataFrame:
    """wav2vec 2.0 features aligned to every frame (plus the Table-2 alignments), resumable.

    ``tracks`` / ``rank`` / ``dev``: one shard of a sharded extraction, as in ``extract_visual``.
    """
    from kitlib.audio import extract_audio_features, load_audio_encoder

    a, dev = cfg.audio, dev or device(cfg)
    path = audio_encoder_path(cfg)
    encoder = load_audio_encoder(path, device=dev, dtype=amp_dtype(a.amp, dev) or torch.float32)
    layers: str | int = int(a.layers) if a.layers.isdigit() else a.layers
    table = extract_audio_features(
        index.tracks if tracks is None else tracks, feature_store(cfg, "audio", rank=rank), encoder,
        sample_rate=a.sample_rate,
        chunk_s=a.chunk_s, overlap_s=a.overlap_s, layers=layers, method=a.align, align_window_s=a.align_window_total_s,
        manifest={"encoder": str(path), "params_digest": cfg.digest()}, extra_windows_s=a.ablation_windows_total_s,
        batch_videos=a.batch_videos, batch_chunks=a.batch_chunks)
    return extraction_report(cfg, "audio_extraction" + ("" if rank is None else f".rank{rank:05d}"), table)


def alignment_probe(cfg: Config, index: data.DataIndex, labels: dict[str, np.ndarray]) -> pd.DataFrame:
    """Table 2: linear-probe macro F1 of the audio features per frame alignment (nearest, window means)."""
    a = cfg.audio
    windows = {"nearest": 0.0} if a.ablation_windows_total_s else {}
    settings: dict[str, tuple[str, int | None]] = {"nearest": ("nearest", None)} if windows else {}
    for w in a.ablation_windows_total_s:
        name = f"window mean ({w:.2f} s)"
        settings[name], windows[name] = (f"window_{int(round(w * 1000))}", None), w
    used = f"window mean ({a.align_window_total_s:.2f} s, used)" if a.align == "window" else "nearest (used)"
    settings[used], windows[used] = ("features", None), (a.align_window_total_s if a.align == "window" else 0.0)
    table = probe_table(cfg, index, labels, "audio", settings, "alignment")
    table.insert(1, "window_s", table["alignment"].map(windows))
    table = table.sort_values("window_s", kind="stable").reset_index(drop=True)
    report(cfg, "table2_alignment", table)
    return table
