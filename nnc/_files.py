"""Files written whole or not at all: a temporary file beside the target, renamed over it once complete.

Every writer of nnc (streams, model files, checkpoint folders, plots) takes its temporary file
from :func:`temp_file_beside`, so that the checks and the permissions are the same everywhere.
Renames that belong together (a checkpoint's shards and index, an output and its ``--state``
file) are not split by a signal: see :func:`renaming` and :func:`committed_together`.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import os
import stat
import tempfile
import threading
from pathlib import Path

#: Targets that must not exist when they are committed (:func:`new_files_only`), as absolute paths.
_NEW_ONLY: contextvars.ContextVar[frozenset] = contextvars.ContextVar("nnc_new_only", default=frozenset())


@contextlib.contextmanager
def new_files_only(*paths):
    """Inside the block, the files committed at ``paths`` must still not exist when they are renamed into place: a
    file another program created there meanwhile (a second command writing the same output) is not replaced, but
    a FileExistsError. (The commit is a hard link, which fails on an existing name; a file system without hard
    links checks just before the rename.)

    Examples
    --------
    >>> import os, tempfile
    >>> from nnc._files import AtomicFile, new_files_only
    >>> path = os.path.join(tempfile.mkdtemp(), "m.nnr")
    >>> with new_files_only(path):
    ...     with AtomicFile(path) as first:
    ...         _ = first.fh.write(b"one")
    ...         _ = open(path, "wb").write(b"other")  # another program's file, meanwhile
    Traceback (most recent call last):
        ...
    FileExistsError: [Errno 17] it was created by another program meanwhile, and is not replaced: '...m.nnr'
    >>> open(path, "rb").read(), os.listdir(os.path.dirname(path))
    (b'other', ['m.nnr'])
    """
    token = _NEW_ONLY.set(_NEW_ONLY.get() | {os.path.abspath(os.fspath(p)) for p in paths})
    try:
        yield
    finally:
        _NEW_ONLY.reset(token)


def _must_be_new(target) -> bool:
    """Whether ``target`` is one of :func:`new_files_only`'s."""
    return os.path.abspath(os.fspath(target)) in _NEW_ONLY.get()


def naming(exc: OSError, path) -> OSError:
    """``exc`` when it names a file, else the same error naming ``path`` (a write to a full disk names none)."""
    if exc.filename is not None:
        return exc
    return OSError(exc.errno, exc.strerror or str(exc), os.fspath(path))


#: errno values of a path that cannot be opened at all (nnc.errors: the OSError open() raises, not a FormatError)
_OPEN_ERRNOS = frozenset(
    {errno.ENOENT, errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR, errno.ELOOP, errno.ENAMETOOLONG}
)


def cannot_open(exc: BaseException) -> bool:
    """Whether ``exc`` is the OSError of a path that cannot be opened (missing, not readable, a folder), which
    the readers raise as it is, rather than one of reading a damaged file."""
    return isinstance(exc, OSError) and exc.errno in _OPEN_ERRNOS


def written_path(path) -> str:
    """The file a write to ``path`` replaces: ``path``, or the file a symbolic link there points to (as a plain
    ``open()`` writes it), so that the rename puts the new file where the link leads and keeps the link."""
    path = os.fspath(path)
    return os.path.realpath(path) if os.path.islink(path) else path


def place(tmp: str, target) -> None:
    """Rename the finished temporary file ``tmp`` over ``target`` (:func:`written_path`); one of
    :func:`new_files_only` only if no file is there (else FileExistsError, ``tmp`` removed)."""
    target = written_path(target)
    if not _must_be_new(target):
        os.replace(tmp, target)
        return
    taken = FileExistsError(errno.EEXIST, "it was created by another program meanwhile, and is not replaced", target)
    try:
        os.link(tmp, target)
    except FileExistsError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise taken from None
    except (OSError, NotImplementedError):  # no hard links here
        if os.path.lexists(target):
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise taken from None
        os.replace(tmp, target)
        return
    os.unlink(tmp)


