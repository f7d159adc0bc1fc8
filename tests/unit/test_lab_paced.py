"""The paced client's pure parts: attempts come back in start order with their start times, a UDP
flow matches replies to datagrams by sequence number, and `at` survives the JSON round trip."""

from __future__ import annotations

import asyncio

from gatelb.lab.client import _UdpFlow, paced
from gatelb.lab.results import Attempt, ClientResult


def test_paced_starts_every_attempt_and_keeps_their_order() -> None:
    started: list[int] = []

    async def start(i: int) -> Attempt:
        started.append(i)
        await asyncio.sleep(0.001 * (5 - i))  # later attempts finish first
        return Attempt(ok=True, backend=f"be{i}", at=float(i))

    attempts = asyncio.run(paced(5, 1000.0, start))
    assert started == [0, 1, 2, 3, 4]
    assert [a.backend for a in attempts] == ["be0", "be1", "be2", "be3", "be4"]


def test_udp_flow_matches_replies_by_sequence_and_fails_waiting_ones_on_icmp() -> None:
    async def scenario() -> tuple[bytes, BaseException | None, BaseException | None]:
        flow = _UdpFlow()
        loop = asyncio.get_running_loop()
        first, second, third = (loop.create_future() for _ in range(3))
        flow.pending.update({1: first, 2: second, 3: third})
        flow.datagram_received(b"be2 192.0.2.10 seq 1", ("203.0.113.10", 53))
        flow.datagram_received(b"garbage", ("203.0.113.10", 53))
        flow.error_received(ConnectionRefusedError())
        return first.result(), second.exception(), third.exception()

    reply, second, third = asyncio.run(scenario())
    assert reply == b"be2 192.0.2.10 seq 1"
    assert isinstance(second, ConnectionRefusedError) and isinstance(third, ConnectionRefusedError)


def test_attempt_start_time_round_trips() -> None:
    result = ClientResult.from_attempts("tcp", "203.0.113.10", 80, [Attempt(ok=False, error="refused", at=1.5)])
    assert ClientResult.from_json(result.to_json()).attempts[0].at == 1.5
