"""The overlay MP4 of a track: H.264 of the asked length, first frame saved, labels and box drawn."""
import av
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