def temp_file_beside(path, suffix: str = ".tmp", replacing: bool = True) -> tuple[int, str]:
    """(descriptor, name) of a new temporary file in ``path``'s folder, for a write renamed over ``path``.

    The file gets the permissions a plain ``open()`` would give: an existing file's own mode (a
    read-only one is not replaced: PermissionError), else 0666 less the umask, not ``mkstemp``'s
    0600.  A symbolic link is followed (:func:`written_path`).  Errors name ``path``, the user's,
    not the temporary file.

    Parameters
    ----------
    path : str or ``os.PathLike``
        The file to be written.
    suffix : str
        The temporary file's suffix.
    replacing : bool
        False for a file that will not replace ``path`` (a copy of it kept aside): its mode is not checked.

    Returns
    -------
    tuple of (int, str)
        An open descriptor (the caller closes it) and the temporary file's name.

    Raises
    ------
    IsADirectoryError
        If ``path`` is an existing folder.
    PermissionError
        If ``path`` is an existing file this process may not write (read-only).
    OSError
        If the folder does not exist or cannot take a new file, or ``path`` is a device, a pipe or a
        socket (the rename would replace it).

    Examples
    --------
    >>> import os, tempfile
    >>> from nnc._files import temp_file_beside
    >>> d = tempfile.mkdtemp()
    >>> fd, tmp = temp_file_beside(os.path.join(d, "m.nnr"))
    >>> os.close(fd); os.path.dirname(tmp) == d, os.path.basename(tmp).startswith(".m.nnr.")
    (True, True)
    >>> temp_file_beside(d)
    Traceback (most recent call last):
        ...
    IsADirectoryError: [Errno 21] a folder, not a file: give a file name: '...'
    """
    p = Path(written_path(path))
    if p.is_dir():
        raise IsADirectoryError(errno.EISDIR, "a folder, not a file: give a file name", os.fspath(path))
    if p.exists() and not p.is_file():
        raise OSError(
            errno.EINVAL,
            "not a regular file (a device, a pipe or a socket), which the finished file would replace: give a file name",
            os.fspath(path),
        )
    # the name cut so that the temporary one stays within the 255 bytes a folder entry takes
    prefix = "." + os.fsencode(p.name)[:200].decode(errors="ignore") + "."
    folder = p.parent if str(p.parent) else Path(".")
    remove_stale_temp_files(folder, prefix, suffix)
    try:
        fd, tmp = tempfile.mkstemp(prefix=prefix + _owner_tag(), suffix=suffix, dir=folder)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot write there ({exc.strerror})", os.fspath(path)) from None
    try:
        mode = stat.S_IMODE(os.stat(p).st_mode)
    except OSError:  # (no such file yet)
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    else:
        if replacing and not os.access(p, os.W_OK):
            os.close(fd)
            os.unlink(tmp)
            raise PermissionError(
                errno.EACCES, "the file is read-only, and is not replaced (make it writable first)", os.fspath(path)
            )
    os.chmod(tmp, mode)
    return fd, tmp


#: A temporary file of a process that ended is removed only once it has not changed for this long (seconds).
STALE_AFTER = 600.0


def _owner_tag() -> str:
    """``nnc_<host digest>_<pid>_``: what names a temporary file's writer, so that a later run can tell whether it
    still runs (:func:`remove_stale_temp_files`)."""
    import hashlib
    import socket

    host = hashlib.sha256(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]
    return f"nnc_{host}_{os.getpid()}_"


def _running(pid: int) -> bool:
    """Whether a process ``pid`` runs on this machine (one we may not signal runs too)."""
    if pid <= 0:
        return True  # (not a process id: never taken for ended)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError, OverflowError):
        return True
    return True


def remove_stale_temp_files(folder, prefix: str, suffix: str) -> list:
    """Remove the temporary files a writer of the same target left when it was killed (SIGKILL, out of memory, a
    power cut: no handler ran): the files in ``folder`` named ``prefix`` + an owner tag of this machine whose
    process no longer runs + ``suffix``, unchanged for :data:`STALE_AFTER` seconds. Files of other machines
    (a shared folder), of running processes or of other names are left; errors are ignored. Returns the names
    removed.

    Examples
    --------
    >>> import os, tempfile, time
    >>> from nnc._files import remove_stale_temp_files
    >>> d = tempfile.mkdtemp()
    >>> left = os.path.join(d, ".m.nnr." + _owner_tag().replace(str(os.getpid()), "999999999") + "x1.tmp")
    >>> open(left, "wb").close(); os.utime(left, (time.time() - 3600,) * 2)
    >>> remove_stale_temp_files(d, ".m.nnr.", ".tmp") == [os.path.basename(left)], os.listdir(d)
    (True, [])
    """
    import time

    mine = prefix + _owner_tag().rsplit("_", 2)[0] + "_"  # (nnc_<host>_: this machine's writers)
    removed: list[str] = []
    try:
        entries = [e for e in os.scandir(folder) if e.name.startswith(mine) and e.name.endswith(suffix)]
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        pid = entry.name[len(mine) :].split("_", 1)[0]
        try:
            if (
                not pid.isdigit()
                or _running(int(pid))
                or now - entry.stat(follow_symlinks=False).st_mtime < STALE_AFTER
            ):
                continue
            if entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                removed.append(entry.name)
        except OSError:
            continue
    return removed


