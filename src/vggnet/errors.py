"""The one error type a user is shown: :class:`VggnetError`, whose message names the file or
the argument at fault. The command line prints it as ``vggnet CMD: error: ...`` (exit 2);
the Python API raises it (a ValueError, so ``except ValueError`` keeps working).

File-system failures (a full disk, a read-only folder, a path under /proc) are turned into
it by :func:`os_error`, which names the path and says what was being done.
"""

from __future__ import annotations

import errno
from pathlib import Path


class VggnetError(ValueError):
    """Bad input, a bad file or a failed write: the message is the whole story, no traceback."""


class DivergedError(VggnetError, FloatingPointError):
    """The loss went to NaN or infinity: the run stops before the checkpoint takes it."""


class RunFolderBusy(VggnetError):
    """Another process holds the run folder's lock."""


def os_error(exc: OSError, doing: str = "", path: str | Path | None = None, hint: str = "") -> VggnetError:
    """``exc`` as one line: what was being done (``doing``: "write", "read" ...), to which
    path, why, and what to do about it (a full disk says so whatever the caller's hint)."""
    where = path if path is not None else exc.filename
    why = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno == errno.ENOSPC:
        hint = hint or "free some space and run the command again"
    what = " ".join(str(w) for w in (f"cannot {doing}" if doing else "", where or "") if w)
    return VggnetError((f"{what}: {why}" if what else why) + (f"; {hint}" if hint else ""))
