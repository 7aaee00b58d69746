"""Speech encoders (wav2vec 2.0, WavLM, HuBERT) from local folders, and encoding long audio in chunks.

The kit never downloads weights; ``make_tiny_encoder`` builds a random-init model of the real
architecture for tests and the CPU demo (its features carry no meaning). ``encode`` runs the whole
track in overlapping chunks (bounded memory), stitched on the model's 20 ms frame grid; every
feature gets the time of the centre of its 25 ms receptive field.
"""
from __future__ import annotations

import hashlib
import json
import logging
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from kitlib.progress import tqdm

from kitlib.runtime import pick_device

log = logging.getLogger(__name__)


TINY_KINDS = ("wav2vec2", "hubert", "wavlm")


@dataclass(frozen=True)
class FrameGeometry:
    """Where the encoder's output frames sit in the input: its conv stack's stride and reach.

    For wav2vec 2.0 / HuBERT / WavLM (kernels 10,3,3,3,3,2,2, strides 5,2,2,2,2,2,2) frame ``i``
    sees samples ``[i*320, i*320 + 400)``: 25 ms windows every 20 ms (50 Hz) at 16 kHz.
    """

    conv_kernel: tuple[int, ...]
    conv_stride: tuple[int, ...]

    @property
    def hop_samples(self) -> int:
        return int(np.prod(self.conv_stride))

    @property
    def receptive_field(self) -> int:
        field, jump = 1, 1
        for kernel, stride in zip(self.conv_kernel, self.conv_stride):
            field += (kernel - 1) * jump
            jump *= stride
        return field

    def n_frames(self, n_samples: int) -> int:
        """Output length of the conv stack for an input of ``n_samples`` (no padding)."""
        length = int(n_samples)
        for kernel, stride in zip(self.conv_kernel, self.conv_stride):
            length = (length - kernel) // stride + 1 if length >= kernel else 0
        return length

    def centres_s(self, n_frames: int, *, sample_rate: int, start_time_s: float = 0.0) -> np.ndarray:
        """Time of the centre of each frame's receptive field (sample k spans [k, k+1)/sr)."""
        return start_time_s + (np.arange(n_frames) * self.hop_samples + self.receptive_field / 2) / sample_rate


@dataclass(frozen=True)
class AudioEncoder:
    """A speech encoder in eval mode, with the input normalisation it was trained with."""

    model: torch.nn.Module
    device: torch.device
    dtype: torch.dtype        # compute dtype: float32, or float16/bfloat16 under autocast
    sampling_rate: int
    do_normalize: bool        # zero-mean unit-variance per chunk (Wav2Vec2FeatureExtractor)
    geometry: FrameGeometry
    hidden_size: int
    num_layers: int
    path: Path | None = None  # the local folder it came from (None: built in memory)
    config_hash: str = ""

    @classmethod
    def from_model(cls, model: torch.nn.Module, *, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32, do_normalize: bool = True, sampling_rate: int = 16000,
                   path: Path | None = None, config_hash: str = "") -> AudioEncoder:
        """Wrap a transformers wav2vec2-family model (moved to ``device``, set to eval)."""
        config = model.config
        for attr in ("conv_kernel", "conv_stride", "hidden_size", "num_hidden_layers"):
            if not hasattr(config, attr):
                raise ValueError(f"{path or type(model).__name__}: model_type {config.model_type!r} is not a "
                                 f"wav2vec2-style encoder (its config has no {attr!r})")
        device = pick_device(device) if isinstance(device, str) else torch.device(device)
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"dtype must be float32, float16 or bfloat16, got {dtype}")
        return cls(model=model.to(device).eval(), device=device, dtype=dtype, sampling_rate=int(sampling_rate),
                   do_normalize=bool(do_normalize),
                   geometry=FrameGeometry(tuple(config.conv_kernel), tuple(config.conv_stride)),
                   hidden_size=int(config.hidden_size), num_layers=int(config.num_hidden_layers),
                   path=None if path is None else Path(path), config_hash=config_hash)


