"""Params -> calls: the wiring the notebooks rely on (kitlib.stages), on tiny fake layouts."""
import numpy as np
import pytest
import torch
from PIL import Image

from kitlib import config, data
from kitlib.stages import common, s02_stage1_train


def _cfg(tmp_path, *overrides):
    return config.load("params/demo.yaml", overrides=[f"data.root={tmp_path}", f"run.outputs_root={tmp_path / 'out'}",
                                                      *overrides])


def test_stage1_items_from_affwild2_cropped_frames(tmp_path):
    for split, txtid, labels in (("Train_Set", "1-30-64x64", [3, -1, 4]), ("Validation_Set", "2-30-64x64", [0, 5])):
        ann = tmp_path / "annotations" / split / f"{txtid}.txt"
        ann.parent.mkdir(parents=True, exist_ok=True)
        ann.write_text(data.HEADER + "\n" + "\n".join(map(str, labels)) + "\n")
        for i in range(1, len(labels) + 1):
            frame = tmp_path / "cropped_aligned" / txtid / f"{i:05d}.jpg"
            frame.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(frame)
    cfg = _cfg(tmp_path, "stage1.dataset=affwild2", "stage1.images_root=cropped_aligned")
    train, val = common.stage1_items(cfg)
    assert [label for _, label in train] == [3, 4] and [label for _, label in val] == [0, 5]
    with pytest.raises(config.ConfigError, match="affwild2"):
        common.stage1_items(_cfg(tmp_path, "stage1.dataset=fer2013"))


def test_amp_dtype_only_on_cuda():
    assert common.amp_dtype("bf16", torch.device("cpu")) is None
    assert common.amp_dtype("bf16", torch.device("cuda")) is torch.bfloat16
    with pytest.raises(config.ConfigError, match="bf16"):
        common.amp_dtype("bfloat", torch.device("cpu"))


def test_table1_states(tmp_path):
    cfg = _cfg(tmp_path)
    assert s02_stage1_train.table1_states(cfg)[0] == "moe_padaug"
    assert [s02_stage1_train.state_label(s) for s in ("pretrained", "mlp", "moe_padaug")] == \
        ["pretrained", "fine-tuned + MLP", "fine-tuned + MoE + PadAug"]
    with pytest.raises(config.ConfigError, match="unknown state"):
        s02_stage1_train.table1_states(_cfg(tmp_path, "stage1.table1_states=[moe_cutmix]"))
