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
from kitlib.stages.common import (data_problems_note, amp_dtype, data_index, device, extraction_report, feature_store, frame_labels,
                                  probe_table, read_report, report, start)

log = logging.getLogger(__name__)

# what the notebook calls: the shared first steps, then this stage's own functions
__all__ = ['notebook_config', 'start', 'data_index', 'data_problems_note', 'frame_labels', 'read_report',
           'audio_encoder_path', 'audio_encoder', 'extract_audio', 'alignment_probe']


def audio_encoder_path(cfg: Config) -> Path:
    """The local audio encoder folder; the demo builds its tiny random-init one there if absent."""
    from kitlib.audio import make_tiny_encoder

    path = cfg.path(cfg.audio.encoder)
    if cfg.audio.make_tiny_encoder and not (path / "config.json").is_file():
        make_tiny_encoder(path, seed=cfg.run.seed)
    return path


def audio_encoder(cfg: Config, dev: torch.device):
    """The encoder of ``audio.encoder`` (``audio.weights: pretrained``), or ``audio.random_arch`` with
    random weights (``audio.weights: random``, a rehearsal: no folder is read)."""
    from kitlib.audio import load_audio_encoder, random_encoder
    from kitlib.config import RANDOM_WEIGHTS, ConfigError

    a = cfg.audio
    dtype = amp_dtype(a.amp, dev, on_cpu=cfg.run.amp_on_cpu) or torch.float32
    if a.weights == RANDOM_WEIGHTS:
        return random_encoder(a.random_arch, device=dev, dtype=dtype, normalize=a.normalize_waveform, seed=cfg.run.seed)
    if a.weights != "pretrained":
        raise ConfigError(f"audio.weights must be pretrained or {RANDOM_WEIGHTS}, got {a.weights!r}")
    return load_audio_encoder(audio_encoder_path(cfg), device=dev, dtype=dtype, normalize=a.normalize_waveform)


def extract_audio(cfg: Config, index: data.DataIndex, *, tracks: list[data.Track] | None = None,
                  rank: int | None = None, dev: torch.device | None = None) -> pd.DataFrame:
    """wav2vec 2.0 features aligned to every frame (plus the Table-2 alignments), resumable.

    ``tracks`` / ``rank`` / ``dev``: one shard of a sharded extraction, as in ``extract_visual``.
    """
    from kitlib.audio import extract_audio_features

    a, dev = cfg.audio, dev or device(cfg)
    encoder = audio_encoder(cfg, dev)
    source = str(encoder.path) if encoder.path is not None else encoder.config_hash
    layers: str | int = int(a.layers) if a.layers.isdigit() else a.layers
    used_total, extra = alignment_windows(cfg)
    table = extract_audio_features(
        index.tracks if tracks is None else tracks, feature_store(cfg, "audio", rank=rank), encoder,
        sample_rate=a.sample_rate,
        chunk_s=a.chunk_s, overlap_s=a.overlap_s, layers=layers, method=a.align, align_window_s=used_total,
        manifest={"encoder": source, "params_digest": cfg.digest()},
        extra_windows_s=[total for _, total, _ in extra], empty=a.align_empty, frame_time=a.frame_time,
        batch_videos=a.batch_videos, batch_chunks=a.batch_chunks)
    return extraction_report(cfg, "audio_extraction" + ("" if rank is None else f".rank{rank:05d}"), table)


def alignment_windows(cfg: Config) -> tuple[float, list[tuple[str, float, str]]]:
    """The used window's TOTAL length and Table 2's further windows as (name, total length, convention).

    ``audio.align_window_total_s`` / ``ablation_windows_total_s`` are total lengths (the kit's
    convention); ``align_window_half_s`` / ``ablation_windows_half_s`` half-widths (the reference
    code's ``WIN_SEC``), named "+-h s" in Table 2. A set ``align_window_half_s`` replaces the total one.
    """
    from kitlib.audio.alignment import window_total_s

    a = cfg.audio
    used = (window_total_s(a.align_window_half_s, "half_width") if a.align_window_half_s is not None
            else a.align_window_total_s)
    extra = [(f"window mean ({w:.2f} s)", w, "total") for w in a.ablation_windows_total_s]
    extra += [(f"window mean (+-{h:.2f} s)", window_total_s(h, "half_width"), "half_width")
              for h in a.ablation_windows_half_s]
    return used, extra


def alignment_probe(cfg: Config, index: data.DataIndex, labels: dict[str, np.ndarray]) -> pd.DataFrame:
    """Table 2: linear-probe macro F1 of the audio features per frame alignment (nearest, linear
    interpolation as seed 004 sec. 4.2, window means)."""
    a = cfg.audio
    used_total, extra = alignment_windows(cfg)
    windows = {"nearest": (0.0, ""), "linear interpolation": (0.0, "")} if extra else {}
    settings: dict[str, tuple[str, int | None]] = (
        {"nearest": ("nearest", None), "linear interpolation": ("interpolate", None)} if windows else {})
    for name, total, convention in extra:
        settings[name], windows[name] = (f"window_{int(round(total * 1000))}", None), (total, convention)
    if a.align == "interpolate":
        used, convention = "linear interpolation (used)", ""
    elif a.align != "window":
        used, convention = "nearest (used)", ""
    elif a.align_window_half_s is not None:
        used, convention = f"window mean (+-{a.align_window_half_s:.2f} s, used)", "half_width"
    else:
        used, convention = f"window mean ({a.align_window_total_s:.2f} s, used)", "total"
    settings[used], windows[used] = ("features", None), (used_total if a.align == "window" else 0.0, convention)
    table = probe_table(cfg, index, labels, "audio", settings, "alignment")
    table.insert(1, "window_s", table["alignment"].map(lambda n: windows[n][0]))   # total length
    table.insert(2, "half_width_s", table["window_s"] / 2)
    table.insert(3, "named_as", table["alignment"].map(lambda n: windows[n][1]))    # total | half_width
    table = table.sort_values("window_s", kind="stable").reset_index(drop=True)
    report(cfg, "table2_alignment", table)
    return table
