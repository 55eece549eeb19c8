"""What a trial costs the machine, measured in its worker process at each report: CPU %
(over the time since the last report: 100 per core kept busy, so up to 100 x cores),
resident memory, and, where the trial trains on a GPU, that GPU's utilisation and memory
through NVML. Logged as the trial's own MLflow metrics under MLflow's `system/` prefix, so
that the run page's "System metrics" tab draws them, one step per epoch.

The worker is one process per trial (or per pack of trials, which share its cost; every
member reports the same figures). psutil and NVML (nvidia-ml-py's pynvml) are imported
here only, by the worker; no GPU or no NVML library means no GPU metrics, never an error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import psutil

CPU_PERCENT = "system/process_cpu_utilization_percentage"
MEMORY_MB = "system/process_memory_rss_megabytes"
GPU_PERCENT = "system/gpu_utilization_percentage"
GPU_MEMORY_MB = "system/gpu_memory_usage_megabytes"  # the GPU's, all processes
GPU_PROCESS_MEMORY_MB = "system/gpu_process_memory_megabytes"  # this worker's share of it
MB = 1024 * 1024


def _nvml_handle(cuda_index: int) -> Any | None:
    """NVML's handle of the GPU torch calls cuda:<cuda_index>, or None (no NVML, no GPU).
    CUDA numbers the visible devices (Ray sets CUDA_VISIBLE_DEVICES per worker); NVML
    numbers every device, so the visible list maps one to the other."""
    try:
        import pynvml

        pynvml.nvmlInit()
        visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
        if not visible:
            return pynvml.nvmlDeviceGetHandleByIndex(cuda_index)
        chosen = visible[cuda_index]
        if chosen.isdigit():
            return pynvml.nvmlDeviceGetHandleByIndex(int(chosen))
        return pynvml.nvmlDeviceGetHandleByUUID(chosen)
    except Exception:  # pynvml.NVMLError and its library-not-found, an index out of range
        return None


@dataclass
class SystemSampler:
    """Started with the unit (its first call to psutil's cpu_percent sets the clock), then
    sample() at each report."""

    cuda_index: int | None = None  # the unit's CUDA device, None on the CPU
    process: psutil.Process = field(default_factory=psutil.Process)
    gpu: Any = None

    def __post_init__(self) -> None:
        self.process.cpu_percent(interval=None)  # 0.0, and the start of the first interval
        if self.cuda_index is not None:
            self.gpu = _nvml_handle(self.cuda_index)

    def sample(self) -> dict[str, float]:
        metrics = {
            CPU_PERCENT: float(self.process.cpu_percent(interval=None)),
            MEMORY_MB: self.process.memory_info().rss / MB,
        }
        if self.gpu is not None:
            metrics.update(self._gpu_sample())
        return metrics

    def _gpu_sample(self) -> dict[str, float]:
        import pynvml

        try:
            utilisation = pynvml.nvmlDeviceGetUtilizationRates(self.gpu)
            memory = pynvml.nvmlDeviceGetMemoryInfo(self.gpu)
            mine = sum(
                (p.usedGpuMemory or 0) for p in pynvml.nvmlDeviceGetComputeRunningProcesses(self.gpu)
                if p.pid == self.process.pid
            )
        except pynvml.NVMLError:
            return {}
        return {GPU_PERCENT: float(utilisation.gpu), GPU_MEMORY_MB: memory.used / MB,
                GPU_PROCESS_MEMORY_MB: mine / MB}
