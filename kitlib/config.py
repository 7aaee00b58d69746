"""Typed, layered params: ``params/base.yaml`` -> profile(s) -> ``key=value`` overrides.

``params/base.yaml`` holds every knob with its default and a comment; a profile (``demo.yaml``,
``abaw10.yaml``) and any further files (an untracked ``params/local.yaml`` with machine paths)
override parts of it, in order, then command-line overrides such as ``fusion.epochs=5``. The result
is checked against the dataclasses below: an unknown or misspelt key, or a value of the wrong type,
is an error that names the valid keys. Relative paths are relative to the repository root, so the
same params work from the command line, from papermill and from JupyterLab (cwd ``notebooks/``).
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import json
import os
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A params file or override that does not fit the schema; the message says where and why."""


@dataclass
class RunParams:
    name: str               # run folder: <outputs_root>/<name>/
    outputs_root: str       # where run folders live
    seed: int               # seeds every RNG (kitlib.runtime.seed_everything)
    device: str             # auto | cpu | cuda | cuda:N
    amp_on_cpu: bool        # each section's amp on the CPU too: the GPU's dtype path (tests, rehearsals)


@dataclass
class DataParams:
    root: str               # the Aff-Wild2 EXPR release (or the generated demo)
    videos_dir: str         # raw videos, searched recursively, relative to root
    annotations_dir: str    # holds Train_Set/ and Validation_Set/, relative to root
    test_names: str         # test annotation names, one per line, relative to root (a glob matching one file is fine)
    test_template: str      # organisers' submission template, relative to root (a glob matching one file is fine)
    generate_demo: bool     # write the embedded demo dataset into root when it is absent
    length_policy: str      # truncate | strict: annotation longer/shorter than the decoded video
    n_folds: int            # video-level cross-validation folds over Train+Validation
    fold_seed: int          # folds are reproducible from this seed
    fold_trials: int        # random assignments tried; the most class-balanced is kept
    folds_file: str | None  # a CSV (txtid, fold) to use instead of computing folds
    cropped_aligned_dir: str | None  # organisers' face crops <txtid>/<00001>.jpg (Table 1 "official"); null = skip
    cropped_aligned_stride: int  # encode every n-th official crop (1 = all; the demo saves time with 2)


@dataclass
class DemoParams:
    seed: int
    n_train: int            # raw videos per split (one train video is a two-person video)
    n_val: int
    n_test: int
    seconds: list[float]    # [min, max] length of a demo video
    fps: float
    size: list[int]         # [width, height]
    sample_rate: int
    images_per_class: int   # the demo's class-per-folder face image set for Stage I
    layout: str             # demo | release (the release's names, sizes, fps and files: kitlib.data.demo.release)


@dataclass
class FacesParams:
    detector: str           # centerface | scrfd | face-alignment | opencv-haar | boxes
    boxes_file: str | None  # CSV videoid,frame,x1,y1,x2,y2,score[,lx1,ly1..lx5,ly5] for detector=boxes
    detector_weights: str | None  # weights file (centerface, scrfd) or folder (face-alignment); null = backend default
    detector_options: dict[str, Any]  # further keyword options of the backend (threshold, box_scale, ...)
    detect_max_side: int    # detect on a copy whose long side is at most this many pixels
    detect_every: int       # run the detector on every k-th frame; the frames between are interpolated
    selection: str | None   # CSV txtid,strategy: which face is each track's person (null = default_strategy)
    default_strategy: str   # for tracks the selection table does not list: largest | left | right | top | ...
    identity: str           # who is who over the whole video: arcface | colour-texture | online (kitlib.faces.identity)
    identity_weights: str | None  # arcface: w600k_r50.onnx or the buffalo_l folder; null = online rule (reported)
    max_gap: int            # bridge detection gaps up to this many frames; longer = face missing
    follow_max_frames: int  # follow a face lost at the frame border for up to this many frames (0 = off)
    follow_min_visible: float     # stop following when less of the box than this lies inside the frame
    follow_min_similarity: float  # stop following when the appearance match (NCC) falls below this
    crop_scales: list[float]  # square crops of scale x face box (paper: 0.9, 1.2, 1.5)
    crop_centre_fraction: float  # the crop actually used is this centre part of each scale's square (reference: 224/256)
    decode_batch: int       # frames decoded and detected per batch


