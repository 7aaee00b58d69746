"""ABAW EXPR kit: frame-level audio-visual expression recognition on Aff-Wild2.

The pipeline follows Sun & Gao, "A Two-Stage Dual-Modality Model for Facial Emotional Expression
Recognition" (arXiv:2603.12221): Stage I adapts a DINOv2 backbone on face images, Stage II fuses
multi-scale face features with frame-aligned wav2vec 2.0 features and smooths the logits in time.
The numbered notebooks in ``notebooks/`` call ``kitlib.stages`` (one wiring module per notebook, the
only place that reads the params), which calls the domain packages (``data``, ``faces``, ``visual``,
``audio``, ``fusion``, ``smoothing``); see the README's "Architecture".
"""
import warnings

# The kit's bars are text bars (kitlib.progress); libraries that import tqdm.auto inside a Jupyter
# kernel without ipywidgets would otherwise open every executed notebook with this warning.
warnings.filterwarnings("ignore", message="IProgress not found")

__version__ = "0.1.0"

CLASSES: tuple[str, ...] = ("Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise", "Other")
NUM_CLASSES: int = len(CLASSES)