def _read_preprocessor(path: Path) -> tuple[bool, int]:
    """``do_normalize`` and ``sampling_rate`` from preprocessor_config.json, else config.json."""
    for name in ("preprocessor_config.json", "config.json"):
        file = path / name
        if file.is_file():
            conf = json.loads(file.read_text())
            if "do_normalize" in conf or "sampling_rate" in conf:
                return bool(conf.get("do_normalize", True)), int(conf.get("sampling_rate", 16000))
    log.warning("%s: no preprocessor_config.json with do_normalize; assuming the Wav2Vec2FeatureExtractor "
                "defaults (do_normalize=True, 16 kHz)", path)
    return True, 16000


def _config_hash(path: Path) -> str:
    digest = hashlib.sha256()
    for name in ("config.json", "preprocessor_config.json"):
        if (path / name).is_file():
            digest.update((path / name).read_bytes())
    return digest.hexdigest()[:16]


def load_audio_encoder(path: Path, *, device: torch.device | str = "cpu",
                       dtype: torch.dtype = torch.float32, normalize: bool | None = None) -> AudioEncoder:
    """Load a wav2vec2 / HuBERT / WavLM encoder from a local folder (``save_pretrained`` layout).

    A CTC checkpoint (e.g. wav2vec2-large-960h-lv60-self) loads as its bare encoder. ``dtype``
    float16/bfloat16 runs the forward pass under autocast (weights stay float32). ``normalize``:
    whether each chunk's waveform is scaled to zero mean / unit variance before the encoder; None =
    what the folder's preprocessor_config.json says (the reference code feeds the raw waveform: False).
    """
    from transformers import AutoModel

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"audio encoder folder {path} is missing or has no config.json: the kit never "
                                f"downloads weights; put a local copy of the model there (save_pretrained "
                                f"layout), or build a random-init stand-in with make_tiny_encoder()")
    do_normalize, sampling_rate = _read_preprocessor(path)
    do_normalize = do_normalize if normalize is None else bool(normalize)
    model = AutoModel.from_pretrained(path, local_files_only=True)
    encoder = AudioEncoder.from_model(model, device=device, dtype=dtype, do_normalize=do_normalize,
                                      sampling_rate=sampling_rate, path=path, config_hash=_config_hash(path))
    log.info("audio encoder %s: %s, %d layers x %d, %.1fM params, do_normalize=%s, on %s/%s", path,
             model.config.model_type, encoder.num_layers, encoder.hidden_size,
             sum(p.numel() for p in model.parameters()) / 1e6, do_normalize, encoder.device, str(dtype))
    return encoder


# Full-size architectures a rehearsal builds with random weights (``audio.weights: random``): the
# transformers config of each released checkpoint, written out here because nothing is downloaded.
_LARGE = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)
RANDOM_ARCHS: dict[str, tuple[str, dict[str, Any]]] = {
    # facebook/wav2vec2-large-960h-lv60(-self), the main system: layer-norm conv stack, pre-LN transformer
    "wav2vec2-large-lv60": ("wav2vec2", {**_LARGE, "feat_extract_norm": "layer", "do_stable_layer_norm": True,
                                         "conv_bias": True}),
    "wav2vec2-base": ("wav2vec2", {}),            # facebook/wav2vec2-base-960h: the library defaults
    "wavlm-large": ("wavlm", {**_LARGE, "feat_extract_norm": "layer", "do_stable_layer_norm": True,
                              "conv_bias": False}),
    "hubert-large": ("hubert", {**_LARGE, "feat_extract_norm": "layer", "do_stable_layer_norm": True,
                                "conv_bias": True}),
}


