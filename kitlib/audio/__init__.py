"""The audio branch (seed 000 sec. 3.2.2): the waveform of a raw video (``waveform``), speech encoders and
chunked encoding (``encoders``), frame alignment (``alignment``, eq. 8) and extraction (``extract``).
"""
from kitlib.audio.alignment import align_to_frames
from kitlib.audio.encoders import TINY_KINDS, FrameGeometry, AudioEncoder, load_audio_encoder, tiny_encoder_config, make_tiny_encoder, RANDOM_ARCHS, random_encoder, chunk_plan, encode
from kitlib.audio.extract import extract_audio_features
from kitlib.audio.waveform import AudioError, NoAudioError, AudioTrack, load_audio

__all__ = ['AudioError', 'NoAudioError', 'AudioTrack', 'load_audio', 'TINY_KINDS', 'FrameGeometry', 'AudioEncoder', 'load_audio_encoder', 'tiny_encoder_config', 'make_tiny_encoder', 'RANDOM_ARCHS', 'random_encoder', 'chunk_plan', 'encode', 'align_to_frames', 'extract_audio_features']
