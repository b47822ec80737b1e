"""Writing a new file whole or not at all.

    write_new_file(Path("lab-a-inventory-v3.pwenv"), envelope, mode=0o644)

The bytes go to a temporary file beside the target with the final mode, are fsynced, and are
then hard-linked into place, so a crash leaves no file or the whole file, never a truncated one,
and an existing file is never replaced (the link fails instead of overwriting).
"""

from __future__ import annotations

import os
from pathlib import Path

from attest.errors import OutputFileError


def write_new_file(path: Path, data: bytes, *, mode: int) -> None:
    """Write ``data`` durably to a new file at ``path``; :class:`OutputFileError` if it exists."""
    path = Path(path)
    directory = path.parent
    if path.exists():
        raise OutputFileError(f"{path} already exists; refusing to overwrite it")
    if not directory.is_dir():
        raise OutputFileError(f"directory {directory} does not exist")
    tmp = directory / f".{path.name}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # the umask must not widen or narrow what we ask for
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise OutputFileError(f"{path} already exists; refusing to overwrite it") from None
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