def random_encoder(arch: str, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                   normalize: bool | None = None, seed: int = 0) -> AudioEncoder:
    """The full-size ``arch`` (``RANDOM_ARCHS``) with RANDOM weights, built in memory from its config.

    For rehearsals only (``audio.weights: random``): the real shapes, memory and time of the
    encoder, features that mean nothing. ``normalize`` None = True (the feature extractor's default).
    """
    from transformers import HubertConfig, Wav2Vec2Config, WavLMConfig, AutoModel

    if arch not in RANDOM_ARCHS:
        raise ValueError(f"audio.random_arch {arch!r} unknown; valid: {', '.join(RANDOM_ARCHS)}")
    kind, sizes = RANDOM_ARCHS[arch]
    config = {"wav2vec2": Wav2Vec2Config, "wavlm": WavLMConfig, "hubert": HubertConfig}[kind](**sizes)
    torch.manual_seed(seed)
    model = AutoModel.from_config(config)
    encoder = AudioEncoder.from_model(model, device=device, dtype=dtype,
                                      do_normalize=True if normalize is None else bool(normalize),
                                      config_hash=f"random:{arch}")
    log.warning("audio encoder %s with RANDOM weights (audio.weights: random): %d layers x %d, %.1fM params; "
                "a rehearsal, its features carry no meaning", arch, encoder.num_layers, encoder.hidden_size,
                sum(p.numel() for p in model.parameters()) / 1e6)
    return encoder


def tiny_encoder_config(kind: str = "wav2vec2", **overrides: Any):
    """A small config of the real architecture: real conv schedule (50 Hz), tiny transformer.

    ``wav2vec2`` follows large-lv60k's layout (layer-norm conv stack, pre-LN transformer);
    ``hubert`` / ``wavlm`` their library defaults. ``overrides`` go to the config (e.g. the
    base/large sizes in the throughput benchmark).
    """
    from transformers import HubertConfig, Wav2Vec2Config, WavLMConfig

    sizes = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                 conv_dim=(32,) * 7, num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16)
    if kind == "wav2vec2":
        return Wav2Vec2Config(**{**sizes, "feat_extract_norm": "layer", "do_stable_layer_norm": True,
                                 "conv_bias": True, **overrides})
    if kind == "hubert":
        return HubertConfig(**{**sizes, **overrides})
    if kind == "wavlm":
        return WavLMConfig(**{**sizes, **overrides})
    raise ValueError(f"unknown encoder kind {kind!r}; expected one of {TINY_KINDS}")


def make_tiny_encoder(path: Path, *, kind: str = "wav2vec2", seed: int = 0) -> Path:
    """Save a random-init tiny encoder (see ``tiny_encoder_config``) plus its preprocessor config.

    For tests and the CPU demo only: its features are noise with the right shapes and timing.
    """
    from transformers import AutoModel, Wav2Vec2FeatureExtractor

    path = Path(path)
    torch.manual_seed(seed)
    model = AutoModel.from_config(tiny_encoder_config(kind))
    model.save_pretrained(path)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                             return_attention_mask=True).save_pretrained(path)
    log.info("tiny %s encoder (random init, seed %d) saved to %s", kind, seed, path)
    return path


