"""The operator's CLI, run from a laptop: ``python -m scripts <command>``."""
