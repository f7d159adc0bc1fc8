"""Which slot table a service's pick uses: the WF2Q sequence (slots.py) for random, round robin
and source hash, the Maglev table (maglev.py) for maglev. One place, so that the compiler
(ruleset.py), the tracer (trace.py) and the diagnosis read the same table. Pure."""

from __future__ import annotations

from gatelb.model import Algorithm, Service

from .maglev import maglev_counts, maglev_table, maglev_tolerance
from .slots import slot_counts, slot_sequence, slot_tolerance


def _configured(svc: Service) -> int:
    # The Maglev table size follows every configured backend, so health never resizes it.
    return len(svc.backends) + len(svc.idle_backends)


def slot_table(svc: Service) -> tuple[int, ...]:
    """Index into svc.backends of every slot."""
    if svc.algorithm is Algorithm.MAGLEV:
        return maglev_table(svc.backends, _configured(svc))
    return slot_sequence([b.weight for b in svc.backends])


def slot_shares(svc: Service) -> list[int]:
    """Slots owned by each of svc.backends."""
    if svc.algorithm is Algorithm.MAGLEV:
        return maglev_counts(svc.backends, _configured(svc))
    return slot_counts([b.weight for b in svc.backends])


def tolerance(svc: Service) -> float:
    """How far a backend's share of slots may be from its share of the weights."""
    if svc.algorithm is Algorithm.MAGLEV:
        return maglev_tolerance(svc.backends, _configured(svc))
    return slot_tolerance([b.weight for b in svc.backends])
