"""Seed 003: TCN visual branch, bi-directional cross-attention and label-prompt contrastive loss.

The window-level head of seed 003 (Byeon et al., 10th ABAW EXPR, 4th place): frozen CLIP ViT-L/14
face features go through a temporal convolutional network, frozen wav2vec 2.0 features through a
bottleneck adapter, the two streams query each other (bi-directional cross-attention,
``softmax(Q K^T / sqrt(d_k)) V``), and the fused per-frame representation is classified frame by
frame (the task is frame-level, so the head returns ``(B, W, C)`` logits, see ``kitlib.fusion.sequence``).
During training, the window's temporally pooled representation is aligned with CLIP-encoded label
prompts ("A face expressing {emotion}") by a contrastive (InfoNCE) loss, added to the frame loss
with weight ``contrastive_weight``.

What the poster states, as options (``fusion.head_options.tcn_prompt``):

- ``classify: pooled``: the fused window is "temporally pooled for final expression
  classification": one prediction per window (the masked mean over its frames, then the
  classifier); its training label is the majority of the window's valid frame labels, and a frame
  takes the mean of the predictions of the windows covering it (soft voting, as every window head).
  ``classify: frame`` (the kit's default) classifies every frame of the window.
- ``contrastive: symmetric``: CLIP's two directions, video -> text (each window against the C
  prompts) and text -> video (each class prompt present in the batch against the batch's windows,
  every window of that class a positive); ``video_to_text`` keeps the first alone.
- ``learnable_temperature``: the temperature is a parameter (CLIP's ``logit_scale``, log-space,
  starting at ``temperature``, scale clamped at 100) instead of a constant.

The TCN follows Bai, Kolter & Koltun (2018), "An empirical evaluation of generic convolutional and
recurrent networks for sequence modeling" (arXiv:1803.01271), sec. 3: residual blocks of two
weight-normalised dilated CAUSAL 1-D convolutions (ReLU, dropout after each), dilation ``2^i`` at
level ``i``, a 1x1 convolution on the residual path when the channel count changes. With kernel
``k`` and ``L`` levels the receptive field is ``1 + 2 (k - 1) (2^L - 1)`` frames (61 for k=3, L=4).

Prompt embeddings come from a CLIP text tower in a LOCAL folder (``prompt_embeddings``; the real
one is ``openai/clip-vit-large-patch14``); ``make_tiny_text_encoder`` writes a random-init tiny
stand-in with a working CLIP tokenizer for the tests and the CPU demo. With ``prompt_embeddings=None``
the contrastive term is off and the head trains on the frame criterion alone.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from kitlib.fusion.sequence import FrameCriterion, SafeCrossAttention, SequenceHead

log = logging.getLogger(__name__)


PROMPT_TEMPLATE = "A face expressing {emotion}"
CLASSIFY_MODES = ("frame", "pooled")                 # per-frame classifier | one per window (the poster)
CONTRASTIVE_MODES = ("video_to_text", "symmetric")   # CLIP loss directions
# Words put into the prompt for each class: the lower-cased class name, except "Other", which is
# not an emotion word; "another emotion" says what the class means (any state outside the seven).
PROMPT_WORDS: Mapping[str, str] = {"Other": "another emotion"}


# --------------------------------------------------------------------------------------------
# 1. temporal convolutional network (Bai et al. 2018)
# --------------------------------------------------------------------------------------------
class TemporalBlock(nn.Module):
    """Residual block: two weight-normed dilated causal convolutions, ``ReLU(x' + res(x))``."""

    def __init__(self, in_channels: int, out_channels: int, *, kernel_size: int, dilation: int, dropout: float):
        super().__init__()
        # Causal padding: pad only on the LEFT by (k - 1) * dilation frames, so output t sees
        # inputs t - (k-1) d ... t and never a later frame (Bai et al. pad both sides, then chomp
        # the right; padding one side is the same thing without the wasted outputs).
        self.left_pad = (kernel_size - 1) * dilation
        self.conv1 = weight_norm(nn.Conv1d(in_channels, out_channels, kernel_size, dilation=dilation))
        self.conv2 = weight_norm(nn.Conv1d(out_channels, out_channels, kernel_size, dilation=dilation))
        self.dropout = nn.Dropout(dropout)
        self.residual = nn.Conv1d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, C_in, T) -> (B, C_out, T); output ``t`` depends on inputs ``<= t`` only."""
        h = self.dropout(F.relu(self.conv1(F.pad(x, (self.left_pad, 0)))))
        h = self.dropout(F.relu(self.conv2(F.pad(h, (self.left_pad, 0)))))
        return F.relu(h + self.residual(x))


class TemporalConvNet(nn.Module):
    """A stack of ``TemporalBlock`` with dilation ``2^i``; (B, T, C_in) -> (B, T, C_out), causal."""

    def __init__(self, in_channels: int, channels: int, *, levels: int = 4, kernel_size: int = 3,
                 dropout: float = 0.1):
        super().__init__()
        if levels < 1 or kernel_size < 2:
            raise ValueError(f"a TCN needs levels >= 1 and kernel_size >= 2 (got {levels}, {kernel_size})")
        self.kernel_size, self.levels = kernel_size, levels
        self.blocks = nn.Sequential(*(
            TemporalBlock(in_channels if i == 0 else channels, channels, kernel_size=kernel_size,
                          dilation=2 ** i, dropout=dropout) for i in range(levels)))

    @property
    def receptive_field(self) -> int:
        """Frames that can influence one output: ``1 + 2 (k - 1) (2^L - 1)``."""
        return 1 + 2 * (self.kernel_size - 1) * (2 ** self.levels - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x.transpose(1, 2)).transpose(1, 2)


# --------------------------------------------------------------------------------------------
# 2. the head
# --------------------------------------------------------------------------------------------
class AudioAdapter(nn.Module):
    """Bottleneck adapter on frozen audio features, ``x + U GELU(D LN(x))``, then a projection to ``hidden``.

    ``U`` starts at zero, so at initialisation the adapter passes the frozen features through.
    """

    def __init__(self, audio_dim: int, hidden: int, *, bottleneck: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(audio_dim)
        self.down = nn.Linear(audio_dim, bottleneck)
        self.up = nn.Linear(bottleneck, audio_dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(audio_dim, hidden)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        adapted = audio + self.up(self.dropout(F.gelu(self.down(self.norm(audio)))))
        return self.proj(adapted)


class TCNPromptHead(SequenceHead):
    """Seed 003's head: TCN (visual) + adapter (audio) + bi-directional cross-attention, per-frame logits.

    ``forward(visual (B, W, Dv), audio (B, W, Da), visual_mask (B, W)) -> (B, W, C)``. Frames without
    a face (mask False) have their visual feature zeroed before and after the projection, and are
    masked keys when the audio queries the visual stream (``SafeCrossAttention``: a window without
    any face gives the audio branch unchanged, never NaN). ``training_loss`` adds
    ``contrastive_weight * prompt_contrastive_loss`` when ``prompt_embeddings`` (C, D) is given.
    ``classify`` / ``contrastive`` / ``learnable_temperature``: see the module docstring. Padded
    positions (``frame_mask`` False) are never attention keys and never pooled.
    """

    def __init__(self, *, visual_dim: int, audio_dim: int, hidden: int, dropout: float, num_classes: int,
                 tcn_levels: int = 4, tcn_kernel: int = 3, n_heads: int = 4,
                 prompt_embeddings: torch.Tensor | None = None, contrastive_weight: float = 0.1,
                 temperature: float = 0.07, classify: str = "frame", contrastive: str = "video_to_text",
                 learnable_temperature: bool = False):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if classify not in CLASSIFY_MODES:
            raise ValueError(f"classify must be one of {', '.join(CLASSIFY_MODES)}, got {classify!r}")
        if contrastive not in CONTRASTIVE_MODES:
            raise ValueError(f"contrastive must be one of {', '.join(CONTRASTIVE_MODES)}, got {contrastive!r}")
        self.classify, self.contrastive = classify, contrastive
        # CLIP's logit scale: log(1 / temperature), learnt when asked, a fixed buffer otherwise
        log_scale = torch.tensor(math.log(1.0 / temperature))
        if learnable_temperature:
            self.log_logit_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_logit_scale", log_scale)
        if prompt_embeddings is not None and tuple(prompt_embeddings.shape[:1]) != (num_classes,):
            raise ValueError(f"prompt_embeddings must be (num_classes={num_classes}, D), "
                             f"got {tuple(prompt_embeddings.shape)}")
        self.num_classes, self.contrastive_weight = num_classes, contrastive_weight
        self.visual_proj = nn.Linear(visual_dim, hidden)
        self.tcn = TemporalConvNet(hidden, hidden, levels=tcn_levels, kernel_size=tcn_kernel, dropout=dropout)
        self.audio_adapter = AudioAdapter(audio_dim, hidden, bottleneck=max(hidden // 4, 8), dropout=dropout)
        self.visual_to_audio = SafeCrossAttention(hidden, n_heads, dropout)   # visual queries, audio keys
        self.audio_to_visual = SafeCrossAttention(hidden, n_heads, dropout)   # audio queries, visual keys
        self.fuse = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.GELU(), nn.Dropout(dropout))
        self.classifier = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, num_classes))
        if prompt_embeddings is None:
            self.register_buffer("prompt_embeddings", None, persistent=False)
            self.prompt_proj = None
        else:
            # fixed (frozen CLIP text tower), not saved with the head: rebuilt from the text encoder
            self.register_buffer("prompt_embeddings", F.normalize(prompt_embeddings.detach().float(), dim=-1),
                                 persistent=False)
            self.prompt_proj = nn.Linear(hidden, prompt_embeddings.shape[1])

    @property
    def receptive_field(self) -> int:
        """Frames the visual TCN looks back over (causal)."""
        return self.tcn.receptive_field

    @property
    def temperature(self) -> float:
        """The contrastive temperature now (``1 / exp(log_logit_scale)``, the scale clamped at 100)."""
        return float(1.0 / self.log_logit_scale.detach().exp().clamp(max=100.0))

    def fused(self, visual: torch.Tensor, audio: torch.Tensor, visual_mask: torch.Tensor,
              frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The per-frame fused representation (B, W, hidden) that the classifier and the pooling use."""
        if visual.shape[:2] != audio.shape[:2] or visual.shape[:2] != visual_mask.shape:
            raise ValueError(f"visual {tuple(visual.shape)}, audio {tuple(audio.shape)} and visual_mask "
                             f"{tuple(visual_mask.shape)} must share (B, W)")
        frames = torch.ones_like(visual_mask, dtype=torch.bool) if frame_mask is None else frame_mask.bool()
        mask = visual_mask.bool() & frames
        keep = mask.unsqueeze(-1)
        visual = torch.where(keep, visual, torch.zeros((), dtype=visual.dtype, device=visual.device))
        v = self.tcn(self.visual_proj(visual) * keep.to(visual.dtype))            # (B, W, H), causal
        a = self.audio_adapter(audio)                                              # (B, W, H)
        v2a = self.visual_to_audio(v, a, frames)         # visual frames refined by the audio stream
        a2v = self.audio_to_visual(a, v, mask)           # audio frames refined by frames with a face
        return self.fuse(torch.cat([v2a, a2v], dim=-1))

    def forward(self, visual: torch.Tensor, audio: torch.Tensor, visual_mask: torch.Tensor,
                frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        fused = self.fused(visual, audio, visual_mask, frame_mask)
        if self.classify == "frame":
            return self.classifier(fused)
        frames = torch.ones_like(visual_mask, dtype=torch.bool) if frame_mask is None else frame_mask.bool()
        window_logits = self.classifier(masked_mean(fused, frames))                 # (B, C)
        return window_logits.unsqueeze(1).expand(-1, fused.shape[1], -1)          # every frame: its window's

    def pooled_embedding(self, fused: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        """Masked temporal mean of ``fused`` over ``frame_mask`` frames, projected to the prompt space (B, D)."""
        if self.prompt_proj is None:
            raise ValueError("this head has no prompt embeddings: the pooled prompt-space embedding is undefined")
        return self.prompt_proj(masked_mean(fused, frame_mask))

    def training_loss(self, visual: torch.Tensor, audio: torch.Tensor, visual_mask: torch.Tensor,
                      labels: torch.Tensor, criterion: FrameCriterion,
                      frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``criterion(logits, labels) + contrastive_weight * InfoNCE(pooled window, class prompts)``.

        ``classify: frame``: the criterion on every frame, and the contrastive term pools the
        window's labelled frames (label >= 0). ``classify: pooled``: the criterion on one prediction
        per window against its majority valid label, and the contrastive term uses the same pooled
        window (its frames). A window's target is its majority valid label (ties: the lower class
        index); windows without a valid label take no part; with none at all, the term is zero.
        """
        fused = self.fused(visual, audio, visual_mask, frame_mask)
        targets = majority_labels(labels, num_classes=self.num_classes)
        valid = labels >= 0
        if self.classify == "frame":
            loss, pool_mask = criterion(self.classifier(fused), labels), valid
        else:
            pool_mask = torch.ones_like(valid) if frame_mask is None else frame_mask.bool()
            loss = criterion(self.classifier(masked_mean(fused, pool_mask)), targets)
        if self.prompt_proj is None or self.contrastive_weight == 0:
            return loss
        has_label = valid.any(dim=1)
        if not bool(has_label.any()):
            return loss
        embedding = self.pooled_embedding(fused[has_label], pool_mask[has_label])
        scale = self.log_logit_scale.exp().clamp(max=100.0)
        contrastive = prompt_contrastive_loss(embedding, self.prompt_embeddings, targets[has_label],
                                              temperature=1.0 / scale, symmetric=self.contrastive == "symmetric")
        return loss + self.contrastive_weight * contrastive


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` (B, W, H) over the positions where ``mask`` (B, W) is True: (B, H) (0 if none)."""
    weights = mask.to(values.dtype).unsqueeze(-1)
    return (values * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def majority_labels(labels: torch.Tensor, *, num_classes: int) -> torch.Tensor:
    """Per window (row of ``labels`` (B, W), -1 = no label), its most frequent valid label (B,); -1 if none."""
    valid = labels >= 0
    counts = torch.zeros(labels.shape[0], num_classes, device=labels.device)
    counts.scatter_add_(1, labels.clamp(min=0).long(), valid.float())
    return torch.where(valid.any(dim=1), counts.argmax(dim=1), torch.full_like(counts[:, 0], -1).long())


def prompt_contrastive_loss(embedding: torch.Tensor, prompts: torch.Tensor, targets: torch.Tensor, *,
                            temperature: float | torch.Tensor, symmetric: bool = False) -> torch.Tensor:
    """InfoNCE of pooled window embeddings (N, D) against the C class prompts (C, D).

    CLIP-style logits ``s_nc = cos(e_n, p_c) / temperature``. Video -> text: the positive of window
    ``n`` is its class's prompt, the other C-1 prompts the negatives, ``CE(s_n., y_n)``. With
    ``symmetric``, the mean of that and text -> video: for each class ``c`` present among the
    targets, ``-mean_{n: y_n = c} log softmax_m(s_mc)_n`` over the N windows (every window of class
    ``c`` a positive, the others negatives), averaged over the classes present. ``temperature`` may
    be a tensor (a learnt one).
    """
    logits = F.normalize(embedding, dim=-1) @ F.normalize(prompts, dim=-1).T / temperature   # (N, C)
    targets = targets.long()
    video_to_text = F.cross_entropy(logits, targets)
    if not symmetric:
        return video_to_text
    log_p = torch.log_softmax(logits, dim=0)                      # over windows, per class prompt
    positive = F.one_hot(targets, logits.shape[1]).to(logits.dtype)  # (N, C)
    per_class = (log_p * positive).sum(0) / positive.sum(0).clamp(min=1.0)
    present = positive.sum(0) > 0
    text_to_video = -per_class[present].mean()
    return 0.5 * (video_to_text + text_to_video)


# --------------------------------------------------------------------------------------------
# 3. label prompts from a local CLIP text tower
# --------------------------------------------------------------------------------------------
def prompt_texts(classes: Sequence[str], *, template: str = PROMPT_TEMPLATE) -> list[str]:
    """One prompt per class: ``template`` with the lower-cased class name ("Other": ``PROMPT_WORDS``)."""
    return [template.format(emotion=PROMPT_WORDS.get(name, name.lower())) for name in classes]


def prompt_embeddings(path: Path, *, classes: Sequence[str], template: str = PROMPT_TEMPLATE,
                      device: torch.device | str = "cpu") -> torch.Tensor:
    """L2-normalised CLIP text embeddings (C, D) of the class prompts, from a LOCAL text-encoder folder.

    ``path`` is a transformers folder holding a CLIP text tower and its tokenizer: a full CLIP model
    (e.g. ``openai/clip-vit-large-patch14``, D = 768) or a ``CLIPTextModelWithProjection``. The
    embedding is the projected end-of-text token (``text_embeds``), as CLIP scores images with it.
    """
    from transformers import AutoTokenizer, CLIPTextModelWithProjection

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"text encoder folder {path} is missing or has no config.json: the kit never downloads weights; "
            f"put a local copy of a CLIP model there (save_pretrained layout with its tokenizer, e.g. "
            f"openai/clip-vit-large-patch14), or build a random-init stand-in with make_tiny_text_encoder()")
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = CLIPTextModelWithProjection.from_pretrained(path, local_files_only=True).to(device).eval()
    texts = prompt_texts(classes, template=template)
    tokens = tokenizer(texts, padding=True, return_tensors="pt").to(device)
    with torch.no_grad():
        embeds = model(**tokens).text_embeds.float()
    log.info("prompt embeddings from %s: %d prompts (e.g. %r), dim %d", path, len(texts), texts[0], embeds.shape[1])
    return F.normalize(embeds, dim=-1)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte -> printable unicode character table (the base alphabet of byte-level BPE)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    codes, extra = printable[:], 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes)))


