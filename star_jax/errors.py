"""The one exception type for mistakes a user can make.

Anything raised as `StarError` reaches the user as a single line naming the file, field or flag
at fault, with a non-zero exit and no traceback (see `star_jax.cli.main`). Everything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

import argparse


class StarError(Exception):
    """A user-caused error: bad config, missing file, invalid data, mismatched store version, ..."""

    exit_code = 2


class Preempted(StarError):
    """SIGTERM stopped a training stage after it checkpointed a step: the same command resumes it."""

    exit_code = 143  # 128 + SIGTERM: what a shell reports for a process SIGTERM ended


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one-line `StarError`s."""

    def error(self, message: str):  # argparse's default prints the usage block too
        raise StarError(f"{self.prog}: {message}")
