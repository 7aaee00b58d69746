"""Audio branch (kitlib/audio.py): decoding from the raw video, tiny encoders, chunked encoding,
frame alignment (eq. 8) and the extraction stage, on small synthetic mp4 files built with PyAV."""
from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch

from kitlib.audio import (AudioError, AudioTrack, FrameGeometry, NoAudioError, align_to_frames, chunk_plan, encode,
                          extract_audio_features, load_audio, load_audio_encoder, make_tiny_encoder)
from kitlib.data import Track
from kitlib.store import FeatureStore
from kitlib.faces.video import VideoError

FPS = 25
TONE_HZ = 440.0


def write_video(path: Path, *, video_s: float, audio_s: float | None, sample_rate: int = 44100,
                channels: int = 2) -> Path:
    """An mp4 with a small H.264 stream and (optionally) a 440 Hz AAC sine of ``audio_s`` seconds."""
    container = av.open(str(path), "w")
    vstream = container.add_stream("libx264", rate=FPS)
    vstream.width, vstream.height, vstream.pix_fmt = 64, 48, "yuv420p"
    astream = None
    if audio_s is not None:
        astream = container.add_stream("aac", rate=sample_rate)
        astream.layout = "stereo" if channels == 2 else "mono"
    for i in range(int(round(video_s * FPS))):
        frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), (i * 7) % 255, np.uint8), format="rgb24")
        for packet in vstream.encode(frame):
            container.mux(packet)
    for packet in vstream.encode():
        container.mux(packet)
    if astream is not None:
        tone = (0.5 * np.sin(2 * np.pi * TONE_HZ * np.arange(int(audio_s * sample_rate)) / sample_rate))
        tone = tone.astype(np.float32)
        for start in range(0, len(tone), 1024):
            block = np.ascontiguousarray(np.stack([tone[start:start + 1024]] * channels))
            frame = av.AudioFrame.from_ndarray(block, format="fltp", layout=astream.layout.name)
            frame.sample_rate, frame.pts = sample_rate, start
            for packet in astream.encode(frame):
                container.mux(packet)
        for packet in astream.encode():
            container.mux(packet)
    container.close()
    return path


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("media")
    corrupt = root / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return {
        "av": write_video(root / "av.mp4", video_s=3.0, audio_s=3.0),
        "mono48k": write_video(root / "mono48k.mp4", video_s=1.0, audio_s=1.0, sample_rate=48000, channels=1),
        "silent": write_video(root / "silent.mp4", video_s=2.0, audio_s=None),
        "short": write_video(root / "short.mp4", video_s=3.0, audio_s=1.5),
        "corrupt": corrupt,
    }


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    folder = make_tiny_encoder(tmp_path_factory.mktemp("enc") / "tiny_w2v2", kind="wav2vec2", seed=0)
    return load_audio_encoder(folder, device="cpu")


