"""Preflight: a broken setup gets a ✗ with its fix for each problem and a non-zero exit, before any work."""
import pytest
from transformers import Dinov2Config, Dinov2Model

from kitlib import CLASSES, config, data, run
from kitlib.tools import doctor

TINY_ARCH = ["stage1.arch=vit_small_patch14_dinov2", "stage1.image_size=56",
             "stage1.arch_overrides={depth: 2, embed_dim: 32, num_heads: 2}"]


ORGANISERS_FILES = ("names_of_videos_in_each_test_set/Expression_Recognition_Challenge_test_set_release.txt",
                    "prediction_files_format/ABAW_Expr_test_set_sample.txt")


def fake_release(root, *, train=("a", "b"), val=("c",), test=("d",), videos=("a", "b", "c", "d"), template=("d",)):
    """The release's layout with empty video files: enough for the index (nothing is decoded). The test-set
    files keep the organisers' names (params/abaw10.yaml finds them by pattern)."""
    for name in videos:
        (root / "videos" / "batch1").mkdir(parents=True, exist_ok=True)
        (root / "videos" / "batch1" / f"{name}.mp4").write_bytes(b"")
    for split, names in (("Train_Set", train), ("Validation_Set", val)):
        (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
        for name in names:
            (root / "annotations" / split / f"{name}.txt").write_text(data.HEADER + "\n" + "0\n" * 10)
    names, sample = (root / "test" / n for n in ORGANISERS_FILES)  # as unpacked from the organisers' archives
    names.parent.mkdir(parents=True, exist_ok=True)
    sample.parent.mkdir(parents=True, exist_ok=True)
    names.write_text("\n".join(test) + "\n")
    sample.write_text("image_location," + ",".join(CLASSES) + "\n"
                      + "".join(f"{n}/{i:05d}.jpg,\n" for n in template for i in range(1, 6)))


@pytest.fixture(autouse=True)
def empty_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))


def items_for(tmp_path, *extra):
    return [f"data.root={tmp_path / 'release'}", "data.annotations_dir=annotations",
            f"run.outputs_root={tmp_path / 'outputs'}", "run.device=cpu",
            "stage1.train=false", f"audio.encoder={tmp_path / 'no_encoder'}", *extra]


def statuses(checks):
    return {f"{c.area} {c.what}": c.status for c in checks}


def test_broken_setup_names_every_problem_with_its_fix(tmp_path, capsys):
    fake_release(tmp_path / "release", videos=("a", "c", "d"), template=("d", "e"))     # b's video missing; e extra
    items = items_for(tmp_path, "stage1.weights=facebook/dinov2-large", "run.name=broken")
    assert doctor.main(["params/abaw10.yaml", *items, "--fast"]) == 1
    out = capsys.readouterr().out
    assert "✗ weights stage1.weights" in out and "kitlib.tools.weights fetch" in out
    assert "✗ weights audio.encoder" in out
    assert "✗ data videos" in out and "b.txt" in out and "fix: add the missing videos" in out
    assert "✗ data template" in out and "['e']" in out
    assert out.rstrip().endswith("problem(s) to fix before this run")


def test_good_release_passes_and_the_runner_stops_on_a_broken_one(tmp_path, monkeypatch, capsys):
    fake_release(tmp_path / "release")
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                             image_size=56, patch_size=14)).save_pretrained(tmp_path / "dinov2-hf")
    from kitlib.audio import make_tiny_encoder

    make_tiny_encoder(tmp_path / "enc")
    items = items_for(tmp_path, f"stage1.weights={tmp_path / 'dinov2-hf'}", f"audio.encoder={tmp_path / 'enc'}",
                      "stage1.amp=none", "visual.amp=none", "audio.amp=none", "fusion.heads=[gated]", *TINY_ARCH)
    cfg = config.load("params/abaw10.yaml", overrides=items)
    checks = doctor.preflight(cfg)
    assert all(c.status != doctor.FAIL for c in checks), doctor.table(checks)
    got = statuses(checks)
    assert got["weights stage1.weights"] == got["data videos"] == got["data template"] == doctor.OK
    # the same HF checkpoint against a deeper arch: refused from the tensor names alone
    deeper = config.load("params/abaw10.yaml", overrides=items + ["stage1.arch_overrides={depth: 3, embed_dim: 32, num_heads: 2}"])
    bad = next(c for c in doctor.preflight(deeper, fast=False) if c.what == "stage1.weights")
    assert bad.status == doctor.FAIL and "lacks" in bad.detail
    # the runner's fast preflight stops before making the run folder
    assert run.main(["params/abaw10.yaml", *items, "stage1.weights=nowhere/model.safetensors"]) == 2
    assert "✗ weights stage1.weights" in capsys.readouterr().err
    assert not (cfg.run_dir / "params.yaml").exists()


