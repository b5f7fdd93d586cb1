"""ngfkit: backdoor removal by Natural Gradient Fine-tuning (NGF), reproduced and benchmarked.

The small public API; everything else lives in the modules named after the paper's ideas
(``data``, ``models``, ``attacks``, ``fisher``, ``ngf``, ``defences``, ``metrics``, ``pipeline``).
"""
from .attacks import create_attack
from .data import load_dataset
from .defences import purify
from .errors import NgfkitError
from .metrics import evaluate
from .models import build_model
from .pipeline import Experiment, load_or_train, load_splits, model_from_checkpoint, run_defence
from .version import __version__

__all__ = ["__version__", "Experiment", "NgfkitError", "build_model", "create_attack", "evaluate", "load_dataset",
           "load_or_train", "load_splits", "model_from_checkpoint", "purify", "run_defence"]
