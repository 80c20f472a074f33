"""The receiver's temporary tree for a directory offer, kept honest against a swap.

Someone who can write in the destination directory could replace the temporary directory
(``.iroh-pair-RANDOM.partial``), or a directory in it, by a symbolic link while the files
arrive, so that the rest would land where the link points. :class:`TempTree` prevents that:

* the temporary directory is created mode 0700 (nobody else can change what is inside it) and
  held open; its subdirectories are created through directory descriptors, never following a
  link, and their identities (device, inode) recorded;
* on Linux the path handed to the native fetch goes through a descriptor of the file's
  directory (``/proc/self/fd/N/NAME``), so a file being written lands in our tree even if a
  name on the way was swapped meanwhile;
* before each file's fetch (the directories on its path) and before the final rename (every
  directory), each is looked at again with ``lstat`` (links not followed) and must be the
  directory recorded, else :class:`~iroh_pair.errors.DestinationChanged`;
* :meth:`TempTree.remove` empties the tree through the descriptors (wherever it was moved to)
  and never follows a link out of it.

Internal to :meth:`iroh_pair.Node.on_file_offer`'s directory receiving::

    tree = TempTree.create(directory)
    fd = tree.open_dir("a/b")
    tree.check("a/b")                   # before fetching a/b/file
    native_dest = tree.path(fd, "file")
"""

from __future__ import annotations

import os
import re
import secrets
import stat
from pathlib import Path

from iroh_pair.errors import DestinationChanged

__all__ = ["TempTree", "TEMP_PREFIX", "TEMP_SUFFIX", "temp_name", "remove_leftover"]

