"""What machine a measurement was taken on: CPU model and vendor, cores, memory, BLAS, torch and thread settings.

Speed on a CPU depends on its vendor as much as on its model: MKL, which torch uses for matrix
products, runs generic code on non-Intel CPUs. So every run names the CPU it ran on, and the results
keep one record per host (``host_key``).
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from ctl_lightning.allocator import freed_memory_kept

SIMD_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile")


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none)."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if not line.strip():
                break
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


def status_kib(field: str) -> int:
    """A memory field of this process's /proc/self/status (``VmRSS``, ``VmHWM``), in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def cpu_model() -> str:
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def cpu_vendor(info: dict | None = None) -> str:
    """``GenuineIntel``, ``AuthenticAMD``, ...; for records written before the vendor was kept, a guess from the model."""
    if info is not None:
        if info.get("vendor"):
            return str(info["vendor"])
        model = str(info.get("cpu", "")).lower()
        return "GenuineIntel" if "intel" in model else "AuthenticAMD" if "amd" in model else "unknown"
    return _cpuinfo().get("vendor_id") or "unknown"


def host_key(info: dict) -> str:
    """What tells hosts apart in the results: CPU vendor and model, and the core count."""
    return f"{cpu_vendor(info)} {info.get('cpu', '?')}, {info.get('cores', '?')} cores"


def _blas() -> dict[str, str]:
    out = {"torch": "mkl" if torch.backends.mkl.is_available() else "other"}
    try:
        import numpy as np

        out["numpy"] = str(np.show_config(mode="dicts")["Build Dependencies"]["blas"]["name"])
    except (ImportError, KeyError, TypeError):
        pass
    return out


def machine_info() -> dict:
    flags = set(_cpuinfo().get("flags", "").split())
    info = {
        "cpu": cpu_model(),
        "vendor": cpu_vendor(),
        "simd": [flag for flag in SIMD_FLAGS if flag in flags],
        "blas": _blas(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "python": platform.python_version(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "keep_freed_memory": freed_memory_kept(),  # whether the entry point tuned the allocator (ctl_lightning.allocator)
    }
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        info["memory_gib"] = round(pages * page_size / 2**30, 1)
    except (ValueError, OSError):
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
