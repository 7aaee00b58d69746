"""Faces from raw video: decoding (``video``), detectors behind one registry (``detectors``: boxes, scores
and 5 landmarks per face; ``landmarks``: plausibility checks of those), which face is each track's
person (``selection``), all tracks of a video assigned jointly (``assign``) on top of one face track
per annotated person (``tracking``), who is who over the whole video (``identity``: face embeddings,
tracklets, persons, and which person each positional track is), and multi-scale crops (``crops``).
"""
from kitlib.faces.crops import crop_faces, normalize
from kitlib.faces.detectors import (FaceDetector, DETECTORS, register_detector, build_detector, detector_record,
                                    DETECTION_COLUMNS, LANDMARK_COLUMNS, LANDMARK_NAMES, as_detections, boxes_of,
                                    landmarks_of, pack_detections, scores_of)
from kitlib.faces.detectors.boxes import BOX_COLUMNS, BoxesDetector
from kitlib.faces.detectors.facealignment import FACE_ALIGNMENT_WEIGHTS, face_alignment_weight_paths, FaceAlignmentDetector
from kitlib.faces.detectors.haar import HaarDetector
from kitlib.faces.detectors.centerface import CenterFaceDetector, centerface_weights
from kitlib.faces.selection import STRATEGIES, preference, read_selection, release_selection, strategies_of
from kitlib.faces.assign import AssignSettings, JointTracker, overlap_frames, track_video, usable_faces
from kitlib.faces.identity import (EMBEDDERS, IDENTITY_STRATEGIES, ArcFaceEmbedder, ColourTextureEmbedder, FaceEmbedder,
                                   IdentityPlan, IdentitySettings, build_embedder, decide_identities)
from kitlib.faces.tracking import MISSING, DETECTED, BRIDGED, FOLLOWED, INTERPOLATED, STATUS_NAMES, FaceTrack, box_iou, FollowSettings, masked_ncc, visible_fraction, FaceTracker, bridge_gaps, track_faces

__all__ = ['FaceDetector', 'DETECTORS', 'register_detector', 'build_detector', 'detector_record',
           'DETECTION_COLUMNS', 'LANDMARK_COLUMNS', 'LANDMARK_NAMES', 'as_detections', 'boxes_of', 'landmarks_of',
           'pack_detections', 'scores_of', 'CenterFaceDetector',
           'centerface_weights', 'STRATEGIES', 'preference', 'read_selection', 'release_selection', 'strategies_of',
           'AssignSettings', 'JointTracker', 'overlap_frames', 'track_video', 'usable_faces', 'EMBEDDERS',
           'IDENTITY_STRATEGIES', 'ArcFaceEmbedder', 'ColourTextureEmbedder', 'FaceEmbedder', 'IdentityPlan',
           'IdentitySettings', 'build_embedder', 'decide_identities', 'INTERPOLATED', 'HaarDetector', 'FACE_ALIGNMENT_WEIGHTS', 'face_alignment_weight_paths', 'FaceAlignmentDetector', 'BOX_COLUMNS', 'BoxesDetector', 'MISSING', 'DETECTED', 'BRIDGED', 'FOLLOWED', 'STATUS_NAMES', 'FaceTrack', 'box_iou', 'FollowSettings', 'masked_ncc', 'visible_fraction', 'FaceTracker', 'bridge_gaps', 'track_faces', 'crop_faces', 'normalize']
