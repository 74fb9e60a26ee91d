"""Errors that end a command with a one-line message and a documented exit code."""


class MoeEnvError(Exception):
    """A failure the user can act on; the CLI prints `moe-env: error: <message>` and exits with `exit_code`."""

    exit_code = 2


class UsageError(MoeEnvError):
    """Bad usage or bad input (exit 2)."""

    exit_code = 2


class MatrixError(MoeEnvError):
    """A compat_matrix file that does not validate (names file and key)."""

    exit_code = 2


class NetworkError(MoeEnvError):
    """A network step failed; the message says what still works offline."""

    exit_code = 3
