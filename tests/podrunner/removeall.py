"""Go's os.RemoveAll (src/os/removeall_at.go), which the kubelet uses to delete an
emptyDir (pkg/volume/emptydir/empty_dir.go teardownDefault). It works through
unlinkat/openat on names and never compares devices, so it descends into whatever
is still mounted below the directory: a live kernel mount is emptied, a dead FUSE
mount fails the walk with ENOTCONN. This copy does the same, and records every
entry it removed and on which device, so a test can tell what a leftover mount cost."""

import errno
import os
from dataclasses import dataclass, field

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_BATCH = 1024  # removeall_at.go reqSize


@dataclass
class Removed:
    path: str
    device: int


@dataclass
class Result:
    """What RemoveAll did: `error` is the OSError Go would return (None: success)."""

    path: str
    removed: list = field(default_factory=list)
    error: OSError = None
    node_device: int = None

    def inside_mounts(self):
        """Entries removed from a filesystem other than the one holding the directory's parent."""
        return [r.path for r in self.removed if r.device != self.node_device]


def remove_all(path):
    """os.RemoveAll(path), recording what it removed."""
    path = path.rstrip("/") or "/"
    parent_dir, base = os.path.split(path)
    result = Result(path)
    try:
        result.node_device = os.stat(parent_dir or ".").st_dev
    except OSError as err:
        result.error = err
        return result
    # Simple case: Remove (unlink, then rmdir) works.
    dev = _lstat_dev(path)
    try:
        os.unlink(path)
        result.removed.append(Removed(path, dev))
        return result
    except FileNotFoundError:
        return result
    except OSError:
        pass
    try:
        os.rmdir(path)
        result.removed.append(Removed(path, dev))
        return result
    except FileNotFoundError:
        return result
    except OSError:
        pass
    parent = os.open(parent_dir or ".", _DIR_FLAGS)
    try:
        err = _remove_all_from(parent, parent_dir, base, result)
    finally:
        os.close(parent)
    result.error = err
    return result


def _lstat_dev(path, dir_fd=None):
    try:
        return os.stat(path, dir_fd=dir_fd, follow_symlinks=False).st_dev
    except OSError:
        return None


def _remove_all_from(parent_fd, parent_path, base, result):
    full = os.path.join(parent_path, base)
    dev = _lstat_dev(base, parent_fd)
    try:
        os.unlink(base, dir_fd=parent_fd)
        result.removed.append(Removed(full, dev))
        return None
    except FileNotFoundError:
        return None
    except OSError as err:
        if err.errno not in (errno.EISDIR, errno.EPERM, errno.EACCES):
            return _path_error(err, full)
        unlink_err = err
    recurse_err = None
    while True:
        try:
            fd = os.open(base, _DIR_FLAGS, dir_fd=parent_fd)
        except FileNotFoundError:
            return None
        except OSError as err:
            if err.errno in (errno.ENOTDIR, errno.ELOOP):
                return _path_error(unlink_err, full)
            recurse_err = _path_error(err, full)
            break
        try:
            try:
                names = os.listdir(fd)
            except FileNotFoundError:
                return None
            except OSError as err:
                return _path_error(err, full)
            failed = 0
            for name in names:
                err = _remove_all_from(fd, full, name, result)
                if err is not None:
                    failed += 1
                    recurse_err = recurse_err or err
        finally:
            os.close(fd)
        # Go re-reads until a batch comes back short; every name was tried once.
        if len(names) < _BATCH or failed == len(names):
            break
    dir_dev = _lstat_dev(base, parent_fd)
    try:
        os.rmdir(base, dir_fd=parent_fd)
        result.removed.append(Removed(full, dir_dev))
        return None
    except FileNotFoundError:
        return None
    except OSError as err:
        return recurse_err or _path_error(err, full)


def _path_error(err, path):
    return OSError(err.errno, os.strerror(err.errno), path)
