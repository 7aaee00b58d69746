import pytest

from kitlib import config, run, runfolder


def test_select_stages():
    assert run.select_stages(None) == list(run.STAGES)
    assert run.select_stages("03") == ["03_crop_extract"]
    assert run.select_stages("05-07") == list(run.STAGES[4:])
    assert run.select_stages("07,1") == [run.STAGES[0], run.STAGES[6]]
    assert run.select_stages("smoothing_sweep") == ["06_smoothing_sweep"]
    with pytest.raises(SystemExit, match="unknown stage"):
        run.select_stages("09")


def test_resume_stage_spec():
    assert run._stage_spec(list(run.STAGES[2:])) == "03-07" and run._stage_spec([run.STAGES[4]]) == "05"
    assert run._stage_spec([run.STAGES[2], run.STAGES[4]]) == "03,05"
    assert run.select_stages(run._stage_spec([run.STAGES[2], run.STAGES[4]])) == [run.STAGES[2], run.STAGES[4]]


def test_run_folder_records_and_refuses_other_params(tmp_path):
    overrides = [f"run.outputs_root={tmp_path}"]
    cfg = config.load("params/demo.yaml", overrides=overrides)
    run_dir = runfolder.prepare_run_dir(cfg, argv=["x"])
    assert (run_dir / "params.yaml").is_file()
    prov = (run_dir / "provenance.json").read_text()
    assert '"torch"' in prov and '"seed": 0' in prov and "git_commit" in prov
    runfolder.prepare_run_dir(cfg, argv=["x"])                     # same params: fine
    other = config.load("params/demo.yaml", overrides=overrides + ["fusion.epochs=1"])
    with pytest.raises(SystemExit, match="fusion.epochs"):
        runfolder.prepare_run_dir(other, argv=["x"])


def test_misspelt_param_exits_with_message(tmp_path, capsys):
    assert run.main(["params/demo.yaml", "fusion.epoch=1", f"run.outputs_root={tmp_path}"]) == 2
    assert "did you mean 'fusion.epochs'" in capsys.readouterr().err
