"""The release: the index of videos and annotation files, labels and the length policy, folds, the
submission file and its validator, and the embedded demo generator (``kitlib.data.demo``).
"""
from kitlib.data.folds import label_histograms, make_folds, read_folds
from kitlib.data.release import HEADER, SPLITS, VIDEO_EXTENSIONS, SIDES, Track, videoid_of, DataError, DataIndex, discover, read_test_names, read_labels, align_labels

__all__ = ['HEADER', 'SPLITS', 'VIDEO_EXTENSIONS', 'SIDES', 'Track', 'videoid_of', 'DataError', 'DataIndex', 'discover', 'read_test_names', 'read_labels', 'align_labels', 'label_histograms', 'make_folds', 'read_folds']
