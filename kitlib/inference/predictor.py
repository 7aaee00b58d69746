"""Per-frame expressions of any video with an exported bundle: the run's own steps, in the run's order.

decode -> detect -> choose the face (``kitlib.faces.selection``) -> multi-scale crops -> backbone features
(``kitlib.visual.extract``), audio -> encoder -> frame alignment (``kitlib.audio.extract``), the frame table
(``kitlib.fusion.table``, nearest-frame imputation where the run used it), the head, the run's final
smoothing (``kitlib.smoothing.masked``), and for frames with neither a face nor audio the nearest frame's
label (the submission's fill policy, ``kitlib.data.submission.nearest_index``). Each step is the kit's
function with the settings the bundle recorded, so a bundle predicts the labels its run wrote.

    predictor = Predictor.from_bundle("bundles/demo")
    frames = predictor.predict("clip.mp4")           # one row per frame (``COLUMNS`` + the class names)
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from kitlib.data import Track
from kitlib.faces.video import VideoError
from kitlib.inference.bundle import BACKBONE, HEAD, Bundle, read_bundle
from kitlib.store import FeatureStore

log = logging.getLogger(__name__)

COLUMNS = ("frame", "time_s", "face_found", "x1", "y1", "x2", "y2", "label", "label_id", "source")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")
_AMP = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}   # as the run: autocast on CUDA only


@dataclass
class VideoPrediction:
    """One video's frames (``COLUMNS`` + probabilities), its face boxes for the overlay, and what to report."""

    video: Path
    frames: pd.DataFrame
    notes: list[str] = field(default_factory=list)

    def summary(self, classes: tuple[str, ...]) -> str:
        """One line: frames, share with a face, whether there was audio, the label distribution."""
        f = self.frames
        shares = f["label"].value_counts(normalize=True)
        labels = ", ".join(f"{name} {share:.0%}" for name, share in shares.items())
        notes = f"; {'; '.join(self.notes)}" if self.notes else ""
        return f"{self.video.name}: {len(f)} frames, face on {f['face_found'].mean():.0%}, labels: {labels}{notes}"