def reserve_space(fd: int, size: int) -> None:
    """Allocate ``size`` bytes of the file open as ``fd`` on its disk now, for a file written through a memory map:
    a full disk is then an ``OSError`` (ENOSPC) here, not a SIGBUS at a page of the map, which kills the process.
    Where the file system cannot allocate ahead (no ``posix_fallocate``, or it refuses), its free space is checked.

    Examples
    --------
    >>> import os, tempfile
    >>> from nnc._files import reserve_space
    >>> fd, name = tempfile.mkstemp()
    >>> reserve_space(fd, 4096); os.fstat(fd).st_size
    4096
    >>> os.close(fd); os.unlink(name)
    """
    if size <= 0:
        return
    try:
        os.posix_fallocate(fd, 0, size)
        return
    except AttributeError:  # (not on macOS or Windows)
        pass
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise OSError(exc.errno, f"cannot reserve the file's {size:,} bytes ({exc.strerror})") from None
    if hasattr(os, "fstatvfs"):
        st = os.fstatvfs(fd)
        free = st.f_bavail * st.f_frsize
        if free < size - os.fstat(fd).st_blocks * 512:
            raise OSError(errno.ENOSPC, f"cannot reserve the file's {size:,} bytes (No space left on device)")
    os.ftruncate(fd, max(size, os.fstat(fd).st_size))


def same_file(a, b) -> bool:
    """Whether two paths name one file (the same path, a symlink or a hard link to it).

    Examples
    --------
    >>> import os, tempfile
    >>> from nnc._files import same_file
    >>> d = tempfile.mkdtemp()
    >>> same_file(os.path.join(d, "m.nnr"), os.path.join(d, ".", "m.nnr")), same_file(d, os.path.join(d, "x"))
    (True, False)
    """
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def refuse_overwriting(output, inputs: dict) -> None:
    """Raise ``FileExistsError`` naming ``output`` if it is one of ``inputs`` ({what: path, list of paths or None};
    no output, no check).

    Examples
    --------
    >>> from nnc._files import refuse_overwriting
    >>> refuse_overwriting("m.safetensors", {"model": "./m.safetensors"})
    Traceback (most recent call last):
        ...
    FileExistsError: [Errno 17] the output is the model (./m.safetensors); refusing to overwrite an input: 'm.safetensors'
    """
    if output is None:
        return
    for what, paths in inputs.items():
        for path in paths if isinstance(paths, (list, tuple)) else [paths]:
            if path is not None and same_file(output, path):
                raise FileExistsError(
                    errno.EEXIST,
                    f"the output is the {what} ({os.fspath(path)}); refusing to overwrite an input",
                    os.fspath(output),
                )


# -- renames that a signal does not split -----------------------------------------------------------------------
_hold_depth = 0  # > 0: the command line's SIGINT/SIGTERM handlers hold a signal (hold_signal) instead of raising it
_held: list = []  # the exception of the first signal held
_groups: list = []  # open committed_together blocks, innermost last: [exit stack, before_first_rename] until started


def hold_signal(exc: BaseException) -> bool:
    """For a signal handler: keep ``exc`` (the signal's exception) to be raised when the renames under way are done,
    and return True; False when no renames are under way (the handler raises it then).

    Examples
    --------
    >>> hold_signal(KeyboardInterrupt())
    False
    """
    if _hold_depth == 0:
        return False
    if not _held:
        _held.append(exc)
    return True


