"""forgetting-laws: measure, fit, predict and mitigate forgetting when LLMs are fine-tuned with LoRA.

Importing the package does not import torch: fitting and figures work without a GPU stack.
"""

__version__ = "0.1.0"

from .store import load_runs  # noqa: E402

__all__ = ["load_runs", "__version__"]
