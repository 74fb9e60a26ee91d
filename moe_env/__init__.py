"""moe-env: know whether an environment can train a Mixture-of-Experts project before the GPU-week."""

__version__ = "0.1.0"
