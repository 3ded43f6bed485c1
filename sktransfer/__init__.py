"""sktransfer: transfer learning as scikit-learn estimators.

>>> from sktransfer import PretrainedFeatureExtractor, FineTuneClassifier
"""

from . import explain, metrics  # noqa: F401 - sktransfer.metrics.logme_score, sktransfer.explain.grad_cam
from .backbones import BackboneSpec, DataConfig, list_backbones, load_backbone, register_backbone
from .datasets import load_image_folder
from .extraction import PretrainedFeatureExtractor
from .finetune import FineTuneClassifier, FineTuneRegressor
from .serving import export

__version__ = "0.1.0"

__all__ = [
    "PretrainedFeatureExtractor",
    "FineTuneClassifier",
    "FineTuneRegressor",
    "BackboneSpec",
    "DataConfig",
    "list_backbones",
    "load_backbone",
    "register_backbone",
    "load_image_folder",
    "export",
    "__version__",
]
