"""The node's identity and its data directory: the secret key file and the one-process lock.

A data directory belongs to one running node at a time:

* ``secret.key`` holds the node's Ed25519 secret key, 32 raw bytes, mode 0600. It is created
  once (temp file, fsync, atomic no-clobber link into place, fsync of the directory), so the
  node's EndpointId is stable across restarts. A key file of the wrong length is reported as
  :class:`~iroh_pair.errors.KeyFileCorrupt` and is never overwritten.
* ``lock`` is held with ``fcntl.flock`` by the running node (:class:`DataDirLock`) and contains
  the holder's PID and the time it took the lock. A second lock — from another process, or from
  the same process — raises :class:`~iroh_pair.errors.DataDirLocked` naming the holder. The kernel releases the
  lock when the holder dies, so a stale lock file never blocks a new node.

The directory itself is created with mode 0700 when it does not exist; an existing one with
group or other permission bits is tightened to 0700, with a logged warning.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import stat
import time
from pathlib import Path
from types import TracebackType

from iroh_pair._native import SecretKey
from iroh_pair.errors import DataDirLocked, IrohPairError, KeyFileCorrupt

__all__ = [
    "KEY_FILE",
    "LOCK_FILE",
    "SECRET_KEY_LEN",
    "DataDirLock",
    "ensure_data_dir",
    "load_or_create_secret_key",
]

log = logging.getLogger("iroh_pair.identity")

#: File name of the node's secret key inside the data directory.
KEY_FILE = "secret.key"
#: File name of the data-directory lock.
LOCK_FILE = "lock"
#: Length of the raw secret key.
SECRET_KEY_LEN = 32


def ensure_data_dir(path: str | os.PathLike[str]) -> Path:
    """Creates the data directory (and missing parents) with mode 0700 if it does not exist;
    returns it as a :class:`~pathlib.Path`.

    An existing directory with any group or other permission bit (e.g. 0755, made by hand or by
    an older version) is tightened to 0700 and a warning is logged: the directory holds the
    secret key and the paired devices' session keys.

    >>> import tempfile, os, stat
    >>> d = ensure_data_dir(os.path.join(tempfile.mkdtemp(), "iroh-pair"))
    >>> oct(stat.S_IMODE(d.stat().st_mode))
    '0o700'
    """
    p = Path(path)
    if not p.is_dir():
        p.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(p, 0o700)  # mkdir's mode is filtered by the umask
        return p
    mode = stat.S_IMODE(p.stat().st_mode)
    if mode & 0o077:
        try:
            os.chmod(p, 0o700)
        except OSError as e:
            log.warning("data directory %s is accessible by other users (mode %03o) and could not "
                        "be restricted: %s", p, mode, e.strerror)
        else:
            log.warning("data directory %s was accessible by other users (mode %03o); "
                        "restricted it to 0700", p, mode)
    return p


def fsync_dir(path: Path) -> None:
    """Makes a rename or new file in ``path`` durable (fsync of the directory)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def _read_key(path: Path) -> SecretKey:
    try:
        with open(path, "rb") as f:
            data = f.read(SECRET_KEY_LEN + 1)
            mode = os.fstat(f.fileno()).st_mode
    except OSError as e:
        raise KeyFileCorrupt(path, f"cannot read it ({e.strerror})") from e
    if len(data) != SECRET_KEY_LEN:
        raise KeyFileCorrupt(
            path, f"expected {SECRET_KEY_LEN} bytes, found {len(data)}"
            + (" or more" if len(data) > SECRET_KEY_LEN else "")
        )
    if stat.S_IMODE(mode) & 0o077:
        try:
            os.chmod(path, 0o600)
        except OSError as e:
            log.warning("secret key file %s is readable by other users (mode %03o) and could not "
                        "be restricted: %s", path, mode & 0o777, e.strerror)
        else:
            log.warning("secret key file %s was readable by other users (mode %03o); restricted "
                        "it to 0600", path, mode & 0o777)
    try:
        return SecretKey.from_bytes(data)
    except IrohPairError as e:  # pragma: no cover - every 32-byte string is an Ed25519 seed
        raise KeyFileCorrupt(path, str(e)) from e


