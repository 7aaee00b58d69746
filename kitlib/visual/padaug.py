"""Padding-aware augmentation, PadAug (seed 000, sec. 3.1.1, Fig. 3).

A large face crop (scale 1.2-1.5) near the frame edge reaches past the image, and the part outside
is filled black. PadAug shows Stage I that pattern on clean FER images: with probability ``p`` it
shifts/scales the content slightly (``jitter``) and blacks out a bar along one side (``left``,
``right``, ``top``, ``bottom``) or two adjacent sides (``corner``), each bar up to ``max_frac`` of
the image size. It works on one image (C, H, W) or a batch (B, C, H, W), uint8 or float, drawing
per-image parameters at once and applying them with masks and one ``grid_sample`` (no per-image loop).
Apply it before normalisation, so that the bars are black pixels (0).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


PAD_MODES: tuple[str, ...] = ("left", "right", "top", "bottom", "corner")
_CORNERS: tuple[str, ...] = ("top-left", "top-right", "bottom-left", "bottom-right")


@dataclass(frozen=True)
class PadInfo:
    """What PadAug did to one image: the mode and the bar widths in pixels (0 = no bar)."""

    applied: bool
    mode: str            # "none", "left", ..., "corner-top-left", ...
    left: int
    right: int
    top: int
    bottom: int
    scale: float         # content zoom (1 = none)
    shift_x: float       # content shift, fraction of the width
    shift_y: float


class PadAug(torch.nn.Module):
    """Random black border bars + small content jitter, simulating padded large face crops."""

    def __init__(self, p: float = 0.5, max_frac: float = 0.3, jitter: float = 0.05,
                 modes: tuple[str, ...] = PAD_MODES, *, min_frac: float = 0.05):
        super().__init__()
        unknown = set(modes) - set(PAD_MODES)
        if unknown or not modes:
            raise ValueError(f"PadAug modes {sorted(unknown) or '()'} invalid; choose from {PAD_MODES}")
        if not 0.0 <= p <= 1.0 or not 0.0 <= min_frac <= max_frac < 1.0 or not 0.0 <= jitter < 0.5:
            raise ValueError(f"PadAug needs 0<=p<=1, 0<=min_frac<=max_frac<1, 0<=jitter<0.5; got p={p}, "
                             f"min_frac={min_frac}, max_frac={max_frac}, jitter={jitter}")
        self.p, self.max_frac, self.min_frac, self.jitter, self.modes = p, max_frac, min_frac, jitter, tuple(modes)

    def extra_repr(self) -> str:
        return (f"p={self.p}, max_frac={self.max_frac}, min_frac={self.min_frac}, jitter={self.jitter}, "
                f"modes={self.modes}")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.sample(images)[0]

    def sample(self, images: torch.Tensor, generator: torch.Generator | None = None, *,
               force_mode: str | list[str] | None = None) -> tuple[torch.Tensor, list[PadInfo]]:
        """Augment and also return what was done to each image (for previews and tests).

        ``generator`` (a CPU ``torch.Generator``) makes the draw reproducible; without it the global
        torch RNG is used, so ``torch.manual_seed`` fixes the result. ``force_mode`` applies the given
        mode (one for all, or one per image) with probability 1, as in the Fig. 3 preview.
        """
        single = images.dim() == 3
        batch = images.unsqueeze(0) if single else images
        if batch.dim() != 4:
            raise ValueError(f"PadAug takes (C,H,W) or (B,C,H,W) images, got shape {tuple(images.shape)}")
        n, _, height, width = batch.shape
        g = {"generator": generator}
        # --- per-image parameters, drawn at once on the CPU --------------------------------------
        applied = torch.rand(n, **g) < self.p
        mode_idx = torch.randint(len(self.modes), (n,), **g)
        corner_idx = torch.randint(len(_CORNERS), (n,), **g)
        frac = self.min_frac + (self.max_frac - self.min_frac) * torch.rand(n, 2, **g)   # (x, y) bar sizes
        jit = (2 * torch.rand(n, 3, **g) - 1) * self.jitter                                 # scale, dx, dy
        mode_id = _mode_ids(self.modes)[mode_idx]
        if force_mode is not None:
            forced = [force_mode] * n if isinstance(force_mode, str) else list(force_mode)
            if len(forced) != n or set(forced) - set(PAD_MODES):
                raise ValueError(f"force_mode must be one of {PAD_MODES} or a list of {n} of them, got {force_mode}")
            mode_id, applied = _mode_ids(forced), torch.ones(n, dtype=torch.bool)
        corner = mode_id == PAD_MODES.index("corner")
        on_left = corner_idx % 2 == 0                 # _CORNERS: top-left, top-right, bottom-left, bottom-right
        on_top = corner_idx < 2
        sides = torch.stack([mode_id == 0, mode_id == 1, mode_id == 2, mode_id == 3], 1)  # left right top bottom
        sides |= corner[:, None] & torch.stack([on_left, ~on_left, on_top, ~on_top], 1)
        bar_w = torch.round(frac[:, 0] * width).clamp(min=1)
        bar_h = torch.round(frac[:, 1] * height).clamp(min=1)
        bars = sides * torch.stack([bar_w, bar_w, bar_h, bar_h], 1)       # left, right, top, bottom in pixels
        names = [f"corner-{_CORNERS[c]}" if m == PAD_MODES.index("corner") else PAD_MODES[m]
                 for m, c in zip(mode_id.tolist(), corner_idx.tolist())]
        bars[~applied] = 0
        jit[~applied] = 0
        # --- content jitter on the chosen images, then the black bars ----------------------------
        out = batch.clone()
        chosen = applied.nonzero().squeeze(1)
        if self.jitter > 0 and len(chosen):
            out[chosen.to(batch.device)] = _shift_scale(batch[chosen.to(batch.device)], jit[chosen])
        cols = torch.arange(width)
        rows = torch.arange(height)
        left, right, top, bottom = (bars[:, k, None] for k in range(4))
        mask = ((cols < left) | (cols >= width - right))[:, None, None, :] \
            | ((rows < top) | (rows >= height - bottom))[:, None, :, None]   # (B, 1, H, W)
        out = out.masked_fill(mask.to(batch.device), 0)
        info = [PadInfo(bool(a), name if a else "none", *map(int, b.tolist()), 1.0 + float(j[0]), float(j[1]),
                        float(j[2])) for a, name, b, j in zip(applied.tolist(), names, bars, jit)]
        return (out[0] if single else out), info


def _mode_ids(modes: tuple[str, ...] | list[str]) -> torch.Tensor:
    """Index of each mode name in ``PAD_MODES``."""
    return torch.tensor([PAD_MODES.index(m) for m in modes], dtype=torch.long)


def _shift_scale(images: torch.Tensor, jit: torch.Tensor) -> torch.Tensor:
    """Zoom each image by ``1 + jit[:, 0]`` and shift it by ``jit[:, 1:]`` of its size (edge pixels repeat)."""
    n = len(images)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / (1.0 + jit[:, 0])
    theta[:, :, 2] = -2.0 * jit[:, 1:]                       # normalised coords span 2 per image side
    work = images.float()
    grid = F.affine_grid(theta.to(images.device, work.dtype), list(work.shape), align_corners=False)
    warped = F.grid_sample(work, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if images.dtype.is_floating_point:
        return warped.to(images.dtype)
    info = torch.iinfo(images.dtype)
    return warped.round().clamp(info.min, info.max).to(images.dtype)


def preview_grid(images: torch.Tensor, *, padaug: PadAug | None = None, n_per_image: int = 1,
                 seed: int = 0, padding: int = 2) -> torch.Tensor:
    """Fig. 3: originals in the top row, ``n_per_image`` rows of PadAug'ed copies below.

    Modes cycle over the augmented cells so every mode is shown; returns one (C, H', W') image of
    the input dtype, ready for ``plt.imshow(grid.permute(1, 2, 0))``.
    """
    from torchvision.utils import make_grid

    padaug = padaug or PadAug()
    n = len(images)
    generator = torch.Generator().manual_seed(seed)
    rows = [images]
    for r in range(n_per_image):
        modes = [padaug.modes[(r * n + i) % len(padaug.modes)] for i in range(n)]
        rows.append(padaug.sample(images, generator, force_mode=modes)[0])
    grid = make_grid(torch.cat(rows).float(), nrow=n, padding=padding, pad_value=255 if not
                     images.dtype.is_floating_point else 1.0)
    return grid.to(images.dtype)


def bar_fraction(info: list[PadInfo], height: int, width: int) -> float:
    """Mean fraction of the image area blacked out by the bars (a sanity figure for notebook 01)."""
    if not info:
        return 0.0
    areas = [(i.left + i.right) * height + (i.top + i.bottom) * width - (i.left + i.right) * (i.top + i.bottom)
             for i in info]
    return float(sum(areas)) / (len(info) * height * width)


PADAUG_STYLES: tuple[str, ...] = ("kit", "authors")
_REFERENCE_PATTERNS: tuple[str, ...] = ("left", "right", "top", "bottom", "corner-top-left", "corner-bottom-left",
                                        "corner-top-right", "corner-bottom-right")


class ReferencePadAug(torch.nn.Module):
    """PadAug as the reference code draws it (``RandomBlackPadShift``).

    With probability ``p``: one of 8 patterns, uniformly: a bar on one of the 4 sides, or an
    L-shaped pair of bars at one of the 4 corners (so corners are half of the applied cases). A
    side bar covers ``U(min_bar_frac, max_area_frac)`` of the side; an L's two bars ``v`` (width
    share) and ``h`` (height share) are drawn from the same range until the L covers
    ``v + h - v h <= max_area_frac`` of the image (50 tries, else 0.6 ``max_area_frac`` each, at
    most 0.15). Before the bars are drawn the content is shifted 1..``max_shift`` pixels away from
    each bar (``max_shift = clip(round(max_shift_frac * min(H, W)), 1, 10)``), the vacated strip
    black. Works on one image (C, H, W), uint8 or float, before normalisation; batches image by image.
    """

    def __init__(self, p: float = 0.6, max_area_frac: float = 0.2, min_bar_frac: float = 0.03,
                 max_shift_frac: float = 0.02):
        super().__init__()
        if not 0.0 <= p <= 1.0 or not 0.0 < min_bar_frac <= max_area_frac < 1.0 or max_shift_frac < 0:
            raise ValueError(f"ReferencePadAug needs 0<=p<=1, 0<min_bar_frac<=max_area_frac<1, max_shift_frac>=0; "
                             f"got p={p}, min_bar_frac={min_bar_frac}, max_area_frac={max_area_frac}")
        self.p, self.max_area_frac, self.min_bar_frac, self.max_shift_frac = p, max_area_frac, min_bar_frac, max_shift_frac
        self.modes = _REFERENCE_PATTERNS   # what the Fig. 3 preview cycles through

    def extra_repr(self) -> str:
        return (f"p={self.p}, max_area_frac={self.max_area_frac}, min_bar_frac={self.min_bar_frac}, "
                f"max_shift_frac={self.max_shift_frac}")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.sample(images)[0]

    def _uniform(self, g: torch.Generator | None) -> float:
        return self.min_bar_frac + (self.max_area_frac - self.min_bar_frac) * float(torch.rand(1, generator=g))

    def _l_fracs(self, g: torch.Generator | None) -> tuple[float, float]:
        for _ in range(50):
            v, h = self._uniform(g), self._uniform(g)
            if v + h - v * h <= self.max_area_frac:
                return v, h
        fallback = min(self.max_area_frac * 0.6, 0.15)
        return fallback, fallback

    def sample(self, images: torch.Tensor, generator: torch.Generator | None = None, *,
               force_mode: str | list[str] | None = None) -> tuple[torch.Tensor, list[PadInfo]]:
        """Augment one image (C, H, W) or each image of a batch; also return what was done (``PadInfo``).
        ``force_mode`` (one pattern, or one per image) applies that pattern with probability 1."""
        if images.dim() == 4:
            forced = [force_mode] * len(images) if force_mode is None or isinstance(force_mode, str) else force_mode
            outs = [self.sample(image, generator, force_mode=f) for image, f in zip(images, forced)]
            return torch.stack([o[0] for o in outs]), [o[1][0] for o in outs]
        if images.dim() != 3:
            raise ValueError(f"ReferencePadAug takes (C,H,W) or (B,C,H,W) images, got shape {tuple(images.shape)}")
        g = generator
        _, height, width = images.shape
        if force_mode is not None and force_mode not in _REFERENCE_PATTERNS:
            raise ValueError(f"force_mode must be one of {_REFERENCE_PATTERNS}, got {force_mode!r}")
        skip = float(torch.rand(1, generator=g)) > self.p and force_mode is None
        if skip or height < 8 or width < 8:
            return images, [PadInfo(False, "none", 0, 0, 0, 0, 1.0, 0.0, 0.0)]
        pattern = _REFERENCE_PATTERNS[int(torch.randint(len(_REFERENCE_PATTERNS), (1,), generator=g))]
        pattern = force_mode or pattern
        max_shift = max(1, min(int(round(self.max_shift_frac * min(width, height))), 10))

        def shift() -> int:
            return int(torch.randint(1, max_shift + 1, (1,), generator=g))

        if pattern.startswith("corner"):
            v, h = self._l_fracs(g)
        else:
            v = h = self._uniform(g)
        bar_w = max(1, min(int(round(v * width)), width - 1))
        bar_h = max(1, min(int(round(h * height)), height - 1))
        left = bar_w if pattern in ("left", "corner-top-left", "corner-bottom-left") else 0
        right = bar_w if pattern in ("right", "corner-top-right", "corner-bottom-right") else 0
        top = bar_h if pattern in ("top", "corner-top-left", "corner-top-right") else 0
        bottom = bar_h if pattern in ("bottom", "corner-bottom-left", "corner-bottom-right") else 0
        dx = shift() if left else -shift() if right else 0     # content moves away from the bar
        dy = shift() if top else -shift() if bottom else 0
        out = torch.zeros_like(images)
        src_x, dst_x = slice(max(-dx, 0), width - max(dx, 0)), slice(max(dx, 0), width - max(-dx, 0))
        src_y, dst_y = slice(max(-dy, 0), height - max(dy, 0)), slice(max(dy, 0), height - max(-dy, 0))
        out[:, dst_y, dst_x] = images[:, src_y, src_x]
        if left:
            out[:, :, :left] = 0
        if right:
            out[:, :, width - right:] = 0
        if top:
            out[:, :top, :] = 0
        if bottom:
            out[:, height - bottom:, :] = 0
        return out, [PadInfo(True, pattern, left, right, top, bottom, 1.0, dx / width, dy / height)]


def build_padaug(style: str, *, p: float, max_frac: float) -> torch.nn.Module:
    """The PadAug of ``style``: ``kit`` (``PadAug``, bars up to ``max_frac`` of a side) or ``authors``
    (``ReferencePadAug``, at most ``max_frac`` of the area)."""
    if style == "kit":
        return PadAug(p=p, max_frac=max_frac)
    if style == "authors":
        return ReferencePadAug(p=p, max_area_frac=max_frac)
    raise ValueError(f"PadAug style must be one of {PADAUG_STYLES}, got {style!r}")