@contextlib.contextmanager
def _holding():
    """Signals held while the block runs, the first of them raised when it ends; when it ends by an error, as a
    plain signal (not "after its outputs were written"), so that no caller that handles the error goes on."""
    global _hold_depth
    _hold_depth += 1
    done = False
    try:
        yield
        done = True
    finally:
        exc = _held.pop() if _hold_depth == 1 and _held else None
        _hold_depth -= 1
        if exc is not None:
            raise exc if done else type(exc)()


def forget_held_signals() -> None:
    """Drop a signal still held (for a command's end: the next command in the process starts clean)."""
    _held.clear()


@contextlib.contextmanager
def renaming():
    """Renames into place that belong together (the files of one output): a signal that arrives meanwhile ends the
    command after them, not between them. Inside :func:`committed_together`, signals stay held until that block
    ends.

    Examples
    --------
    >>> with renaming():
    ...     pass
    """
    if threading.current_thread() is not threading.main_thread():  # (signals are handled in the main thread)
        yield
        return
    if _groups and _groups[-1] is not None:
        stack, before_first_rename = _groups[-1]
        if before_first_rename is not None:
            before_first_rename()  # (an error here leaves every output as it was)
        _groups[-1] = None  # started: held from this first rename until the group ends
        stack.enter_context(_holding())
    with _holding():
        yield


class TemporaryFiles:
    """The temporary files of a write of several files into one folder (an ONNX model and its external data, a
    sharded checkpoint), each beside its final name (:func:`temp_file_beside`): renamed into place together
    (:func:`replace_all`), or removed; an error of one is told of the user's file, not the temporary one.

    Examples
    --------
    >>> import os, tempfile
    >>> from nnc._files import TemporaryFiles
    >>> d = tempfile.mkdtemp()
    >>> files = TemporaryFiles(d)
    >>> _ = open(files.new("m.bin"), "w").write("data"), open(files.new("m.json"), "w").write("{}")
    >>> [os.path.basename(p) for p in files.commit(["m.bin", "m.json"])], sorted(os.listdir(d))
    (['m.bin', 'm.json'], ['m.bin', 'm.json'])
    """

    def __init__(self, folder):
        self.folder = Path(folder)
        self.temps: dict[str, str] = {}  # {final name: temporary file}

    def new(self, name: str) -> str:
        """A new, empty temporary file for the final file ``name`` of the folder."""
        fd, tmp = temp_file_beside(self.folder / name)
        os.close(fd)
        self.temps[name] = tmp
        return tmp

    def commit(self, order=None) -> list:
        """Flush each file to disk, then rename them over their final names, in ``order`` (final names; default
        the order they were made in): all, or none. Returns the final paths."""
        for tmp in self.temps.values():
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        names = list(self.temps) if order is None else list(order)
        return replace_all([(self.temps[name], self.folder / name) for name in names])

    def discard(self) -> None:
        """Remove every temporary file (those already removed or renamed are passed over)."""
        for tmp in self.temps.values():
            try:
                os.unlink(tmp)
            except OSError:
                pass

    def user_error(self, exc: OSError, whole=None) -> OSError | None:
        """``exc`` naming the final file where it names a temporary one, or ``whole`` where it names none (a full
        disk); None when it names another file (already the user's)."""
        final = {tmp: self.folder / name for name, tmp in self.temps.items()}
        where = final.get(exc.filename) if exc.filename is not None else whole
        return None if where is None else OSError(exc.errno, exc.strerror or str(exc), os.fspath(where))


