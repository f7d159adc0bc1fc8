"""What `gatelb.lab.client` measured, as values: one `Attempt` per new connection, summed up in a
`ClientResult`. The client prints `ClientResult.to_json()`; the lab parses it back with `from_json`."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Attempt:
    """One connection (TCP, HTTP) or one datagram exchange (UDP).

    ok: the backend answered and identified itself (an HTTP 500 is still an answer: see `status`).
    backend: the name the backend announced (``be1``...); seen_source: the client address the
    backend saw (equal to the client's own address when the path keeps it, e.g. DNAT).
    error: None, or one of ``refused``, ``timeout``, ``reset``, ``closed`` (EOF before an answer),
    ``unreachable``, ``bad-answer``, ``error:<text>``.
    at: wall-clock time (UNIX seconds) the attempt started; recorded by paced runs (``--rate``),
    whose timeline tests compare with the moment a backend was killed. None otherwise.
    """

    ok: bool
    backend: str | None = None
    seen_source: str | None = None
    latency_ms: float = 0.0
    error: str | None = None
    status: int | None = None  # HTTP status code
    at: float | None = None


@dataclass(frozen=True)
class ClientResult:
    """All attempts of one client run, with the counts tests usually want."""

    proto: str
    target: str
    port: int
    attempts: tuple[Attempt, ...]
    source: str | None = None
    per_backend: dict[str, int] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    statuses: dict[int, int] = field(default_factory=dict)
    sources: frozenset[str] = frozenset()

    @classmethod
    def from_attempts(cls, proto: str, target: str, port: int, attempts: list[Attempt],
                      source: str | None = None) -> ClientResult:
        return cls(
            proto=proto, target=target, port=port, attempts=tuple(attempts), source=source,
            per_backend=dict(Counter(a.backend for a in attempts if a.ok and a.backend)),
            failures=dict(Counter(a.error for a in attempts if a.error)),
            statuses=dict(Counter(a.status for a in attempts if a.status is not None)),
            sources=frozenset(a.seen_source for a in attempts if a.seen_source),
        )

    @property
    def ok(self) -> int:
        """Number of attempts that got an answer."""
        return sum(1 for a in self.attempts if a.ok)

    @property
    def failed(self) -> int:
        return len(self.attempts) - self.ok

    @property
    def backends(self) -> frozenset[str]:
        """Names of the backends that answered at least once."""
        return frozenset(self.per_backend)

    def to_json(self) -> str:
        doc: dict[str, Any] = {
            "proto": self.proto, "target": self.target, "port": self.port, "source": self.source,
            "count": len(self.attempts), "ok": self.ok,
            "per_backend": self.per_backend, "failures": self.failures,
            "statuses": {str(k): v for k, v in self.statuses.items()},
            "sources": sorted(self.sources),
            "attempts": [asdict(a) for a in self.attempts],
        }
        return json.dumps(doc)

    @classmethod
    def from_json(cls, text: str) -> ClientResult:
        doc = json.loads(text)
        attempts = [Attempt(**a) for a in doc["attempts"]]
        return cls.from_attempts(doc["proto"], doc["target"], int(doc["port"]), attempts, doc.get("source"))