def test_disk_check_fails_when_the_features_do_not_fit(tmp_path, monkeypatch):
    fake_release(tmp_path / "release")
    cfg = config.load("params/abaw10.yaml", overrides=items_for(tmp_path))
    assert doctor.estimate_feature_bytes(cfg) == (3 * 10 + 5) * (1024 * 4 + 1024 * (1 + len(cfg.audio.ablation_windows_total_s))) * 2
    monkeypatch.setattr(doctor.shutil, "disk_usage", lambda p: type("U", (), {"free": 1000})())
    (check,) = doctor._disk(cfg)
    assert check.status == doctor.FAIL and "run.outputs_root" in check.fix


@pytest.mark.parametrize("line,pins", [("torch==2.11.0", {"torch": "2.11.0"}),
                                       ("decord==0.6.0; platform_machine == 'never'", {}),
                                       ("av==18.1.0  # comment", {"av": "18.1.0"})])
def test_requirement_pins_follow_environment_markers(tmp_path, line, pins):
    (tmp_path / "requirements.txt").write_text(line + "\n")
    assert doctor.requirement_pins(tmp_path) == pins


def test_abaw10_finds_the_organisers_files_by_their_own_names(tmp_path):
    fake_release(tmp_path / "release")
    cfg = config.load("params/abaw10.yaml", overrides=items_for(tmp_path))
    assert cfg.test_names_path().name == "Expression_Recognition_Challenge_test_set_release.txt"
    assert cfg.data_path(cfg.data.test_template).name == "ABAW_Expr_test_set_sample.txt"
    assert [t.txtid for t in data.discover(cfg.path(cfg.data.root), annotations_dir="annotations",
                                           test_names=cfg.test_names_path()).split("Test_Set")] == ["d"]
    # another edition's prefix (CVPR_6th_...) is found too; two templates is a ✗ naming both
    sample = cfg.data_path(cfg.data.test_template)
    sample.rename(sample.with_name("CVPR_6th_ABAW_Expr_test_set_sample.txt"))
    assert statuses(doctor._data(cfg))["data template"] == doctor.OK
    (sample.parent / "ABAW_Expr_test_set_sample.txt").write_text("image_location\n")
    (bad,) = [c for c in doctor._data(cfg) if c.what == "template"]
    assert bad.status == doctor.FAIL and "matches 2 files" in bad.detail and "CVPR_6th_ABAW" in bad.detail
    # none at all: the reader names the pattern and the param
    for path in sample.parent.iterdir():
        path.unlink()
    (bad,) = [c for c in doctor._data(cfg) if c.what == "template"]
    assert bad.status == doctor.FAIL and "*ABAW_Expr_test_set_sample.txt: template file missing (data.test_template)" in bad.detail


def test_disk_check_says_nothing_about_feature_size_without_data(tmp_path):
    cfg = config.load("params/demo.yaml", overrides=[f"run.outputs_root={tmp_path / 'out'}",
                                                      f"data.root={tmp_path / 'nothing-yet'}"])
    (check,) = doctor._disk(cfg)
    assert check.status == doctor.OK and "GiB free" in check.detail and "features need" not in check.detail
