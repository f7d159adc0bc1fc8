"""The one reconcile loop, against the fake nft: synced gate, batching, strict rejection,
failure -> full resync, consumers after each successful sync only, adoption."""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import resource
import weakref

import pytest

from gatelb.agent.engine import DataplaneSync
from gatelb.agent.reconciler import THOROUGH_GROWTH, Reconciler, run_sources
from gatelb.kernel.fake import FakeNft
from gatelb.model import (
    AddressRange,
    Backend,
    DesiredState,
    IPPool,
    LoadBalancer,
    ObjectRef,
    OriginKind,
    ResolvedState,
    SyncedState,
    ValidationError,
)
from gatelb.sources.base import AddressView, Contribution, Notify
from gatelb.sources.static import StaticSource

ip = ipaddress.ip_address
POOL = IPPool("public", (AddressRange(ip("203.0.113.1"), ip("203.0.113.100")),))


def lb(name: str, *backends: int, frontend: str | None = None, port: int = 80) -> LoadBalancer:
    return LoadBalancer(name=name, port=port, frontend_ip=ip(frontend) if frontend else None,
                        backends=tuple(Backend(ip(f"198.51.100.{b}"), 8080) for b in backends))


def desired(*lbs: LoadBalancer) -> DesiredState:
    return DesiredState((POOL,), lbs)


class Recorder:
    def __init__(self) -> None:
        self.states: list[SyncedState] = []

    def set(self, state: SyncedState) -> None:
        self.states.append(state)


def make(*sources: StaticSource, nft: FakeNft | None = None) -> tuple[Reconciler, FakeNft, Recorder]:
    nft = nft or FakeNft()
    rec = Recorder()
    r = Reconciler(list(sources), DataplaneSync(nft, indexed=True), consumers=[rec])
    return r, nft, rec


async def start(r: Reconciler, *sources: StaticSource) -> None:
    for s in sources:
        await s.run(r.notifier(s))


def test_first_round_allocates_programs_and_hands_the_full_state_to_consumers() -> None:
    async def go() -> None:
        src = StaticSource("file a.yaml", desired(lb("web", 11, 12), lb("db", 13, frontend="203.0.113.5")))
        r, nft, rec = make(src)
        await start(r, src)
        assert await r.round()
        assert nft.generation() == 1
        [state] = rec.states
        assert state.addresses == {"web": ip("203.0.113.1"), "db": ip("203.0.113.5")}
        assert set(state.services) == {"web", "db"}
        assert state.changed is None  # first sync: everything
        assert state.origins["web"] == ObjectRef(OriginKind.FILE, "web")
        assert "198.51.100.12" in nft.last_transaction or nft.table is not None
    asyncio.run(go())


def test_a_change_touches_only_that_load_balancer_and_consumers_get_the_hint() -> None:
    async def go() -> None:
        lbs = [lb(f"lb{i:03}", 11, 12) for i in range(50)]
        src = StaticSource("file", desired(*lbs))
        r, nft, rec = make(src)
        await start(r, src)
        await r.round()
        lbs[7] = lb("lb007", 11, 12, 13)
        src.set(desired(*lbs))
        await r.round()
        state = rec.states[-1]
        assert state.changed == frozenset({"lb007"})
        assert len(state.services) == 50
        assert "198.51.100.13" in nft.last_transaction
        assert "lb008" not in nft.last_transaction
        assert nft.generation() == 2
    asyncio.run(go())


def test_nothing_is_programmed_before_every_source_is_synced() -> None:
    async def go() -> None:
        a = StaticSource("a", desired(lb("web", 11)))
        b = StaticSource("b", DesiredState(load_balancers=(lb("other", 12),)))
        r, nft, rec = make(a, b)
        task = asyncio.create_task(r.run())
        await a.run(r.notifier(a))
        await asyncio.sleep(0.05)
        assert nft.table is None and not rec.states  # b has not loaded yet
        await b.run(r.notifier(b))
        for _ in range(100):
            if rec.states:
                break
            await asyncio.sleep(0.01)
        task.cancel()
        assert set(rec.states[-1].services) == {"web", "other"}
    asyncio.run(go())


