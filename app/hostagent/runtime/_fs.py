"""File operations confined to a capsule's root, done from the agent with openat2(RESOLVE_IN_ROOT).

The agent opens ``/proc/<capsule init>/root`` (the capsule's overlay root, inside its mount
namespace) and resolves every user path with ``openat2(..., RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)``:
the kernel treats that directory as ``/`` for the walk, so ``..`` and absolute symlinks planted by
the capsule resolve to the capsule's own files, and /proc magic links (``/proc/1/root``) are refused.

Every operation runs with the thread's fsuid/fsgid switched to the capsule user's host ids (a
per-thread credential, see ``_as_owner``): the kernel then checks permissions exactly as for that
user inside the capsule, new files are owned by it, and the agent's host-root DAC override is off.

Because the agent is still host root otherwise (euid), the object finally touched must also live on the capsule's own
filesystem: a capsule root can mount a fresh procfs/sysfs somewhere, and writing its sysctls as
host root would change the host. So every opened object is checked with fstatfs and only overlayfs
(the capsule rootfs) and tmpfs are accepted. Only regular files are read or written (no FIFOs that
would hang the agent, no device nodes).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import ParamSpec, TypeVar

from app.hostagent.runtime.base import AlreadyExists, FileInfo, InvalidArgument, PathNotFound, RuntimeErr

_libc = ctypes.CDLL(None, use_errno=True)
_SYS_OPENAT2 = 437  # same number on x86_64 and the generic table (arm64)
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_IN_ROOT = 0x10
OVERLAYFS_MAGIC = 0x794C7630
_TMPFS_MAGIC = 0x01021994
_ALLOWED_FS = {OVERLAYFS_MAGIC, _TMPFS_MAGIC}
CHUNK = 64 * 1024
P = ParamSpec("P")
T = TypeVar("T")


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


class _StatFs(ctypes.Structure):
    _fields_ = [("f_type", ctypes.c_long), ("_rest", ctypes.c_byte * 112)]


def openat2(dirfd: int, path: str, flags: int, mode: int = 0) -> int:
    how = _OpenHow(flags | os.O_CLOEXEC, mode, _RESOLVE_IN_ROOT | _RESOLVE_NO_MAGICLINKS)
    fd = _libc.syscall(_SYS_OPENAT2, dirfd, os.fsencode(path), ctypes.byref(how), ctypes.sizeof(how))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return int(fd)


def fs_type(fd: int) -> int:
    buf = _StatFs()
    if _libc.fstatfs(fd, ctypes.byref(buf)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(buf.f_type) & 0xFFFFFFFF


def _check_fs(fd: int, path: str) -> None:
    if fs_type(fd) not in _ALLOWED_FS:
        raise InvalidArgument(f"{path}: not on the capsule filesystem")


def map_os_error(exc: OSError, path: str) -> RuntimeErr:
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return PathNotFound(f"no such file or directory: {path}")
    if exc.errno == errno.EEXIST:
        return AlreadyExists(f"already exists: {path}")
    if exc.errno in (errno.EISDIR, errno.EXDEV, errno.ELOOP, errno.EINVAL):
        return InvalidArgument(f"{path}: {exc.strerror}")
    return RuntimeErr(f"{path}: {exc.strerror}")


def _as_owner(fn: Callable[P, T]) -> Callable[P, T]:
    """Run a CapsuleFS method with this thread's fsuid/fsgid set to the capsule user.

    setfsuid/setfsgid are per-thread (glibc does not broadcast them), so other agent threads keep
    root. The previous values are restored, which also makes nested calls safe.
    """
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        self = args[0]
        assert isinstance(self, CapsuleFS)
        prev_gid = _libc.setfsgid(self.owner[1] + self.id_base)
        prev_uid = _libc.setfsuid(self.owner[0] + self.id_base)
        try:
            return fn(*args, **kwargs)
        finally:
            _libc.setfsuid(prev_uid)
            _libc.setfsgid(prev_gid)
    return wrapper


@dataclass
class Ids:
    """Name tables read from the capsule's own /etc/passwd and /etc/group."""

    users: dict[int, str]
    groups: dict[int, str]


