"""Kept for imports written before the output layer moved to moe_env/output.py."""

from moe_env.output import write_all, write_atomic  # noqa: F401
