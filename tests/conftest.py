import numpy as np
import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="module")
def demo_video(tmp_path_factory):
    """One short generated demo video with sound (128x96, 30 fps), shared by a test module."""
    from kitlib.data import demo

    root = tmp_path_factory.mktemp("demo")
    demo.generate_demo(root, seed=0, n_train=1, n_val=1, n_test=1, seconds=(2.0, 3.0), fps=30.0, size=(128, 96),
                       sample_rate=16000, images_per_class=1)
    return sorted((root / "videos").rglob("*.mp4"))[0]
