"""Files a user may interrupt: writes leave the old file or the new one, never half of one
(a temporary file in the target's folder, then a rename, atomic on POSIX), and a run
folder has one writer at a time (:class:`FolderLock`)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
from pathlib import Path
from typing import Iterator

from .errors import RunFolderBusy

try:
    import fcntl
except ImportError:     # Windows: no flock; runs there are not locked
    fcntl = None  # type: ignore[assignment]


# The names `replacing` gives its temporaries: .NAME.PID.tmp, .NAME.PID.tmp.png, .NAME.PID.part
TEMPORARY = re.compile(r"\..+\.\d+(\.tmp|\.tmp\.png|\.part)")


@contextlib.contextmanager
def replacing(path: str | Path, fsync: bool = False, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path beside ``path`` for the block to write; renamed over ``path`` when
    the block ends (fsynced first if asked), removed if it fails: readers see the old file
    or the new one, never half of one, and nothing stray is left. ``suffix``: for writers
    that choose the format by the name (matplotlib)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}{suffix}")
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file beside it."""
    with replacing(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_safetensors_atomic(path: str | Path, tensors: dict, metadata: dict[str, str] | None = None) -> Path:
    """Tensors to a safetensors file through a fsynced temporary file beside it; a failed
    write (a full disk, a read-only folder) raises OSError naming ``path`` (safetensors'
    own error only says "os error 28")."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file
    with replacing(path, fsync=True) as tmp:
        try:
            save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        except SafetensorError as exc:
            code = re.search(r"os error (\d+)", str(exc))
            if code is None:
                raise
            raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path)) from None
    return Path(path)


def copy_atomic(src: str | Path, dst: str | Path) -> Path:
    """Copy ``src`` over ``dst`` through a fsynced temporary file beside it."""
    with replacing(dst, fsync=True) as tmp:
        shutil.copyfile(src, tmp)
    return Path(dst)


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes, read in 1 MiB chunks (archives and weights are large)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class FolderLock:
    """An exclusive lock on a folder: ``flock`` on FOLDER/.lock, released when the process
    ends however it ends (SIGKILL too), so a crashed run never leaves a stale lock."""

    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder) / ".lock"
        self.fh = None

    def acquire(self, what: str = "run") -> "FolderLock":
        """Take the lock, or RunFolderBusy naming the process that holds it."""
        fh = open(self.path, "a+")
        if fcntl is not None:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.seek(0)
                holder = fh.read().strip() or "another process"
                fh.close()
                raise RunFolderBusy(f"{self.path.parent} is in use by another vggnet {what} ({holder}); wait for "
                                    "it to end, or choose another --out") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}")
        fh.flush()
        self.fh = fh
        return self

    @property
    def held(self) -> bool:
        return self.fh is not None

    def release(self) -> None:
        if self.fh is not None:
            self.fh.close()     # closing the file drops the flock
            self.fh = None


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files a killed writer left in ``folder`` (call it holding the
    folder's lock: no other writer can be mid-write); returns what was removed."""
    stale = [p for p in Path(folder).iterdir() if TEMPORARY.fullmatch(p.name) and p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale
