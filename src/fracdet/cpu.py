"""Which CPU this is, and which onnxruntime int8 kernels it gets (standard library only).

onnxruntime's int8 numbers depend on the CPU: its MLAS library picks the u8×s8 multiply-add
kernels at start-up from cpuid, and not every path computes the same integers.  Dispatch order
(``onnxruntime/core/mlas/lib/platform.cpp``, x86-64; a later match overrides an earlier one):

- baseline SSE2/SSE4.1: activations and weights widened to int16, ``pmaddwd``: exact → ``"other"``
- AVX2 + FMA: ``vpmaddubsw`` adds two u8×s8 products into a *saturating* int16, so a
  convolution with large activations and full 8-bit weights can clip (255·127·2 > 32767) → ``"avx2"``
- AVX-VNNI (cpuid 7.1 EAX bit 4, e.g. Alder Lake, no AVX-512): ``vpdpbusd`` sums into int32,
  exact → ``"avxvnni"``
- AVX-512 F+BW+DQ+VL ("AVX-512 core", e.g. Skylake-SP): ``vpmaddubsw`` again, saturating like
  AVX2 → ``"avx512"``
- AVX-512 VNNI (e.g. Cascade Lake, Ice Lake, Sapphire Rapids, Zen 4): exact → ``"avx512vnni"``.
  Where AMX-INT8 is usable MLAS also moves the plain u8s8 GEMM (not the convolutions) to AMX
  tiles, which are exact too: the class stays ``"avx512vnni"`` and :func:`cpu_summary` records
  ``amx_int8`` among the flags.
- any other architecture (aarch64 NEON/SVE, POWER, ...) → ``"non-x86"``.

Weights quantized to 7 bits (``reduce_range``) cannot saturate the int16 pairs
(255·63·2 = 32130), so with them every class computes the same integers; the class is still
recorded because a drift measured on one class is only known to hold on that class.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")

# the /proc/cpuinfo flags that decide the int8 kernel class (and are reported with it)
INT8_FLAGS = ("sse4_1", "avx", "avx2", "fma", "avx_vnni", "avx512f", "avx512bw", "avx512dq", "avx512vl",
              "avx512_vnni", "amx_tile", "amx_int8")
KERNEL_CLASSES = ("avx512vnni", "avx512", "avxvnni", "avx2", "other", "non-x86")
_X86 = ("x86_64", "amd64", "i386", "i486", "i586", "i686", "x86")


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> str:
    try:
        return CPUINFO.read_text(errors="replace")
    except OSError:
        return ""


def _field(name: str) -> str:
    for line in _cpuinfo().splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == name:
            return value.strip()
    return ""


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The feature flags of the first CPU in /proc/cpuinfo (empty where there is none)."""
    return frozenset(_field("flags").split() or _field("Features").split())


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``, else :func:`platform.processor`), or ``"unknown"``."""
    return (_field("model name") or _field("Model") or _field("cpu model") or platform.processor()
            or platform.machine() or "unknown")


def _is_x86(machine: str | None = None) -> bool:
    return (machine if machine is not None else platform.machine()).lower() in _X86


def int8_kernel_class(flags: str | frozenset[str] | set[str] | None = None, machine: str | None = None) -> str:
    """The onnxruntime (MLAS) int8 kernel family this CPU gets: ``"avx512vnni"``, ``"avx512"``,
    ``"avxvnni"``, ``"avx2"``, ``"other"`` (x86 without AVX2) or ``"non-x86"`` (see the module
    docstring).  ``flags``: a /proc/cpuinfo flags string or set instead of this CPU's (then
    x86 unless ``machine`` says otherwise); ``machine``: instead of :func:`platform.machine`."""
    if flags is None:
        if not _is_x86(machine):
            return "non-x86"
        return _kernel_class_cached()
    if machine is not None and not _is_x86(machine):
        return "non-x86"
    return _classify(frozenset(flags.split()) if isinstance(flags, str) else frozenset(flags))


@functools.lru_cache(maxsize=1)
def _kernel_class_cached() -> str:
    return _classify(cpu_flags())


def _classify(f: frozenset[str]) -> str:
    if not {"avx2", "fma"} <= f:  # MLAS's AVX2 path needs both (cpuid 1 ECX.FMA, 7 EBX.AVX2)
        return "other"
    if {"avx512f", "avx512bw", "avx512dq", "avx512vl"} <= f:
        return "avx512vnni" if "avx512_vnni" in f else "avx512"
    if "avx_vnni" in f:
        return "avxvnni"
    return "avx2"


@functools.lru_cache(maxsize=1)
def cpu_summary() -> dict[str, object]:
    """Where a measurement was made: CPU model, architecture, int8 kernel class and the flags
    that decide it (JSON-ready)."""
    flags = cpu_flags()
    return {
        "cpu": cpu_model(),
        "machine": platform.machine(),
        "kernel_class": int8_kernel_class(),
        "flags": [f for f in INT8_FLAGS if f in flags],
    }


__all__ = ["INT8_FLAGS", "KERNEL_CLASSES", "cpu_flags", "cpu_model", "cpu_summary", "int8_kernel_class"]
