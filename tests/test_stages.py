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


# ----------------------------------------------------------------------------- FERPlus and chained Stage I (issue 14)


def _ferplus(root, rows):
    """A FERPlus release in small: fer2013new.csv (Usage, Image name, 10 vote columns) and the image folders."""
    from kitlib.visual.images import FERPLUS_SPLITS, FERPLUS_VOTES

    lines = ["Usage,Image name," + ",".join(FERPLUS_VOTES)]
    folders = {usage: folder for folder, usage in FERPLUS_SPLITS.values()}
    for i, (usage, votes, colour) in enumerate(rows):
        name = f"fer{i:07d}.png" if colour is not None else ""
        lines.append(f"{usage},{name}," + ",".join(map(str, votes)))
        if colour is not None:
            (root / folders[usage]).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (48, 48), colour).save(root / folders[usage] / name)
    for folder in folders.values():
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "fer2013new.csv").write_text("\n".join(lines) + "\n")


def test_ferplus_majority_vote_and_class_map(tmp_path):
    from kitlib.visual.images import ferplus_items, ferplus_majority

    #                neu hap sur sad ang dis fea con unk NF
    votes = np.array([[6, 2, 1, 0, 0, 0, 0, 0, 1, 0],     # neutral (single votes dropped: 6 of 8)
                      [0, 0, 5, 0, 0, 0, 5, 0, 0, 0],     # split 5/5: no majority
                      [1, 0, 0, 0, 4, 0, 0, 0, 0, 5],     # 1 dropped, NF 5 of 9 > half: not a face
                      [0, 0, 0, 0, 0, 0, 0, 7, 3, 0],     # contempt
                      [0, 1, 1, 1, 1, 1, 1, 1, 1, 2]])    # only one class left after dropping single votes
    np.testing.assert_array_equal(ferplus_majority(votes), [0, -1, 9, 7, 9])
    _ferplus(tmp_path, [("Training", [6, 2, 1, 0, 0, 0, 0, 0, 1, 0], (200, 0, 0)),
                        ("Training", [0, 7, 0, 0, 0, 0, 3, 0, 0, 0], (0, 200, 0)),      # happiness -> 4
                        ("Training", [0, 0, 0, 0, 0, 0, 0, 7, 3, 0], (0, 0, 200)),      # contempt -> Other
                        ("Training", [0, 0, 5, 0, 0, 0, 5, 0, 0, 0], (9, 9, 9)),        # no majority
                        ("Training", [0, 0, 0, 0, 0, 10, 0, 0, 0, 0], None),            # no image: skipped
                        ("PublicTest", [0, 0, 0, 2, 8, 0, 0, 0, 0, 0], (50, 50, 50)),   # anger -> 1
                        ("PrivateTest", [0, 0, 0, 0, 0, 0, 9, 1, 0, 0], (70, 70, 70))])  # fear -> 3
    train = ferplus_items(tmp_path, "train")
    assert [(p.name, y) for p, y in train] == [("fer0000000.png", 0), ("fer0000001.png", 4), ("fer0000002.png", 7)]
    assert [y for _, y in ferplus_items(tmp_path, "train", drop_contempt=True)] == [0, 4]
    assert [y for _, y in ferplus_items(tmp_path, "val")] == [1] and [y for _, y in ferplus_items(tmp_path, "test")] == [3]
    cfg = _cfg(tmp_path, "stage1.dataset=ferplus_basic", f"stage1.images_root={tmp_path}")
    assert [[y for _, y in part] for part in common.stage1_items(cfg)] == [[0, 4], [1]]
    (tmp_path / "FER2013Train" / "fer0000001.png").unlink()
    with pytest.raises(FileNotFoundError, match="fer0000001.png"):
        ferplus_items(tmp_path, "train")
    with pytest.raises(ValueError, match="split"):
        ferplus_items(tmp_path, "PublicTest")


