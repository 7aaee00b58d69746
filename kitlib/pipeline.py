"""Moved: the wiring now lives in ``kitlib.stages`` (one module per notebook). Kept for one release.

``kitlib.pipeline.<name>`` still resolves to the same function (with a DeprecationWarning); see the
README's "Moved" table for the new place of every name.
"""
from __future__ import annotations

import warnings

from kitlib.stages import (common, s01_padaug_preview, s02_stage1_train, s03_crop_extract, s04_audio_align,
                           s05_fusion_ablation, s06_smoothing_sweep, s07_submission)

_MODULES = (common, s01_padaug_preview, s02_stage1_train, s03_crop_extract, s04_audio_align, s05_fusion_ablation,
            s06_smoothing_sweep, s07_submission)


def __getattr__(name: str):
    for module in _MODULES:
        if hasattr(module, name) and not name.startswith("__"):
            warnings.warn(f"kitlib.pipeline.{name} moved to {module.__name__}.{name}; kitlib.pipeline goes away "
                          f"in the next release", DeprecationWarning, stacklevel=2)
            return getattr(module, name)
    raise AttributeError(f"module 'kitlib.pipeline' has no attribute {name!r} (the wiring moved to kitlib.stages)")
