"""The local TF-Serving-compatible executor (``mulambda executor serve``) and its models.

``server`` (HTTP: URLs, lookup, status, counters) serves ``served.ServedModel`` versions:
``synthetic`` (the prototype's dummy models, delays from ``profiles``) or ``savedmodel``
(TensorFlow SavedModels, tensors converted by ``tensor_json``); ``payloads`` parses
request bodies with TF Serving's error wording.
"""

from mulambda.emulator.profiles import SyntheticProfile
from mulambda.emulator.savedmodel import SavedModelModel, saved_model_versions
from mulambda.emulator.served import DEFAULT_SIGNATURE, VERBS, ServedModel
from mulambda.emulator.server import STATS_PATH, ExecutorServer
from mulambda.emulator.synthetic import SyntheticModel, synthetic_models

__all__ = [
    "DEFAULT_SIGNATURE",
    "STATS_PATH",
    "VERBS",
    "ExecutorServer",
    "SavedModelModel",
    "ServedModel",
    "SyntheticModel",
    "SyntheticProfile",
    "saved_model_versions",
    "synthetic_models",
]
