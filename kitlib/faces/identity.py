"""Who is who over a whole video: face embeddings, tracklets, persons, and which person each track is.

The joint tracker (``kitlib.faces.assign``) decides frame by frame, so a person alone on screen is
given to the track whose side of the frame they happen to sit on: a ``_left`` person alone right of
the centre goes to ``_right``. The authors' pipeline decides identity per video (ArcFace, Deng et
al., "ArcFace: Additive Angular Margin Loss for Deep Face Recognition", CVPR 2019; their
``id_keep``). Here, offline, before any crop is encoded:

1. every detected face gets an appearance embedding (``FaceEmbedder``: ``ArcFaceEmbedder``, the
   ``w600k_r50.onnx`` of InsightFace's ``buffalo_l``, 5-point aligned 112x112 crops; or the named
   fallback ``ColourTextureEmbedder``, a colour and gradient-orientation histogram of the box that
   needs no weights and tells apart people who look different, not twins);
2. faces are linked frame to frame into tracklets (IoU with the tracklet's last box and an
   appearance match, one face per tracklet per frame, ``linear_sum_assignment``);
3. tracklets are merged into persons by average-linkage clustering of their mean embeddings
   (cosine >= ``same_person``), never merging two tracklets seen on one frame;
4. each positional track (``IDENTITY_STRATEGIES``: ``left``, ``right``, ``top``, ``second_right``, ...)
   is named a person by votes: on every frame where two or more persons are on screen together,
   the track's strategy (``kitlib.faces.selection.preference``) votes for the person it picks
   there; tracks and persons are matched on the votes (``linear_sum_assignment``). A person never on
   screen with another gets no name: on its frames the position of the moment decides (the online rule).

``decide_identities`` does steps 2-4 on detections and embeddings; ``plan_video`` runs the first pass
over a video (detect, embed, and the online rule for comparison) and returns an ``IdentityPlan``
whose ``owners`` the ``JointTracker`` takes in the second pass. Persons whose mean embeddings match
at ``too_close`` or more are reported: the identity that separates them is not to be trusted.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from kitlib.faces.detectors import as_detections, boxes_of, landmarks_of
from kitlib.faces.detectors.onnx_models import load_onnx
from kitlib.faces.selection import preference
from kitlib.faces.tracking import box_iou

log = logging.getLogger(__name__)

# strategies that name a person by where they sit: decided per video when an embedder is given
IDENTITY_STRATEGIES: frozenset[str] = frozenset({"left", "right", "top", "second_right", "second_left", "centre"})
EMBEDDERS: tuple[str, ...] = ("arcface", "colour-texture", "online")

# InsightFace's ArcFace alignment template: the 5 landmarks (image-left eye first) in a 112x112 crop
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], np.float32)
ARCFACE_SIZE = 112


@runtime_checkable
class FaceEmbedder(Protocol):
    """Appearance embeddings of faces: ``embed(frame (H, W, 3) uint8 RGB, detections (k, 15))`` -> (k, D)
    float32, unit norm (cosine = dot product). ``same_person``: the cosine at which two tracklets'
    means are one person; ``link_min``: the least cosine for a face to continue a tracklet;
    ``too_close``: two persons this similar are reported (all calibrated per embedder)."""

    name: str
    same_person: float
    link_min: float
    too_close: float

    def embed(self, frame: np.ndarray, detections: np.ndarray) -> np.ndarray: ...


def _unit(vectors: np.ndarray) -> np.ndarray:
    return (vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-6)).astype(np.float32)


def _centred(block: np.ndarray) -> np.ndarray:
    """A histogram block centred on its mean and unit-normalised (each block weighs the same)."""
    block = block - block.mean()
    return block / max(float(np.linalg.norm(block)), 1e-6)


def _inner_box(frame: np.ndarray, box: np.ndarray, share: float = 0.8) -> np.ndarray | None:
    """The central ``share`` of ``box`` (clipped to the frame), or None when under 2 pixels."""
    height, width = frame.shape[:2]
    w, h = box[2] - box[0], box[3] - box[1]
    m = 0.5 * (1 - share)
    x0, y0 = int(max(0, box[0] + m * w)), int(max(0, box[1] + m * h))
    x1, y1 = int(min(width, box[2] - m * w)), int(min(height, box[3] - m * h))
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    return frame[y0:y1, x0:x1]


class ColourTextureEmbedder:
    """The named fallback embedding (no weights): colour and texture histograms of the face box.

    Of the central 80 % of the box, resized to 32x32: a 6x6 histogram of the chromaticity
    ``r/(r+g+b), g/(r+g+b)`` (skin and hair colour, independent of brightness), an 8-bin brightness
    histogram, and 8-bin gradient-orientation histograms (magnitude-weighted) of its 2x2 quarters
    (texture: hair line, glasses, beard); each block L1-normalised and square-rooted (Hellinger),
    concatenated, centred on the vector's mean and unit-normalised. It separates people who look
    different (measured on the real-photo clip, ``kitlib.faces.photo_clip``, true boxes: the same
    person across positions and sizes >= 0.98, Collins vs Hopper 0.51 on average, 0.58 at most;
    0.4 ms a face on 2 CPU cores); it is no face recogniser: lighting and pose move it too.
    """

    name = "colour-texture"
    same_person = 0.8   # one person's tracklets merge at this cosine (measured: >= 0.98 one person, <= 0.58 two)
    link_min = 0.8      # a face unlike the tracklet below this starts a new one (a cut to another person in place)
    too_close = 0.7
    SIDE = 32

    def embed(self, frame: np.ndarray, detections: np.ndarray) -> np.ndarray:
        import cv2

        boxes = boxes_of(detections).astype(np.float64)
        out = np.zeros((len(boxes), 36 + 8 + 32), np.float32)
        for i, box in enumerate(boxes):
            patch = _inner_box(frame, box)
            if patch is None:
                continue
            patch = cv2.resize(patch, (self.SIDE, self.SIDE), interpolation=cv2.INTER_AREA).astype(np.float32)
            total = patch.sum(-1) + 1e-3
            chroma, _, _ = np.histogram2d((patch[..., 0] / total).ravel(), (patch[..., 1] / total).ravel(),
                                          bins=6, range=[[0, 1], [0, 1]])
            grey = patch.mean(-1)
            light, _ = np.histogram(grey, bins=8, range=(0, 256))
            gx, gy = cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1)
            angle = (np.arctan2(gy, gx) + np.pi) / (2 * np.pi) * 8
            magnitude = np.hypot(gx, gy)
            half = self.SIDE // 2
            orient = [np.bincount(np.minimum(angle[r:r + half, c:c + half].astype(int), 7).ravel(),
                                  weights=magnitude[r:r + half, c:c + half].ravel(), minlength=8)
                      for r in (0, half) for c in (0, half)]
            blocks = [chroma.ravel(), light, *orient]
            out[i] = np.concatenate([_centred(np.sqrt(b / max(float(b.sum()), 1e-6))) for b in blocks])
        return _unit(out)


def align_faces(frame: np.ndarray, detections: np.ndarray, size: int = ARCFACE_SIZE) -> np.ndarray:
    """ArcFace input crops (k, size, size, 3) uint8 RGB: each face warped by the similarity transform that
    brings its 5 landmarks onto ``ARCFACE_TEMPLATE`` (InsightFace's ``norm_crop``); a face without
    landmarks (a detector that gives none) is cut from its box instead, scaled so the box height is
    0.9 of the crop and centred a little below the middle, where the template's face sits."""
    import cv2

    detections = as_detections(detections)
    template = ARCFACE_TEMPLATE * (size / ARCFACE_SIZE)
    out = np.zeros((len(detections), size, size, 3), np.uint8)
    for i, (box, marks) in enumerate(zip(boxes_of(detections), landmarks_of(detections))):
        matrix = None
        if np.isfinite(marks).all():
            matrix, _ = cv2.estimateAffinePartial2D(marks.astype(np.float32), template, method=cv2.LMEDS)
        if matrix is None:
            scale = 0.9 * size / max(float(box[3] - box[1]), 1.0)
            centre = 0.5 * (box[:2] + box[2:4])
            matrix = np.array([[scale, 0, size / 2 - scale * centre[0]],
                               [0, scale, 0.54 * size - scale * centre[1]]], np.float32)
        out[i] = cv2.warpAffine(frame, matrix, (size, size), borderValue=0.0)
    return out


class ArcFaceEmbedder:
    """ArcFace embeddings from an InsightFace recognition graph (``buffalo_l/w600k_r50.onnx``), 512-d.

    ``weights``: the ``.onnx`` file or the model folder holding ``w600k_r50.onnx``; missing or
    unreadable weights raise ``FileNotFoundError`` naming the file (the kit never downloads).
    Faces are aligned by their 5 landmarks (``align_faces``) and normalised as InsightFace does
    (``(x - 127.5) / 127.5`` in RGB, unless the graph starts with its own Sub/Mul). ``runtime`` as
    the CenterFace detector's: ``onnxruntime`` (CPU, or its CUDA provider), ``torch`` (the graph
    converted by onnx2torch, on ``device``) or ``auto`` (torch on a GPU when onnxruntime has no CUDA).
    Thresholds: InsightFace's usual verification region (same person at cosine ~0.3-0.4); not measured
    here, since no weights ship with the kit's packages (set ``IdentitySettings`` to override).
    """

    name = "arcface"
    same_person = 0.35
    link_min = 0.3
    too_close = 0.25

    def __init__(self, *, weights: Path | str, device: torch.device | str = "cpu", runtime: str = "auto",
                 batch_size: int = 32):
        import onnx

        path = Path(weights)
        if path.is_dir():
            path = path / "w600k_r50.onnx"
        if not path.is_file():
            raise FileNotFoundError(f"face identity 'arcface': weights {path} not found (InsightFace's w600k_r50.onnx "
                                    f"from the buffalo_l folder; set faces.identity_weights, the kit never downloads)")
        if runtime not in ("auto", "onnxruntime", "torch"):
            raise ValueError(f"arcface runtime must be auto, onnxruntime or torch, got {runtime!r}")
        self.weights_path, self.batch_size, self.device = path, batch_size, torch.device(device)
        try:
            model = onnx.load(str(path))
        except Exception as exc:
            raise FileNotFoundError(f"face identity 'arcface': weights {path} are unreadable "
                                    f"({type(exc).__name__}: {exc})") from exc
        first_ops = [node.op_type for node in model.graph.node[:8]]
        # InsightFace's rule (arcface_onnx.py): a graph that subtracts and scales itself takes raw pixels
        self.mean, self.std = (0.0, 1.0) if "Sub" in first_ops and "Mul" in first_ops else (127.5, 127.5)
        shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
        self.size = shape[2] if len(shape) == 4 and shape[2] > 0 else ARCFACE_SIZE
        self.runtime, net, self.provider = load_onnx(model, device=self.device, runtime=runtime)
        if self.runtime == "torch":
            self._net = net
        else:
            self._session = net
            self._input = net.get_inputs()[0].name
            self._batched = not isinstance(net.get_inputs()[0].shape[0], int)

    def _forward(self, blob: np.ndarray) -> np.ndarray:
        if self.runtime == "torch":
            with torch.inference_mode():
                return self._net(torch.from_numpy(blob).to(self.device)).float().cpu().numpy()
        if self._batched:
            return self._session.run(None, {self._input: blob})[0]
        return np.concatenate([self._session.run(None, {self._input: blob[i:i + 1]})[0] for i in range(len(blob))])

    def embed(self, frame: np.ndarray, detections: np.ndarray) -> np.ndarray:
        crops = align_faces(frame, detections, self.size)
        if len(crops) == 0:
            return np.zeros((0, 512), np.float32)
        blob = ((crops.astype(np.float32) - self.mean) / self.std).transpose(0, 3, 1, 2)
        out = [self._forward(np.ascontiguousarray(blob[i:i + self.batch_size]))
               for i in range(0, len(blob), self.batch_size)]
        vectors = np.concatenate(out).reshape(len(blob), -1)
        if not np.isfinite(vectors).all():
            raise ValueError(f"face identity 'arcface': {self.weights_path} gave non-finite embeddings")
        return _unit(vectors)


def build_embedder(name: str, *, weights: Path | str | None = None,
                   device: torch.device | str = "cpu") -> FaceEmbedder | None:
    """The embedder ``name`` (``EMBEDDERS``): ``arcface`` with ``weights`` (None: no weights here, so None
    is returned and the online rule decides, logged), ``colour-texture``, or ``online`` (None)."""
    if name not in EMBEDDERS:
        raise ValueError(f"unknown face identity embedding {name!r}; valid: {list(EMBEDDERS)}")
    if name == "online":
        return None
    if name == "colour-texture":
        return ColourTextureEmbedder()
    if weights is None:
        log.warning("face identity: arcface has no weights (faces.identity_weights is null), so _left/_right and the "
                    "other positional tracks follow the online rule (the side of the moment); reports say "
                    "'online (no arcface weights)'")
        return None
    return ArcFaceEmbedder(weights=weights, device=device)


def identity_method(embedder: FaceEmbedder | None, requested: str = "arcface") -> str:
    """What decided the positional tracks, as the report names it."""
    if embedder is not None:
        return embedder.name
    return "online" if requested == "online" else f"online (no {requested} weights)"


@dataclass(frozen=True)
class IdentitySettings:
    """How tracklets are linked and clustered into persons (thresholds: the embedder's unless set)."""

    iou_link: float = 0.3             # a face continues a tracklet at this IoU with its last box or more
    link_gap: int = 8                 # a tracklet unseen for more detector looks than this is closed
    min_tracklet: int = 3             # shorter tracklets join the most similar person instead of founding one
    same_person: float | None = None  # cluster merge cosine (None: the embedder's)
    link_min: float | None = None     # least cosine for a face to continue a tracklet (None: the embedder's)
    too_close: float | None = None    # persons this similar are reported (None: the embedder's)


@dataclass
class IdentityPlan:
    """The identity decision of one video. Per frame (1-based frame n at index n-1), arrays over that
    frame's usable faces: ``person`` (person id, -1: none) and ``owners`` (index of the track the face
    belongs to by identity, -1: free, position decides); empty on frames the detector did not look at."""

    method: str
    person: list[np.ndarray]
    owners: list[np.ndarray]
    track_person: np.ndarray            # (T,) the person named for each track, -1: none
    votes: np.ndarray                   # (T, P) frames together where the track's strategy picked the person
    person_similarity: np.ndarray       # (P, P) cosine of the persons' mean embeddings
    warnings: list[str]                 # per track: persons too close to tell apart ("" if none)
    detections: list[np.ndarray | None] = field(default_factory=list)   # the first pass's usable faces per frame
    online_person: np.ndarray | None = None   # (T, N) the person the online rule picked per frame, -1: none


def link_tracklets(boxes: Sequence[np.ndarray | None], looks: Sequence[np.ndarray | None], *, iou_link: float,
                   link_min: float, link_gap: int) -> list[np.ndarray]:
    """Tracklet id of each face per frame (``boxes``: per frame (k, 4) or None, not looked at)."""
    out: list[np.ndarray] = []
    last_box: list[np.ndarray] = []
    last_look: list[np.ndarray] = []
    last_seen: list[int] = []
    looked = 0
    for faces, look in zip(boxes, looks):
        if faces is None:
            out.append(np.zeros(0, np.int64))
            continue
        looked += 1
        ids = np.full(len(faces), -1, np.int64)
        live = [t for t in range(len(last_box)) if looked - last_seen[t] <= link_gap]
        if live and len(faces):
            score = np.full((len(live), len(faces)), -np.inf)
            for r, t in enumerate(live):
                iou = box_iou(faces, last_box[t])
                match = look @ last_look[t]
                ok = (iou >= iou_link) & (match >= link_min)
                score[r, ok] = iou[ok] + match[ok]
            finite = np.isfinite(score)
            rows, cols = linear_sum_assignment(np.where(finite, -score, 1e6))
            for r, f in zip(rows, cols):
                if finite[r, f]:
                    ids[f] = live[r]
        for f in range(len(faces)):
            if ids[f] < 0:
                ids[f] = len(last_box)
                last_box.append(faces[f])
                last_look.append(look[f])
                last_seen.append(looked)
            else:
                t = int(ids[f])
                last_box[t], last_seen[t] = faces[f], looked
                last_look[t] = _unit(0.8 * last_look[t] + 0.2 * look[f])
        out.append(ids)
    return out


def cluster_tracklets(tracklet: Sequence[np.ndarray], looks: Sequence[np.ndarray | None], *, same_person: float,
                      min_tracklet: int) -> np.ndarray:
    """Person id of each tracklet: average-linkage merges of tracklet means at cosine >= ``same_person``,
    never merging tracklets seen on one frame; tracklets under ``min_tracklet`` faces join the best
    matching compatible person afterwards (or stay alone)."""
    n = 1 + max((int(ids.max()) for ids in tracklet if len(ids)), default=-1)
    if n == 0:
        return np.zeros(0, np.int64)
    dim = next(lk.shape[1] for lk in looks if lk is not None and len(lk))
    sums = np.zeros((n, dim), np.float64)
    counts = np.zeros(n, np.int64)
    together = np.zeros((n, n), bool)
    for ids, look in zip(tracklet, looks):
        if len(ids) == 0:
            continue
        np.add.at(sums, ids, look)
        np.add.at(counts, ids, 1)
        if len(ids) > 1:
            together[np.ix_(ids, ids)] = True
    np.fill_diagonal(together, False)
    means = _unit(sums / counts[:, None])
    person = np.arange(n)
    seeds = np.flatnonzero(counts >= min_tracklet)
    clusters = {int(s): [int(s)] for s in seeds}
    # average linkage on the seed tracklets: the closest compatible pair of clusters, while >= same_person
    sim = means[seeds] @ means[seeds].T
    link = {(int(a), int(b)): float(sim[i, j]) for i, a in enumerate(seeds) for j, b in enumerate(seeds) if a < b}
    while link:
        (a, b), best = max(link.items(), key=lambda kv: kv[1])
        if best < same_person:
            break
        if together[np.ix_(clusters[a], clusters[b])].any():
            link.pop((a, b))
            continue
        clusters[a] += clusters.pop(b)
        link = {k: v for k, v in link.items() if b not in k}
        for c in clusters:
            if c != a:
                key = (min(a, c), max(a, c))
                link[key] = float((means[clusters[a]] @ means[clusters[c]].T).mean())
    for c, members in clusters.items():
        person[members] = c
    for t in np.flatnonzero(counts < min_tracklet):   # short tracklets: the best compatible person, if similar enough
        best, best_sim = -1, same_person
        for c, members in clusters.items():
            if together[t, members].any():
                continue
            s = float((means[members] @ means[t]).mean())
            if s >= best_sim:
                best, best_sim = c, s
        if best >= 0:
            person[t] = best
            clusters[best].append(int(t))
    _, person = np.unique(person, return_inverse=True)
    return person.astype(np.int64)


def decide_identities(detections: Sequence[np.ndarray | None], looks: Sequence[np.ndarray | None], *,
                      strategies: Sequence[str], frame_size: tuple[int, int], embedder_name: str,
                      same_person: float, link_min: float, too_close: float,
                      settings: IdentitySettings | None = None) -> IdentityPlan:
    """Tracklets -> persons -> which person each positional track is (module docstring, steps 2-4).

    ``detections``: per frame the usable faces (k, >=4) or None (not looked at); ``looks``: their
    embeddings (k, D), unit norm. Tracks whose strategy is not in ``IDENTITY_STRATEGIES`` are named no
    person (the online rule keeps them as they are).
    """
    s = settings or IdentitySettings()
    boxes = [None if d is None else np.asarray(d, np.float32)[:, :4] for d in detections]
    tracklet = link_tracklets(boxes, looks, iou_link=s.iou_link, link_min=link_min, link_gap=s.link_gap)
    person_of_tracklet = cluster_tracklets(tracklet, looks, same_person=same_person, min_tracklet=s.min_tracklet)
    person = [person_of_tracklet[ids] if len(ids) else np.zeros(0, np.int64) for ids in tracklet]
    n_persons = int(person_of_tracklet.max()) + 1 if len(person_of_tracklet) else 0
    n_tracks = len(strategies)
    votes = np.zeros((n_tracks, n_persons), np.int64)
    for faces, who in zip(boxes, person):
        if faces is None or len(np.unique(who)) < 2:
            continue                                  # votes only where two or more persons are on screen together
        for t, strategy in enumerate(strategies):
            if strategy in IDENTITY_STRATEGIES:
                ranked = preference(faces, strategy, frame_size=frame_size)
                if len(ranked):
                    votes[t, who[ranked[0]]] += 1
    track_person = np.full(n_tracks, -1, np.int64)
    if votes.any():
        rows, cols = linear_sum_assignment(-votes)
        for t, p in zip(rows, cols):
            if votes[t, p] > 0:
                track_person[t] = p
    sums = np.zeros((n_persons, looks_dim(looks)), np.float64)
    for who, look in zip(person, looks):
        if len(who):
            np.add.at(sums, who, look)
    means = _unit(sums) if n_persons else np.zeros((0, 0), np.float32)
    similarity = means @ means.T
    warnings = []
    for t in range(n_tracks):
        p = track_person[t]
        close = [int(q) for q in np.flatnonzero(similarity[p] >= too_close) if q != p] if p >= 0 else []
        warnings.append("; ".join(f"person {p} and person {q} too close to tell apart "
                                  f"(cosine {similarity[p, q]:.2f} >= {too_close})" for q in close))
    owner_of_person = np.full(n_persons, -1, np.int64)
    owner_of_person[track_person[track_person >= 0]] = np.flatnonzero(track_person >= 0)
    owners = [owner_of_person[who] if len(who) else np.zeros(0, np.int64) for who in person]
    return IdentityPlan(method=embedder_name, person=person, owners=owners, track_person=track_person, votes=votes,
                        person_similarity=similarity, warnings=warnings, detections=list(detections))


def looks_dim(looks: Sequence[np.ndarray | None]) -> int:
    """The embedding width of ``looks`` (0 when no face was embedded)."""
    return next((lk.shape[1] for lk in looks if lk is not None and len(lk)), 0)


def plan_video(batches: Iterable, *, detect: Callable[[object], list[np.ndarray | None]], embedder: FaceEmbedder,
               strategies: Sequence[str], frame_size: tuple[int, int], usable: Callable[[np.ndarray], np.ndarray],
               online: Callable[[], object] | None = None, settings: IdentitySettings | None = None,
               progress: Callable[[int], object] | None = None) -> IdentityPlan:
    """The first pass over one video: detect (``detect(batch)``: per frame detections or None), keep the
    ``usable`` faces, embed them, run the ``online`` tracker (a fresh ``JointTracker``) for comparison,
    then ``decide_identities``. ``progress(n)`` is told each batch's frame count."""
    s = settings or IdentitySettings()
    detections: list[np.ndarray | None] = []
    looks: list[np.ndarray | None] = []
    online_picks: list[np.ndarray] = []
    tracker = online() if online is not None else None
    for batch in batches:
        found = detect(batch)
        for frame, faces in zip(batch.frames, found):
            faces = None if faces is None else usable(faces)
            detections.append(faces)
            looks.append(None if faces is None else embedder.embed(frame, faces) if len(faces)
                         else np.zeros((0, 1), np.float32))
        if tracker is not None:
            tracker.update(found, batch.frames)
            online_picks.extend(tracker.pop_picks())
        if progress is not None:
            progress(len(batch.frames))
    plan = decide_identities(detections, looks, strategies=strategies, frame_size=frame_size,
                             embedder_name=embedder.name,
                             same_person=s.same_person if s.same_person is not None else embedder.same_person,
                             link_min=s.link_min if s.link_min is not None else embedder.link_min,
                             too_close=s.too_close if s.too_close is not None else embedder.too_close, settings=s)
    if tracker is not None:
        plan.online_person = persons_picked(online_picks, plan.person, len(strategies))
    return plan


def persons_picked(picks: Sequence[np.ndarray], person: Sequence[np.ndarray], n_tracks: int) -> np.ndarray:
    """(T, N) the person of the face each track picked per frame (-1: no pick) from per-frame picks (T,)
    (face index into the frame's usable faces, -1: none)."""
    out = np.full((n_tracks, len(picks)), -1, np.int64)
    for i, (pick, who) in enumerate(zip(picks, person)):
        taken = pick >= 0
        out[taken, i] = who[pick[taken]]
    return out


def person_switches(picked: np.ndarray) -> np.ndarray:
    """(T,) how often each track's picked person changes from one pick to the next (no-pick frames skipped)."""
    out = np.zeros(len(picked), np.int64)
    for t, row in enumerate(picked):
        seen = row[row >= 0]
        out[t] = int((seen[1:] != seen[:-1]).sum())
    return out


IDENTITY_COLUMNS: tuple[str, ...] = ("identity", "person", "by_identity", "by_position", "switches_avoided",
                                     "frames_changed", "identity_warning")


def identity_stats(plan: IdentityPlan | None, tracker, *, method: str, strategies: Sequence[str]) -> list[dict]:
    """Per track, the report's ``IDENTITY_COLUMNS``: what decided it (``identity``: the embedder, or the
    online rule ``method`` names), its ``person`` (-1: none), picks of its person (``by_identity``) and
    by the position of the moment (``by_position``), person switches of the online rule minus its own
    (``switches_avoided``), frames whose face differs from the online rule's (``frames_changed``), and
    a warning when its person is too close to another to tell apart. ``tracker``: the second pass's
    ``JointTracker`` (built with ``record_picks``)."""
    rows = []
    final = persons_picked(tracker.pop_picks(), plan.person, len(strategies)) if plan is not None else None
    for t, strategy in enumerate(strategies):
        if plan is None or strategy not in IDENTITY_STRATEGIES:
            rows.append(dict(identity=method if strategy in IDENTITY_STRATEGIES else f"online (strategy {strategy})",
                             person=-1,
                             by_identity=0, by_position=int(tracker.by_identity[t] + tracker.by_position[t]),
                             switches_avoided=0, frames_changed=0, identity_warning=""))
            continue
        online = plan.online_person[t] if plan.online_person is not None else final[t]
        rows.append(dict(identity=plan.method, person=int(plan.track_person[t]),
                         by_identity=int(tracker.by_identity[t]), by_position=int(tracker.by_position[t]),
                         switches_avoided=int(person_switches(online[None])[0] - person_switches(final[t][None])[0]),
                         frames_changed=int((online != final[t]).sum()), identity_warning=plan.warnings[t]))
    return rows


__all__ = ["IDENTITY_COLUMNS", "identity_stats", "IDENTITY_STRATEGIES", "EMBEDDERS", "ARCFACE_TEMPLATE", "FaceEmbedder", "ColourTextureEmbedder",
           "ArcFaceEmbedder", "align_faces", "build_embedder", "identity_method", "IdentitySettings", "IdentityPlan",
           "link_tracklets", "cluster_tracklets", "decide_identities", "plan_video", "persons_picked",
           "person_switches", "looks_dim"]
