import pytest
import torch

from kitlib.visual.padaug import PAD_MODES, PadAug, bar_fraction, preview_grid


def images(n=8, h=20, w=30, dtype=torch.uint8):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(10, 250, (n, 3, h, w), generator=g, dtype=torch.uint8)   # no zero pixels
    return x if dtype == torch.uint8 else x.to(dtype) / 255


@pytest.mark.parametrize("mode", PAD_MODES)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_bars_are_zero_where_expected(mode, dtype):
    x = images(dtype=dtype)
    aug = PadAug(p=1.0, max_frac=0.3, jitter=0.0, modes=(mode,))
    out, info = aug.sample(x, torch.Generator().manual_seed(3))
    assert out.shape == x.shape and out.dtype == dtype
    for img, orig, i in zip(out, x, info):
        assert i.applied and i.mode.startswith(mode)
        sides = {s for s in ("left", "right", "top", "bottom") if getattr(i, s) > 0}
        if mode == "corner":
            assert len(sides) == 2 and len(sides & {"left", "right"}) == 1 and len(sides & {"top", "bottom"}) == 1
        else:
            assert sides == {mode}
        assert all(1 <= getattr(i, s) <= round(0.3 * (30 if s in ("left", "right") else 20)) for s in sides)
        bar = torch.zeros(20, 30, dtype=torch.bool)
        bar[:, : i.left] = True
        if i.right:
            bar[:, 30 - i.right:] = True
        bar[: i.top] = True
        if i.bottom:
            bar[20 - i.bottom:] = True
        assert (img[:, bar] == 0).all()
        assert torch.equal(img[:, ~bar], orig[:, ~bar])      # jitter 0: the rest is untouched


def test_p0_is_identity_and_p_rate():
    x = images(n=400, h=8, w=8)
    out, info = PadAug(p=0.0).sample(x)
    assert torch.equal(out, x) and not any(i.applied for i in info)
    _, info = PadAug(p=0.5).sample(x, torch.Generator().manual_seed(0))
    rate = sum(i.applied for i in info) / len(info)
    assert 0.4 < rate < 0.6
    assert {i.mode.split("-")[0] for i in info if i.applied} == set(PAD_MODES)


def test_deterministic_under_manual_seed_and_generator():
    x = images()
    aug = PadAug(p=0.7)
    torch.manual_seed(5)
    a = aug(x)
    torch.manual_seed(5)
    b = aug(x)
    assert torch.equal(a, b)
    c, _ = aug.sample(x, torch.Generator().manual_seed(9))
    d, _ = aug.sample(x, torch.Generator().manual_seed(9))
    e, _ = aug.sample(x, torch.Generator().manual_seed(10))
    assert torch.equal(c, d) and not torch.equal(c, e)


def test_single_image_and_jitter_moves_content():
    x = images(n=1, dtype=torch.float32)
    out, info = PadAug(p=1.0, jitter=0.1).sample(x[0], torch.Generator().manual_seed(1))
    assert out.shape == x[0].shape and len(info) == 1
    assert info[0].scale != 1.0 and abs(info[0].shift_x) <= 0.1
    bar = (out == 0).all(0)
    assert not torch.allclose(out[:, ~bar], x[0][:, ~bar])   # content outside the bars was perturbed
    assert 0 < bar_fraction(info, 20, 30) < 0.6


def test_preview_grid_and_bad_args():
    x = images(n=3)
    grid = preview_grid(x, n_per_image=2, seed=0)
    assert grid.dtype == torch.uint8 and grid.shape == (3, 3 * 20 + 4 * 2, 3 * 30 + 4 * 2)
    assert torch.equal(grid[:, 2:22, 2:32], x[0])            # originals on the top row
    assert (grid[:, 24:44, 2:32] == 0).any()                  # augmented below
    with pytest.raises(ValueError, match="modes"):
        PadAug(modes=("diagonal",))
    with pytest.raises(ValueError, match="max_frac"):
        PadAug(max_frac=1.5)
    with pytest.raises(ValueError, match="shape"):
        PadAug()(torch.zeros(2, 2))