TEMP_PREFIX = ".iroh-pair-"
TEMP_SUFFIX = ".partial"
_TEMP_NAME = re.compile(r"\.iroh-pair-[0-9a-f]{16}\.partial")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def _ident(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


class TempTree:
    """A temporary directory in ``directory`` and what was created in it (see the module)."""

    __slots__ = ("root", "_fd", "_ids", "_via_fd", "_names")

    def __init__(self, root: Path, fd: int) -> None:
        self.root = root
        self._fd = fd
        #: relative path ("" for the root) -> (st_dev, st_ino) of each directory we made
        self._ids: dict[str, tuple[int, int]] = {"": _ident(os.fstat(fd))}
        self._via_fd = os.path.isdir(f"/proc/self/fd/{fd}")
        #: descriptors from open_dir -> their relative paths
        self._names: dict[int, str] = {}

    @classmethod
    def create(cls, directory: Path, name: str | None = None) -> TempTree:
        """Creates ``directory / name`` (a fresh ``.iroh-pair-RANDOM.partial`` by default)."""
        root = directory / (name or temp_name())
        os.mkdir(root, 0o700)
        fd = os.open(root, _DIR_FLAGS)
        tree = cls(root, fd)
        try:
            tree.check("")
        except BaseException:
            tree.close()
            raise
        return tree

    def path(self, fd: int, name: str) -> Path:
        """The path of ``name`` in the directory open as ``fd`` (from :meth:`open_dir`), to hand
        to code that opens by path: through the descriptor where the system has
        ``/proc/self/fd`` (a swap of a name on the way cannot redirect it), else by name."""
        if self._via_fd:
            return Path(f"/proc/self/fd/{fd}") / name
        return self.root / self._names[fd] / name if self._names[fd] else self.root / name

    def makedirs(self, rel: str) -> None:
        """Creates the directories of ``rel`` (``/``-separated) that do not exist (see
        :meth:`open_dir`)."""
        os.close(self.open_dir(rel))

    def open_dir(self, rel: str) -> int:
        """The directory ``rel`` of the tree (``/``-separated, "" for the root) open (the
        caller closes the descriptor), its missing components created one by one through
        directory descriptors; a component that is not a directory we made (a link, a file,
        someone else's directory) raises DestinationChanged."""
        cur = os.dup(self._fd)
        try:
            done: list[str] = []
            for part in rel.split("/") if rel else []:
                done.append(part)
                key = "/".join(done)
                try:
                    os.mkdir(part, 0o777, dir_fd=cur)
                except FileExistsError:
                    if key not in self._ids:
                        raise DestinationChanged(
                            f"{self.root / key} appeared in the temporary tree") from None
                try:
                    nxt = os.open(part, _DIR_FLAGS, dir_fd=cur)
                except OSError as e:
                    raise DestinationChanged(
                        f"{self.root / key} is no longer the directory made for it: {e}") from None
                os.close(cur)
                cur = nxt
                ident = _ident(os.fstat(cur))
                if self._ids.setdefault(key, ident) != ident:
                    raise DestinationChanged(f"{self.root / key} was replaced")
        except BaseException:
            os.close(cur)
            raise
        self._names[cur] = rel
        return cur

    def close_dir(self, fd: int) -> None:
        """Closes a descriptor from :meth:`open_dir`."""
        self._names.pop(fd, None)
        os.close(fd)

    def check(self, rel: str) -> None:
        """The temporary directory and each directory on ``rel`` (a directory's relative path)
        are still the ones made (``lstat``, links not followed), else DestinationChanged."""
        parts = rel.split("/") if rel else []
        for i in range(len(parts) + 1):
            key = "/".join(parts[:i])
            p = self.root / key if key else self.root
            try:
                st = os.lstat(p)
            except OSError as e:
                raise DestinationChanged(f"{p} is gone from the temporary tree: {e}") from None
            if not stat.S_ISDIR(st.st_mode) or self._ids.get(key) != _ident(st):
                raise DestinationChanged(
                    f"{p} was replaced while the directory was being received "
                    f"({'a symbolic link' if stat.S_ISLNK(st.st_mode) else 'another entry'})")

    def check_all(self) -> None:
        """:meth:`check` of every directory made."""
        for key in sorted(self._ids):
            self.check(key)

    def finish(self, final: Path) -> None:
        """Renames the tree onto ``final`` (an empty directory reserved for it, whose mode the
        tree takes) once :meth:`check_all` passes."""
        os.fchmod(self._fd, stat.S_IMODE(os.lstat(final).st_mode))
        self.check_all()
        os.rename(self.root, final)
        if _ident(os.lstat(final)) != self._ids[""]:  # cannot happen unless raced
            raise DestinationChanged(f"{final} is not the tree that was received")
        self.root = final

    def remove(self) -> None:
        """Removes what the tree holds, through its descriptors (wherever it is now), and the
        temporary directory itself when it is still at its name; never follows a link."""
        try:
            _clear(self._fd)
        except OSError:
            pass
        try:
            if _ident(os.lstat(self.root)) == self._ids[""]:
                os.rmdir(self.root)
        except OSError:
            pass

    def close(self) -> None:
        """Closes the held descriptor (after :meth:`finish` or :meth:`remove`)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def temp_name() -> str:
    """A fresh temporary directory name: ``.iroh-pair-RANDOM.partial`` (16 hex digits)."""
    return f"{TEMP_PREFIX}{secrets.token_hex(8)}{TEMP_SUFFIX}"


def remove_leftover(path: Path) -> bool:
    """Removes the temporary tree a receiver left at ``path`` (a process killed mid-transfer),
    only if ``path`` is still a directory (not a link) with a temporary tree's name; never
    follows a link out of it. Whether it removed it::

        remove_leftover(Path("/home/me/Downloads/.iroh-pair-0123456789abcdef.partial"))
    """
    if not _TEMP_NAME.fullmatch(path.name):
        return False
    try:
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode):
            return False
        fd = os.open(path, _DIR_FLAGS)
    except OSError:
        return False
    try:
        if _ident(os.fstat(fd)) != _ident(st):
            return False
        _clear(fd)
    except OSError:
        return False
    finally:
        os.close(fd)
    try:
        os.rmdir(path)
    except OSError:
        return False
    return True


def _clear(fd: int) -> None:
    """Removes everything in the directory open as ``fd`` (not the directory itself)."""
    for entry in list(os.scandir(fd)):
        if entry.is_dir(follow_symlinks=False):
            sub = os.open(entry.name, _DIR_FLAGS, dir_fd=fd)
            try:
                _clear(sub)
            finally:
                os.close(sub)
            os.rmdir(entry.name, dir_fd=fd)
        else:
            os.unlink(entry.name, dir_fd=fd)
