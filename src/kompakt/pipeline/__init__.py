"""`kompakt pipeline`: train -> compress -> export -> deploy -> bench, cached per stage."""

from kompakt.pipeline.runner import format_summary, load_config, run_pipeline

__all__ = ["format_summary", "load_config", "run_pipeline"]
