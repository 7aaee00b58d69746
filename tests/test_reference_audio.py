"""The reference code's audio features (params/abaw10.yaml): explicit layer sets / ranges checked against
Hugging Face ``hidden_states`` on a tiny encoder, raw (unnormalised) waveforms, and the half-width window
convention with empty windows taking the nearest encoder step."""
import numpy as np
import pytest
import torch

from kitlib.audio import encode
from kitlib.audio.alignment import align_to_frames, frame_centre_times, window_total_s
from kitlib.audio.encoders import AudioEncoder, load_audio_encoder, make_tiny_encoder, parse_layers, tiny_encoder_config


@pytest.fixture(scope="module")
def encoder6():
    from transformers import AutoModel

    torch.manual_seed(0)
    model = AutoModel.from_config(tiny_encoder_config("wav2vec2", num_hidden_layers=6))
    return AudioEncoder.from_model(model, do_normalize=False)


def test_parse_layers():
    assert parse_layers("last", 24) is None
    assert parse_layers("4", 24) == 4 and parse_layers("last4", 24) == 4 and parse_layers(4, 24) == 4
    assert parse_layers("1-4", 24) == (1, 2, 3, 4)
    assert parse_layers("7, 2,5", 24) == (2, 5, 7)
    for bad in ("0-3", "1-25", "first", "", True, 0, "3-1"):
        with pytest.raises(ValueError, match="layers must be"):
            parse_layers(bad, 24)


@pytest.mark.parametrize("spec, picks", [("1-4", [1, 2, 3, 4]), ("2,5", [2, 5]), ("3-3", [3])])
def test_layer_range_is_the_mean_of_hf_hidden_states(encoder6, spec, picks):
    rng = np.random.default_rng(0)
    wave = rng.normal(size=16000).astype(np.float32) * 0.1
    feats, _ = encode(wave, encoder6, chunk_s=10.0, overlap_s=2.0, layers=spec)
    with torch.inference_mode():
        out = encoder6.model(torch.from_numpy(wave)[None], output_hidden_states=True)
    expected = torch.stack([out.hidden_states[i][0] for i in picks]).mean(0).numpy()
    np.testing.assert_allclose(feats, expected, rtol=1e-4, atol=1e-5)
    if spec == "1-4":   # the reference code's extract_features(num_layers=4) is hidden_states[1:5]
        np.testing.assert_allclose(feats, torch.stack(out.hidden_states[1:5]).mean(0)[0].numpy(), rtol=1e-4, atol=1e-5)


def test_waveform_normalisation_is_a_param(tmp_path):
    folder = make_tiny_encoder(tmp_path / "w2v", seed=0)   # its preprocessor config says do_normalize=True
    assert load_audio_encoder(folder).do_normalize
    raw = load_audio_encoder(folder, normalize=False)
    assert not raw.do_normalize
    wave = np.random.default_rng(1).normal(size=8000).astype(np.float32) * 0.05 + 0.02
    normalised, _ = encode(wave, load_audio_encoder(folder), layers="last")
    unnormalised, _ = encode(wave, raw, layers="last")
    assert not np.allclose(normalised, unnormalised, atol=1e-3)
    scaled = (wave - wave.mean()) / np.sqrt(wave.var() + 1e-7)
    np.testing.assert_allclose(encode(scaled, raw, layers="last")[0], normalised, rtol=1e-4, atol=1e-4)


def test_half_width_and_total_conventions():
    assert window_total_s(0.5, "half_width") == 1.0 and window_total_s(0.5, "total") == 0.5
    with pytest.raises(ValueError, match="convention"):
        window_total_s(0.5, "radius")
    times = np.arange(0.0, 10.0, 0.02) + 0.0125
    feats = np.arange(len(times), dtype=np.float32)[:, None]
    t = np.array([5.0])
    half, _ = align_to_frames(feats, times, t, align_window_s=window_total_s(0.5, "half_width"))
    inside = np.abs(times - 5.0) <= 0.5
    assert half[0, 0] == pytest.approx(feats[inside].mean())
    assert inside.sum() == 50   # +-0.5 s: 50 encoder steps of 20 ms
    total, _ = align_to_frames(feats, times, t, align_window_s=0.5)
    assert total[0, 0] == pytest.approx(feats[np.abs(times - 5.0) <= 0.25].mean())


def test_frame_centres_and_empty_windows_take_the_nearest_step():
    np.testing.assert_allclose(frame_centre_times(3, 30.0), [0.5 / 30, 1.5 / 30, 2.5 / 30])
    times = np.array([1.0, 1.02, 3.0])
    feats = np.array([[1.0], [2.0], [7.0]], dtype=np.float32)
    frames = np.array([1.01, 2.0, 2.5, 10.0])
    masked, mask = align_to_frames(feats, times, frames, align_window_s=0.2)
    np.testing.assert_array_equal(mask, [True, False, False, False])
    filled, fmask = align_to_frames(feats, times, frames, align_window_s=0.2, empty="nearest")
    assert fmask.all()
    np.testing.assert_allclose(filled[:, 0], [1.5, 2.0, 7.0, 7.0])   # 2.0: nearest is 1.02; 2.5 -> 3.0
    tie, _ = align_to_frames(feats[:2], np.array([1.0, 2.0]), np.array([1.5]), align_window_s=0.2, empty="nearest")
    assert tie[0, 0] == 1.0   # equally near: the earlier step, as the reference code's nearest index
    with pytest.raises(ValueError, match="empty"):
        align_to_frames(feats, times, frames, empty="zeros")
