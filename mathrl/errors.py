"""User-facing errors: one line on stderr and a non-zero exit, never a traceback."""

import signal
import sys
from typing import Callable


class UserError(Exception):
    """A problem the user can fix (bad file, bad key, missing checkpoint). Printed as `error: <message>`."""


EXIT_USER_ERROR = 2


def run_cli(main: Callable[[], None]) -> None:
    """Run a script's main(); turn a UserError into `error: ...` on stderr and exit status 2. Signal handlers
    that main() installs (mathrl/resume.py) are put back when it ends."""
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        main()
    except UserError as err:
        close_progress_bars()
        print(f"error: {err}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


def close_progress_bars() -> None:
    """Close any open tqdm bar now: left to the garbage collector, its last refresh would print after our final
    message (an error, or the command that resumes a stopped run)."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()