def load_or_create_secret_key(data_dir: str | os.PathLike[str]) -> SecretKey:
    """The node's secret key from ``<data_dir>/secret.key``, created on first use.

    Creation writes a fresh key to a temporary file (mode 0600), fsyncs it, links it into place
    without ever replacing an existing file (if another writer won the race, its key is used),
    and fsyncs the directory. Raises :class:`KeyFileCorrupt` for a key file that is not exactly
    32 bytes; such a file is never modified.
    """
    d = ensure_data_dir(data_dir)
    path = d / KEY_FILE
    if os.path.lexists(path):
        return _read_key(path)
    # os.urandom (getrandom) rather than SecretKey.generate(): the native generator is a
    # user-space RNG whose state a fork() duplicates, so forked processes would share keys
    key = SecretKey.from_bytes(os.urandom(SECRET_KEY_LEN))
    tmp = d / f".{KEY_FILE}.tmp-{os.getpid()}-{os.urandom(4).hex()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)
            data = key.to_bytes()
            written = 0
            while written < len(data):
                written += os.write(fd, data[written:])
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # atomic and never clobbers an existing key
        except FileExistsError:
            return _read_key(path)
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            # filesystems without hard links: rename (the lexists check above makes a clobber
            # possible only for two writers racing without holding the DataDirLock)
            if os.path.lexists(path):
                return _read_key(path)
            os.rename(tmp, path)
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
    fsync_dir(d)
    return key


class DataDirLock:
    """Exclusive ownership of a data directory by one node, with ``fcntl.flock`` on its
    ``lock`` file.

    :meth:`acquire` creates the directory (0700) if needed, takes the lock without waiting and
    writes ``{"pid": ..., "since": ...}`` into the file; if the lock is held — by another process
    or by another :class:`DataDirLock` of this process — it raises :class:`DataDirLocked` with
    the holder's PID. :meth:`release` (or leaving the ``with`` block) gives it up; the kernel
    also releases it when the process exits, however it exits.
    """

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object currently holds the lock."""
        return self._fd is not None

    def acquire(self) -> DataDirLock:
        """Takes the lock (never blocks); returns ``self``. Raises :class:`DataDirLocked`."""
        if self._fd is not None:
            raise DataDirLocked(self.data_dir, os.getpid(), None)
        ensure_data_dir(self.data_dir)
        # no O_TRUNC: the file holds the current holder's PID until we own the lock
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid, since = self._read_holder(fd)
            os.close(fd)
            raise DataDirLocked(self.data_dir, pid, since) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            info = json.dumps({"pid": os.getpid(), "since": time.time()}).encode() + b"\n"
            os.ftruncate(fd, 0)
            os.pwrite(fd, info, 0)
            os.fsync(fd)
        except BaseException:
            os.close(fd)  # closing releases the flock
            raise
        self._fd = fd
        return self

    @staticmethod
    def _read_holder(fd: int) -> tuple[int | None, float | None]:
        try:
            raw = os.pread(fd, 256, 0)
            info = json.loads(raw.decode("utf-8"))
            pid = info.get("pid")
            since = info.get("since")
            return (
                pid if isinstance(pid, int) else None,
                float(since) if isinstance(since, (int, float)) else None,
            )
        except (OSError, ValueError, AttributeError):
            return None, None  # the holder has not written its PID yet, or junk

    def release(self) -> None:
        """Gives the lock up (idempotent). The lock file is kept (unlinking it would race)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)
        except OSError:  # pragma: no cover
            pass
        finally:
            os.close(fd)

    def __enter__(self) -> DataDirLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"DataDirLock({str(self.data_dir)!r}, held={self.held})"