@dataclass
class Stage1Params:
    arch: str               # timm name: vit_{small,base,large,giant}_patch14_dinov2, beit_large_patch16_224, vit_large_patch14_clip_224
    arch_overrides: dict[str, Any]  # timm.create_model kwargs (the CPU demo shrinks depth/width)
    weights: str | None     # local pretrained weights of that arch (file or folder); "random" = random weights on
                            # purpose (a rehearsal, reported as such); null = random init (the demo)
    image_size: int         # backbone input size in pixels
    train: bool             # run Stage-I adaptation (false: use `checkpoint` or `weights` as they are)
    checkpoint: str | None  # an adapted backbone (.safetensors) made elsewhere
    dataset: str            # class_folder | affectnet | rafdb | affectnet_rafdb (merged) | ferplus | ferplus_basic | affwild2 (cropped frames <txtid>/<00001>.jpg)
    images_root: str        # image FER set for Stage I, relative to data.root unless absolute (affectnet_rafdb: AffectNet)
    rafdb_root: str         # RAF-DB for dataset affectnet_rafdb, relative to data.root unless absolute
    head: str               # moe | mlp (training-only head, discarded after Stage I)
    moe_structure: str      # kit (one-layer router and MLP experts) | authors (deep router, 3 SwiGLU blocks per expert)
    head_dropout: float     # dropout of the Stage-I head (authors: 0.6, inside the SwiGLU blocks too)
    num_experts: int        # M in eqs. 2-3
    n_frozen_blocks: int    # patch embedding + the first N blocks stay frozen (paper: 8)
    epochs: int
    batch_size: int
    lr_backbone: float
    lr_head: float
    weight_decay: float
    layer_decay: float | None  # LLRD: block i of n at lr_backbone * layer_decay^(n-1-i); null = one backbone lr
    no_decay_bias_norm: bool   # no weight decay on biases, 1-D weights and norms
    grad_clip: float | None    # max gradient norm; null = no clipping
    lr_schedule: str        # step_cosine (warm-up + cosine to 0 per step) | epoch_cosine (to lr_min, per epoch)
    lr_min: float           # end of epoch_cosine
    trainable_tokens: bool  # class / register tokens and position embedding trained (else frozen with the stem)
    augment: str            # kit | authors: the Stage-I image augmentation list and eval transform
    class_weight_norm: str  # samples (mean weight over images = 1) | classes (mean over the 8 classes = 1, reference)
    mixup_alpha: float
    label_smoothing: float
    padaug: bool            # padding-aware augmentation (paper 3.1.1)
    padaug_style: str       # kit (bars up to max_frac of a side, content jitter) | authors (area <= max_frac, 1-4 px shift)
    padaug_p: float
    padaug_max_frac: float
    amp: str                # bf16 | fp16 | none (autocast on CUDA only)
    max_steps_per_epoch: int | None
    num_workers: int | None  # image-loading processes; null = the machine's cores; 0 = in the training process
    prefetch_factor: int     # batches each loader worker prepares ahead
    table1_states: list[str]  # extra backbone states for Table 1: pretrained, mlp, moe, moe_padaug, mlp_padaug
    chain: list[dict[str, Any]]  # further Stage-I runs, each from the previous one's backbone (seed 004 sec. 3.2)


@dataclass
class VisualParams:
    batch_size: int         # crops per backbone batch
    amp: str                # bf16 | fp16 | none
    probe: str              # Table 1's linear probe: sklearn (logistic regression) | torch (reference: AdamW 20 epochs, best)
    compare_backbones: list[dict[str, Any]]  # seed 004 Table 1: further backbones probed on this run's faces
    extractor: str          # serial (decode -> detect -> track -> encode in turn) | pipelined (kitlib.visual.pipelined)
    decode_workers: int | None  # pipelined: videos decoded ahead in parallel threads; null = min(cores, 8)
    queue_batches: int      # pipelined: decoded batches each decode worker may hold (bounds host memory)
    compile: bool           # pipelined: torch.compile the backbone (CUDA; pays off on long runs)
    weights_bf16: bool      # pipelined, CUDA: cast the backbone's weights to visual.amp instead of autocast
    detect_in_workers: bool  # pipelined: each decode worker detects its video's faces (own detector), in parallel
    pin_decoded: bool       # pipelined, CUDA: decode workers copy batches into pinned memory (slower decode, measured)