class Predictor:
    """A bundle loaded on a device: ``predict(video)`` gives its frames' labels and probabilities."""

    def __init__(self, bundle: Bundle, *, device: torch.device | str = "auto"):
        from kitlib.audio import load_audio_encoder
        from kitlib.faces import FollowSettings, build_detector
        from kitlib.fusion import TrainedHead, build_head, count_parameters
        from kitlib.runtime import pick_device
        from kitlib.visual.backbones import input_mean_std, load_backbone
        from safetensors.torch import load_file

        self.bundle = bundle
        m = bundle.manifest
        self.device = pick_device(str(device))
        self.classes = bundle.classes
        faces, audio, head = m["faces"], m["audio"], m["head"]
        self.backbone, _ = load_backbone(bundle.file(BACKBONE), device=self.device)
        self.mean, self.std = input_mean_std(self.backbone)
        det = faces["detector"]
        weights = bundle.detector_weights()
        options = {"max_side": det["max_side"]}
        if det["name"] in ("centerface", "scrfd"):
            options |= {"weights": weights, "device": self.device}
        elif det["name"] == "face-alignment":
            options |= {"weights_dir": weights, "device": self.device}
        self.detector = build_detector(det["name"], **{**options, **det["options"]})
        follow = faces["follow"]
        self.follow = FollowSettings(**follow) if follow else None
        self.encoder = load_audio_encoder(bundle.encoder_folder(), device=self.device,
                                          dtype=self._amp(audio["amp"]) or torch.float32,
                                          normalize=audio["normalize_waveform"])
        module = build_head(head["name"], visual_dim=head["visual_dim"], audio_dim=head["audio_dim"],
                            hidden=head["config"]["hidden"], dropout=head["config"]["dropout"],
                            options=head["config"].get("options"),
                            **{k: head["config"][k] for k in ("structure", "input_norm") if k in head["config"]})
        module.load_state_dict(load_file(str(bundle.file(HEAD))))
        self.head = TrainedHead(name=head["name"], module=module.eval(), history=[], best_epoch=head["best_epoch"],
                                best_val_f1=head["best_val_f1"], n_params=count_parameters(module),
                                config=head["config"])

    @classmethod
    def from_bundle(cls, path: Path | str, *, device: torch.device | str = "auto") -> Predictor:
        """Check the bundle (format, checksums) and load its models on ``device`` (``auto``: the GPU if any)."""
        return cls(read_bundle(path), device=device)

    def _amp(self, name: str) -> torch.dtype | None:
        return _AMP[name] if self.device.type == "cuda" else None

    def predict(self, video: Path | str, *, face: str = "largest") -> pd.DataFrame:
        """One row per decoded frame: ``COLUMNS`` then one probability column per class.

        ``face``: which face is the person (``kitlib.faces.selection``: largest, left, right, ...). The
        notes (no audio, no face found) are in ``frames.attrs["notes"]``. An undecodable video raises
        ``VideoError``.
        """
        result = self.predict_video(video, face=face)
        result.frames.attrs["notes"] = result.notes
        return result.frames

    def predict_video(self, video: Path | str, *, face: str = "largest") -> VideoPrediction:
        """``predict`` with its notes; see there."""
        from kitlib.faces.selection import check_strategy

        video = Path(video)
        check_strategy(face)
        if not video.is_file():
            raise VideoError(video, "no such file")
        track = Track(txtid=video.stem, videoid=video.stem, split="Test_Set", video_path=video, labels_path=None,
                      side=None)
        with tempfile.TemporaryDirectory(prefix="abaw-predict-") as tmp:
            visual, audio, notes = self._features(track, FeatureStore(Path(tmp), "visual"),
                                                  FeatureStore(Path(tmp), "audio"), face=face)
            frames = self._frames(track, visual, audio)
        return VideoPrediction(video=video, frames=frames, notes=notes)

    def _features(self, track: Track, visual: FeatureStore, audio: FeatureStore, *,
                  face: str) -> tuple[FeatureStore, FeatureStore, list[str]]:
        """The run's visual and audio extraction of one track into two scratch stores; notes on what was missing."""
        from kitlib.audio import extract_audio_features
        from kitlib.visual.extract import extract_visual_features

        m = self.bundle.manifest
        vis, faces, a = m["visual"], m["faces"], m["audio"]
        report = extract_visual_features(
            [track], visual, self.backbone, detector=self.detector, crop_scales=vis["crop_scales"],
            image_size=vis["image_size"], mean=self.mean, std=self.std, batch_size=vis["batch_size"],
            max_gap=faces["max_gap"], follow=self.follow, device=self.device,
            dtype=self._amp(vis["amp"]) or torch.float32, decode_batch=faces["decode_batch"],
            selection={track.txtid: face}, default_strategy=face, detect_every=faces["detect_every"], manifest={})
        status = str(report["status"].iloc[0])
        if status.startswith("error"):
            raise VideoError(track.video_path, status.removeprefix("error: "))
        notes = [f"no {face} face in any frame"] if status == "no face" else []
        layers = int(a["layers"]) if str(a["layers"]).isdigit() else a["layers"]
        report = extract_audio_features(
            [track], audio, self.encoder, sample_rate=a["sample_rate"], chunk_s=a["chunk_s"],
            overlap_s=a["overlap_s"], layers=layers, method=a["align"], align_window_s=a["align_window_s"],
            manifest={}, empty=a["align_empty"], frame_time=a["frame_time"])
        status = str(report["status"].iloc[0])
        if status != "ok":
            notes.append(status)
        if not audio.done(track.txtid):   # the audio failed to decode: the video goes on without it
            n = len(visual.load(track.txtid)["mask"])
            audio.save(track.txtid, frame_index=np.arange(1, n + 1),
                       features=np.zeros((n, m["head"]["audio_dim"]), np.float32), mask=np.zeros(n, bool))
            audio.write_manifest({"feature_dim": int(m["head"]["audio_dim"])})
        return visual, audio, notes

    def _frames(self, track: Track, visual: FeatureStore, audio: FeatureStore) -> pd.DataFrame:
        """Head logits, the run's smoothing and fill, as the per-frame table."""
        from kitlib.data.submission import nearest_index
        from kitlib.fusion import load_frame_table
        from kitlib.fusion.table import impute_nearest
        from kitlib.smoothing.masked import smooth_logits_skipping

        m = self.bundle.manifest
        s = m["smoothing"]
        table = load_frame_table([track], visual_store=visual, audio_store=audio, labels=None)
        if m["head"]["missing_frames"] == "impute":
            table = impute_nearest(table)
        logits = self.head.predict(table, device=self.device)
        imputed = table.imputed
        smoothed = smooth_logits_skipping(logits, s["window"], s["strategy"], skip=imputed, edge=s["edge"],
                                          sigma_divisor=s["sigma_divisor"])
        probs = torch.softmax(torch.from_numpy(np.asarray(smoothed, np.float32)), dim=1).numpy()
        labels = smoothed.argmax(1)
        source = np.where(table.visual_mask, "face", "audio").astype(object)
        if imputed is not None:
            source[imputed] = "imputed"
        usable = table.visual_mask | table.audio_mask
        if not usable.any():                       # no evidence at all: the training prior's most frequent class
            labels = np.full(len(labels), int(m["prior_class"]))
            probs = np.full_like(probs, np.nan)
            source[:] = "prior"
        elif not usable.all():                     # the submission's fill policy: the nearest frame with evidence
            frames, have = table.frame_index, np.flatnonzero(usable)
            near = have[nearest_index(frames[have], frames[~usable])]
            labels[~usable], probs[~usable] = labels[near], probs[near]
            source[~usable] = "filled"
        entry = visual.load(track.txtid)
        boxes = np.asarray(entry["boxes"], np.float64)
        found = np.asarray(entry["mask"], bool)
        boxes[~found] = np.nan
        out = pd.DataFrame({"frame": table.frame_index.astype(np.int64),
                            "time_s": np.round(np.asarray(entry["times_s"], np.float64), 4), "face_found": found,
                            "x1": boxes[:, 0].round(1), "y1": boxes[:, 1].round(1), "x2": boxes[:, 2].round(1),
                            "y2": boxes[:, 3].round(1), "label": [self.classes[k] for k in labels],
                            "label_id": labels.astype(np.int64), "source": source.astype(str)})
        for k, name in enumerate(self.classes):
            out[name] = probs[:, k].round(4)
        return out


def write_overlay(video: Path, frames: pd.DataFrame, out_path: Path, *, classes: tuple[str, ...]) -> Path:
    """The kit's overlay video (``kitlib.overlay``) of a prediction: face box, label, probabilities, strip."""
    from kitlib import overlay

    index = frames["frame"].to_numpy()
    found = frames["face_found"].to_numpy()
    boxes = frames[["x1", "y1", "x2", "y2"]].to_numpy()
    return overlay.write_overlay(video, out_path, probs=frames[list(classes)].fillna(0).to_numpy(), frame_index=index,
                                 truth=None, pred=frames["label_id"].to_numpy(),
                                 boxes={int(f): boxes[i][None] for i, f in enumerate(index) if found[i]},
                                 max_frames=None)