def test_a_burst_of_triggers_is_one_round() -> None:
    async def go() -> None:
        src = StaticSource("file", desired(lb("web", 11)))
        r, _nft, rec = make(src)
        task = asyncio.create_task(r.run())
        await src.run(r.notifier(src))
        for _ in range(100):
            if rec.states:
                break
            await asyncio.sleep(0.01)
        rounds = r.rounds
        for i in range(20):  # twenty changes arrive within one batch window
            src.set(desired(lb("web", 11, 12 + (i % 3))))
        for _ in range(100):
            if r.rounds > rounds:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        task.cancel()
        assert r.rounds == rounds + 1
        assert src.collects == 2
        assert rec.states[-1].services["web"].backends[-1].address == ip("198.51.100.13")  # the last of the burst
    asyncio.run(go())


def test_strict_source_with_an_error_changes_nothing_and_the_last_good_keeps_serving() -> None:
    async def go() -> None:
        src = StaticSource("file", desired(lb("web", 11)))
        r, nft, rec = make(src)
        await start(r, src)
        await r.round()
        before = nft.table
        err = ValidationError("L4LB", "web", "spec.frontend.port", "70000 is not a port (1-65535)")
        src.set(desired(lb("web", 11, 12), lb("new", 13)), {ObjectRef("L4LB", "web"): (err,)})
        report = await r.run_round()
        assert report is not None and report.rejected == {"file": (err,)}
        assert nft.table == before and set(r.services) == {"web"}
        # IPAM failure is rejected as a whole too: the pool has 100 addresses
        src.set(desired(*(lb(f"x{i}", 11) for i in range(130))))
        report = await r.run_round()
        assert report is not None and report.rejected and nft.table == before
        # and once the source is good again, the delta is computed against what was committed
        src.set(desired(lb("web", 11, 12)))
        await r.round()
        assert r.services["web"].backends[-1].address == ip("198.51.100.12")
        assert ObjectRef("source", "file") not in rec.states[-1].errors
    asyncio.run(go())


def test_non_strict_source_keeps_errors_with_the_object_and_serves_the_rest() -> None:
    async def go() -> None:
        err = ValidationError("Service", "ns/bad", "spec.ports[0]", "has no nodePort")
        src = StaticSource("kubernetes", desired(lb("good", 11)), strict=False,
                           errors={ObjectRef("Service", "ns/bad"): (err,)})
        r, _nft, rec = make(src)
        await start(r, src)
        await r.round()
        assert set(r.services) == {"good"}
        assert rec.states[-1].errors == {ObjectRef("Service", "ns/bad"): (err,)}
        # an allocation failure stays with that load balancer
        src.set(desired(lb("good", 11), *(lb(f"x{i:02}", 11) for i in range(105))))
        await r.round()
        state = rec.states[-1]
        assert len(state.services) == 100
        assert sum(1 for ref in state.errors if ref.key.startswith("x")) == 6
    asyncio.run(go())


def test_failed_transaction_means_full_resync_and_no_consumer_call() -> None:
    async def go() -> None:
        src = StaticSource("file", desired(lb("web", 11)))
        r, nft, rec = make(src)
        await start(r, src)
        await r.round()
        calls = len(rec.states)
        nft.fail_next = "Error: Could not process rule: No such file or directory"
        src.set(desired(lb("web", 11, 12)))
        assert not await r.round()
        assert len(rec.states) == calls  # no consumer call after a failed sync
        assert r.last_error is not None
        r.trigger("retry")
        assert await r.round()
        assert rec.states[-1].full  # the retry reloaded the whole table
        assert rec.states[-1].services["web"].backends[-1].address == ip("198.51.100.12")
    asyncio.run(go())


def test_a_broken_consumer_does_not_stop_the_others() -> None:
    class Broken:
        def set(self, state: SyncedState) -> None:
            raise RuntimeError("boom")

    async def go() -> None:
        src = StaticSource("file", desired(lb("web", 11)))
        rec = Recorder()
        r = Reconciler([src], DataplaneSync(FakeNft(), indexed=True), consumers=[Broken(), rec])
        await start(r, src)
        assert await r.round()
        assert len(rec.states) == 1
    asyncio.run(go())


