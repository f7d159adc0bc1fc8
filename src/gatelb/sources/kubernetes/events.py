"""Rate limits for the Events gatelb posts about announcements (sources/kubernetes/source.py).

Every gateway posts its own (it says what it announces where), so the limits are per instance:

- the same (object, reason, message) is posted at most once per `dedupe_s`: a VIP that flaps
  between two gateways does not write an Event per flap;
- per object a token bucket (`burst` Events, one more every `refill_s`), like client-go's Event
  spam filter: a storm of changes on one Service cannot flood the API server;
- overall at most `per_second` Events a second (10,000 Services withdrawn at once become a
  trickle, and the rest are dropped, counted in `dropped`, and logged).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    at: float


class EventLimiter:
    def __init__(self, dedupe_s: float = 60.0, burst: int = 10, refill_s: float = 10.0, per_second: float = 50.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.dedupe_s, self.burst, self.refill_s, self.per_second = dedupe_s, burst, refill_s, per_second
        self._clock = clock
        self._last: dict[tuple[str, str, str], float] = {}
        self._buckets: dict[str, _Bucket] = {}
        self._global = _Bucket(per_second, clock())
        self.dropped = 0

    def allow(self, obj: str, reason: str, message: str) -> bool:
        now = self._clock()
        key = (obj, reason, message)
        last = self._last.get(key)
        if last is not None and now - last < self.dedupe_s:
            return False
        bucket = self._buckets.get(obj)
        if bucket is None:
            bucket = self._buckets[obj] = _Bucket(float(self.burst), now)
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.at) / self.refill_s)
        bucket.at = now
        g = self._global
        g.tokens = min(self.per_second, g.tokens + (now - g.at) * self.per_second)
        g.at = now
        if bucket.tokens < 1 or g.tokens < 1:
            self.dropped += 1
            return False
        bucket.tokens -= 1
        g.tokens -= 1
        self._last[key] = now
        if len(self._last) > 100_000:  # forget the oldest half rather than grow without bound
            for k in sorted(self._last, key=self._last.__getitem__)[:50_000]:
                del self._last[k]
        return True