@dataclass
class AudioParams:
    encoder: str            # local folder of a transformers audio encoder (wav2vec2 / WavLM / HuBERT)
    make_tiny_encoder: bool  # demo only: build a random-init tiny wav2vec2 at `encoder` if absent
    weights: str            # pretrained (the `encoder` folder) | random (`random_arch` with random weights: a rehearsal)
    random_arch: str        # the architecture built with weights: random (kitlib.audio.encoders.RANDOM_ARCHS)
    sample_rate: int
    chunk_s: float          # long audio is encoded in overlapping chunks of this length
    overlap_s: float
    layers: str             # "last" | k or "lastk" (mean of the last k layers) | "a-b" / "a,b" (1-based layers: hidden_states[i])
    normalize_waveform: bool | None  # zero-mean unit-variance per chunk; null = the encoder folder's preprocessor config
    align: str              # window | nearest | interpolate (linear, seed 004 sec. 4.2)
    align_window_total_s: float   # TOTAL length of the centred window (half-width = align_window_total_s / 2)
    ablation_windows_total_s: list[float]  # further total window lengths stored for Table 2
    probe: str              # Table 2's linear probe: sklearn | torch
    align_window_half_s: float | None  # HALF-WIDTH: window = frame +- this (reference WIN_SEC); set: replaces align_window_total_s
    ablation_windows_half_s: list[float]  # further half-widths stored for Table 2 (reference convention)
    align_empty: str        # mask (an empty window has no audio) | nearest (it takes the nearest encoder step)
    frame_time: str         # container (frame start times) | centre ((i + 0.5) / fps, the reference code)
    amp: str
    batch_videos: int       # videos encoded together (their chunks share batches: a GPU wants 8+); 1 = one at a time
    batch_chunks: int       # chunks per encoder forward when batch_videos > 1


@dataclass
class SequenceParams:
    """How window-level heads (safe_xattn, tcn_prompt) train and predict (seed 004 sec. 3.5-3.6, 4.4)."""
    window: int             # W frames per window (seed 004: 64)
    stride: int             # S frames between windows, training and soft-voting inference (seed 004: 8)
    max_invalid: float      # training drops windows with a larger share of -1 labels (seed 004: 0.25)
    batch_size: int         # windows per batch
    lr: float
    epochs: int
    patience: int
    loss: str               # focal | ce
    class_weights: str      # effective_number | inverse | inverse_sqrt | none


@dataclass
class SafeXAttnOptions:
    """Seed 004's dual-branch transformer (fusion head ``safe_xattn``)."""
    d_model: int            # d of Table 3
    layers: int             # l of Table 3: self-attention layers per modality
    n_heads: int
    modality_dropout: float  # p of Table 3: a window's visual input dropped in training
    mask_visual_self_attention: bool  # no-face frames also masked as keys of the visual self-attention (false: only A->V, sec. 3.4)


@dataclass
class TCNPromptOptions:
    """Seed 003's TCN + cross-attention + label-prompt head (fusion head ``tcn_prompt``)."""
    tcn_levels: int
    tcn_kernel: int
    n_heads: int
    contrastive_weight: float
    temperature: float
    classify: str           # frame (a classifier per frame) | pooled (one per window, soft-voted to frames: the poster)
    contrastive: str        # video_to_text | symmetric (plus text -> video, CLIP's two directions)
    learnable_temperature: bool  # the temperature is learnt (CLIP's logit scale), starting at `temperature`


@dataclass
class HeadOptions:
    safe_xattn: SafeXAttnOptions
    tcn_prompt: TCNPromptOptions


