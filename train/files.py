"""The application's file toolkit: files written whole or not at all (a temp file beside the target, renamed
over it), the sweep of temp files a killed process left, and a directory lock; one rule says whether the process
behind a temp file or a lock is gone."""
from __future__ import annotations

import atexit
import errno
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

from .errors import UserError

TEMP_SUFFIX = ".roberta-lora.tmp"  # atomic_write's temp files: ".<name>.<host>.<pid>.<random>.roberta-lora.tmp"
ABANDONED_SECONDS = 24 * 3600  # another machine's temp file or lock this old is abandoned


def _host() -> str:
    return socket.gethostname().replace(".", "_") or "host"


def gone(host: str, pid: str, mtime: float) -> bool:
    """Whether the process that made a temp file or lock (its host and pid, the file's mtime) is gone: a pid
    that no longer runs on this machine, or another machine's file untouched for a day (a shared folder)."""
    if host not in (_host(), socket.gethostname()):
        return time.time() - mtime > ABANDONED_SECONDS
    if not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # someone else's live process
        return False
    return False


def stale_temp(path: Path) -> bool:
    """Whether `path` is an atomic_write temp file whose process is gone."""
    parts = path.name.removesuffix(TEMP_SUFFIX).split(".")
    if not path.name.endswith(TEMP_SUFFIX) or len(parts) < 4 or not parts[-2].isdigit():
        return False  # not ours: never touched
    return gone(parts[-3], parts[-2], path.stat().st_mtime)


def temp_name(target: Path) -> tuple[str, str]:
    """(prefix, suffix) for a temp file or folder beside `target` that sweep_temps can tell from the user's."""
    return f".{target.name}.{_host()}.{os.getpid()}.", TEMP_SUFFIX


def sweep_temps(folder: Path, pattern: str = "*") -> None:
    """Remove the stale temp files and folders (stale_temp) in `folder` whose target's name matches `pattern`."""
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


def write_bytes(target: Path, data: bytes) -> None:
    atomic_write(target, lambda p: Path(p).write_bytes(data))


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it is to set it and put it back
    os.umask(mask)
    return mask


def lock(path: Path, what: str) -> None:
    """Claim `path` (a lock file) for this process, or refuse in one line while another live process holds it
    (`what` names what it guards). A lock whose process is gone is taken over. Released by unlock(), and at exit."""
    mine = f"{_host()} {os.getpid()}"
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = (path.read_text(errors="replace").split() + ["", ""])[:2]
            if " ".join(holder) == mine or gone(holder[0], holder[1], path.stat().st_mtime):
                path.unlink(missing_ok=True)  # ours already, or its process is gone: take it over
                continue
            raise UserError(f"{what} is being written by process {holder[1]} on {holder[0]} (its {path.name}); "
                            f"wait for it to end, or pick another --output-dir (remove {path} if that process "
                            "is gone)") from None
        with os.fdopen(fd, "w") as f:
            f.write(mine + "\n")
        atexit.register(unlock, path)
        return


def unlock(path: Path) -> bool:
    """Release the lock at `path` if this process holds it; True if it did."""
    try:
        if path.read_text().split() != [_host(), str(os.getpid())]:
            return False
        path.unlink()
        return True
    except OSError:
        return False