def replace_all(pairs) -> list:
    """Rename each finished temporary file over its target, ``pairs`` of (temporary, target), in order: all of them,
    or none. A rename that fails (an immutable or busy target) puts back the targets replaced before it, from hard
    links made first (a moved-aside copy where the file system has none), and removes the temporaries; a
    checkpoint is then never half old and half new. Returns the targets.

    Examples
    --------
    >>> import os, tempfile
    >>> from nnc._files import replace_all
    >>> d = tempfile.mkdtemp()
    >>> for name in ("a.tmp", "b.tmp"):
    ...     _ = open(os.path.join(d, name), "w").write(name)
    >>> [os.path.basename(p) for p in replace_all([(os.path.join(d, "a.tmp"), os.path.join(d, "a")),
    ...                                             (os.path.join(d, "b.tmp"), os.path.join(d, "b"))])]
    ['a', 'b']
    """
    pairs = [(os.fspath(tmp), os.fspath(target)) for tmp, target in pairs]
    kept: dict[str, str | None] = {}  # target -> its old file's copy (None: it did not exist)
    done: list[str] = []
    try:
        with renaming():  # (a signal held meanwhile is raised when all are in place: no rollback then)
            try:
                for tmp, target in pairs:
                    # (a target that must be new has nothing to keep: moved aside, another's file would be lost)
                    kept[target] = None if _must_be_new(target) else _keep_old(target)
                    place(tmp, target)
                    done.append(target)
            except BaseException:
                for target, old in reversed(list(kept.items())):
                    with contextlib.suppress(OSError):
                        if target in done and old is None:
                            os.unlink(target)  # (it did not exist before)
                        elif old is not None and (target in done or not os.path.lexists(target)):
                            os.replace(old, target)  # the old file back (also one moved aside before a failure)
                            kept[target] = None
                for tmp, _ in pairs:
                    with contextlib.suppress(OSError):
                        os.unlink(tmp)
                raise
    finally:
        for old in kept.values():
            if old is not None:
                with contextlib.suppress(OSError):
                    os.unlink(old)
    return done


def _keep_old(target: str) -> str | None:
    """A hard link to ``target`` under a temporary name beside it (None if there is no such file), to put back."""
    target = written_path(target)
    if not os.path.lexists(target):
        return None
    fd, old = temp_file_beside(target, suffix=".old", replacing=False)
    os.close(fd)
    os.unlink(old)
    try:
        os.link(target, old, follow_symlinks=False)
    except (OSError, NotImplementedError):
        os.replace(target, old)  # (no hard links here: moved aside, put back on failure)
    return old


@contextlib.contextmanager
def committed_together(before_first_rename=None):
    """Outputs committed in the block, and the block's own last step (a ``--state`` file renamed after the output),
    as one step against signals: from the first rename in the block (:func:`renaming`) until the block ends, a
    SIGINT or SIGTERM is held and raised at the end, so that no signal leaves an output renamed into place without
    the state that goes with it. ``before_first_rename`` (in the main thread) runs right before the block's first
    rename: the state's bytes written and flushed there, a full disk fails before any output is replaced.

    Examples
    --------
    >>> with committed_together():
    ...     with renaming():
    ...         pass
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stack = contextlib.ExitStack()
    _groups.append([stack, before_first_rename])
    try:
        with stack:
            yield
    finally:
        _groups.pop()


class AtomicFile:
    """A file written under a temporary name beside ``path`` (:func:`temp_file_beside`), renamed over it by
    :meth:`commit` (flushed to disk first) or removed by :meth:`discard`; as a context manager, committed when
    the block ends normally and discarded when it raises.

    Examples
    --------
    >>> import os, tempfile
    >>> from nnc._files import AtomicFile
    >>> path = os.path.join(tempfile.mkdtemp(), "m.nnr")
    >>> with AtomicFile(path) as f:
    ...     _ = f.fh.write(b"\\x00\\x04\\x02\\x01")
    >>> os.path.getsize(path), os.listdir(os.path.dirname(path))
    (4, ['m.nnr'])
    """

    def __init__(self, path):
        self.path = Path(path)
        fd, self.tmp = temp_file_beside(self.path)
        #: The open binary file to write to.
        self.fh = os.fdopen(fd, "wb")

    def commit(self) -> None:
        """Flush to disk and rename over ``path``; an error names ``path``, not the temporary file."""
        try:
            self.fh.flush()
            os.fsync(self.fh.fileno())
            self.fh.close()
            with renaming():
                place(self.tmp, self.path)
        except FileExistsError:
            raise
        except OSError as exc:
            if exc.filename not in (None, self.tmp):
                raise
            raise OSError(exc.errno, exc.strerror or str(exc), os.fspath(self.path)) from None

    def discard(self) -> None:
        """Close and remove the temporary file; ``path`` is left as it was (also when closing fails: the data left
        in the file's buffer cannot be written to a full disk)."""
        try:
            self.fh.close()
        except OSError:
            pass
        finally:
            try:
                os.unlink(self.tmp)
            except OSError:
                pass

    def __enter__(self) -> "AtomicFile":
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            try:
                self.commit()
            except BaseException:
                self.discard()
                raise
        else:
            self.discard()
            if isinstance(value, OSError) and value.filename is None:  # (a write to fh: a full disk) names path
                raise naming(value, self.path) from None
