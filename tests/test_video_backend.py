"""PyAV decoding where decord has no wheel: forced here, it gives decord's frames, times and facts."""
import numpy as np
import pytest

from kitlib.faces import video

decord = pytest.importorskip("decord")


def test_pyav_matches_decord(demo_video, monkeypatch):
    monkeypatch.setenv("KITLIB_VIDEO_BACKEND", "decord")
    info_d, times_d = video.probe(demo_video), video.frame_times(demo_video)
    batches_d = list(video.iter_frames(demo_video, batch_size=16, step=2))
    monkeypatch.setenv("KITLIB_VIDEO_BACKEND", "pyav")
    assert video.backend() == "pyav"
    info_p, times_p = video.probe(demo_video), video.frame_times(demo_video)
    batches_p = list(video.iter_frames(demo_video, batch_size=16, step=2))
    assert (info_p.n_frames, info_p.width, info_p.height) == (info_d.n_frames, info_d.width, info_d.height)
    assert info_p.fps == pytest.approx(info_d.fps) and info_p.duration_s == pytest.approx(info_d.duration_s, abs=1e-4)
    np.testing.assert_allclose(times_p, times_d, atol=1e-4)
    assert len(batches_p) == len(batches_d)
    for p, d in zip(batches_p, batches_d):
        np.testing.assert_array_equal(p.index, d.index)
        np.testing.assert_allclose(p.times_s, d.times_s, atol=1e-4)
        assert np.abs(p.frames.astype(int) - d.frames.astype(int)).mean() < 1.0


def test_pyav_is_the_fallback_without_decord_and_names_bad_files(tmp_path, monkeypatch):
    monkeypatch.delenv("KITLIB_VIDEO_BACKEND", raising=False)
    monkeypatch.setitem(__import__("sys").modules, "decord", None)          # as on aarch64: no decord wheel
    assert video.backend() == "pyav"
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(500))
    with pytest.raises(video.VideoError, match="bad.mp4: cannot open"):
        video.probe(bad)
    monkeypatch.setenv("KITLIB_VIDEO_BACKEND", "opencv")
    with pytest.raises(ValueError, match="decord or pyav"):
        video.backend()
