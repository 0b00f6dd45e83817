"""lorakit: reproducible LoRA text classifiers on BERT-family encoders.

Importing lorakit is cheap: torch and friends load only when training or predicting.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import load_config
from .errors import LorakitError
from .hookspecs import hookimpl

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .experiment import Experiment

__all__ = ["Experiment", "LorakitError", "__version__", "hookimpl", "load_config"]


def __getattr__(name: str) -> Any:
    if name == "Experiment":
        from .experiment import Experiment

        return Experiment
    raise AttributeError(f"module 'lorakit' has no attribute {name!r}")
