"""The bounded readers of moe_env.untrusted that moe_env.ckpt uses, imported in one place."""

from moe_env.untrusted import UntrustedInput, as_int, inside, json_loads, printable  # noqa: F401
