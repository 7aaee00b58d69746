"""The overlay MP4 of a track: H.264 of the asked length, first frame saved, labels and box drawn."""
import av
import cv2
import numpy as np

from kitlib import CLASSES, overlay


def test_overlay_mp4_has_the_frames_and_the_drawings(demo_video, tmp_path):
    from kitlib.faces.video import probe

    n = probe(demo_video).n_frames
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(len(CLASSES)), size=n - 10)            # the last 10 frames: no prediction
    frame_index = np.arange(1, n - 9)
    truth = rng.integers(-1, len(CLASSES), n)
    boxes = {f: np.array([[30.0, 20.0, 70.0, 60.0]]) for f in range(1, n + 1)}
    out = overlay.write_overlay(demo_video, tmp_path / "o.mp4", probs=probs, frame_index=frame_index, truth=truth,
                                pred=probs.argmax(1), boxes=boxes, max_frames=40)
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        assert stream.codec_context.name == "h264" and len(frames) == 40
    first = frames[0]
    assert first.shape[1] == overlay.WIDTH and first.shape[0] % 2 == 0
    scale = overlay.WIDTH / 128
    edge = first[int(20 * scale) - 1:int(20 * scale) + 2, int(40 * scale)]   # the top edge of the face box: green
    assert (edge[:, 1].max() > 180) and (edge[:, 0].min() < 120)
    assert (tmp_path / "o.png").is_file()


def test_render_frame_without_prediction_says_so():
    colours = [(255, 0, 0)] * len(CLASSES)
    strips = np.zeros((2 * overlay.STRIP + 2, overlay.WIDTH, 3), np.uint8)
    image = overlay.render_frame(np.zeros((96, 128, 3), np.uint8), boxes=np.zeros((0, 4)), probs=None, pred=None,
                                 truth=2, position=0.5, strips=strips, colours=colours)
    assert image.shape[1] == overlay.WIDTH and image.shape[0] % 2 == 0


def test_overlay_of_a_video_without_labels_has_no_truth(demo_video, tmp_path):
    """``truth=None`` (``abaw-kit predict``): no "true" line, one strip (the prediction's)."""
    from kitlib.faces.video import probe

    n = probe(demo_video).n_frames
    frame_index = np.arange(1, n + 1)
    probs = np.full((n, len(CLASSES)), 1 / len(CLASSES))
    pred = np.full(n, 4)
    with_truth = overlay.write_overlay(demo_video, tmp_path / "t.mp4", probs=probs, frame_index=frame_index,
                                       truth=np.full(n, 4), pred=pred, boxes={}, max_frames=5)
    without = overlay.write_overlay(demo_video, tmp_path / "n.mp4", probs=probs, frame_index=frame_index,
                                    truth=None, pred=pred, boxes={}, max_frames=5)
    a, b = (cv2.imread(str(p.with_suffix(".png"))) for p in (with_truth, without))
    assert a.shape[0] - b.shape[0] in (overlay.STRIP + 2, overlay.STRIP + 1, overlay.STRIP + 3)   # one strip less
    line = slice(int(42 - 14), int(42 + 6))                           # where the "true: ..." line is written
    assert np.abs(a[line].astype(int) - b[line].astype(int)).max() > 100