@dataclass
class FusionParams:
    heads: list[str]        # rows of Table 3
    final_head: str         # head used for smoothing and submission (paper: gated)
    hidden: int
    dropout: float
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    patience: int           # early stopping on validation macro F1
    class_weights: str      # inverse | inverse_sqrt | effective_number | none
    effective_beta: float | str  # beta of the effective-number class weights (Cui et al. 2019), or "auto" = 1 - 1/max n_c
    loss: str               # frame heads: ce | focal
    focal_gamma: float      # focal loss gamma (seed 004 eq. 5), both head kinds
    cross_validation: bool  # also report the K video-level folds
    cv_protocol: str        # kit (CV epochs = official best epoch, sample std) | authors (best epoch per held-out fold, population std)
    head_structure: str     # kit | authors: frame heads' layer structure (authors = the reference code, Table 3 counts)
    input_norm: str         # none | l2_zscore: frame heads' inputs L2-normalised, z-scored with train statistics
    input_dropout: list[float]  # [visual p, audio p]: element dropout of frame heads' inputs while training
    lr_schedule: str        # constant | cosine (per epoch, lr -> lr_min), frame heads
    lr_min: float           # end of the cosine schedule
    frame_head_overrides: dict[str, Any]  # per frame head: {lr, weight_decay, dropout} replacing the fusion.* values
    missing_frames: str     # mask (zero a faceless frame's visual) | impute (val/test: nearest frame with it)
    memmap_features: bool   # frame tables read features through a memory-mapped cache (store.consolidate)
    resident_features: bool  # on CUDA: training tables copied onto the GPU once, batches gathered there
    sequence: SequenceParams
    head_options: HeadOptions
    text_encoder: str       # local transformers text encoder folder for tcn_prompt's label prompts
    make_tiny_text_encoder: bool  # demo only: build a random-init tiny text encoder there if absent
    prompt_template: str    # label prompt, "{emotion}" replaced by the class name
    xattn_grid: list[dict[str, Any]]  # seed 004 Table 3: safe_xattn option rows (p, d, l) to compare
    xattn_grid_folds: bool  # also run each grid row on the folds (with cross_validation)
    lambda_grid: list[float]  # seed 004 Table 2: lambda of Output = lambda V + (1 - lambda) A; [] = skipped
    lambda_audio_context: int  # its audio input: mean over this many frames either side (seed 004: 18)


@dataclass
class SmoothingParams:
    strategies: list[str]   # mean | median | gaussian | vote
    window_min: int         # sweep windows window_min..window_max step window_step (odd sizes)
    window_max: int
    window_step: int
    final_strategy: str     # used for the submission (paper: median)
    final_window: int       # paper: 101
    final_edge: str         # the submission's smoothing edges: truncate | replicate
    edge: str               # Table 4 / Fig. 4 sweep: truncate (windows shrink at a track's ends) | replicate (edge frames repeated)
    gaussian_sigma_divisor: float  # gaussian strategy's sigma = window / this (6: +-3 sigma; reference code: 4)


@dataclass
class SubmissionParams:
    fill_policy: str        # nearest: frames without a prediction take the nearest predicted frame's label
    ensemble_folds: bool    # mean of the fold models' logits before smoothing
    filename: str


