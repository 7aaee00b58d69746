"""The visual branch: backbones (``backbones``: timm loading, key remapping), Stage I (``stage1``: heads,
loss, training), PadAug (``padaug``), image datasets (``images``) and frame-feature extraction (``extract``;
``pipelined``: the same with its stages overlapped, for a GPU).
"""
from kitlib.visual.extract import REPORT_COLUMNS, OFFICIAL_REPORT_COLUMNS, feature_dim, extract_visual_features, extract_official_crop_features
from kitlib.visual.pipelined import extract_visual_features_pipelined

__all__ = ['REPORT_COLUMNS', 'OFFICIAL_REPORT_COLUMNS', 'feature_dim', 'extract_visual_features', 'extract_official_crop_features', 'extract_visual_features_pipelined']