def test_adoption_after_restart_reloads_nothing_when_nothing_changed() -> None:
    async def go() -> None:
        lbs = [lb(f"lb{i}", 11, 12) for i in range(10)]
        src = StaticSource("file", desired(*lbs))
        r, nft, rec = make(src)
        await start(r, src)
        await r.round()
        state = rec.states[-1]
        transactions = len(nft.transactions)
        # a new process: same kernel, the record of what was applied, the same input
        src2 = StaticSource("file", desired(*lbs))
        rec2 = Recorder()
        r2 = Reconciler([src2], DataplaneSync(nft, indexed=True), consumers=[rec2],
                        recorded=state.addresses)
        assert r2.adopt(state.resolved(), state.generation)
        await start(r2, src2)
        await r2.round()
        assert len(nft.transactions) == transactions and nft.generation() == state.generation
        assert rec2.states[-1].addresses == state.addresses
        # one load balancer gone while we were down: removed, and only that
        src3 = StaticSource("file", desired(*lbs[1:]))
        r3 = Reconciler([src3], DataplaneSync(nft, indexed=True), consumers=[], recorded=state.addresses)
        assert r3.adopt(state.resolved(), state.generation)
        await start(r3, src3)
        await r3.round()
        assert nft.generation() == state.generation + 1
        assert "lb0" not in r3.services
    asyncio.run(go())


def test_adoption_is_refused_when_the_kernel_moved() -> None:
    nft = FakeNft()
    r = Reconciler([], DataplaneSync(nft, indexed=True))
    assert not r.adopt(ResolvedState(), 5)  # no table at all


class Clashing:
    """A second source that claims a name the first one has."""

    name, strict, synced = "other", True, True

    async def run(self, notify: Notify) -> None:
        notify("start")

    def collect(self, view: AddressView) -> Contribution | None:
        return Contribution({"web": lb("web", 20)}, full=True)

    def commit(self, contribution: Contribution) -> None:
        raise AssertionError("a rejected contribution must not be committed")


def test_a_name_claimed_by_two_sources_is_an_error_naming_the_first() -> None:
    async def go() -> None:
        a = StaticSource("file a", desired(lb("web", 11)))
        b = Clashing()
        r = Reconciler([a, b], DataplaneSync(FakeNft(), indexed=True))
        await run_sources(r, [a, b])  # type: ignore[list-item]
        report = await r.run_round()
        assert report is not None
        [err] = report.rejected["other"]
        assert "already defined by file a" in str(err)
        assert r.services["web"].backends[0].address == ip("198.51.100.11")
    asyncio.run(go())


@pytest.mark.parametrize("n", [1, 3])
def test_health_dirty_reresolves_only_those(n: int) -> None:
    async def go() -> None:
        down: set[str] = set()
        src = StaticSource("file", desired(*(lb(f"lb{i}", 11, 12) for i in range(5))))
        rec = Recorder()
        r = Reconciler([src], DataplaneSync(FakeNft(), indexed=True), consumers=[rec],
                       usable=lambda name, b: not (name in down and b.address == ip("198.51.100.12")))
        await start(r, src)
        await r.round()
        down.update(f"lb{i}" for i in range(n))
        r.health_changed(down)
        await r.round()
        assert rec.states[-1].changed == frozenset(down)
        for i in range(5):
            assert len(r.services[f"lb{i}"].backends) == (1 if i < n else 2)
    asyncio.run(go())


class Resender:
    """A source that hands over its whole content again in every contribution (full=True),
    equal objects included, as a relist would."""

    name, strict, synced = "resender", False, True

    def __init__(self, lbs: list[LoadBalancer]) -> None:
        self.lbs = lbs

    async def run(self, notify: Notify) -> None:
        self.notify = notify
        notify("start")

    def collect(self, view: AddressView) -> Contribution | None:
        return Contribution({lb.name: lb for lb in self.lbs}, (POOL,), full=True)

    def commit(self, contribution: Contribution) -> None:
        pass


