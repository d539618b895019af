"""The one exception type for mistakes a user can make.

Anything raised as `StarError` reaches the user as a single line naming the file, field or flag
at fault, with a non-zero exit and no traceback (see `star_jax.cli.main`). Everything else is a
bug and keeps its traceback.
"""

from __future__ import annotations


class StarError(Exception):
    """A user-caused error: bad config, missing file, invalid data, mismatched store version, ..."""

    exit_code = 2
