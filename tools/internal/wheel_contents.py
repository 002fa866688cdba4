"""Check what a built wheel carries against the package's source tree: every module of the
package, the .pyx/.pyi/py.typed package data, exactly one compiled module for the expected
machine, the dist-info, and nothing else (no generated C, no build leftovers, no libraries
grafted by auditwheel, which would mean the extension links something it should not).

    python tools/internal/wheel_contents.py WHEEL SOURCE_PACKAGE_DIR MACHINE

SOURCE_PACKAGE_DIR is ``src/pyv_edge_agent`` of the checkout; MACHINE is ``uname -m`` of the
target (x86_64, aarch64, armv7l). Prints a one-line summary, or the problems and exits 1.
"""

import os
import re
import struct
import sys
import zipfile
from typing import List, Set, Tuple

# ELF header: e_ident[EI_CLASS] (1: 32-bit, 2: 64-bit) and e_machine for each target.
ELF_TARGETS = {"x86_64": (2, 0x3E), "aarch64": (2, 0xB7), "armv7l": (1, 0x28)}
SOURCE_SUFFIXES = (".py", ".pyx", ".pyi", ".typed")
COMPILED = re.compile(r"^pyv_edge_agent/cloud_sync/_codec/_c\.cpython-\d+-[a-z0-9_]+-linux-[a-z0-9_]+\.so$")


def source_files(package_dir: str) -> Set[str]:
    """The files the wheel must carry, as archive names (``pyv_edge_agent/...``)."""
    root = os.path.dirname(os.path.abspath(package_dir))
    wanted = set()
    for directory, subdirs, files in os.walk(package_dir):
        subdirs[:] = [name for name in subdirs if name != "__pycache__"]
        for name in files:
            if name.endswith(SOURCE_SUFFIXES):
                wanted.add(os.path.relpath(os.path.join(directory, name), root).replace(os.sep, "/"))
    return wanted


def elf_target(data: bytes) -> Tuple[int, int]:
    """The ELF class and machine of a shared object's header."""
    if data[:4] != b"\x7fELF":
        return (0, 0)
    little = data[5] == 1
    (machine,) = struct.unpack("<H" if little else ">H", data[18:20])
    return (data[4], machine)


def check(wheel: str, package_dir: str, machine: str) -> List[str]:
    problems = []
    with zipfile.ZipFile(wheel) as archive:
        names = [name for name in archive.namelist() if not name.endswith("/")]
        compiled = [name for name in names if COMPILED.match(name)]
        if len(compiled) != 1:
            problems.append(f"expected one compiled _codec._c module, found {compiled or 'none'}")
        for name in compiled:
            target = elf_target(archive.read(name)[:64])
            if target != ELF_TARGETS[machine]:
                problems.append(f"{name} is ELF class/machine {target}, not {machine} {ELF_TARGETS[machine]}")
        dist_info = {name for name in names if re.match(r"^pyv_edge_agent-[^/]+\.dist-info/", name)}
        wanted = source_files(package_dir)
        missing = wanted.difference(names)
        stray = set(names) - wanted - dist_info - set(compiled)
        if missing:
            problems.append(f"missing from the wheel: {sorted(missing)}")
        if stray:
            problems.append(f"stray files in the wheel: {sorted(stray)}")
        if not any(name.endswith("/WHEEL") for name in dist_info):
            problems.append("no .dist-info/WHEEL")
    if not problems:
        size = os.path.getsize(wheel)
        print(f"contents ok: {len(names)} files, {len(wanted)} from the source tree, {compiled[0]}, {size} bytes")
    return problems


def main(argv: List[str]) -> int:
    if len(argv) != 4 or argv[3] not in ELF_TARGETS:
        print(__doc__, file=sys.stderr)
        return 2
    problems = check(argv[1], argv[2], argv[3])
    for problem in problems:
        print(f"wheel contents: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
