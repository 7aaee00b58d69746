"""A resumed extraction whose earlier run was killed before it wrote its report: the tracks finished then
keep their figures, read back from their feature files."""
import numpy as np
import pandas as pd

from kitlib import config
from kitlib.faces import BRIDGED, DETECTED, FOLLOWED, MISSING
from kitlib.stages import common
from kitlib.store import FeatureStore


def test_resumed_tracks_keep_their_figures_without_an_earlier_report(tmp_path):
    cfg = config.load("params/tiny.yaml", overrides=[f"run.outputs_root={tmp_path}"])
    status = np.array([DETECTED] * 5 + [FOLLOWED] * 2 + [BRIDGED] + [MISSING] * 2, np.uint8)
    FeatureStore(cfg.run_dir / "features", "visual").save(
        "done", frame_index=np.arange(1, 11), features=np.ones((10, 4)), mask=status != MISSING, status=status)
    FeatureStore(cfg.run_dir / "features", "audio").save(
        "done", frame_index=np.arange(1, 11), features=np.ones((10, 4)), mask=np.arange(10) < 7)
    visual = pd.DataFrame([
        {"txtid": "done", "videoid": "done", "video": "v.mp4", "status": "skipped (done)", "seconds": 0.0},
        {"txtid": "new", "videoid": "new", "video": "n.mp4", "frames": 3, "detected": 3, "followed": 0, "bridged": 0,
         "missing": 0, "status": "ok", "seconds": 1.0}])
    table = common.extraction_report(cfg, "visual_extraction", visual).set_index("txtid")
    assert table.loc["done", ["frames", "detected", "followed", "bridged", "missing"]].tolist() == [10, 5, 2, 1, 2]
    assert table.loc["new", "frames"] == 3
    written = pd.read_csv(cfg.run_dir / "reports" / "visual_extraction.csv").set_index("txtid")
    assert written.loc["done", "detected"] == 5
    audio = pd.DataFrame([{"txtid": "done", "videoid": "done", "frames": 0, "audio_s": float("nan"),
                           "video_s": float("nan"), "frames_with_audio": 0, "status": "resumed", "seconds": 0.0}])
    table = common.extraction_report(cfg, "audio_extraction", audio).set_index("txtid")
    assert table.loc["done", ["frames", "frames_with_audio"]].tolist() == [10, 7]
