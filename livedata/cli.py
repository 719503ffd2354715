"""What every livedata command shares at its edge: argument errors, exit codes, logging setup.

Commands report an expected failure as ONE line on stderr (``prog: what is
wrong``) and a documented exit status, never a traceback: operators read
these lines in CI logs and journals, and scripts branch on the status.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any, Callable, NoReturn, TypeVar

from livedata.logs import LEVELS
from livedata.logs import setup_logging as setup

T = TypeVar("T")

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


def argument(parse: Callable[[str], T]) -> Callable[[str], T]:
    """A config-spec parser (``znode_path``, ``byte_size``...) as an argparse ``type``: same rules, one line."""

    def parse_argument(text: str) -> T:
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    parse_argument.__name__ = parse.__name__  # argparse names the type in its messages
    return parse_argument


def program_name(module: str) -> str:
    """The name the user typed: ``livedata-write`` for the console script, ``module`` for ``python -m module``.

    Messages start with it and ``--version`` prints it, so they name the command as it appears in the user's
    script or CI job. Under ``python -m`` (``argv[0]`` is then the module's file) or ``python -c``, the
    module's dotted name is what was typed.
    """
    typed = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if not typed or typed in ("-c", "-m") or typed.endswith((".py", ".pyc")):
        return module
    return typed


def fail(prog: str, message: object, status: int) -> int:
    """Print the one-line report of an expected failure and return the exit status to use."""
    text = " ".join(str(message).split())  # one line, whatever the underlying error looked like
    print(f"{prog}: {text}", file=sys.stderr)
    return status


def version() -> str:
    """The installed distribution's version (what ``pip show livedata`` says)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed_version

    try:
        return installed_version("livedata")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


class _VersionAction(argparse.Action):
    """argparse's ``version`` action, but the version is looked up only when asked for.

    Looking it up imports ``importlib.metadata`` (with email, zipfile, csv...): about 3 MB resident that a
    daemon would carry for its whole life just to be able to answer ``--version``.
    """

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        print(f"{parser.prog} {version()}")
        parser.exit()


class _VersionOrValue(argparse.Action):
    """``--version`` alone: the installed version, as everywhere; ``--version VALUE``: stored like any option."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs="?", default=None, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, *_: object) -> None:
        if values is None:
            print(f"{parser.prog} {version()}")
            parser.exit()
        setattr(namespace, self.dest, values)


def add_common_arguments(parser: argparse.ArgumentParser, version_help: str | None = None) -> None:
    """``--version``, ``--log-level`` and ``--debug``, the same on every livedata command.

    ``version_help``: ``--version`` may also take a value (``livedata-read --version K``); alone, it still
    shows the installed version.
    """
    if version_help is None:
        parser.add_argument("--version", action=_VersionAction, help="show the installed version and exit")
    else:
        parser.add_argument("--version", action=_VersionOrValue, dest="version_value", metavar="K", help=version_help)
    parser.add_argument(
        "--log-level", choices=LEVELS, default=None, help="least severe messages logged (default: info)"
    )
    parser.add_argument("--debug", action="store_true", help="same as --log-level debug, kazoo's messages included")


def log_level(args: argparse.Namespace) -> str:
    if getattr(args, "debug", False):
        return "debug"
    return getattr(args, "log_level", None) or "info"


def setup_logging(debug: bool, level: str | None = None) -> None:
    """Timestamped lines on stderr (``<N>``-prefixed ones for the journal); kazoo's chatter only when debugging."""
    setup(level or ("debug" if debug else "info"))
