"""`kompakt optimize`: choose per layer how to prune, factorise, lower and quantise a trained
model against latency measured on the target, build it with the compress recipe, and prove it
against the dense baselines (see `runner`)."""

from kompakt.optimize.config import OptimizeConfig
from kompakt.optimize.runner import optimize

__all__ = ["OptimizeConfig", "optimize"]
