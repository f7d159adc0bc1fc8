"""Desired record sets against the ones we own -> one change set per zone. Pure.

Every change carries what makes it safe on the server (gatelb.dns.rfc2136 turns these into
RFC 2136 prerequisites, so a stale view can never overwrite what someone else wrote):

- create: neither the record set, a CNAME at its name, nor its registry TXT exists;
- update and delete: our registry TXT (the `proof`) is still there, with the text we read.

A record set that exists without our registry TXT (or with another owner's) is a conflict: it is
never touched, and is reported.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from gatelb.dns.records import Key, RRSet, Wanted, txt_name, txt_text
from gatelb.model import ObjectRef


class Op(enum.StrEnum):
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class Owned:
    """A record set our registry says is ours: what the server holds (None: the registry TXT is
    there but the record set is gone) and the TXT that proves it, as (name, text)."""

    rrset: RRSet | None
    proof: tuple[str, str]


@dataclass(frozen=True, slots=True)
class Change:
    op: Op
    key: Key
    new: RRSet | None = None  # create, update
    txt: str | None = None  # the registry text to write (create, update)
    proof: tuple[str, str] | None = None  # update, delete: must still be present

    def __str__(self) -> str:
        what = f"{self.key[0]} {self.key[1]}"
        return f"{self.op.value} {what} {' '.join(self.new.values)}" if self.new else f"{self.op.value} {what}"


@dataclass(frozen=True, slots=True)
class Conflict:
    key: Key
    origins: tuple[ObjectRef, ...]
    reason: str

    def __str__(self) -> str:
        by = ", ".join(map(str, self.origins))
        return f"{self.key[0]} {self.key[1]}: {self.reason}; not changed (wanted by {by})"


@dataclass(frozen=True, slots=True)
class ChangeSet:
    zone: str
    changes: tuple[Change, ...] = ()
    conflicts: tuple[Conflict, ...] = ()


def plan(zone: str, owner: str, desired: Mapping[Key, Wanted], owned: Mapping[Key, Owned],
         foreign: Mapping[Key, str]) -> ChangeSet:
    """`foreign`: record sets known to exist without our ownership -> why they are not ours."""
    changes: list[Change] = []
    conflicts: list[Conflict] = []
    for key in sorted(desired):
        want = desired[key]
        proof = (txt_name(key), txt_text(owner, want.resource))
        if key in owned:
            have = owned[key]
            if have.rrset != want.rrset or have.proof != proof:
                changes.append(Change(Op.UPDATE, key, want.rrset, proof[1], have.proof))
        elif key in foreign:
            conflicts.append(Conflict(key, want.origins, foreign[key]))
        else:
            changes.append(Change(Op.CREATE, key, want.rrset, proof[1]))
    for key in sorted(owned.keys() - desired.keys()):
        changes.append(Change(Op.DELETE, key, proof=owned[key].proof))
    return ChangeSet(zone, tuple(changes), tuple(conflicts))