def test_chained_stage1_starts_from_the_previous_backbone(tmp_path):
    """stage1.chain: a second Stage I (another image set) starts from the first one's saved backbone."""
    from kitlib.visual.backbones import load_backbone, read_record

    colours = {"Happiness": (220, 40, 40), "Sadness": (40, 40, 220)}
    for split in ("train", "val"):
        for name, colour in colours.items():
            for i in range(6):
                path = tmp_path / "images" / split / name / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (32, 32), tuple(int(c) + 3 * i for c in colour)).save(path)
    _ferplus(tmp_path / "ferplus", [(usage, votes, colour) for usage in ("Training", "PublicTest")
                                    for votes, colour in (([0, 9, 0, 0, 0, 0, 0, 0, 1, 0], (210, 50, 50)),
                                                          ([0, 0, 0, 9, 0, 0, 0, 0, 1, 0], (50, 50, 210)))] * 3)
    cfg = _cfg(tmp_path, "stage1.epochs=1", "stage1.batch_size=4", "stage1.image_size=28",
               "stage1.arch_overrides={depth: 2, embed_dim: 32, num_heads: 2}", "stage1.n_frozen_blocks=1",
               "stage1.dataset=ferplus", f"stage1.images_root={tmp_path / 'ferplus'}",
               "stage1.chain=[{dataset: class_folder, images_root: images, epochs: 2, lr_backbone: 0.001}]")
    steps = s02_stage1_train.chain_configs(cfg)
    assert [c.stage1.dataset for c in steps] == ["ferplus", "class_folder"] and steps[1].stage1.epochs == 2
    assert steps[1].stage1.lr_backbone == 0.001 and steps[1].stage1.arch == cfg.stage1.arch
    result = s02_stage1_train.run_stage1(cfg)
    assert [row["dataset"] for row in result["chain"]] == ["ferplus", "class_folder"]
    first, last = s02_stage1_train.chain_path(cfg, 0), s02_stage1_train.backbone_path(cfg)
    assert first.is_file() and last.is_file() and len(result["history"]) == 2
    record = read_record(last)
    assert record["chain_step"] == 1 and record["started_from"] == str(first) and record["dataset"] == "class_folder"
    # the second run started from the first's weights: its frozen blocks are the first run's, not the pretrained ones
    a, b = load_backbone(first)[0].state_dict(), load_backbone(last)[0].state_dict()
    pretrained = s02_stage1_train.pretrained_backbone(cfg).state_dict()
    assert torch.equal(a["blocks.0.attn.qkv.weight"], b["blocks.0.attn.qkv.weight"])
    assert not torch.equal(a["blocks.1.attn.qkv.weight"], b["blocks.1.attn.qkv.weight"])
    assert not torch.equal(a["norm.weight"], pretrained["norm.weight"])
    assert (cfg.run_dir / "reports" / "stage1_chain.csv").is_file()
    with pytest.raises(config.ConfigError, match="stage1.chain.0.*arch"):
        s02_stage1_train.chain_configs(_cfg(tmp_path, "stage1.chain=[{arch: resnet50}]"))


def test_training_curves_without_training():
    """stage1.train false (recipe 003's frozen CLIP) records no epochs: notebook 02's figure still draws."""
    import pandas as pd

    from kitlib import plots

    fig = plots.training_curves(pd.DataFrame([]), title="Stage I")
    assert len(fig.axes) == 1 and "nothing trained" in fig.axes[0].texts[0].get_text()


def test_a_data_problem_is_a_warning_once_per_run(tmp_path, caplog):
    """reports/data_problems.csv keeps each kind's problems; a problem the run met before is logged at INFO
    (the stage log), not warned again, and every notebook shows one line counting them."""
    import logging

    from kitlib import config
    from kitlib.stages import common

    cfg = config.load("params/demo.yaml", overrides=[f"run.outputs_root={tmp_path}"])
    mismatch = [("a.txt", "annotation has 608 lines, video decodes to 607 frames: dropped the last 1 line(s)")]
    with caplog.at_level(logging.INFO, logger="kitlib"):
        common.record_data_problems(cfg, "length", mismatch)
        common.record_data_problems(cfg, "video", [("v.mp4", "cannot be decoded: moov atom not found")])
        common.record_data_problems(cfg, "index", [])
        common.record_data_problems(cfg, "length", mismatch)        # a later stage meets it again
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned == ["a.txt: " + mismatch[0][1], "v.mp4: cannot be decoded: moov atom not found"]
    assert sum("608 lines" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO) == 1
    table = common.read_report(cfg, "data_problems")
    assert sorted(table["kind"]) == ["length", "video"] and len(table) == 2
    note = common.data_problems_note(cfg)
    text = getattr(note, "data", note)
    assert text.startswith("Data problems so far in this run: 2 (") and "1 length mismatch" in text
    assert "1 undecodable video" in text and "reports/data_problems.csv" in text
