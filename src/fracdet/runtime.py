"""Process-level speed settings: a faster memory allocator for PyTorch on the CPU.

glibc's malloc makes PyTorch CPU work several times slower than tcmalloc on small machines
(measured: training steps 1.6× slower, inference up to 4×).  The allocator can only be swapped
before the process starts, so the ``fracdet`` console script re-executes itself once with
``LD_PRELOAD`` set when tcmalloc is installed (Debian/Ubuntu: ``libtcmalloc-minimal4``).
Set ``FRACDET_ALLOCATOR=system`` to opt out, or ``FRACDET_TCMALLOC=/path/to/lib.so`` to name it.

The library is looked up in a fixed list of folders and in the dynamic linker's cache
(``ldconfig -p``, bounded in time) — never by walking the file system, which can hold
symlink loops (seen: a toolchain's ``build/Release/build/Release/...`` under ``/usr/lib``).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from typing import Sequence

log = logging.getLogger(__name__)

ENV_OPT_OUT = "FRACDET_ALLOCATOR"
ENV_LIBRARY = "FRACDET_TCMALLOC"
HEAVY_COMMANDS = {"train", "evaluate", "predict", "quantize", "calibrate", "ensemble", "explain", "info"}
LIB_NAMES = ("libtcmalloc_minimal.so.4", "libtcmalloc_minimal.so")
LIB_DIRS = (
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/lib/x86_64-linux-gnu",
    "/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/usr/local/lib",
    "/opt/homebrew/lib",
)
LDCONFIG_TIMEOUT_S = 2.0


def _from_ldconfig(timeout: float = LDCONFIG_TIMEOUT_S) -> str | None:
    """tcmalloc's path from the dynamic linker's cache, or None (no ldconfig, slow, absent)."""
    for exe in ("/sbin/ldconfig", "/usr/sbin/ldconfig", "ldconfig"):
        try:
            out = subprocess.run([exe, "-p"], capture_output=True, text=True, timeout=timeout).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        for line in out.splitlines():
            name, _, path = line.strip().partition(" => ")
            if name.split(" ", 1)[0] in LIB_NAMES and os.path.isfile(path.strip()):
                return path.strip()
        return None
    return None


def find_tcmalloc(lib_dirs: Sequence[str] = LIB_DIRS, ldconfig: bool = True) -> str | None:
    """Path of an installed tcmalloc (minimal) shared library, or None.

    Looks only at ``$FRACDET_TCMALLOC``, the files named :data:`LIB_NAMES` directly inside
    ``lib_dirs``, and (``ldconfig``) the linker cache: a bounded number of ``stat`` calls and
    one subprocess with a timeout, whatever the machine's folders hold.
    """
    explicit = os.environ.get(ENV_LIBRARY)
    if explicit:
        return explicit if os.path.isfile(explicit) else None
    for folder in lib_dirs:
        for name in LIB_NAMES:
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                return path
    return _from_ldconfig() if ldconfig else None


def active_allocator() -> str:
    """'tcmalloc' when it is preloaded into this process, else 'system (glibc malloc)'."""
    try:
        with open("/proc/self/maps") as f:
            if "tcmalloc" in f.read():
                return "tcmalloc"
    except OSError:
        pass
    return "system (glibc malloc)"


def reexec_with_tcmalloc(argv: Sequence[str]) -> None:
    """Replace this process with itself under tcmalloc, for the heavy commands only.

    Does nothing when opted out, already preloaded, not installed, or for light commands.
    """
    if os.environ.get(ENV_OPT_OUT, "").lower() in ("system", "glibc", "0", "off"):
        return
    if not any(a in HEAVY_COMMANDS for a in argv[:3]) or "tcmalloc" in os.environ.get("LD_PRELOAD", ""):
        return
    if "-h" in argv or "--help" in argv:
        return
    lib = find_tcmalloc()
    if lib is None:
        return
    env = dict(os.environ)
    env["LD_PRELOAD"] = f"{lib}:{env['LD_PRELOAD']}" if env.get("LD_PRELOAD") else lib
    env[ENV_OPT_OUT] = env.get(ENV_OPT_OUT) or "tcmalloc"
    try:
        os.execve(sys.executable, [sys.executable, "-m", "fracdet", *argv], env)
    except OSError:
        return  # carry on with the system allocator
