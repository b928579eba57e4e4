"""What both command lines share: stderr logging, one error line, and exit codes."""

from __future__ import annotations

import logging
import sys
from typing import Callable

from .checkpoints import CheckpointError
from .datasets import DatasetError
from .frames import FrameError
from .rounds import RoundsError
from .settings import SettingsError
from .shifts import ShiftError

USER_ERRORS: tuple[type[Exception], ...] = (SettingsError, RoundsError, ShiftError, DatasetError, CheckpointError,
                                            FrameError, FileNotFoundError)


def setup_logging(name: str, verbose: bool = False) -> logging.Logger:
    logging.basicConfig(stream=sys.stderr, level=logging.DEBUG if verbose else logging.INFO,
                        format=f"%(asctime)s {name} %(levelname)s %(message)s")
    return logging.getLogger(name)


def run_cli(name: str, main: Callable[[], int], extra_errors: tuple[type[Exception], ...] = ()) -> int:
    """Run `main`; a known error becomes one clear stderr line and exit code 2."""
    try:
        return main()
    except USER_ERRORS + extra_errors as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
