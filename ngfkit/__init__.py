"""ngfkit: backdoor removal by Natural Gradient Fine-tuning (NGF), reproduced and benchmarked.

The small public API; everything else lives in the modules named after the paper's ideas
(``data``, ``models``, ``attacks``, ``fisher``, ``ngf``, ``defences``, ``metrics``, ``pipeline``).
"""
__version__ = "0.1.0"

from .attacks import create_attack  # noqa: E402
from .data import load_dataset  # noqa: E402
from .defences import purify  # noqa: E402
from .errors import NgfkitError  # noqa: E402
from .metrics import evaluate  # noqa: E402
from .models import build_model  # noqa: E402
from .pipeline import Experiment, load_or_train, load_splits, model_from_checkpoint, run_defence  # noqa: E402

__all__ = ["Experiment", "NgfkitError", "build_model", "create_attack", "evaluate", "load_dataset",
           "load_or_train", "load_splits", "model_from_checkpoint", "purify", "run_defence"]