@dataclass
class Config:
    run: RunParams
    data: DataParams
    demo: DemoParams
    faces: FacesParams
    stage1: Stage1Params
    visual: VisualParams
    audio: AudioParams
    fusion: FusionParams
    smoothing: SmoothingParams
    submission: SubmissionParams

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        """A short hash of the resolved params (run folders record it)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]

    def results_dict(self, sections: typing.Iterable[str] | None = None) -> dict[str, Any]:
        """The params that shape results (``sections`` of them, default all): ``to_dict`` without the
        ``LOCATION_KEYS``, so a run folder that is renamed, moved or copied, or a data root that is moved,
        keeps its params."""
        return without_location(self.to_dict(), sections)

    def random_weights(self) -> list[str]:
        """The models this run builds with RANDOM weights on purpose (``stage1.weights: random``,
        ``audio.weights: random``): a rehearsal whose scores mean nothing. The run's provenance and
        summary name them, so nobody mistakes its outputs for a trained model's."""
        out = []
        if self.stage1.weights == RANDOM_WEIGHTS:
            out.append(f"stage1.weights: random ({self.stage1.arch})")
        if self.audio.weights == RANDOM_WEIGHTS:
            out.append(f"audio.weights: random ({self.audio.random_arch})")
        return out

    def path(self, value: str | os.PathLike) -> Path:
        """A params path made absolute: relative paths are relative to the repository root. A Hugging
        Face id (``facebook/dinov2-large``) that is no path here is its snapshot in the local cache."""
        from kitlib import hub

        p = Path(value).expanduser()
        if p.is_absolute():
            return p
        if not (repo_root() / p).exists() and (snapshot := hub.cached_snapshot(str(value))) is not None:
            return snapshot
        return repo_root() / p

    def data_path(self, value: str | os.PathLike) -> Path:
        """A path inside the dataset root (absolute paths are kept).

        A value with glob characters (``test/**/*_Expr_test_set_sample.txt``) names the one file it
        matches, so the organisers' files keep their own names whichever edition's prefix they
        carry; no match gives the pattern back (the reader then says the file is missing), more
        than one is an error listing them.
        """
        p = Path(value).expanduser()
        p = p if p.is_absolute() else self.path(self.data.root) / p
        if not any(ch in str(value) for ch in "*?["):
            return p
        anchor = Path(p.anchor)
        matches = sorted(m for m in anchor.glob(str(p.relative_to(anchor))) if m.is_file())
        if len(matches) > 1:
            raise ConfigError(f"{value!r} matches {len(matches)} files under {self.path(self.data.root)}: "
                              + ", ".join(str(m) for m in matches[:5]) + "; name one of them")
        return matches[0] if matches else p

    def test_names_path(self) -> Path | None:
        """The organisers' list of test annotation names (``data.test_names``), None when unset."""
        return self.data_path(self.data.test_names) if self.data.test_names else None

    @property
    def run_dir(self) -> Path:
        return self.path(self.run.outputs_root) / self.run.name


# where things lie, not what they are: a run folder's name and place, the data root (its files are fingerprinted
# by content, kitlib.runfolder); left out when a run folder compares params or fingerprints a stage's inputs
LOCATION_KEYS: tuple[str, ...] = ("run.name", "run.outputs_root", "data.root")


def without_location(values: dict[str, Any], sections: typing.Iterable[str] | None = None) -> dict[str, Any]:
    """A resolved params mapping without the ``LOCATION_KEYS`` (and only ``sections``, when given)."""
    out = {k: copy.deepcopy(v) for k, v in values.items() if sections is None or k in sections}
    for dotted in LOCATION_KEYS:
        section, key = dotted.split(".")
        if isinstance(out.get(section), dict):
            out[section].pop(key, None)
    return out


def flatten(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"fusion": {"epochs": 5}}`` -> ``{"fusion.epochs": 5}`` (lists and dicts below a leaf kept as text)."""
    out = {}
    for key, value in params.items():
        if isinstance(value, dict) and value and all(isinstance(k, str) for k in value):
            out |= flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool, type(None))) else str(value)
    return out


def repo_root() -> Path:
    """The checkout holding ``params/``: $KIT_ROOT, else the folder above ``kitlib/``, else cwd."""
    if os.environ.get("KIT_ROOT"):
        return Path(os.environ["KIT_ROOT"]).resolve()
    here = Path(__file__).resolve().parent.parent
    return here if (here / "params").is_dir() else Path.cwd()


def _type_ok(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_type_ok(v, item) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    raise TypeError(f"unsupported type hint {hint!r}")


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in values if k not in names]
    if unknown:
        tips = "; ".join(f"{k!r}" + (f" (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(k, names, 1)) else "")
                         for k in unknown)
        raise ConfigError(f"unknown key(s) in {where or 'params'}: {tips}. Valid keys: {', '.join(names)}")
    missing = [k for k in names if k not in values]
    if missing:
        raise ConfigError(f"{where or 'params'} lacks {', '.join(missing)} (params/base.yaml must set every key)")
    kwargs = {}
    for name in names:
        hint, value, key = hints[name], values[name], f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigError(f"{key} must be a mapping of keys, got {value!r}")
            kwargs[name] = _build(hint, value, key)
        elif not _type_ok(value, hint):
            raise ConfigError(f"{key} = {value!r} ({type(value).__name__}) does not fit the type {hint}")
        else:
            kwargs[name] = float(value) if hint is float else value
    return cls(**kwargs)


# the value of stage1.weights / audio.weights that builds a model with random weights on purpose (a rehearsal)
RANDOM_WEIGHTS = "random"


# mappings whose keys are free (keyword options passed through): replaced whole, never checked key by key
FREE_FORM_KEYS: frozenset[str] = frozenset({"arch_overrides", "detector_options", "frame_head_overrides"})


def _merge(base: dict, update: dict, where: str = "") -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key not in FREE_FORM_KEYS:
            out[key] = _merge(out[key], value, f"{where}{key}.")
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"params file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, got {type(data).__name__}")
    return data


def parse_override(text: str) -> dict:
    """``fusion.epochs=5`` -> ``{"fusion": {"epochs": 5}}``; the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw) if raw.strip() else None
    parts = key.strip().split(".")
    for part in reversed(parts):
        value = {part: value}
    return value


