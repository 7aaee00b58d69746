"""Frame tables: the stored visual and audio features (and labels) of many tracks, row-aligned, in RAM or
as row views of a memory-mapped consolidated cache; and the reference code's nearest-frame imputation
of frames without a face (or without audio) at validation / test time (``impute_nearest``).
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from kitlib.progress import tqdm

from kitlib.data import Track
from kitlib.store import FeatureStore, RowView, consolidate, take_rows

log = logging.getLogger(__name__)


FeatureKey = str | Callable[[Mapping[str, np.ndarray]], np.ndarray]


@dataclass
class FrameTable:
    """Aligned per-frame arrays of many tracks, one row per annotation frame, tracks one after another.

    Track ``i`` (``txtids[i]``) holds rows ``offsets[i]:offsets[i+1]``. Features keep their stored
    dtype (float16) until a batch is moved to the device. ``labels`` is -1 where invalid / unknown.
    ``visual`` / ``audio`` are arrays, or ``store.RowView``s of a memory-mapped consolidated cache
    (``load_frame_table(memmap=True)``): indexing them with rows gives just those rows, and
    ``subset`` narrows the view without copying features.
    """

    txtids: tuple[str, ...]
    offsets: np.ndarray       # (T+1,) int64
    frame_index: np.ndarray   # (N,) int32, 1-based
    visual: np.ndarray | RowView  # (N, Dv)
    visual_mask: np.ndarray   # (N,) bool: a face was found
    audio: np.ndarray | RowView   # (N, Da)
    audio_mask: np.ndarray    # (N,) bool: real audio
    labels: np.ndarray        # (N,) int64, -1 invalid
    imputed: np.ndarray | None = None  # (N,) bool: features copied from the nearest frame (impute_nearest)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def visual_dim(self) -> int:
        return int(self.visual.shape[1])

    @property
    def audio_dim(self) -> int:
        return int(self.audio.shape[1])

    def track_rows(self) -> np.ndarray:
        """(N,) index into ``txtids`` of every row."""
        return np.repeat(np.arange(len(self.txtids)), np.diff(self.offsets))

    def subset(self, txtids: Sequence[str]) -> FrameTable:
        """A new table with only the given tracks (in the given order)."""
        where = {t: i for i, t in enumerate(self.txtids)}
        missing = [t for t in txtids if t not in where]
        if missing:
            raise KeyError(f"tracks not in this frame table: {missing[:10]}")
        idx = [where[t] for t in txtids]
        lengths = np.diff(self.offsets)[idx]
        rows = np.concatenate([np.arange(self.offsets[i], self.offsets[i + 1]) for i in idx]) if idx \
            else np.zeros(0, dtype=np.int64)
        return FrameTable(txtids=tuple(txtids), offsets=np.r_[0, np.cumsum(lengths)].astype(np.int64),
                          frame_index=self.frame_index[rows], visual=take_rows(self.visual, rows),
                          visual_mask=self.visual_mask[rows], audio=take_rows(self.audio, rows),
                          audio_mask=self.audio_mask[rows], labels=self.labels[rows],
                          imputed=None if self.imputed is None else self.imputed[rows])


def nearest_source_rows(track_of_row: np.ndarray, have: np.ndarray, *, ties: str = "later") -> np.ndarray:
    """For every row, the row of the same track nearest to it where ``have`` is True (itself if it has
    it; equally near rows before and after: the ``later`` or ``earlier`` one), or -1 when its track has none."""
    if ties not in ("later", "earlier"):
        raise ValueError(f"ties must be 'later' or 'earlier', got {ties!r}")
    n = len(have)
    rows = np.arange(n)
    source = np.flatnonzero(have)
    if len(source) == 0:
        return np.full(n, -1, dtype=np.int64)
    j = np.searchsorted(source, rows, side="left")
    after = source[np.minimum(j, len(source) - 1)]
    before = source[np.maximum(j - 1, 0)]
    after_ok = (j < len(source)) & (track_of_row[after] == track_of_row)
    before_ok = (j > 0) & (track_of_row[before] == track_of_row)
    big = np.iinfo(np.int64).max
    d_after = np.where(after_ok, after - rows, big)
    d_before = np.where(before_ok, rows - before, big)
    pick = np.where(d_after <= d_before if ties == "later" else d_after < d_before, after, before)
    return np.where(after_ok | before_ok, pick, -1).astype(np.int64)


def impute_nearest(table: FrameTable) -> FrameTable:
    """The reference code's handling of frames without a face at validation / test time.

    A frame without a face takes the visual feature of the nearest frame of its track that has one
    (ties: the later frame), a frame without audio likewise the nearest audio; such frames are
    marked ``imputed`` (``kitlib.smoothing`` skips them inside a window) and their masks become True.
    Tracks without any face (or audio) keep their zero features and False masks. Memory-mapped
    features stay views (rows are re-indexed, nothing is copied).
    """
    track = table.track_rows()
    parts = {}
    imputed = np.zeros(len(table), dtype=bool)
    for name in ("visual", "audio"):
        feats, mask = getattr(table, name), getattr(table, f"{name}_mask")
        if feats.shape[1] == 0:
            parts[name], parts[f"{name}_mask"] = feats, mask
            continue
        source = nearest_source_rows(track, mask)
        filled = (~mask) & (source >= 0)
        rows = np.where(filled, source, np.arange(len(table)))
        parts[name] = take_rows(feats, rows)
        parts[f"{name}_mask"] = mask | filled
        imputed |= filled
    if table.imputed is not None:
        imputed |= table.imputed
    log.info("nearest-frame imputation: %d of %d frames take features from a neighbour", int(imputed.sum()),
             len(table))
    return FrameTable(txtids=table.txtids, offsets=table.offsets, frame_index=table.frame_index,
                      labels=table.labels, imputed=imputed, **parts)


def _features(entry: Mapping[str, np.ndarray], key: FeatureKey, *, what: str) -> np.ndarray:
    if callable(key):
        out = np.asarray(key(entry))
    elif key in entry:
        out = entry[key]
    else:
        raise KeyError(f"{what}: no array {key!r} in the feature file (it has {sorted(entry)})")
    if out.ndim != 2:
        raise ValueError(f"{what}: features must be (frames, dim), got shape {out.shape}")
    return out


def _load_modality(store: FeatureStore, txtid: str, key: FeatureKey) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not store.done(txtid):
        raise FileNotFoundError(f"track {txtid!r}: no {store.kind} feature file {store.path(txtid).name} in "
                                f"{store.root} (run the {store.kind} extraction for it first)")
    entry = store.load(txtid)
    what = f"track {txtid!r} ({store.path(txtid)})"
    feats = _features(entry, key, what=what)
    mask = entry["mask"].astype(bool) if "mask" in entry else np.ones(len(feats), dtype=bool)
    frame_index = entry["frame_index"].astype(np.int32) if "frame_index" in entry \
        else np.arange(1, len(feats) + 1, dtype=np.int32)
    if not len(feats) == len(mask) == len(frame_index):
        raise ValueError(f"{what}: {len(feats)} feature rows, {len(mask)} mask rows, {len(frame_index)} frames")
    return frame_index, feats, mask


def load_frame_table(tracks: Sequence[Track], *, visual_store: FeatureStore | None,
                     audio_store: FeatureStore | None, labels: Mapping[str, np.ndarray] | None,
                     visual_key: FeatureKey = "features", audio_key: FeatureKey = "features",
                     memmap: bool = False) -> FrameTable:
    """Stack the stored features (and labels) of ``tracks`` into one ``FrameTable``.

    A store given as None gives a (N, 0) modality with an all-False mask (for the one-modality
    heads). ``visual_key`` / ``audio_key`` name the array in each feature file, or are callables
    taking the loaded file's arrays (e.g. one crop scale of ``features_by_scale`` for Table 1).
    Both stores must list the same frames per track; ``labels[txtid]`` must have one label per row.

    ``memmap``: the features stay on disk, in one memory-mapped ``.npy`` per store and array key
    (``store.consolidate``, built once per store contents), and the table holds ``RowView``s of it:
    loading costs the small per-frame arrays only, whatever the release size.
    """
    if visual_store is None and audio_store is None:
        raise ValueError("load_frame_table needs at least one of visual_store / audio_store")
    if memmap:
        return _memmap_frame_table(tracks, visual_store=visual_store, audio_store=audio_store, labels=labels,
                                   visual_key=visual_key, audio_key=audio_key)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("frame_index", "visual", "vmask", "audio", "amask", "y")}
    dims: dict[str, tuple[int, str]] = {}
    lengths = []
    for track in tqdm(tracks, desc="load features", unit="track", leave=False):
        txtid = track.txtid
        loaded = {}
        for name, store, key in (("visual", visual_store, visual_key), ("audio", audio_store, audio_key)):
            if store is None:
                continue
            frame_index, feats, mask = _load_modality(store, txtid, key)
            first = dims.setdefault(name, (feats.shape[1], txtid))
            if feats.shape[1] != first[0]:
                raise ValueError(f"track {txtid!r}: {name} features have dim {feats.shape[1]} but track "
                                 f"{first[1]!r} has {first[0]} ({store.root})")
            loaded[name] = (frame_index, feats, mask)
        if len(loaded) == 2 and not np.array_equal(loaded["visual"][0], loaded["audio"][0]):
            raise ValueError(f"track {txtid!r}: the visual ({len(loaded['visual'][0])} rows) and audio "
                             f"({len(loaded['audio'][0])} rows) feature files list different frames")
        frame_index = next(iter(loaded.values()))[0]
        n = len(frame_index)
        for name, fkey, mkey in (("visual", "visual", "vmask"), ("audio", "audio", "amask")):
            if name in loaded:
                parts[fkey].append(loaded[name][1])
                parts[mkey].append(loaded[name][2])
            else:
                parts[fkey].append(np.zeros((n, 0), dtype=np.float16))
                parts[mkey].append(np.zeros(n, dtype=bool))
        if labels is None:
            y = np.full(n, -1, dtype=np.int64)
        else:
            if txtid not in labels:
                raise KeyError(f"track {txtid!r}: no labels given for it")
            y = np.asarray(labels[txtid], dtype=np.int64).ravel()
            if len(y) != n:
                raise ValueError(f"track {txtid!r}: {len(y)} labels but {n} feature rows")
        parts["frame_index"].append(frame_index)
        parts["y"].append(y)
        lengths.append(n)
    if not lengths:
        raise ValueError("load_frame_table got no tracks")
    table = FrameTable(
        txtids=tuple(t.txtid for t in tracks), offsets=np.r_[0, np.cumsum(lengths)].astype(np.int64),
        frame_index=np.concatenate(parts["frame_index"]), visual=np.concatenate(parts["visual"]),
        visual_mask=np.concatenate(parts["vmask"]), audio=np.concatenate(parts["audio"]),
        audio_mask=np.concatenate(parts["amask"]), labels=np.concatenate(parts["y"]))
    log.info("frame table: %d tracks, %d frames (%d labelled), visual dim %d (%d with a face), audio dim %d "
             "(%d with audio)", len(lengths), len(table), int((table.labels >= 0).sum()), table.visual_dim,
             int(table.visual_mask.sum()), table.audio_dim, int(table.audio_mask.sum()))
    return table


def _memmap_frame_table(tracks: Sequence[Track], *, visual_store: FeatureStore | None,
                        audio_store: FeatureStore | None, labels: Mapping[str, np.ndarray] | None,
                        visual_key: FeatureKey, audio_key: FeatureKey) -> FrameTable:
    """``load_frame_table(memmap=True)``: row views of the stores' consolidated caches."""
    txtids = [t.txtid for t in tracks]
    if not txtids:
        raise ValueError("load_frame_table got no tracks")
    loaded = {}
    for name, store, key in (("visual", visual_store, visual_key), ("audio", audio_store, audio_key)):
        if store is None:
            continue
        if callable(key):
            raise TypeError(f"load_frame_table(memmap=True) needs the name of a stored array as {name}_key, "
                            f"not a callable")
        missing = [t for t in txtids if not store.done(t)]
        if missing:
            raise FileNotFoundError(f"track(s) {missing[:5]}: no {store.kind} feature file in {store.root} "
                                    f"(run the {store.kind} extraction for them first)")
        cache = consolidate(store, key)
        rows, lengths = cache.rows(txtids)
        loaded[name] = (cache, rows, lengths)
    first = next(iter(loaded.values()))
    lengths = first[2]
    if len(loaded) == 2:
        (_, v_rows, v_len), (_, a_rows, a_len) = loaded["visual"], loaded["audio"]
        differ = np.flatnonzero(v_len != a_len)
        if len(differ) == 0:
            same = loaded["visual"][0].frame_index[v_rows] == loaded["audio"][0].frame_index[a_rows]
            offsets = np.r_[0, np.cumsum(v_len)]
            differ = np.unique(np.searchsorted(offsets, np.flatnonzero(~same), side="right") - 1)
        if len(differ):
            t = int(differ[0])
            raise ValueError(f"track {txtids[t]!r}: the visual ({v_len[t]} rows) and audio ({a_len[t]} rows) "
                             f"feature files list different frames")
    n = int(lengths.sum())
    cache, rows, _ = first
    parts = {}
    for name in ("visual", "audio"):
        if name in loaded:
            c, r, _ = loaded[name]
            parts[name], parts[f"{name}_mask"] = RowView(c.features, r), c.mask[r]
        else:
            parts[name], parts[f"{name}_mask"] = np.zeros((n, 0), dtype=np.float16), np.zeros(n, dtype=bool)
    if labels is None:
        y = np.full(n, -1, dtype=np.int64)
    else:
        absent = [t for t in txtids if t not in labels]
        if absent:
            raise KeyError(f"track {absent[0]!r}: no labels given for it")
        y = [np.asarray(labels[t], dtype=np.int64).ravel() for t in txtids]
        wrong = [i for i, (t, part) in enumerate(zip(txtids, y)) if len(part) != lengths[i]]
        if wrong:
            raise ValueError(f"track {txtids[wrong[0]]!r}: {len(y[wrong[0]])} labels but {lengths[wrong[0]]} feature rows")
        y = np.concatenate(y)
    table = FrameTable(txtids=tuple(txtids), offsets=np.r_[0, np.cumsum(lengths)].astype(np.int64),
                       frame_index=cache.frame_index[rows], labels=y, **parts)
    log.info("frame table (memory-mapped): %d tracks, %d frames (%d labelled), visual dim %d, audio dim %d",
             len(txtids), n, int((y >= 0).sum()), table.visual_dim, table.audio_dim)
    return table


def split_by_track(table: FrameTable, logits: np.ndarray) -> dict[str, np.ndarray]:
    """Per-track views of row-aligned ``logits`` (N, C), keyed by txtid."""
    if len(logits) != len(table):
        raise ValueError(f"{len(logits)} rows of logits for a frame table of {len(table)} rows")
    return {t: logits[a:b] for t, a, b in zip(table.txtids, table.offsets[:-1], table.offsets[1:])}


