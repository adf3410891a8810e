"""The application's file toolkit: files written whole or not at all (a temp file beside the target, renamed
over it), the sweep of temp files a killed process left, and a directory lock; one rule says whether the process
behind a temp file or a lock is gone. Also the one guard every writer passes (check_output), the one reader of
JSON the tool wrote (read_json_as), where the cache lives (cache_home), and numbers from the environment (env_int)."""
from __future__ import annotations

import atexit
import errno
import json
import math
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable

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


def cache_home() -> Path:
    """$XDG_CACHE_HOME as the XDG spec reads it: unset, empty or relative (after ~ is expanded) means ~/.cache,
    so an empty value never puts the cache in the current directory."""
    given = os.path.expanduser(os.environ.get("XDG_CACHE_HOME", ""))
    return Path(given) if given and os.path.isabs(given) else Path(os.path.expanduser("~")) / ".cache"


def env_int(name: str, default: int, minimum: int = 0) -> int:
    """Environment variable `name` as a whole number >= `minimum`, in ASCII digits alone (int() would take "٣",
    " 3", "+3" and "1_000"); unset or empty means `default`; anything else is one UserError line naming it."""
    value = os.environ.get(name, "")
    if value == "":
        return default
    if re.fullmatch(r"-?[0-9]{1,18}", value) and int(value) >= minimum:
        return int(value)
    raise UserError(f"environment variable {name}={value!r} is not a whole number >= {minimum} (ASCII digits)")


def check_output(path: str | Path, *, inputs: Iterable[str | Path] = (), overwrite: bool = False,
                 ours: Callable[[Path], bool] | None = None, flag: str = "--output") -> Path:
    """`path`, when the tool may write it; else one UserError line. An output that is one of `inputs`, holds one
    or lies inside one (compared resolved, and by inode where both exist, so no link, '..' or hard link fools
    it) is refused even with --overwrite. Something already at `path` (a dangling link too) is replaced only
    when `ours` says this tool wrote it, or `overwrite` (the user's --overwrite) says so."""
    out = Path(path)
    target = out.resolve()
    sources = [(given, Path(given).resolve()) for given in inputs if Path(given).exists()]
    for given, real in sources:  # the same file first: the plainest account when one input holds another
        if target == real or (out.exists() and os.path.samefile(out, given)):
            raise UserError(f"{path} ({flag}) is the input {given}: writing it would destroy it; pick another {flag}")
    for given, real in sources:
        if real in target.parents or target in real.parents:
            where = "lies inside" if real in target.parents else "holds"
            raise UserError(f"{path} ({flag}) {where} the input {given}; pick another {flag}, outside it")
    if os.path.lexists(out) and not overwrite and not (ours is not None and _safely(ours, out)):
        whose = "this tool did not write it" if ours is not None else "nothing marks it as this tool's output"
        raise UserError(f"{path} ({flag}) already exists and {whose}; pick another {flag}, or --overwrite to "
                        "replace it")
    return out


def _safely(test: Callable[[Path], bool], path: Path) -> bool:
    """test(path), with a file that cannot be read counting as not ours."""
    try:
        return bool(test(path))
    except (OSError, ValueError, UserError):
        return False


class Shape:
    """A named test of one JSON value, for read_json_as: Shape("a number", lambda v: ...)."""

    def __init__(self, name: str, test: Callable[[Any], bool]) -> None:
        self.name, self.test = name, test


NUMBER = Shape("a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v))
WHOLE = Shape("a whole number", lambda v: isinstance(v, int) and not isinstance(v, bool))
TEXT = Shape("a string", lambda v: isinstance(v, str))
ANY = Shape("anything", lambda v: True)


def shape_problem(value: Any, shape: Any, where: str = "") -> str | None:
    """What in `value` is not `shape`, or None. A shape is a Shape, a dict {key: shape} (an object with at least
    those keys; "key?" for one that may be missing), or [shape] (a non-empty list of such items)."""
    here = where or "the top level"
    if isinstance(shape, Shape):
        return None if shape.test(value) else f"{here} is {_brief(value)}, not {shape.name}"
    if isinstance(shape, dict):
        if not isinstance(value, dict):
            return f"{here} is {_brief(value)}, not an object"
        for key, inner in shape.items():
            optional, key = key.endswith("?"), key.removesuffix("?")
            if key not in value:
                if optional:
                    continue
                return f"{where + '.' if where else ''}{key} is missing"
            found = shape_problem(value[key], inner, f"{where + '.' if where else ''}{key}")
            if found:
                return found
        return None
    if not isinstance(value, list) or not value:
        return f"{here} is {_brief(value)}, not a non-empty list"
    return next((p for i, v in enumerate(value) if (p := shape_problem(v, shape[0], f"{where}[{i}]"))), None)


def _brief(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, float) or math.isfinite(value) else str(value)
    return text if len(text) <= 40 else f"{type(value).__name__} {text[:37]}..."


def read_json_as(path: str | Path, what: str, shape: Any = ANY, hint: str = "") -> Any:
    """The JSON in `path`, checked against `shape` (shape_problem), or one UserError line naming the file: missing,
    unreadable, not UTF-8, cut short, not JSON (a number too long to parse, nesting too deep), or not the shape
    of `what` (e.g. "the eval.json of a run"). `hint` says what to do (e.g. "remove it to rerun that run")."""
    path = Path(path)
    tail = f"; {hint}" if hint else ""
    if not path.is_file():
        raise UserError(f"{path} does not exist{tail}")
    try:
        value = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        detail = (f"{e.msg}, line {e.lineno}" if isinstance(e, json.JSONDecodeError) else "nested too deeply"
                  if isinstance(e, RecursionError) else (str(e).splitlines() or [type(e).__name__])[0][:80])
        raise UserError(f"{path} is not valid JSON ({detail}), so not {what}{tail}") from None
    problem = shape_problem(value, shape)
    if problem:
        raise UserError(f"{path} is not {what}: {problem}{tail}")
    return value
