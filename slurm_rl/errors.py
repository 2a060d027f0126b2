"""One error family. Each error carries the process exit code the CLI uses for it.

Exit codes (documented in the README and `slurm-rl --help`):
  0  success
  1  the run failed (a role kept failing past its restart budget, a full restart failed, ...)
  2  bad input: config, arguments, files
  3  the environment cannot run this (Slurm commands missing, controller unreachable, ...)
  4  the run is in use: another controller of it is running (`resume` refused)
  130 interrupted (Ctrl-C)
"""

from __future__ import annotations


class SlurmRLError(Exception):
    """Base of every error slurm-rl reports to a user. The message says what and how to fix it."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class RunFailed(SlurmRLError):
    """The run itself failed (exit 1)."""

    exit_code = 1


class BadInput(SlurmRLError):
    """A user mistake in a config, an argument or a file (exit 2)."""

    exit_code = 2


class ConfigError(BadInput):
    """A config value is wrong. `where` names the file, key and (when known) line."""

    def __init__(self, message: str, *, where: str | None = None, hint: str | None = None):
        super().__init__(f"{where}: {message}" if where else message, hint=hint)
        self.where = where


class EnvironmentProblem(SlurmRLError):
    """The machine cannot do what was asked: Slurm missing, controller gone, ... (exit 3)."""

    exit_code = 3


class RunInUse(SlurmRLError):
    """Another process holds the run (a live controller): try again once it is gone (exit 4)."""

    exit_code = 4


class PackageMissing(EnvironmentProblem):
    """A package this needs is not installed (vLLM for the vllm engine): no restart fixes it."""


class BackendError(EnvironmentProblem):
    """A scheduler or process backend call failed."""


class SyncError(SlurmRLError):
    """A weight transfer failed (peer died, hung past its deadline, corrupt data). Retry elsewhere."""


class ProtocolError(SlurmRLError):
    """A control-plane message was malformed, unauthenticated or too large."""


# A role that cannot start for a reason no restart fixes (a broken model dir, a package not
# installed) exits with one of these after telling the controller why; the controller ends the run
# on the first one instead of spending the restart budget (sysexits' EX_CONFIG and EX_UNAVAILABLE).
ROLE_EXIT_INPUT = 78
ROLE_EXIT_ENVIRONMENT = 69
FATAL_ROLE_EXITS = {ROLE_EXIT_INPUT: "input", ROLE_EXIT_ENVIRONMENT: "environment"}


def role_exit_code(exc: BaseException) -> int:
    """The exit code of a role process that failed with `exc`: deterministic causes get their own."""
    if isinstance(exc, BadInput):
        return ROLE_EXIT_INPUT
    if isinstance(exc, (ImportError, PackageMissing)):
        return ROLE_EXIT_ENVIRONMENT
    return 1


def fatal_exit_code(kind: str) -> int:
    """The CLI's exit code for a run ended by a role's deterministic failure of `kind`."""
    return BadInput.exit_code if kind == "input" else EnvironmentProblem.exit_code
