"""Multi-scale square face crops from full frames (seed 000 sec. 3.2.1), zero-padded past the border.

A crop is a square of side ``s * max(box w, box h)`` centred on the face box; where it passes the
frame border it is zero-padded, which is the boundary artefact that PadAug (sec. 3.1.1) simulates
during Stage I.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


def crop_faces(frames: torch.Tensor, boxes: torch.Tensor, *, scales: Sequence[float], out_size: int,
               antialias: bool = True, max_supersample: int = 4) -> torch.Tensor:
    """Square multi-scale crops around face boxes, zero-padded past the frame border (sec. 3.2.1).

    ``frames`` (B, 3, H, W), uint8 0..255 or float 0..1; ``boxes`` (B, 4) x1, y1, x2, y2 in pixels
    (pixel i spans [i, i+1)). For each scale ``s`` the crop is centred on the box centre with side
    ``s * max(w, h)`` and resized to ``out_size``; rows whose box is not finite give zeros.
    Returns (B, S, 3, out_size, out_size), float32 for uint8 input, else the input's float dtype,
    on the frames' device. With ``antialias`` a crop larger than ``out_size`` is supersampled
    (up to ``max_supersample``^2 points per output pixel) and averaged, as an area resize would.
    """
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"frames must be (B, 3, H, W), got {tuple(frames.shape)}")
    if boxes.shape != (frames.shape[0], 4):
        raise ValueError(f"boxes must be ({frames.shape[0]}, 4), got {tuple(boxes.shape)}")
    dtype = torch.float32 if not frames.is_floating_point() else frames.dtype
    device = frames.device
    image = frames.to(dtype) / 255.0 if not frames.is_floating_point() else frames
    batch, _, height, width = image.shape
    n_scales = len(scales)

    boxes = boxes.to(device=device, dtype=torch.float32)
    valid = torch.isfinite(boxes).all(dim=1)
    boxes = torch.where(valid[:, None], boxes, torch.tensor([0.0, 0.0, 1.0, 1.0], device=device))
    centre = 0.5 * (boxes[:, :2] + boxes[:, 2:])                                        # (B, 2) x, y
    extent = (boxes[:, 2:] - boxes[:, :2]).amax(dim=1).clamp_min(1.0)                   # (B,)
    side = extent[:, None] * torch.tensor(list(scales), device=device, dtype=torch.float32)  # (B, S)

    factor = 1
    if antialias:
        factor = int(min(max_supersample, max(1, int(np.ceil(float(side.max()) / out_size)))))
    grid_size = out_size * factor
    steps = (torch.arange(grid_size, device=device, dtype=torch.float32) + 0.5) / grid_size - 0.5  # (G,)
    xs = centre[:, None, 0:1] + side[:, :, None] * steps                                 # (B, S, G) pixels
    ys = centre[:, None, 1:2] + side[:, :, None] * steps
    # pixel coordinates -> grid_sample's [-1, 1] with align_corners=False
    xs = 2.0 * xs / width - 1.0
    ys = 2.0 * ys / height - 1.0
    grid = torch.stack(torch.broadcast_tensors(xs[:, :, None, :], ys[:, :, :, None]), dim=-1)  # (B, S, G, G, 2)
    # the scales are stacked along the output height, so each frame is sampled once, never copied
    grid = grid.reshape(batch, n_scales * grid_size, grid_size, 2).to(dtype)
    crops = F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if factor > 1:
        crops = F.avg_pool2d(crops, factor)
    crops = crops.reshape(batch, 3, n_scales, out_size, out_size).transpose(1, 2)
    return crops * valid.to(crops.dtype)[:, None, None, None, None]


def normalize(crops: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Per-channel ``(crops - mean) / std`` over the channel axis (-3) of 0..1 crops."""
    mean_t = torch.as_tensor(mean, dtype=crops.dtype, device=crops.device).view(3, 1, 1)
    std_t = torch.as_tensor(std, dtype=crops.dtype, device=crops.device).view(3, 1, 1)
    return (crops - mean_t) / std_t
