"""Writing what tokcompile produces without ever losing a user's data.

Every command that writes goes through here, so the rules hold in one place:

* A directory output (a bundle, a Triton repository) is built in a hidden temporary sibling and
  published with one atomic rename, so a crash or SIGKILL never leaves a half-written folder at
  the output path. Temporaries of dead processes are removed by the next write to that path.
* ``--force`` replaces only what tokcompile wrote: a directory whose every file is listed by its
  own marker (a bundle's ``manifest.json``, a repository's marker file). A user's folder, a
  regular file or the current directory is never replaced, with or without ``--force``.
* One process writes an output at a time (an advisory lock beside it); a second one fails at
  once with a one-line error instead of silently replacing the first one's result.
* A single-file output (a profile, a sweep table, a picture) is written to a temporary name in
  the same folder and renamed; an existing file is replaced only with ``--force``.
* New files and folders get the user's umask (``tempfile.mkdtemp`` alone would make them 0700,
  unreadable by a server running as another user).
* ``OSError`` (permission, read-only file system, disk full) becomes a one-line error.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Optional, Union

from .errors import TokcompileError

TMP_PREFIX = ".tokcompile-tmp-"
LOCK_SUFFIX = ".tokcompile-lock"

# owned(directory) -> relative paths of the files tokcompile wrote there, or None when the
# directory is not one of tokcompile's outputs of this kind.
Owned = Callable[[Path], Optional[set[str]]]


def os_error(exc: OSError, action: str, target: Optional[Path] = None) -> TokcompileError:
    """A one-line error for a failed file operation (what, where, why, what to do); ``target``
    names the output instead of the file (a temporary one) the operation failed on."""
    name = target if target is not None else exc.filename
    where = f" '{name}'" if name else ""
    hint = {
        errno.ENOSPC: "free some disk space",
        errno.EDQUOT: "free some disk space",
        errno.EACCES: "choose a writable location",
        errno.EPERM: "choose a writable location",
        errno.EROFS: "choose a writable location",
    }.get(exc.errno or 0, "check the path")
    return TokcompileError(f"cannot {action}{where}: {exc.strerror or exc}; {hint}")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _chmod_tree(root: Path) -> None:
    """Give ``root`` and everything under it the modes a plain mkdir/open would (umask)."""
    mask = _umask()
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def _relative_files(directory: Path) -> set[str]:
    return {p.relative_to(directory).as_posix() for p in directory.rglob("*") if not p.is_dir()}


def _refuse_special(path: Path, flag: str) -> None:
    """The current directory, one of its parents or a file-system root is never an output."""
    resolved = path.resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents or resolved == Path(resolved.anchor):
        raise TokcompileError(
            f"{flag} '{path}' is the current directory or one of its parents; give a new folder name, e.g. {flag} out/"
        )


def _check_parents(path: Path, flag: str) -> None:
    """The nearest existing ancestor of ``path`` must be a folder (not a file)."""
    for parent in Path(path).absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise TokcompileError(f"{flag} '{path}' is inside '{parent}', which is a file, not a folder")
            return


def check_directory(
    path: Path, owned: Owned, kind: str, force: bool, same: bool = False, flag: str = "-o", existing: str = ""
) -> None:
    """Raise unless ``path`` may be written as a ``kind`` directory.

    Writable: a missing path, an empty directory, or a directory that ``owned`` recognises as a
    ``kind`` (every file in it listed by its marker) when ``force`` or ``same`` (the same build
    again) is true. Everything else is refused, ``--force`` or not. ``existing`` describes what is
    there, for the message.
    """
    path = Path(path)
    _refuse_special(path, flag)
    _check_parents(path, flag)
    if path.is_symlink():
        raise TokcompileError(f"{flag} '{path}' is a symbolic link; tokcompile does not write through it")
    if not path.exists():
        return
    if not path.is_dir():
        raise TokcompileError(
            f"{flag} '{path}' is an existing file, not a {kind} folder; tokcompile never replaces it, choose another {flag}"
        )
    try:
        present = _relative_files(path)
    except OSError as exc:
        raise os_error(exc, f"read {flag}") from None
    if not present and not any(path.iterdir()):
        return
    listed = owned(path)
    if listed is None:
        raise TokcompileError(
            f"{flag} '{path}' holds files that tokcompile did not write (not a {kind}); tokcompile never "
            f"replaces them, even with --force: choose another {flag}"
        )
    foreign = sorted(present - listed)
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise TokcompileError(
            f"{flag} '{path}' is a {kind} but also holds files tokcompile did not write ({shown}); move them "
            f"away or choose another {flag}"
        )
    if not (force or same):
        raise TokcompileError(f"{flag} '{path}' holds a different {kind}{existing}; pass --force to replace it")


@contextmanager
def output_lock(path: Path, flag: str = "-o") -> Iterator[None]:
    """Hold an exclusive advisory lock for writing ``path``; fail at once if another process has it."""
    path = Path(path)
    _check_parents(path, flag)
    lock = path.parent / f".{path.name}{LOCK_SUFFIX}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise TokcompileError(
                    f"another tokcompile process is writing {flag} '{path}'; wait for it or choose another {flag}"
                ) from None
            # The holder before us may have unlinked the file after we opened it: lock the live one.
            try:
                if os.fstat(fd).st_ino == os.stat(lock).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
    except OSError as exc:
        raise os_error(exc, f"create {flag}", path) from None
    try:
        yield
    finally:
        try:
            os.unlink(lock)
        except OSError:
            pass
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(final: Path) -> list[Path]:
    """Remove temporaries of ``final`` left by processes that no longer run (SIGKILL, power loss)."""
    removed: list[Path] = []
    prefix = f"{TMP_PREFIX}{final.name}-"
    if not final.parent.is_dir():
        return removed
    for entry in final.parent.iterdir():
        if not entry.name.startswith(prefix):
            continue
        pid_text = entry.name[len(prefix) :].split("-", 1)[0]
        if pid_text.isdigit() and int(pid_text) != os.getpid() and not _pid_alive(int(pid_text)):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


@contextmanager
def staging_dir(final: Path, flag: str = "-o") -> Iterator[Path]:
    """A hidden temporary sibling of ``final`` (named with this pid); removed on any error."""
    final = Path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(final)
        tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{final.name}-{os.getpid()}-", dir=final.parent))
    except OSError as exc:
        raise os_error(exc, f"create {flag}", final) from None
    try:
        yield tmp
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise os_error(exc, f"write {flag}", final) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """Linux renameat2(2); False where it does not exist (then the caller falls back)."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    at_fdcwd = -100
    if fn(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL):  # kernel or file system without renameat2 flags
        return False
    raise OSError(err, os.strerror(err), str(dst))


