"""The CPU's integer dot-product instructions, and which INT8 scheme is exact on them.

x86 CPUs without VNNI run ONNX Runtime's (and oneDNN's) u8 x s8 kernels with `vpmaddubsw`, which
adds each pair of 8-bit products into a *saturating* int16. With full-range weights
(|w| <= 127) a pair reaches 2 * 255 * 127 = 64,770 > 32,767 and is clipped: results are silently
wrong (lenet5 top-1 agreement 0.81 on an AVX2 EPYC). Weights limited to 7 bits (|w| <= 64) keep
every pair within 255 * 128 = 32,640, so the "portable" scheme is exact on every x86 CPU. VNNI
(`vpdpbusd`), AMX and ARM's dot-product / widening kernels accumulate in int32 and never saturate.

Imports only the standard library: `kompakt.runtime` checks bundles with it at load.
"""

from __future__ import annotations

import platform
import subprocess
import warnings

from kompakt.errors import KompaktError

INT8_SCHEMES = ("portable", "full-range")
PORTABLE_MAX_ABS_WEIGHT = 64  # 255 * (64 + 64) = 32,640 fits a saturating int16 pair sum
_VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
_X86 = ("x86_64", "amd64", "i386", "i686", "x86")
_ARM = ("aarch64", "arm64", "armv8l", "armv7l")


class CpuIsaError(KompaktError):
    """An INT8 bundle needs integer instructions this CPU does not have."""


def cpu_flags() -> frozenset[str] | None:
    """The CPU feature flags (lower case), or None when this OS does not tell us."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                key = line.split(":", 1)[0].strip()
                if key in ("flags", "Features"):  # x86 / ARM spelling
                    return frozenset(line.split(":", 1)[1].lower().split())
    except OSError:
        pass
    if platform.system() == "Darwin":
        names = []
        for key in ("machdep.cpu.features", "machdep.cpu.leaf7_features"):
            try:
                out = subprocess.run(["sysctl", "-n", key], capture_output=True, text=True)
                names += out.stdout.lower().replace(".", "_").split()
            except OSError:
                pass
        if names:
            return frozenset(names)
        if platform.machine().lower() == "arm64":  # Apple silicon: every core has dot product
            return frozenset({"asimddp"})
    return None


def int8_isa(flags: frozenset[str] | None = None, machine: str | None = None) -> dict:
    """The integer dot-product class of this CPU (or of the given flags and machine).

    Returns:
        {"arch": "x86"|"arm"|other, "dot": "amx_int8"|"avx512_vnni"|"avx_vnni"|"avx2"|"sse"|
        "asimddp"|"neon"|"unknown", "saturates_full_range": True|False|None (None: unknown)}.
    """
    machine = (machine or platform.machine()).lower()
    flags = cpu_flags() if flags is None else flags
    if machine in _X86:
        if flags is None:
            return {"arch": "x86", "dot": "unknown", "saturates_full_range": None}
        vnni = [name for name in _VNNI_FLAGS if name in flags]
        if vnni:
            return {"arch": "x86", "dot": vnni[-1], "saturates_full_range": False}
        dot = "avx2" if "avx2" in flags else "sse"
        return {"arch": "x86", "dot": dot, "saturates_full_range": True}
    if machine in _ARM:
        dot = "asimddp" if flags and ("asimddp" in flags or "dotprod" in flags) else "neon"
        return {"arch": "arm", "dot": dot, "saturates_full_range": False}
    return {"arch": machine or "unknown", "dot": "unknown", "saturates_full_range": None}


def scheme_requirement(scheme: str) -> dict | None:
    """What a CPU must have to run an INT8 graph of `scheme` exactly (None: any CPU)."""
    if scheme not in INT8_SCHEMES:
        raise KompaktError(f"int8 scheme must be one of {INT8_SCHEMES}, got {scheme!r}")
    if scheme == "portable":
        return None
    return {
        "x86": list(_VNNI_FLAGS),
        "why": "full-range 8-bit weights saturate the int16 pair sums of x86 CPUs without VNNI",
    }


def check_int8_bundle(manifest: dict, isa: dict | None = None) -> None:
    """Refuse an INT8 CPU bundle whose weights would saturate on this CPU.

    Bundles built before schemes were recorded used full-range weights, so a CPU INT8 bundle
    without a recorded requirement counts as full-range.

    Raises:
        CpuIsaError: the bundle needs VNNI (or ARM) and this x86 CPU has neither.
    """
    quantization = manifest.get("quantization") or {}
    if manifest.get("precision") != "int8" or not quantization.get("cpu_kernels", True):
        return
    scheme = quantization.get("scheme", "full-range")
    if scheme_requirement(scheme) is None:
        return
    isa = isa or int8_isa()
    built_on = (manifest.get("target") or {}).get("int8_isa", {}).get("dot", "an unknown CPU")
    fix = (
        "rebuild it with `kompakt deploy MODEL.onnx -o BUNDLE --precision int8 --int8-scheme "
        "portable`, which is exact on every CPU"
    )
    if isa["saturates_full_range"]:
        raise CpuIsaError(
            f"this INT8 bundle uses the full-range scheme (built on {built_on}), which needs "
            f"a CPU with VNNI or AMX; this CPU has only {isa['dot'].upper()}, whose int8 kernels "
            f"saturate and give wrong results: {fix}"
        )
    if isa["saturates_full_range"] is None:
        warnings.warn(
            f"cannot tell whether this CPU has VNNI; a full-range INT8 bundle may be wrong on a "
            f"CPU without it ({fix})",
            RuntimeWarning,
            stacklevel=3,
        )
