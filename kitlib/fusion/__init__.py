"""Stage II fusion: frame heads (``heads``), window heads (``sequence``: seed 004's safe cross-attention
transformer; ``tcn_prompt``: seed 003), frame tables (``table``) and one training loop (``train``).
"""
from kitlib.fusion.heads import FusionHead, SingleModalityHead, ConcatLinearHead, ConcatMLPHead, BilinearHead, DynamicWeightingHead, GatedFusionHead, CrossAttentionHead, HEADS, SEQUENCE_HEADS, SEQUENCE_HEAD_OPTIONS, known_heads, is_sequence_head, build_head, count_parameters
from kitlib.fusion import reference_heads  # noqa: F401  (registers the authors' head structures)
from kitlib.fusion.table import FeatureKey, FrameTable, load_frame_table, split_by_track
from kitlib.fusion.train import TrainedHead, CLASS_WEIGHTS, class_weights_for, predict_logits, train_head, FusionComparison, cross_validate, evaluate_heads

__all__ = ['FusionHead', 'SingleModalityHead', 'ConcatLinearHead', 'ConcatMLPHead', 'BilinearHead', 'DynamicWeightingHead', 'GatedFusionHead', 'CrossAttentionHead', 'HEADS', 'SEQUENCE_HEADS', 'SEQUENCE_HEAD_OPTIONS', 'known_heads', 'is_sequence_head', 'build_head', 'count_parameters', 'FeatureKey', 'FrameTable', 'load_frame_table', 'split_by_track', 'TrainedHead', 'CLASS_WEIGHTS', 'class_weights_for', 'predict_logits', 'train_head', 'FusionComparison', 'cross_validate', 'evaluate_heads']