def _tiny_clip_vocab(words: Sequence[str]) -> tuple[dict[str, int], list[str]]:
    """A CLIP-format BPE vocabulary and merges: every byte (+ word-final form) plus ``words`` as whole tokens.

    Laid out like CLIP's: 256 byte symbols, the same with ``</w>``, the merged tokens in merge
    order, then ``<|startoftext|>`` and ``<|endoftext|>`` last (the text tower pools at the
    highest id, the end-of-text token). Each word is merged left to right, so it encodes as one token.
    """
    byte_symbol = _bytes_to_unicode()
    base = list(byte_symbol.values())
    vocab_list = base + [b + "</w>" for b in base]
    known, merges = set(vocab_list), []
    for word in sorted(set(words)):
        symbols = [byte_symbol[b] for b in word.encode("utf-8")]       # one symbol per byte
        symbols[-1] += "</w>"
        current = symbols[0]
        for nxt in symbols[1:]:
            merged = current + nxt
            if merged not in known:
                merges.append(f"{current} {nxt}")
                vocab_list.append(merged)
                known.add(merged)
            current = merged
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(vocab_list)}, merges


def make_tiny_text_encoder(path: Path, *, seed: int, classes: Sequence[str] | None = None,
                           template: str = PROMPT_TEMPLATE) -> Path:
    """Save a random-init tiny ``CLIPTextModelWithProjection`` and a working CLIP tokenizer to ``path``.

    For tests and the CPU demo only (its embeddings are random but fixed by ``seed``). The folder
    has the layout of a real CLIP folder (config.json, weights, vocab.json, merges.txt, tokenizer
    files) and loads through ``prompt_embeddings`` exactly like ``openai/clip-vit-large-patch14``.
    The vocabulary is the byte alphabet plus the words of the class prompts (``classes``, default
    ``kitlib.CLASSES``), so any text tokenizes and the prompts are one token per word. The folder
    is written beside ``path`` and renamed into place, so it is complete or absent; an existing
    non-empty ``path`` is refused.
    """
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

    from kitlib import CLASSES

    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise FileExistsError(f"{path} already exists and is not an empty folder: not overwriting it with a "
                              f"tiny text encoder")
    path.parent.mkdir(parents=True, exist_ok=True)
    words = " ".join(prompt_texts(classes or CLASSES, template=template)).lower().split()
    vocab, merges = _tiny_clip_vocab(words)
    config = CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=2, max_position_embeddings=77, projection_dim=16,
                            bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                            pad_token_id=vocab["<|endoftext|>"])
    torch.manual_seed(seed)
    model = CLIPTextModelWithProjection(config)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    try:
        (tmp / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
        (tmp / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
        CLIPTokenizer(vocab=str(tmp / "vocab.json"), merges=str(tmp / "merges.txt")).save_pretrained(tmp)
        model.save_pretrained(tmp)
        os.chmod(tmp, 0o755)                              # mkdtemp makes 0700
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("tiny CLIP text encoder (random init, seed %d, vocab %d) saved to %s", seed, len(vocab), path)
    return path
