"""A finished run carried to any video: the model bundle (``bundle``) and the predictor (``predictor``)."""
from kitlib.inference.bundle import FORMAT_VERSION, Bundle, BundleError, read_bundle
from kitlib.inference.predictor import COLUMNS, Predictor, VideoPrediction

__all__ = ["FORMAT_VERSION", "Bundle", "BundleError", "read_bundle", "COLUMNS", "Predictor", "VideoPrediction"]