# --------------------------------------------------------------------------------------------
# 3. encoding
# --------------------------------------------------------------------------------------------
def chunk_plan(n_samples: int, geometry: FrameGeometry, *, chunk_samples: int,
               overlap_samples: int) -> list[tuple[int, int, int, int]]:
    """Split ``n_samples`` into overlapping chunks and say which global frames each one keeps.

    Returns ``(start_sample, end_sample, first_kept_frame, end_kept_frame)`` per chunk. Chunks
    start on the frame grid (multiples of the hop), so chunk frame ``j`` is global frame
    ``start/hop + j``; neighbours hand over in the middle of their shared frames, so each kept
    frame has about ``overlap/2`` of context on every inner side. The fewest chunks that fit are
    spread evenly: neighbours share exactly ``overlap_samples`` and none is longer than
    ``chunk_samples`` by more than one hop, so no compute goes to a short tail chunk.
    """
    hop = geometry.hop_samples
    n_total = geometry.n_frames(n_samples)
    if n_samples <= chunk_samples:
        return [(0, n_samples, 0, n_total)]
    if overlap_samples < geometry.receptive_field + 2 * hop:
        raise ValueError(f"overlap of {overlap_samples} samples is too short: chunks must share at least "
                         f"{geometry.receptive_field + 2 * hop} samples to hand over on the frame grid")
    if chunk_samples - overlap_samples < hop:
        raise ValueError(f"chunk ({chunk_samples} samples) must be longer than the overlap ({overlap_samples}) "
                         f"by at least one hop ({hop})")
    n_chunks = -(-(n_samples - overlap_samples) // (chunk_samples - overlap_samples))
    span = n_samples - overlap_samples  # spread the chunks evenly, starting on the frame grid
    starts = [c * span // n_chunks // hop * hop for c in range(n_chunks)]
    ends = [start + overlap_samples for start in starts[1:]] + [n_samples]
    offsets = [s // hop for s in starts]
    counts = [geometry.n_frames(e - s) for s, e in zip(starts, ends)]
    bounds = [0] + [(offsets[c + 1] + offsets[c] + counts[c]) // 2 for c in range(len(starts) - 1)] + [n_total]
    plan = [(s, e, bounds[c], bounds[c + 1]) for c, (s, e) in enumerate(zip(starts, ends))]
    for c, (s, e, lo, hi) in enumerate(plan):  # every kept frame must exist in its chunk
        if not (offsets[c] <= lo <= hi <= offsets[c] + counts[c]):
            raise AssertionError(f"chunk plan broken at chunk {c}: keeps {lo}..{hi}, has "
                                 f"{offsets[c]}..{offsets[c] + counts[c]}")
    return plan


LayerSelection = int | tuple[int, ...] | None


def parse_layers(layers: str | int, num_layers: int) -> LayerSelection:
    """An audio layer selection: None (``"last"``: the final hidden state), ``k`` (``k`` / ``"lastk"``:
    the mean of the last ``k`` layers, the final one as ``last_hidden_state``), or a tuple of
    1-based transformer layers (``"1-4"``, ``"2,5,7"``: the mean of ``hidden_states[i]``, the
    residual stream after layer ``i``; ``"1-4"`` is the reference code's
    ``extract_features(num_layers=4)``, i.e. Hugging Face ``hidden_states[1:5]``)."""
    def bad() -> ValueError:
        return ValueError(f"layers must be 'last', k or 'lastk' (mean of the last k layers), a range 'a-b' or a "
                          f"set 'a,b,c' of layers in 1..{num_layers}; got {layers!r}")
    if layers == "last":
        return None
    if isinstance(layers, bool):
        raise bad()
    if isinstance(layers, (int, np.integer)):
        if 1 <= layers <= num_layers:
            return int(layers)
        raise bad()
    text = str(layers).strip().replace(" ", "")
    if text.startswith("last") and text[4:].isdigit():
        return parse_layers(int(text[4:]), num_layers)
    if text.isdigit():
        return parse_layers(int(text), num_layers)
    try:
        if "-" in text:
            lo, hi = (int(v) for v in text.split("-"))
            chosen = tuple(range(lo, hi + 1))
        else:
            chosen = tuple(sorted({int(v) for v in text.split(",")}))
    except ValueError:
        raise bad() from None
    if not chosen or chosen[0] < 1 or chosen[-1] > num_layers:
        raise bad()
    return chosen


_parse_layers = parse_layers  # the name earlier releases used


def _forward(encoder: AudioEncoder, samples: np.ndarray, last_k: LayerSelection) -> torch.Tensor:
    """Features (frames, D) float32 of one chunk; normalised as the feature extractor would."""
    x = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))
    if encoder.do_normalize:  # Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm
        x = (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-7)
    x = x.to(encoder.device)[None]
    autocast = (torch.autocast(device_type=encoder.device.type, dtype=encoder.dtype)
                if encoder.dtype != torch.float32 else nullcontext())
    with torch.inference_mode(), autocast:
        out = encoder.model(x, output_hidden_states=last_k is not None)
        hidden = _select_layers(out, last_k)[0]
    return hidden.float().cpu()


def _select_layers(out: Any, last_k: LayerSelection) -> torch.Tensor:
    """The (B, T, D) float32 features of a forward's output for a layer selection (``parse_layers``)."""
    if last_k is None:
        return out.last_hidden_state.float()
    if isinstance(last_k, tuple):   # explicit 1-based layers: hidden_states[i] is after layer i
        return torch.stack([out.hidden_states[i].float() for i in last_k]).mean(0)
    # transformers 5 returns the pre-LN residual stream as the final entry of pre-LN stacks
    # (wav2vec2-large); use last_hidden_state there so that k=1 is "last" on any version
    stack = [*out.hidden_states[-last_k:-1], out.last_hidden_state] if last_k > 1 else [out.last_hidden_state]
    return torch.stack([h.float() for h in stack]).mean(0)


def encode(waveform: np.ndarray, encoder: AudioEncoder, *, sample_rate: int = 16000, chunk_s: float = 30.0,
           overlap_s: float = 5.0, layers: str | int = "last", start_time_s: float = 0.0,
           progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Encode a mono waveform into ``(features (T, D) float32, times_s (T,) float64)``.

    The audio is cut into chunks of ``chunk_s`` seconds overlapping by ``overlap_s`` so memory is
    bounded whatever the length; each chunk contributes only its central frames (``overlap_s/2``
    of context dropped on each inner side) and the kept frames tile the whole-file frame grid.

    Guarantee: with ``chunk_s`` >= the audio length the result is the whole-file encoding,
    bit for bit. With several chunks the conv features are identical for a layer-norm conv stack
    (wav2vec2-large) but the per-chunk input normalisation, the group-norm conv stack of base-style
    models and the global self-attention all see a chunk instead of the file, so interior frames
    differ slightly (a few percent of the feature scale with 2-3 s of context, see the tests).

    ``layers``: ``"last"`` (the final hidden state) or ``k``: the mean of the outputs of the last
    ``k`` transformer layers as ``hidden_states`` gives them, the final one taken as
    ``last_hidden_state`` (after the closing layer norm of pre-LN stacks), so k=1 is ``"last"``; or
    explicit layers ``"a-b"`` / ``"a,b"`` (``parse_layers``). ``times_s`` is the centre of each frame's receptive
    field (12.5 ms + 20 ms * i for wav2vec2) plus ``start_time_s``.
    """
    if sample_rate != encoder.sampling_rate:
        raise ValueError(f"the encoder expects {encoder.sampling_rate} Hz audio, got {sample_rate} Hz")
    waveform = np.asarray(waveform, dtype=np.float32)
    if waveform.ndim != 1:
        raise ValueError(f"waveform must be mono (1-D), got shape {waveform.shape}")
    last_k = parse_layers(layers, encoder.num_layers)
    geometry = encoder.geometry
    plan = chunk_plan(len(waveform), geometry, chunk_samples=int(round(chunk_s * sample_rate)),
                      overlap_samples=int(round(overlap_s * sample_rate)))
    n_total = geometry.n_frames(len(waveform))
    features = np.zeros((n_total, encoder.hidden_size), dtype=np.float32)
    for start, end, lo, hi in tqdm(plan, desc="audio chunks", unit="chunk", leave=False,
                                   disable=not progress or len(plan) < 2):
        if hi <= lo:
            continue
        hidden = _forward(encoder, waveform[start:end], last_k)
        offset = start // geometry.hop_samples
        features[lo:hi] = hidden[lo - offset:hi - offset].numpy()
    times = geometry.centres_s(n_total, sample_rate=sample_rate, start_time_s=start_time_s)
    return features, times


def _forward_batch(encoder: AudioEncoder, chunks: list[np.ndarray], last_k: LayerSelection) -> list[torch.Tensor]:
    """``_forward`` of several chunks in one pass: each normalised on its own, zero-padded to the longest
    with an attention mask; per chunk its (frames, D) float32 features on the host."""
    if len(chunks) == 1:
        return [_forward(encoder, chunks[0], last_k)]
    lengths = [len(c) for c in chunks]
    x = torch.zeros(len(chunks), max(lengths), dtype=torch.float32)
    mask = torch.zeros(len(chunks), max(lengths), dtype=torch.long)
    for row, chunk in enumerate(chunks):
        c = torch.from_numpy(np.ascontiguousarray(chunk, dtype=np.float32))
        if encoder.do_normalize:  # as Wav2Vec2FeatureExtractor does, on each chunk's own samples
            c = (c - c.mean()) / torch.sqrt(c.var(unbiased=False) + 1e-7)
        x[row, :len(c)] = c
        mask[row, :len(c)] = 1
    autocast = (torch.autocast(device_type=encoder.device.type, dtype=encoder.dtype)
                if encoder.dtype != torch.float32 else nullcontext())
    with torch.inference_mode(), autocast:
        out = encoder.model(x.to(encoder.device, non_blocking=True), attention_mask=mask.to(encoder.device),
                            output_hidden_states=last_k is not None)
        hidden = _select_layers(out, last_k)   # as in ``_forward``: explicit layers ("1-4") too
    hidden = hidden.cpu()  # one copy to the host per batch
    return [hidden[row, :encoder.geometry.n_frames(n)] for row, n in enumerate(lengths)]


def encode_many(waveforms: list[np.ndarray], encoder: AudioEncoder, *, sample_rate: int = 16000,
                chunk_s: float = 30.0, overlap_s: float = 5.0, layers: str | int = "last",
                start_times_s: list[float] | None = None, batch_chunks: int = 8,
                progress: bool = False) -> list[tuple[np.ndarray, np.ndarray]]:
    """``encode`` of several waveforms (videos) at once: their chunks, longest first, go through the model
    ``batch_chunks`` at a time (padded, with an attention mask), so a GPU sees large batches.

    The chunks and the kept frames are those of ``encode``; padding changes nothing a chunk sees
    for models with a layer-norm conv stack (wav2vec2-large-lv60k, HuBERT / WavLM large: the
    masked positions are zeroed before the positional convolution and left out of attention), up
    to float rounding. Models with a group-norm conv stack (base-style, ``feat_extract_norm:
    group``) would mix the padding into their normalisation, so for them only chunks of equal
    length share a batch.
    """
    if sample_rate != encoder.sampling_rate:
        raise ValueError(f"the encoder expects {encoder.sampling_rate} Hz audio, got {sample_rate} Hz")
    if batch_chunks < 1:
        raise ValueError(f"batch_chunks must be >= 1, got {batch_chunks}")
    waveforms = [np.asarray(w, dtype=np.float32) for w in waveforms]
    if any(w.ndim != 1 for w in waveforms):
        raise ValueError("every waveform must be mono (1-D)")
    starts = list(start_times_s) if start_times_s is not None else [0.0] * len(waveforms)
    last_k = _parse_layers(layers, encoder.num_layers)
    geometry = encoder.geometry
    hop = geometry.hop_samples
    features = [np.zeros((geometry.n_frames(len(w)), encoder.hidden_size), np.float32) for w in waveforms]
    jobs = [(i, start, end, lo, hi) for i, w in enumerate(waveforms)
            for start, end, lo, hi in chunk_plan(len(w), geometry, chunk_samples=int(round(chunk_s * sample_rate)),
                                                 overlap_samples=int(round(overlap_s * sample_rate))) if hi > lo]
    jobs.sort(key=lambda job: job[1] - job[2])  # longest first: little padding within a batch
    padding_ok = getattr(encoder.model.config, "feat_extract_norm", "layer") == "layer"
    batches: list[list[tuple[int, int, int, int, int]]] = []
    for job in jobs:
        last = batches[-1] if batches else None
        if last and len(last) < batch_chunks and (padding_ok or last[0][2] - last[0][1] == job[2] - job[1]):
            last.append(job)
        else:
            batches.append([job])
    for batch in tqdm(batches, desc="audio chunk batches", unit="batch", leave=False,
                      disable=not progress or len(batches) < 2):
        hidden = _forward_batch(encoder, [waveforms[i][start:end] for i, start, end, _, _ in batch], last_k)
        for (i, start, _, lo, hi), h in zip(batch, hidden):
            features[i][lo:hi] = h[lo - start // hop:hi - start // hop].numpy()
    return [(f, geometry.centres_s(len(f), sample_rate=sample_rate, start_time_s=t0)) for f, t0 in zip(features, starts)]

