"""kompakt: compressed image models from PyTorch training to measured inference engines.

The package root stays light: heavy submodules (torch layers, export, deploy) are imported by the
caller, so `kompakt.runtime` can be embedded without torch.
"""

from kompakt.errors import KompaktError

__version__ = "0.1.0"

__all__ = ["KompaktError", "__version__"]