def from_dict(values: dict[str, Any], where: str = "") -> Config:
    """Check a resolved params mapping against the schema."""
    try:
        return _build(Config, values, where)
    except ConfigError as exc:
        raise ConfigError(f"{where + ': ' if where else ''}{exc}") from None


def load_items(items: typing.Sequence[str]) -> Config:
    """A command line's params: ``key=value`` items are overrides, the others params files (in order)."""
    return load(*[x for x in items if "=" not in x], overrides=[x for x in items if "=" in x])


def load_command_line(items: typing.Sequence[str]) -> Config | None:
    """``load_items`` for a command's ``main``: a params error is printed as one line on stderr and gives
    None (the command then exits 2)."""
    try:
        return load_items(items)
    except ConfigError as exc:
        print(f"params error: {exc}", file=sys.stderr)
        return None


def load(*files: str | os.PathLike, overrides: typing.Sequence[str] = ()) -> Config:
    """``params/base.yaml``, then each file in order, then ``key=value`` overrides."""
    root = repo_root()
    merged = _read_yaml(root / "params" / "base.yaml")
    for f in files:
        p = Path(f)
        p = p if p.is_absolute() or p.exists() else root / p
        layer = _read_yaml(p)
        _check_keys(layer, merged, str(p))
        merged = _merge(merged, layer)
    for text in overrides:
        layer = parse_override(text)
        _check_keys(layer, merged, f"override {text!r}")
        merged = _merge(merged, layer)
    return from_dict(merged)


def _check_keys(layer: dict, reference: dict, where: str, prefix: str = "") -> None:
    """Name the file (or override) holding an unknown key, before the schema check."""
    for key, value in layer.items():
        if key not in reference:
            near = difflib.get_close_matches(key, list(reference), 1)
            raise ConfigError(f"{where}: unknown key {prefix + key!r}"
                              + (f" (did you mean {prefix + near[0]!r}?)" if near else "")
                              + f". Valid keys{' in ' + prefix.rstrip('.') if prefix else ''}: {', '.join(reference)}")
        if isinstance(value, dict) and isinstance(reference[key], dict) and key not in FREE_FORM_KEYS:
            _check_keys(value, reference[key], where, f"{prefix}{key}.")


def notebook_config(params: str | os.PathLike | dict | list) -> Config:
    """The config a notebook works with: the dict the runner injects, or in JupyterLab a profile path or
    a list of params files and ``key=value`` overrides (as on the runner's command line)."""
    if isinstance(params, dict):
        return from_dict(params, "injected params")
    if isinstance(params, (list, tuple)):
        items = [str(p) for p in params]
        return load(*[p for p in items if "=" not in p], overrides=[p for p in items if "=" in p])
    return load(params)


def save(cfg: Config, path: Path) -> None:
    """Write the resolved params as YAML (what a run folder records)."""
    from kitlib.store import write_text_atomic

    write_text_atomic(Path(path), yaml.safe_dump(cfg.to_dict(), sort_keys=False))
