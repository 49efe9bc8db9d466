"""Inference without PyTorch: load an artifact, read images, run its stored onnxruntime graph,
calibrate, decide, write rows.  Every face (CLI, Python API, and later the REST API, DICOM node
and batch engine) builds one :class:`Predictor` and calls it."""

from fracdet.inference.backends import BACKENDS, choose_backend
from fracdet.inference.prediction import Prediction, StudyPrediction
from fracdet.inference.predictor import Predictor, load_model
from fracdet.inference.studies import STUDY_AGGREGATIONS, group_by_study, read_study_map, study_key

__all__ = ["BACKENDS", "STUDY_AGGREGATIONS", "Prediction", "Predictor", "StudyPrediction", "choose_backend",
           "group_by_study", "load_model", "read_study_map", "study_key"]
