"""Peak memory of a window of work (a training step), on the CPU or a CUDA device.

CPU: the kernel's resident-set high-water mark ``VmHWM``, reset by writing ``5`` to ``/proc/self/clear_refs``
(Linux); where that is unavailable, RSS sampled every millisecond by a thread. CUDA:
``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` (allocator peaks, not the reserved pool).

    probe = make_probe(device)
    before = probe.current()
    probe.start_window()
    ...  # the work
    added = probe.peak() - before

Used by the benchmark suite and by the task packages' memory commands. On the CPU the resident set never shrinks
below what the process once held, so each measurement runs in a fresh interpreter (:func:`run_in_fresh_process`).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import subprocess
import sys
import threading
import time
from typing import Any

import torch


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def current_rss() -> int:
    """Resident set size of this process in bytes."""
    kib = _status_kib("VmRSS")
    if kib is not None:
        return kib * 1024
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:  # pragma: no cover - non-Linux without psutil
        import resource

        scale = 1 if sys.platform == "darwin" else 1024
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * scale


def trim_heap() -> None:
    """``gc.collect()`` and glibc ``malloc_trim(0)`` (no-op elsewhere): freed heap pages leave the RSS."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class CpuMemoryProbe:
    """Peak RSS over a window: the kernel high-water mark reset by ``/proc/self/clear_refs``, or sampling."""

    def __init__(self, interval_s: float = 0.001) -> None:
        self.interval_s = interval_s
        self.method = "rss-hwm" if self._reset_hwm() else "rss-sampled"
        self._peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def _reset_hwm() -> bool:
        if _status_kib("VmHWM") is None:
            return False
        try:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
                fh.write("5")
        except OSError:
            return False
        return True

    def current(self) -> int:
        trim_heap()
        return current_rss()

    def start_window(self) -> None:
        if self.method == "rss-hwm" and self._reset_hwm():
            return
        self.method = "rss-sampled"
        self._peak = current_rss()
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, current_rss())
            time.sleep(self.interval_s)

    def peak(self) -> int:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            return max(self._peak, current_rss())
        kib = _status_kib("VmHWM")
        return kib * 1024 if kib is not None else current_rss()

    def sync(self) -> None:
        pass


class CudaMemoryProbe:
    """``torch.cuda.max_memory_allocated`` over a window (allocator peaks, not the reserved pool)."""

    method = "cuda-max-allocated"

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def current(self) -> int:
        gc.collect()
        torch.cuda.synchronize(self.device)
        return int(torch.cuda.memory_allocated(self.device))

    def start_window(self) -> None:
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)

    def peak(self) -> int:
        torch.cuda.synchronize(self.device)
        return int(torch.cuda.max_memory_allocated(self.device))

    def sync(self) -> None:
        torch.cuda.synchronize(self.device)


def make_probe(device: torch.device) -> CpuMemoryProbe | CudaMemoryProbe:
    return CudaMemoryProbe(device) if device.type == "cuda" else CpuMemoryProbe()


def run_in_fresh_process(module: str, spec: dict[str, Any], what: str,
                         timeout_s: float | None = None) -> dict[str, Any]:
    """``python -m <module> '<spec as JSON>'`` in a fresh interpreter; returns the JSON object the child prints on
    its last stdout line. A failing child raises ``RuntimeError`` naming ``what`` with the end of its stderr."""
    proc = subprocess.run([sys.executable, "-m", module, json.dumps(spec)], capture_output=True, text=True,
                          env=os.environ.copy(), timeout=timeout_s, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"measuring {what} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