def publish(tmp: Path, final: Path) -> None:
    """Move the finished ``tmp`` to ``final`` atomically; an existing ``final`` is swapped out in
    the same step and removed afterwards, so ``final`` is never missing or half-written."""
    _chmod_tree(tmp)
    try:
        if final.exists():
            if not _renameat2(tmp, final, _RENAME_EXCHANGE):
                old = final.with_name(f"{TMP_PREFIX}{final.name}-{os.getpid()}-old")
                os.replace(final, old)
                os.replace(tmp, final)
                tmp = old
            shutil.rmtree(tmp, ignore_errors=True)
        elif not _renameat2(tmp, final, _RENAME_NOREPLACE):
            os.rename(tmp, final)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if exc.errno == errno.EEXIST:
            raise TokcompileError(f"'{final}' appeared while tokcompile was writing it; nothing was replaced") from None
        raise os_error(exc, "publish", final) from None


def replace_atomically(path: Path, write: Callable[[Path], object]) -> Path:
    """``write(tmp)`` into a new temporary sibling of ``path``, then rename it to ``path`` (the
    user's umask applied), so ``path`` is never half-written. The temporary is removed when
    anything fails; errors propagate as they are."""
    fd, name = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{path.name}-{os.getpid()}-", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        tmp.chmod(0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_file(path: Union[str, Path], data: Union[bytes, str], force: bool, flag: str = "-o") -> Path:
    """Write one output file atomically; an existing file needs ``force``, a folder is refused."""
    path = Path(path)
    check_file(path, force, flag)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        replace_atomically(path, lambda tmp: tmp.write_bytes(data.encode() if isinstance(data, str) else data))
    except OSError as exc:
        raise os_error(exc, f"write {flag}", path) from None
    return path


def check_file(path: Path, force: bool, flag: str = "-o") -> None:
    """Raise unless ``path`` may be written as a single file."""
    _check_parents(path, flag)
    if path.is_dir():
        raise TokcompileError(f"{flag} '{path}' is a folder; give the path of a file to write")
    if path.exists() and not force:
        raise TokcompileError(f"{flag} '{path}' exists; pass --force to replace it or choose another {flag}")