def noise(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(seconds * 16000)
    return (0.1 * rng.standard_normal(n) + 0.3 * np.sin(2 * np.pi * 3 * np.arange(n) / 16000)).astype(np.float32)


# ---------------------------------------------------------------------------------------------- decoding
def test_load_audio_is_mono_16k_float_with_duration_and_tone(media):
    audio = load_audio(media["av"])
    assert isinstance(audio, AudioTrack)
    assert audio.sample_rate == 16000 and audio.waveform.ndim == 1 and audio.waveform.dtype == np.float32
    assert abs(audio.duration_s - 3.0) < 0.05 and abs(audio.start_time_s) < 1e-6
    assert audio.duration_s == pytest.approx(len(audio.waveform) / 16000)
    assert np.abs(audio.waveform).max() <= 1.0
    spectrum = np.abs(np.fft.rfft(audio.waveform))
    assert np.argmax(spectrum) * 16000 / len(audio.waveform) == pytest.approx(TONE_HZ, abs=2.0)
    assert np.sqrt(np.mean(audio.waveform[1600:-1600] ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.05)


def test_load_audio_resamples_48k_mono_and_other_rates(media):
    audio = load_audio(media["mono48k"], sample_rate=8000)
    assert audio.sample_rate == 8000 and abs(len(audio.waveform) - 8000) < 200
    spectrum = np.abs(np.fft.rfft(audio.waveform))
    assert np.argmax(spectrum) * 8000 / len(audio.waveform) == pytest.approx(TONE_HZ, abs=3.0)


def test_load_audio_errors_name_the_file(media, tmp_path):
    with pytest.raises(NoAudioError, match="silent.mp4.*no audio stream"):
        load_audio(media["silent"])
    assert issubclass(NoAudioError, AudioError) and issubclass(AudioError, VideoError)
    with pytest.raises(AudioError, match="corrupt.mp4") as info:
        load_audio(media["corrupt"])
    assert not isinstance(info.value, NoAudioError)
    with pytest.raises(AudioError, match="missing.mp4.*not found"):
        load_audio(tmp_path / "missing.mp4")


# ---------------------------------------------------------------------------------------------- encoders
def test_tiny_encoder_round_trip_from_local_folder(tmp_path, encoder):
    assert encoder.do_normalize and encoder.sampling_rate == 16000
    assert encoder.model.config.model_type == "wav2vec2" and encoder.hidden_size == 32 and encoder.num_layers == 2
    assert (encoder.path / "preprocessor_config.json").is_file() and len(encoder.config_hash) == 16
    again = load_audio_encoder(encoder.path, device="cpu")  # same weights twice: same features
    x = noise(1.0)
    np.testing.assert_array_equal(encode(x, encoder)[0], encode(x, again)[0])
    with pytest.raises(FileNotFoundError, match="never downloads"):
        load_audio_encoder(tmp_path / "no_such_model", device="cpu")


@pytest.mark.parametrize("kind", ["hubert", "wavlm"])
def test_other_encoder_families_share_the_code(tmp_path, kind):
    enc = load_audio_encoder(make_tiny_encoder(tmp_path / kind, kind=kind), device="cpu")
    assert enc.model.config.model_type == kind
    feats, times = encode(noise(2.0), enc, layers=2)
    assert feats.shape == (99, 32) and np.isfinite(feats).all() and len(times) == 99


def test_frame_geometry_matches_the_model(encoder):
    geometry = encoder.geometry
    assert (geometry.hop_samples, geometry.receptive_field) == (320, 400)  # 20 ms hop, 25 ms window
    lengths = torch.tensor([400, 719, 720, 16000, 16399, 48001])
    expected = encoder.model._get_feat_extract_output_lengths(lengths).tolist()
    assert [geometry.n_frames(int(n)) for n in lengths] == expected
    assert geometry.n_frames(399) == 0


# ---------------------------------------------------------------------------------------------- encode
def test_encode_frame_count_and_times(encoder):
    x = noise(4.0)
    feats, times = encode(x, encoder, start_time_s=0.5)
    assert feats.dtype == np.float32 and times.dtype == np.float64
    assert feats.shape == (encoder.geometry.n_frames(len(x)), 32) == (199, 32)
    np.testing.assert_allclose(np.diff(times), 0.02)  # 50 Hz
    assert times[0] == pytest.approx(0.5 + 0.0125)    # centre of the first 25 ms window, offset by the start
    empty, empty_times = encode(x[:300], encoder)
    assert empty.shape == (0, 32) and empty_times.shape == (0,)
    with pytest.raises(ValueError, match="16000 Hz"):
        encode(x, encoder, sample_rate=8000)


def test_encode_single_chunk_is_exactly_the_whole_file(encoder):
    x = noise(6.0)
    feats, _ = encode(x, encoder, chunk_s=6.0)
    xt = torch.from_numpy(x)
    xt = (xt - xt.mean()) / torch.sqrt(xt.var(unbiased=False) + 1e-7)
    with torch.inference_mode():
        whole = encoder.model(xt[None]).last_hidden_state[0].numpy()
    np.testing.assert_array_equal(feats, whole)


def test_encode_chunk_seams_differ_little(encoder):
    x = noise(15.0, seed=1)
    whole, times = encode(x, encoder, chunk_s=30.0)
    chunked, chunk_times = encode(x, encoder, chunk_s=6.0, overlap_s=3.0)  # 3 chunks, 1.5 s context per seam
    np.testing.assert_array_equal(times, chunk_times)
    assert not np.array_equal(whole, chunked)  # it really was chunked
    relative = np.linalg.norm(chunked - whole) / np.linalg.norm(whole)
    worst_frame = np.abs(chunked - whole).max() / whole.std()
    assert relative < 0.01, relative  # measured 0.002
    assert worst_frame < 0.15, worst_frame  # measured 0.02


@pytest.mark.parametrize("n_samples", [16000 * 6, 16000 * 6 + 1, 16000 * 15 + 123, 16000 * 31 + 7, 16000 * 3607])
def test_chunk_plan_tiles_the_frame_grid(n_samples):
    geometry = FrameGeometry((10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2))
    plan = chunk_plan(n_samples, geometry, chunk_samples=16000 * 6, overlap_samples=16000 * 2)
    kept = np.concatenate([np.arange(lo, hi) for _, _, lo, hi in plan])
    np.testing.assert_array_equal(kept, np.arange(geometry.n_frames(n_samples)))
    assert plan[-1][1] == n_samples and all(start % 320 == 0 for start, *_ in plan)
    assert all(end - start <= 16000 * 6 + 320 for start, end, *_ in plan)
    assert all(prev[1] - nxt[0] == 16000 * 2 for prev, nxt in zip(plan, plan[1:]))  # overlap kept
    assert len(plan) == max(1, int(np.ceil((n_samples - 16000 * 2) / (16000 * 4))))  # fewest chunks
    with pytest.raises(ValueError, match="overlap"):
        chunk_plan(16000 * 20, geometry, chunk_samples=16000 * 6, overlap_samples=100)


def test_encode_layers_last_vs_mean_of_last_k(encoder):
    x = noise(2.0)
    last, _ = encode(x, encoder)
    np.testing.assert_allclose(encode(x, encoder, layers=1)[0], last, atol=1e-6)
    two, _ = encode(x, encoder, layers=2)
    xt = torch.from_numpy(x)
    xt = (xt - xt.mean()) / torch.sqrt(xt.var(unbiased=False) + 1e-7)
    with torch.inference_mode():
        hidden = encoder.model(xt[None], output_hidden_states=True).hidden_states
        final = encoder.model(xt[None]).last_hidden_state
    np.testing.assert_allclose(two, ((final + hidden[-2]) / 2)[0].numpy(), atol=1e-5)
    assert not np.allclose(two, last)
    for bad in (0, 3, "first", True):
        with pytest.raises(ValueError, match="layers"):
            encode(x, encoder, layers=bad)


# ---------------------------------------------------------------------------------------------- alignment
def brute_window(features, feature_times, frame_times, window_s):
    out, mask = np.zeros((len(frame_times), features.shape[1]), np.float32), np.zeros(len(frame_times), bool)
    for i, t in enumerate(frame_times):
        inside = np.abs(feature_times - t) <= window_s / 2
        if inside.any():
            out[i], mask[i] = features[inside].mean(0), True
    return out, mask


@pytest.mark.parametrize("window_s", [0.25, 0.5, 0.75])
def test_window_alignment_equals_brute_force(window_s):
    rng = np.random.default_rng(3)
    feature_times = np.sort(rng.uniform(1.0, 6.0, 300))
    features = rng.standard_normal((300, 7)).astype(np.float32) + 5.0
    frame_times = rng.uniform(0.0, 7.0, 200)  # some frames far outside the audio
    aligned, mask = align_to_frames(features, feature_times, frame_times, method="window", align_window_s=window_s)
    ref, ref_mask = brute_window(features, feature_times, frame_times, window_s)
    np.testing.assert_array_equal(mask, ref_mask)
    np.testing.assert_allclose(aligned, ref, rtol=1e-5, atol=1e-5)
    assert not mask.all() and mask.any() and (aligned[~mask] == 0).all()


def test_window_is_total_length_centred_on_the_frame():
    feature_times = 0.005 + 0.02 * np.arange(500)  # a 50 Hz grid, no ties with the window edges
    features = np.stack([feature_times, np.ones(500)], axis=1).astype(np.float32)
    aligned, mask = align_to_frames(features, feature_times, np.array([5.0]), align_window_s=0.5)
    inside = feature_times[np.abs(feature_times - 5.0) <= 0.25]  # +-0.25 s, not +-0.5 s
    assert len(inside) == 25 and mask[0]
    assert aligned[0, 0] == pytest.approx(inside.mean(), abs=1e-5) == pytest.approx(5.005, abs=1e-5)


def test_nearest_alignment_and_masks():
    feature_times = 1.0 + 0.0125 + 0.02 * np.arange(100)  # audio covers 1.0 .. 3.0 s
    features = np.random.default_rng(0).standard_normal((100, 4)).astype(np.float32)
    frame_times = np.arange(0, 4, 0.04)
    aligned, mask = align_to_frames(features, feature_times, frame_times, method="nearest")
    idx = np.abs(frame_times[:, None] - feature_times[None]).argmin(1)
    gap = np.abs(feature_times[idx] - frame_times)
    np.testing.assert_array_equal(mask, gap <= 0.02 + 1e-9)
    np.testing.assert_array_equal(aligned[mask], features[idx[mask]])
    assert (aligned[~mask] == 0).all()
    assert mask[(frame_times >= 1.0) & (frame_times < 3.0)].all()  # every frame inside the audio
    assert not mask[(frame_times < 0.98) | (frame_times > 3.02)].any()
    _, window_mask = align_to_frames(features, feature_times, frame_times, align_window_s=0.5)
    assert window_mask[(frame_times > 0.76) & (frame_times < 3.24)].all()
    assert not window_mask[(frame_times < 0.76) | (frame_times > 3.26)].any()


def test_interpolate_alignment_equals_np_interp():
    """``interpolate`` (seed 004 sec. 4.2) is np.interp of every feature dimension inside the audio, masked outside."""
    rng = np.random.default_rng(5)
    feature_times = 1.0 + 0.01 + 0.02 * np.arange(100)           # audio covers 1.0 .. 3.0 s, 50 Hz
    features = rng.standard_normal((100, 5)).astype(np.float32)
    frame_times = np.sort(rng.uniform(0.0, 4.0, 300))
    aligned, mask = align_to_frames(features, feature_times, frame_times, method="interpolate")
    ref = np.stack([np.interp(frame_times, feature_times, features[:, d]) for d in range(5)], axis=1)
    np.testing.assert_array_equal(mask, (frame_times >= 0.99 - 1e-9) & (frame_times <= 3.01 + 1e-9))
    np.testing.assert_allclose(aligned[mask], ref[mask], rtol=1e-5, atol=1e-6)
    assert (aligned[~mask] == 0).all() and mask.any() and not mask.all()
    at_features, _ = align_to_frames(features, feature_times, feature_times[3:6], method="interpolate")
    np.testing.assert_allclose(at_features, features[3:6], atol=1e-6)   # exact at the feature times
    mid, _ = align_to_frames(features, feature_times, np.array([feature_times[10] + 0.005]), method="interpolate")
    np.testing.assert_allclose(mid[0], 0.75 * features[10] + 0.25 * features[11], atol=1e-6)
    from kitlib.audio.alignment import interpolate_to_frames

    one, one_mask = interpolate_to_frames(features[:1], feature_times[:1], np.array([1.0, 5.0]), max_gap_s=0.02)
    assert one_mask.tolist() == [True, False] and np.allclose(one[0], features[0]) and (one[1] == 0).all()


def test_alignment_without_audio_and_bad_arguments():
    aligned, mask = align_to_frames(np.zeros((0, 3)), np.zeros(0), np.arange(5) / 25)
    assert aligned.shape == (5, 3) and not mask.any()
    with pytest.raises(ValueError, match="method"):
        align_to_frames(np.zeros((2, 3)), np.array([0.0, 0.02]), np.zeros(1), method="median")
    with pytest.raises(ValueError, match="sorted"):
        align_to_frames(np.zeros((2, 3)), np.array([0.02, 0.0]), np.zeros(1))


# ---------------------------------------------------------------------------------------------- stage
def make_track(txtid: str, video: Path) -> Track:
    videoid, side = (txtid.rsplit("_", 1) + [None])[:2] if txtid.endswith(("_left", "_right")) else (txtid, None)
    return Track(txtid=txtid, videoid=videoid, split="Train_Set", video_path=video, labels_path=None, side=side)


def test_extract_audio_features_end_to_end_and_resume(media, encoder, tmp_path):
    tracks = [make_track("av_left", media["av"]), make_track("av_right", media["av"]),
              make_track("silent", media["silent"]), make_track("short", media["short"]),
              make_track("corrupt", media["corrupt"])]
    store = FeatureStore(tmp_path / "run", "audio")
    report = extract_audio_features(tracks, store, encoder, chunk_s=2.0, overlap_s=1.0, manifest={"seed": 1},
                                    extra_windows_s=(0.25, 0.75))
    assert list(report.columns) == ["txtid", "videoid", "frames", "audio_s", "video_s", "frames_with_audio",
                                    "status", "seconds"]
    rows = report.set_index("txtid")
    assert store.keys() == ["av_left", "av_right", "short", "silent"]  # the corrupt video is reported, not saved
    assert rows.loc["corrupt", "status"].startswith("error:") and "corrupt.mp4" not in store.keys()

    data = store.load("av_left")
    assert rows.loc["av_left", "status"] == "ok" and rows.loc["av_left", "frames"] == 75
    np.testing.assert_array_equal(data["frame_index"], np.arange(1, 76))
    assert data["features"].shape == (75, 32) and data["features"].dtype == np.float16
    assert data["mask"].dtype == bool and data["mask"].all() and rows.loc["av_left", "frames_with_audio"] == 75
    np.testing.assert_allclose(data["times_s"], np.arange(75) / FPS, atol=1e-3)
    for key in ("nearest", "window_250", "window_750"):
        assert data[key].shape == (75, 32) and data[key].dtype == np.float16 and data[f"{key}_mask"].all()
    assert not np.allclose(data["window_250"], data["features"])
    np.testing.assert_array_equal(store.load("av_right")["features"], data["features"])  # one encoding per video

    silent = store.load("silent")
    assert rows.loc["silent", "status"] == "no audio" and not silent["mask"].any()
    assert silent["features"].shape == (50, 32) and (silent["features"] == 0).all()
    assert not silent["nearest_mask"].any()

    short = store.load("short")
    assert rows.loc["short", "status"].startswith("audio shorter by 1.")
    assert short["mask"][: int(1.5 * FPS)].all() and not short["mask"][int(1.9 * FPS):].any()
    assert rows.loc["short", "audio_s"] == pytest.approx(1.5, abs=0.05)
    assert rows.loc["short", "video_s"] == pytest.approx(3.0, abs=0.05)

    manifest = store.read_manifest()
    assert manifest["seed"] == 1 and manifest["audio"]["encoder"] == str(encoder.path)
    assert manifest["audio"]["align_window_s"] == 0.5 and manifest["audio"]["layers"] == "last"
    assert manifest["audio"]["extra_alignments"] == ["nearest", "interpolate", "window_250", "window_750"]

    stamps = {key: store.path(key).stat().st_mtime_ns for key in store.keys()}
    again = extract_audio_features(tracks, store, encoder, chunk_s=2.0, overlap_s=1.0, manifest={"seed": 1})
    statuses = again.set_index("txtid").status
    assert (statuses.drop("corrupt") == "resumed").all() and statuses["corrupt"].startswith("error:")
    assert {key: store.path(key).stat().st_mtime_ns for key in store.keys()} == stamps


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_encode_on_cuda_matches_cpu(encoder, dtype):
    gpu = load_audio_encoder(encoder.path, device="cuda", dtype=dtype)
    x = noise(8.0)
    cpu_feats, cpu_times = encode(x, encoder, chunk_s=4.0, overlap_s=2.0)
    gpu_feats, gpu_times = encode(x, gpu, chunk_s=4.0, overlap_s=2.0)
    np.testing.assert_array_equal(cpu_times, gpu_times)
    tolerance = 1e-3 if dtype == torch.float32 else 5e-2
    assert np.linalg.norm(gpu_feats - cpu_feats) / np.linalg.norm(cpu_feats) < tolerance
