"""Audio encoded across videos in shared batches (padded chunks with an attention mask) equals one video at a time."""
import numpy as np
import pytest
import torch

from kitlib.audio import encode, extract_audio_features, load_audio_encoder, make_tiny_encoder
from kitlib.audio.encoders import encode_many
from kitlib.store import FeatureStore
from test_audio import encoder, make_track, media, noise  # noqa: F401 - fixtures


@pytest.mark.parametrize("layers", ["last", 2, "1-2"])  # "1-2": explicit layers, as abaw10's "1-4"
def test_encode_many_equals_encode_per_waveform(encoder, layers):  # noqa: F811
    waves = [noise(5.3, seed=1), noise(1.2, seed=2), noise(3.7, seed=3), noise(5.3, seed=4)]
    one = [encode(w, encoder, chunk_s=2.0, overlap_s=1.0, layers=layers, start_time_s=0.5 * i)
           for i, w in enumerate(waves)]
    many = encode_many(waves, encoder, chunk_s=2.0, overlap_s=1.0, layers=layers, batch_chunks=5,
                       start_times_s=[0.5 * i for i in range(len(waves))])
    for (fa, ta), (fb, tb) in zip(one, many):
        assert fa.shape == fb.shape
        np.testing.assert_allclose(fb, fa, atol=2e-4, rtol=1e-4)
        np.testing.assert_array_equal(ta, tb)


def test_group_norm_models_batch_only_equal_lengths(tmp_path, monkeypatch):
    import kitlib.audio.encoders as encoders

    enc = load_audio_encoder(make_tiny_encoder(tmp_path / "hubert", kind="hubert"), device="cpu")
    assert enc.model.config.feat_extract_norm == "group"
    sizes = []
    real = encoders._forward_batch
    monkeypatch.setattr(encoders, "_forward_batch", lambda e, chunks, k: (sizes.append({len(c) for c in chunks}),
                                                                          real(e, chunks, k))[1])
    waves = [noise(1.5, seed=1), noise(1.5, seed=2), noise(1.0, seed=3)]
    many = encode_many(waves, enc, chunk_s=2.0, overlap_s=1.0, batch_chunks=4)
    assert all(len(s) == 1 for s in sizes) and len(sizes) == 2  # 2 x 1.5 s together, 1.0 s alone
    for w, (f, _) in zip(waves, many):
        np.testing.assert_allclose(f, encode(w, enc, chunk_s=2.0, overlap_s=1.0)[0], atol=2e-4, rtol=1e-4)


def test_extraction_with_batched_videos_matches_one_at_a_time(media, encoder, tmp_path):  # noqa: F811
    tracks = [make_track("av_left", media["av"]), make_track("av_right", media["av"]),
              make_track("silent", media["silent"]), make_track("short", media["short"]),
              make_track("corrupt", media["corrupt"])]
    single, batched = FeatureStore(tmp_path / "a", "audio"), FeatureStore(tmp_path / "b", "audio")
    options = dict(chunk_s=2.0, overlap_s=1.0, manifest={}, extra_windows_s=(0.25,))
    report_a = extract_audio_features(tracks, single, encoder, **options)
    report_b = extract_audio_features(tracks, batched, encoder, batch_videos=3, batch_chunks=4, **options)
    cols = ["txtid", "frames", "frames_with_audio", "status"]
    assert report_a[cols].equals(report_b[cols])
    assert single.keys() == batched.keys()
    for key in single.keys():
        a, b = single.load(key), batched.load(key)
        assert set(a) == set(b)
        for name in a:
            np.testing.assert_allclose(a[name].astype(np.float64), b[name].astype(np.float64), atol=2e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_encode_many_on_cuda_bf16(encoder):  # noqa: F811
    gpu = load_audio_encoder(encoder.path, device="cuda", dtype=torch.bfloat16)
    waves = [noise(5.3, seed=1), noise(1.2, seed=2)]
    for w, (f, _) in zip(waves, encode_many(waves, gpu, chunk_s=2.0, overlap_s=1.0, batch_chunks=4)):
        ref = encode(w, encoder, chunk_s=2.0, overlap_s=1.0)[0]
        cos = (f * ref).sum(1) / (np.linalg.norm(f, axis=1) * np.linalg.norm(ref, axis=1) + 1e-9)
        assert cos.min() > 0.98
