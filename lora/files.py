"""Files written whole or not at all: a temp file beside the target, renamed over it; and the sweep of temp
files a killed process left."""
from __future__ import annotations

import errno
import os
import socket
import tempfile
import time
from pathlib import Path


TEMP_SUFFIX = ".roberta-lora.tmp"  # atomic_write's temp files: ".<name>.<host>.<pid>.<random>.roberta-lora.tmp"


def _host() -> str:
    return socket.gethostname().replace(".", "_") or "host"


def alive(pid: int) -> bool:
    """Whether process `pid` runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def stale_temp(path: Path) -> bool:
    """Whether `path` is an atomic_write temp file whose process is gone: made on this machine by a pid that
    no longer runs, or on another machine (a shared folder) and untouched for a day."""
    parts = path.name.removesuffix(TEMP_SUFFIX).split(".")
    if not path.name.endswith(TEMP_SUFFIX) or len(parts) < 4 or not parts[-2].isdigit():
        return False  # not ours: never touched
    if parts[-3] != _host():
        return time.time() - path.stat().st_mtime > 24 * 3600
    return not alive(int(parts[-2]))


def temp_name(target: Path) -> tuple[str, str]:
    """(prefix, suffix) for a temp file or folder beside `target` that sweep_temps can tell from the user's."""
    return f".{target.name}.{_host()}.{os.getpid()}.", TEMP_SUFFIX


def sweep_temps(folder: Path, pattern: str = "*") -> None:
    """Remove the stale temp files and folders (stale_temp) in `folder` whose target's name matches `pattern`."""
    import shutil

    for tmp in folder.glob(f".{pattern}.*{TEMP_SUFFIX}") if folder.is_dir() else ():
        try:
            if stale_temp(tmp):
                shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        except OSError:
            continue


def atomic_write(target: Path, write) -> None:
    """Call write(temp_path) beside `target`, then rename it over `target`: a crash never leaves half a file,
    and a link at `target` is replaced, never followed. The file gets the mode a plain open() would give
    (0666 less the umask), not mkstemp's private 0600. A write that fails for any reason (a full disk inside
    torch.save or safetensors, say) leaves no temp file and is raised as OSError naming `target`."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=temp_name(target)[0], suffix=TEMP_SUFFIX)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, Exception) and not isinstance(e, OSError):
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise OSError(errno.ENOSPC if "space" in first.lower() else errno.EIO, f"cannot write ({first[:200]})",
                          str(target)) from e
        raise


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it is to set it and put it back
    os.umask(mask)
    return mask
