"""How fast each Endpoints object grows, for the readiness forecast: is a
Service's Endpoints object going to reach 1000 addresses within days?

Bounded: one sample per Service per `every` seconds over `window` seconds,
and only for Endpoints objects large enough to matter.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping

from coverage_exporter.model.objects import ServiceKey
from coverage_exporter.model.readiness import ServiceGrowth, days_to_capacity

MIN_ADDRESSES = 500


class GrowthTracker:
    def __init__(self, window: float = 6 * 3600, every: float = 300) -> None:
        self._window = window
        self._every = every
        self._samples: dict[ServiceKey, deque[tuple[float, int]]] = {}

    def observe(self, now: float, counts: Mapping[ServiceKey, int]) -> None:
        for key in [k for k in self._samples if k not in counts]:
            del self._samples[key]
        for key, count in counts.items():
            if count < MIN_ADDRESSES and key not in self._samples:
                continue
            samples = self._samples.setdefault(key, deque())
            if not samples or now - samples[-1][0] >= self._every:
                samples.append((now, count))
            while samples and now - samples[0][0] > self._window:
                samples.popleft()

    def view(self, counts: Mapping[ServiceKey, int]) -> dict[ServiceKey, ServiceGrowth]:
        out = {}
        for key, count in counts.items():
            samples = list(self._samples.get(key, ()))
            if samples and samples[-1][1] != count:
                samples.append((samples[-1][0] + 1e-9, count))
            out[key] = ServiceGrowth(count, days_to_capacity(samples))
        return out
