"""Metric ring buffers with the three tiers of hostagent-wire §5.5 (10m raw, 2h 30 s avg, 24h 5 min avg)."""

from __future__ import annotations

from collections import deque

from app.hostagent.runtime.base import FlushedMetrics, InvalidArgument, MetricSample

RANGE_TIER = {"5m": ("10m", 300), "10m": ("10m", 600), "1h": ("2h", 3600), "2h": ("2h", 7200),
              "6h": ("24h", 21600), "12h": ("24h", 43200), "24h": ("24h", 86400)}


def _avg(samples: list[MetricSample], ts: int) -> MetricSample:
    n = len(samples)
    return MetricSample(
        timestamp_unix=ts,
        cpu_pct=sum(s.cpu_pct for s in samples) / n,
        mem_bytes=sum(s.mem_bytes for s in samples) // n,
        disk_bytes=sum(s.disk_bytes for s in samples) // n,
    )


class MetricRings:
    def __init__(self, interval: float) -> None:
        self.t10m: deque[MetricSample] = deque(maxlen=max(int(600 / interval), 1))
        self.t2h: deque[MetricSample] = deque(maxlen=240)
        self.t24h: deque[MetricSample] = deque(maxlen=288)
        self._pending_2h: list[MetricSample] = []
        self._pending_24h: list[MetricSample] = []
        self.stopped = False

    def add(self, s: MetricSample) -> None:
        if self.stopped:
            return
        self.t10m.append(s)
        self._pending_2h.append(s)
        if s.timestamp_unix - self._pending_2h[0].timestamp_unix >= 30:
            agg = _avg(self._pending_2h, s.timestamp_unix)
            self._pending_2h.clear()
            self.t2h.append(agg)
            self._pending_24h.append(agg)
            if s.timestamp_unix - self._pending_24h[0].timestamp_unix >= 300:
                self.t24h.append(_avg(self._pending_24h, s.timestamp_unix))
                self._pending_24h.clear()

    def get(self, range_: str, now: int) -> list[MetricSample]:
        if range_ not in RANGE_TIER:
            raise InvalidArgument(f"invalid range: {range_!r}")
        tier, window = RANGE_TIER[range_]
        ring = {"10m": self.t10m, "2h": self.t2h, "24h": self.t24h}[tier]
        return [s for s in ring if s.timestamp_unix >= now - window]

    def flush(self) -> FlushedMetrics:
        """Return and clear all tiers; sampling stops (hostagent-wire §6 FlushSandboxMetrics)."""
        out = FlushedMetrics(list(self.t10m), list(self.t2h), list(self.t24h))
        self.t10m.clear()
        self.t2h.clear()
        self.t24h.clear()
        self._pending_2h.clear()
        self._pending_24h.clear()
        self.stopped = True
        return out
