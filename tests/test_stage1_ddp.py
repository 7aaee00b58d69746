"""Stage I under DistributedDataParallel: two CPU processes (gloo), as torchrun would launch them."""
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image

from kitlib.visual.backbones import build_backbone, load_backbone
from kitlib.visual.stage1 import train_stage1

TINY = dict(arch="vit_small_patch14_dinov2", img_size=28, overrides=dict(depth=2, embed_dim=32, num_heads=2))


def _items(root):
    items = []
    for i in range(32):
        label = 4 if i % 2 else 5
        path = root / "img" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((28, 28, 3), (220, 40, 40) if label == 4 else (40, 40, 220), np.uint8)).save(path)
        items.append((path, label))
    return items


def _worker(rank: int, world: int, root, items, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ["KIT_TEST_PORT"])
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)                                   # same initial weights on every rank
        out = root / "ddp" / "backbone.safetensors"
        result = train_stage1(backbone=build_backbone(**TINY), train_items=items[:24], val_items=items[24:],
                              epochs=2, batch_size=4, lr_backbone=1e-3, lr_head=1e-2, padaug=None,
                              n_frozen_blocks=1, image_size=28, device="cpu", out_path=out, seed=0)
        results[rank] = [h["val_f1"] for h in result["history"]]
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_train_stage1_ddp_two_cpu_processes(tmp_path):
    os.environ["KIT_TEST_PORT"] = str(29500 + os.getpid() % 1000)
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(2, tmp_path, _items(tmp_path), results), nprocs=2, join=True)
    assert results[0] == results[1]                          # validation is gathered over both ranks
    model, record = load_backbone(tmp_path / "ddp" / "backbone.safetensors")   # written once, by rank 0
    assert record["params"]["world_size"] == 2
    assert not any(k.startswith("module.") for k in model.state_dict())
