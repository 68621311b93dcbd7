"""Peak memory of a block of code, on the CPU or a GPU."""

from __future__ import annotations

from pathlib import Path

import torch


class PeakMemory:
    """Peak memory of the code inside the ``with`` block.

    On a GPU, ``torch.cuda.max_memory_allocated`` (tensors only, not the driver's overhead
    that tools like gpustat add). On the CPU, the process's peak resident set size
    (``VmHWM``) after resetting it on entry through ``/proc/self/clear_refs`` (Linux); where
    that is not possible, the process's lifetime peak (``ru_maxrss``), which includes training.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self.megabytes, self.kind = float("nan"), ""

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.kind = "torch.cuda.max_memory_allocated"
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")
                self.kind = "CPU: peak RSS of the whole process during inference, VmHWM"
            except OSError:
                self.kind = "CPU: lifetime peak RSS of the process, training included, ru_maxrss"
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.device.type == "cuda":
            self.megabytes = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif "VmHWM" in self.kind:
            status = Path("/proc/self/status").read_text()
            self.megabytes = int(status.split("VmHWM:")[1].split()[0]) / 1024
        else:
            import resource

            self.megabytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
