"""Small real file systems for the storage tests: a tmpfs of a given size (needs root)."""

import contextlib
import os
import shutil
import subprocess
from typing import Iterator

import pytest


def mount_tmpfs(mount_point: str, size: int) -> bool:
    """Mount a tmpfs of ``size`` bytes at ``mount_point``; False when not permitted."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", mount_point], capture_output=True)
    return result.returncode == 0


def remount_read_only(mount_point: str) -> None:
    """Switch a mounted tmpfs to read-only, as a failing SD card gets remounted."""
    subprocess.run(["mount", "-o", "remount,ro", mount_point], check=True)


@contextlib.contextmanager
def tmpfs_dir(parent: str, name: str, size: int) -> Iterator[str]:
    """A new directory ``parent/name`` with a tmpfs of ``size`` bytes mounted on it for the
    duration; skips the test where mounting is not permitted."""
    mount_point = os.path.join(parent, name)
    os.mkdir(mount_point)
    if not mount_tmpfs(mount_point, size):
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", mount_point], check=False)