class CapsuleFS:
    """All paths are capsule paths; relative ones are relative to ``home``."""

    def __init__(self, root_path: str, id_base: int, owner: tuple[int, int], home: str) -> None:
        self.root_path = root_path  # /proc/<pid>/root
        self.id_base = id_base
        self.owner = owner  # capsule uid/gid new files get
        self.home = home

    # --- helpers -----------------------------------------------------------------------------
    def norm(self, path: str) -> str:
        if path == "~" or path.startswith("~/"):
            path = self.home + path[1:]
        p = PurePosixPath(self.home) / path if not path.startswith("/") else PurePosixPath(path)
        return str(p)

    def _root(self) -> int:
        try:
            return os.open(self.root_path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise RuntimeErr(f"capsule root unavailable: {exc.strerror}") from exc

    def _open(self, path: str, flags: int, mode: int = 0) -> int:
        root = self._root()
        try:
            return openat2(root, path, flags, mode)
        except OSError as exc:
            raise map_os_error(exc, path) from exc
        finally:
            os.close(root)

    @_as_owner
    def ids(self) -> Ids:
        return Ids(self._table("/etc/passwd"), self._table("/etc/group"))

    def _table(self, path: str) -> dict[int, str]:
        try:
            text = self.read(path).decode(errors="replace")
        except RuntimeErr:
            return {}
        out: dict[int, str] = {}
        for line in text.splitlines():
            parts = line.split(":")
            if len(parts) >= 3 and parts[2].isdigit():
                out.setdefault(int(parts[2]), parts[0])
        return out

    # --- reads -------------------------------------------------------------------------------
    @_as_owner
    def open_read(self, path: str) -> int:
        path = self.norm(path)
        fd = self._open(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise InvalidArgument(f"{path} is a directory")
            if not stat.S_ISREG(st.st_mode):
                raise InvalidArgument(f"{path} is not a regular file")
            _check_fs(fd, path)
            os.set_blocking(fd, True)
            return fd
        except BaseException:
            os.close(fd)
            raise

    @_as_owner
    def read(self, path: str) -> bytes:
        fd = self.open_read(path)
        with os.fdopen(fd, "rb") as f:
            return f.read()

    # --- writes ------------------------------------------------------------------------------
    @_as_owner
    def open_write(self, path: str) -> int:
        path = self.norm(path)
        parent = str(PurePosixPath(path).parent)
        self.make_dirs(parent)
        fd = self._open(path, os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK, 0o644)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise InvalidArgument(f"{path} is not a regular file")
            _check_fs(fd, path)
            os.ftruncate(fd, 0)
            os.set_blocking(fd, True)
            return fd
        except BaseException:
            os.close(fd)
            raise

    @_as_owner
    def write(self, path: str, content: bytes) -> None:
        fd = self.open_write(path)
        with os.fdopen(fd, "wb") as f:
            f.write(content)

    @_as_owner
    def make_dirs(self, path: str, exist_ok: bool = True) -> None:
        """mkdir -p inside the root; each created directory belongs to the capsule user."""
        path = self.norm(path)
        parts = [p for p in PurePosixPath(path).parts if p != "/"]
        for i in range(len(parts)):
            sub = "/" + "/".join(parts[: i + 1])
            last = i == len(parts) - 1
            try:
                fd = self._open(sub, os.O_PATH | os.O_DIRECTORY)
                os.close(fd)
                if last and not exist_ok:
                    raise AlreadyExists(f"already exists: {path}")
                continue
            except PathNotFound:
                pass
            self._mkdir_one(sub)

    def _mkdir_one(self, path: str) -> None:
        pp = PurePosixPath(path)
        parent = self._open(str(pp.parent), os.O_PATH | os.O_DIRECTORY)
        try:
            _check_fs(parent, path)
            try:
                os.mkdir(pp.name, 0o755, dir_fd=parent)
            except OSError as exc:
                raise map_os_error(exc, path) from exc
        finally:
            os.close(parent)

    @_as_owner
    def make_dir(self, path: str) -> FileInfo:
        path = self.norm(path)
        try:
            fd = self._open(path, os.O_PATH)
        except PathNotFound:
            self.make_dirs(path)
            return self.stat(path)
        os.close(fd)
        raise AlreadyExists(f"already exists: {path}")

    @_as_owner
    def remove(self, path: str) -> None:
        path = self.norm(path)
        pp = PurePosixPath(path)
        if str(pp) == "/":
            raise InvalidArgument("refusing to remove /")
        parent = self._open(str(pp.parent), os.O_PATH | os.O_DIRECTORY)
        try:
            _check_fs(parent, path)
            try:
                st = os.stat(pp.name, dir_fd=parent, follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    # fd-based rmtree never follows symlinks out of the tree
                    shutil.rmtree(pp.name, dir_fd=parent)
                else:
                    os.unlink(pp.name, dir_fd=parent)
            except OSError as exc:
                raise map_os_error(exc, path) from exc
        finally:
            os.close(parent)

    # --- listing -----------------------------------------------------------------------------
    @_as_owner
    def stat(self, path: str, ids: Ids | None = None) -> FileInfo:
        path = self.norm(path)
        pp = PurePosixPath(path)
        if str(pp) == "/":
            fd = self._open("/", os.O_PATH)
            try:
                return self._info(os.fstat(fd), "/", "/", None, ids or self.ids())
            finally:
                os.close(fd)
        parent = self._open(str(pp.parent), os.O_PATH | os.O_DIRECTORY)
        try:
            return self._entry(parent, pp.name, path, ids or self.ids())
        except OSError as exc:
            raise map_os_error(exc, path) from exc
        finally:
            os.close(parent)

    def _entry(self, dirfd: int, name: str, full: str, ids: Ids) -> FileInfo:
        st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
        target = os.readlink(name, dir_fd=dirfd) if stat.S_ISLNK(st.st_mode) else None
        return self._info(st, name, full, target, ids)

    def _info(self, st: os.stat_result, name: str, full: str, target: str | None, ids: Ids) -> FileInfo:
        if stat.S_ISLNK(st.st_mode):
            kind = "symlink"
        elif stat.S_ISDIR(st.st_mode):
            kind = "directory"
        else:
            kind = "file"
        uid, gid = st.st_uid - self.id_base, st.st_gid - self.id_base
        return FileInfo(
            name=name, path=full, type=kind, size=st.st_size, mode=stat.S_IMODE(st.st_mode),
            permissions=stat.filemode(st.st_mode), owner=ids.users.get(uid, str(uid)),
            group=ids.groups.get(gid, str(gid)), modified_at=int(st.st_mtime), symlink_target=target,
        )

    @_as_owner
    def list_dir(self, path: str, depth: int) -> list[FileInfo]:
        path = self.norm(path)
        fd = self._open(path, os.O_RDONLY | os.O_DIRECTORY)
        ids = self.ids()
        out: list[FileInfo] = []
        try:
            self._walk(fd, path, max(depth, 1), ids, out)
        finally:
            os.close(fd)
        return out

    def _walk(self, dirfd: int, path: str, depth: int, ids: Ids, out: list[FileInfo]) -> None:
        for name in sorted(os.listdir(dirfd)):
            full = str(PurePosixPath(path) / name)
            try:
                info = self._entry(dirfd, name, full, ids)
            except OSError:
                continue  # vanished while listing
            out.append(info)
            if info.type == "directory" and depth > 1:
                try:
                    sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                                  dir_fd=dirfd)
                except OSError:
                    continue
                try:
                    self._walk(sub, full, depth - 1, ids, out)
                finally:
                    os.close(sub)

    @_as_owner
    def is_dir(self, path: str) -> bool:
        try:
            fd = self._open(self.norm(path), os.O_PATH | os.O_DIRECTORY)
        except PathNotFound:
            return False
        os.close(fd)
        return True


def allocated_bytes(root: str) -> int:
    """Block-level size of a tree (hard links counted once); tolerant of concurrent changes."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            key = (st.st_dev, st.st_ino)
            if key in seen:
                continue
            seen.add(key)
            total += st.st_blocks * 512
    return total
