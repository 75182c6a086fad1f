"""The worker's private view of the file system, set up while still root.

Two things need root and a mount namespace of the worker's own:

- **Scratch space.** The tenant's scratch folder gets a private tmpfs with a
  size and inode cap, owned by the tenant's uid. ``RLIMIT_FSIZE`` bounds
  one file; only a capped file system bounds the disk a tenant can fill.
- **Reaching the interpreter after the uid drop.** Python often lives
  under a directory other users cannot enter (``/root`` is mode 0700 on
  many machines), and so may the tenant's folder. For each path the worker
  needs, the highest such closed directory is covered with a tmpfs of mode
  0755 in which only the needed paths are bind-mounted back, read-only,
  at the same place. Paths stay exactly as they were, and everything else
  under the closed directory stays out of sight.

Without root none of this is possible or needed: the worker keeps the
dispatcher's uid and sees what it sees (Landlock still narrows that).
"""

from __future__ import annotations

import ctypes
import os
import stat
from collections.abc import Iterable
from pathlib import Path

CLONE_NEWNS = 0x00020000
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000

SCRATCH_SIZE = "64m"
SCRATCH_INODES = 4096

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")


def mount(source: str, target: str, fstype: str | None, flags: int, data: str) -> None:
    """mount(2), raising OSError that names the target."""
    _check(
        _libc.mount(
            source.encode(),
            target.encode(),
            fstype.encode() if fstype else None,
            flags,
            data.encode() if data else None,
        ),
        f"mount {target}",
    )


def enter_private_mount_namespace() -> None:
    """Mounts made from here on are seen by this process alone."""
    _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    mount("none", "/", None, MS_REC | MS_PRIVATE, "")


def mount_scratch(folder: str, uid: int) -> None:
    """A private, size-capped tmpfs on ``folder``, owned by ``uid``."""
    options = (
        f"size={SCRATCH_SIZE},nr_inodes={SCRATCH_INODES},mode=0700,uid={uid},gid={uid}"
    )
    mount("tmpfs", folder, "tmpfs", MS_NOSUID | MS_NODEV, options)


def expose_to_others(paths: Iterable[str]) -> list[str]:
    """Make each path reachable by any uid, read-only; see the module note.

    Returns the closed directories that were covered.
    """
    by_closed_dir: dict[Path, list[Path]] = {}
    for path in map(Path, paths):
        closed = highest_closed_ancestor(path)
        if closed is not None:
            by_closed_dir.setdefault(closed, []).append(path)

    for closed, inside in by_closed_dir.items():
        cover_with_window(closed, inside)
    return [str(closed) for closed in by_closed_dir]


def highest_closed_ancestor(path: Path) -> Path | None:
    """The outermost directory above ``path`` that others cannot enter."""
    for ancestor in reversed(path.parents):
        if not os.stat(ancestor).st_mode & stat.S_IXOTH:
            return ancestor
    return None


def cover_with_window(closed: Path, inside: list[Path]) -> None:
    """Cover ``closed`` with a 0755 tmpfs that shows only ``inside``.

    The paths are opened before the cover goes on, and bind-mounted back
    from those descriptors: once covered, their old names lead nowhere.
    """
    handles = {path: os.open(path, os.O_PATH | os.O_CLOEXEC) for path in inside}
    try:
        mount("tmpfs", str(closed), "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
        for path, handle in handles.items():
            bind_read_only(f"/proc/self/fd/{handle}", path)
    finally:
        for handle in handles.values():
            os.close(handle)


def bind_read_only(source: str, target: Path) -> None:
    """Bind ``source`` on ``target`` (made first), then make it read-only."""
    if os.path.isdir(source):
        target.mkdir(parents=True, exist_ok=True)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.touch()
    mount(source, str(target), None, MS_BIND | MS_REC, "")
    mount("none", str(target), None, MS_REMOUNT | MS_BIND | MS_RDONLY, "")


def drop_privileges(uid: int) -> None:
    """Become ``uid`` (and group ``uid``), with no supplementary groups."""
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