def test_a_full_contribution_with_equal_objects_changes_nothing_and_removes_only_what_is_missing() -> None:
    async def go() -> None:
        src = Resender([lb("a", 11), lb("b", 12), lb("c", 13)])
        rec = Recorder()
        nft = FakeNft()
        r = Reconciler([src], DataplaneSync(nft, indexed=True), consumers=[rec])  # type: ignore[list-item]
        await run_sources(r, [src])  # type: ignore[list-item]
        await r.round()
        transactions = len(nft.transactions)
        src.lbs = [lb("a", 11), lb("b", 12), lb("c", 13)]  # equal, new objects
        src.notify("again")
        await r.round()
        assert len(nft.transactions) == transactions and rec.states[-1].changed == frozenset()
        src.lbs = [lb("a", 11), lb("c", 13)]
        src.notify("again")
        await r.round()
        assert set(r.services) == {"a", "c"} and rec.states[-1].changed == frozenset({"b"})
    asyncio.run(go())


def test_what_survives_a_full_collection_is_frozen_after_the_next_round() -> None:
    """Objects that survived a full pass of the cyclic collector are long-lived: frozen at the end
    of the next round, later full passes do not traverse them again (they cost 100-500 ms each at
    10,000 Services). Without a full pass since, nothing is frozen."""
    r, _nft, _rec = make()
    assert gc.isenabled()
    kept = [[i] for i in range(5000)]  # containers: tracked by the collector
    gc.collect()  # the full pass (the collector's own, in the daemon)
    before = gc.get_freeze_count()
    r._thorough_kib = 1 << 40  # not grown since the last thorough pass (that is the next test)
    r._collect_garbage()  # what the loop does after each round
    assert gc.get_freeze_count() >= before + len(kept)
    frozen = gc.get_freeze_count()
    more = [[i] for i in range(5000)]
    r._collect_garbage()
    assert gc.get_freeze_count() == frozen and more


def test_a_round_where_no_source_has_anything_new_publishes_nothing() -> None:
    """A wake-up with nothing new (a Kubernetes Service whose only change is the status gatelb
    wrote) changes no state: consumers are not handed the same state again (at 10,000 that
    copied every map and saved the record, over a thousand times in a first sync). A real change
    after it is published as always."""
    async def go() -> None:
        lbs = [lb(f"lb{i:03}", 11, 12) for i in range(5)]
        src = StaticSource("file", desired(*lbs))
        r, nft, rec = make(src)
        await start(r, src)
        assert await r.round()
        notify = r.notifier(src)
        notify("kubernetes")  # woken; the source's collect() has nothing
        report = await r.run_round()
        assert report is not None and report.result is None and not report.changed
        assert len(rec.states) == 1 and r.pending == 0 and r.pending_since is None
        lbs[2] = lb("lb002", 11, 12, 13)
        src.set(desired(*lbs))
        assert await r.round()
        assert len(rec.states) == 2 and rec.states[-1].changed == frozenset({"lb002"})
        assert nft.generation() == 2
    asyncio.run(go())


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def test_garbage_cycles_among_frozen_objects_are_found_once_the_frozen_set_has_grown() -> None:
    """A cycle frozen while alive and dropped later is kept by the freeze until a pass over the
    frozen objects; that pass runs once the process has grown by THOROUGH_GROWTH (not before)."""
    r, _nft, _rec = make()
    cycle = _Cycle()
    gone = weakref.ref(cycle)
    gc.collect()
    r._collect_garbage()  # frozen, cycle included
    del cycle
    gc.collect()  # a full pass of the collector: does not look at frozen objects
    assert gone() is not None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    r._thorough_kib = peak  # no growth since the last thorough pass
    r._collect_garbage()
    assert gone() is not None
    r._thorough_kib = int(peak / THOROUGH_GROWTH) - 1  # grown by that much
    gc.collect()
    r._collect_garbage()
    assert gone() is None
