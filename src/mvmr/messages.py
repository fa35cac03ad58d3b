"""What the library tells the user: one logger, ``mvmr``, printed on the first process only (under DDP every rank
would say the same), information to stdout and warnings to stderr, without a prefix.

The handlers write to the current ``sys.stdout`` / ``sys.stderr`` (not the ones present at import), so the lines
follow redirections such as pytest's capture. ``logging.getLogger("mvmr")`` can be configured like any logger.
"""

from __future__ import annotations

import logging
import os
import sys

logger = logging.getLogger("mvmr")


class _CurrentStreamHandler(logging.Handler):
    """INFO to sys.stdout, WARNING and above to sys.stderr, as they are when the record is emitted."""

    def emit(self, record: logging.LogRecord) -> None:
        stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
        stream.write(self.format(record) + "\n")
        stream.flush()


if not logger.handlers:
    _handler = _CurrentStreamHandler()
    _handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(_handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def first_process() -> bool:
    """Whether this is global rank 0 (read from the launcher's environment, as Lightning does)."""
    for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if key in os.environ:
            return int(os.environ[key]) == 0
    return True


def info(message: str) -> None:
    """A line for the user on stdout (first process only)."""
    if first_process():
        logger.info(message)


def warn(message: str) -> None:
    """A line for the user on stderr (first process only)."""
    if first_process():
        logger.warning(message)
