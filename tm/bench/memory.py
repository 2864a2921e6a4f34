"""The peak memory of the cluster's processes while one phase lasts."""

from __future__ import annotations

from dataclasses import dataclass, field

import trio

from tm.bench.cluster import BenchCluster, BenchProcess, peak_rss_mb, rss_mb


@dataclass(eq=False)
class PhaseMemory:
    """The peak RSS of each process while one phase lasts.

    VmHWM is a peak over a process's whole life. If it grew during the phase, its new
    value is the phase's peak exactly; if it did not, the phase's peak is the largest
    VmRSS sampled (every `interval` s), which can miss a spike shorter than that. A
    process started during the phase has no earlier life: its VmHWM is the phase's peak.
    """

    hwm_before: dict[BenchProcess, float] = field(default_factory=dict)
    rss_max: dict[BenchProcess, float] = field(default_factory=dict)
    hwm_now: dict[BenchProcess, float] = field(default_factory=dict)

    @classmethod
    def start(cls, processes: list[BenchProcess]) -> PhaseMemory:
        memory = cls()
        for proc in processes:
            hwm = peak_rss_mb(proc.process.pid)
            if hwm is not None:
                memory.hwm_before[proc] = hwm
        return memory

    def sample(self, processes: list[BenchProcess]) -> None:
        for proc in processes:
            rss = rss_mb(proc.process.pid)
            hwm = peak_rss_mb(proc.process.pid)
            if rss is not None:
                self.rss_max[proc] = max(self.rss_max.get(proc, 0.0), rss)
            if hwm is not None:
                self.hwm_now[proc] = hwm

    async def run(self, cluster: BenchCluster, interval: float = 0.1) -> None:
        """Sample the cluster's processes until cancelled."""
        while True:
            self.sample(list(cluster.processes))
            await trio.sleep(interval)

    def peaks_by_role(self) -> dict[str, float]:
        peaks: dict[str, float] = {}
        for proc, hwm in self.hwm_now.items():
            before = self.hwm_before.get(proc)
            peak = hwm if before is None or hwm > before else self.rss_max.get(proc, 0.0)
            peaks[proc.role] = round(max(peaks.get(proc.role, 0.0), peak), 1)
        return peaks
