"""Placeholder until its owner lands it: registers the subcommand so the CLI assembles."""

from moe_env.errors import UsageError


def register(sub) -> None:
    p = sub.add_parser("build-steps", help="(not built yet)")
    p.set_defaults(func=run)


def run(args) -> int:
    raise UsageError("'build-steps' is not built yet")
