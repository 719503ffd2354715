"""What every livedata command shares at its edge: argument errors, exit codes, logging setup.

Commands report an expected failure as ONE line on stderr (``prog: what is
wrong``) and a documented exit status, never a traceback: operators read
these lines in CI logs and journals, and scripts branch on the status.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import NoReturn

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2  # bad command line or bad configuration


class CommandError(Exception):
    """An expected failure that ends a command with one message line and ``status``."""

    def __init__(self, message: str, status: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.status = status


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (plus the exit status 2), like every other error of ours."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see --help)\n")


def fail(prog: str, message: object, status: int) -> int:
    """Print the one-line report of an expected failure and return the exit status to use."""
    text = " ".join(str(message).split())  # one line, whatever the underlying error looked like
    print(f"{prog}: {text}", file=sys.stderr)
    return status


def setup_logging(debug: bool) -> None:
    """Timestamped lines on stderr; kazoo's own chatter only when debugging."""
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("kazoo").setLevel(logging.DEBUG if debug else logging.WARNING)
