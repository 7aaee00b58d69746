"""docs/abaw10_knobs.md: every knob's `abaw10` column equals params/abaw10.yaml and its `kit default`
column equals params/base.yaml, so the table of the reference code's values cannot drift from the params."""
import re

import yaml

from kitlib import config

TABLE = config.repo_root() / "docs" / "abaw10_knobs.md"


def _rows() -> list[list[str]]:
    rows = []
    for line in TABLE.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and re.fullmatch(r"`[a-z0-9_]+\.[a-z0-9_]+`", cells[0]):
            rows.append(cells)
    return rows


def _value(cfg: config.Config, key: str):
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def _cell(text: str):
    return yaml.safe_load(text.strip("`"))


def test_knob_table_matches_the_params():
    rows = _rows()
    assert len(rows) >= 60
    abaw10, base = config.load("params/abaw10.yaml"), config.load()
    for key, _paper, _code, abaw10_cell, default_cell in rows:
        key = key.strip("`")
        assert _value(abaw10, key) == _cell(abaw10_cell), f"{key}: abaw10.yaml has {_value(abaw10, key)!r}"
        assert _value(base, key) == _cell(default_cell), f"{key}: base.yaml has {_value(base, key)!r}"


def test_every_recipe_knob_of_abaw10_is_in_the_table():
    listed = {row[0].strip("`") for row in _rows()}
    profile = yaml.safe_load((config.repo_root() / "params" / "abaw10.yaml").read_text())
    machine = {"run.name", "run.device", "data.root", "data.annotations_dir", "data.test_names", "data.test_template",
               "stage1.images_root"}
    missing = {f"{s}.{k}" for s, keys in profile.items() for k in keys} - listed - machine
    assert not missing, f"abaw10.yaml knobs missing from docs/abaw10_knobs.md: {sorted(missing)}"


def test_abaw10_ships_the_authors_folds():
    import pandas as pd
    import pytest

    from kitlib.stages.common import folds

    cfg = config.load("params/abaw10.yaml")
    assignment = folds(cfg, None)   # data.folds_file: not under data.root, so the file shipped in params/
    assert len(assignment) == 317 and set(assignment.values()) == {1, 2, 3, 4, 5}
    assert sorted(pd.Series(assignment).value_counts().tolist()) == [63, 63, 63, 64, 64]
    published = config.repo_root().parent / "shared" / "abaw10-metadata" / "expr_cv5_folds.csv"
    if not published.is_file():
        pytest.skip("the release metadata is not next to this checkout")
    table = pd.read_csv(published)
    assert assignment == dict(zip(table["txtid"].astype(str), table["fold"].astype(int)))
