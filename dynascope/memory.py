"""The peak memory of a block of work, in bytes above what was in use when it began: on a GPU, torch's own peak
allocation; on a Linux CPU, the process's resident-set high-water mark, reset at the start (/proc/self/clear_refs);
elsewhere unknown (None). Not nestable: the high-water mark is the process's."""

from pathlib import Path
from types import TracebackType

import torch

STATUS, CLEAR = Path("/proc/self/status"), Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int:
    for line in STATUS.read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise KeyError(field)


class Peak:
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.bytes: int | None = None
        self._start = 0

    def __enter__(self) -> "Peak":
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        else:
            try:
                CLEAR.write_text("5")  # resets VmHWM to the current resident set
                self._start = _status_kib("VmRSS") * 1024
            except (OSError, KeyError):
                self._start = -1
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        if self.device.type == "cuda":
            self.bytes = torch.cuda.max_memory_allocated(self.device) - self._start
        elif self._start >= 0:
            self.bytes = max(0, _status_kib("VmHWM") * 1024 - self._start)
