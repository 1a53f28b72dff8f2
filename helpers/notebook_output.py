"""Print warnings and log lines the same way on every machine, for the notebooks.

Python prints a warning with the path and line of the code that raised it, and
Opacus sets up logging with timestamps when it is imported. Both differ between
machines and runs, which a notebook's committed outputs should not.
`plain_output` keeps every warning and log line visible, but prints them as
"Category: message" and "LEVEL:logger: message".
"""

from __future__ import annotations

import logging
import warnings

LOG_FORMAT = "%(levelname)s:%(name)s: %(message)s"


def short_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    line: str | None = None,
) -> str:
    """Format a warning as "Category: message", without its file and line."""
    return f"{category.__name__}: {message}\n"


def plain_output() -> None:
    """Print warnings without paths, and log lines without timestamps, from now on.

    Replaces `warnings.formatwarning` and the root logger's handlers, so call it
    once, after the imports, at the top of a notebook.
    """
    warnings.formatwarning = short_warning
    logging.basicConfig(format=LOG_FORMAT, force=True)
