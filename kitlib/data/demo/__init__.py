"""The embedded demo dataset: a small, synthetic Aff-Wild2 EXPR release that the kit generates itself.

The kit must run end to end with no data and no internet, so this module writes a dataset in the
exact layout of the real release (raw videos with audio, ``Train_Set`` / ``Validation_Set``
annotation files, test names and submission template), plus a class-per-folder face image set that
stands in for AffectNet / RAF-DB in Stage-I adaptation (paper Sec. 3.1) and a ``truth/`` folder the
real release does not have (labels of every track including test, face boxes, which modality
carries the class). Layout under ``root``::

    videos/batch{1,2}/<videoid>.mp4           h264 yuv420p video + AAC 44.1 kHz stereo audio
    annotations/{Train_Set,Validation_Set}/<txtid>.txt
    test/names.txt, test/template.txt
    images/{train,val}/<ClassName>/*.png      112x112 face crops
    cropped_aligned/<txtid>/<00001>.jpg       the organisers' kind of face crops: 112x112, tight on the
                                              face box, 1-based frame numbers, no file where no face
    truth/<txtid>.npz                         labels, boxes, face_visible, visual_signal, audio_signal,
                                              visual_class, audio_class (what the picture / sound shows)
    demo_manifest.json                        written last: params, tracks, statistics

What makes the demo exercise the real pipeline (Stage II, Sec. 3.2): faces are built from the real
photo shipped with scikit-image so OpenCV's Haar cascade finds them; each class has a drawn facial
cue and a distinct sound (harmonic tone with a class-specific fundamental and amplitude-modulation
rate); faces move, change scale, cross the frame border (zero-padded crops) and go missing; about a
quarter of the labelled frames show a neutral face whatever the label and another quarter carry no
sound, so gated audio-visual fusion (eqs. 9-12) beats either modality; short bursts of the wrong
cue make inference-time temporal smoothing pay off. One train video has two annotated people
(``_left`` / ``_right``) and one annotation file is one line longer than its video.

Modules: ``faces`` (drawn faces), ``timeline`` (per-frame plans, sounds), ``generate`` (writing the release).
"""
from kitlib.data.demo.faces import FACE_SOURCE_ROWS, FACE_SOURCE_COLS, PATCH_FACE_BOX, HAAR_CASCADE, IMAGE_SIZE, OFFICIAL_CROP_SIZE, OFFICIAL_CROPS_DIR, base_face, draw_expression, Identity, face_sprites, official_crop
from kitlib.data.demo.generate import DEMO_VERSION, MANIFEST_NAME, TEMPLATE_HEADER, write_mp4, demo_is_complete, generate_demo
from kitlib.data.demo.timeline import REAL_CLASS_RATIO, CLASS_F0_HZ, CLASS_AM_HZ, synth_audio

__all__ = ['FACE_SOURCE_ROWS', 'FACE_SOURCE_COLS', 'PATCH_FACE_BOX', 'HAAR_CASCADE', 'IMAGE_SIZE', 'OFFICIAL_CROP_SIZE', 'OFFICIAL_CROPS_DIR', 'base_face', 'draw_expression', 'Identity', 'face_sprites', 'official_crop', 'REAL_CLASS_RATIO', 'CLASS_F0_HZ', 'CLASS_AM_HZ', 'synth_audio', 'DEMO_VERSION', 'MANIFEST_NAME', 'TEMPLATE_HEADER', 'write_mp4', 'demo_is_complete', 'generate_demo']
