"""FileSource: one file or a directory, as a strict Source with incremental contributions."""

from __future__ import annotations

import asyncio
import os
import random
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from gatelb.agent.daemon import Daemon, file_parts
from gatelb.agent.statefile import StateStore
from gatelb.kernel.fake import FakeNft
from gatelb.model import ObjectRef, ValidationErrors
from gatelb.sources.base import Contribution
from gatelb.sources.file.directory import DEBOUNCE_MS, FileSource, is_config_name
from gatelb.sources.file.loader import load_text

API = "gatelb.io/v1alpha1"


def lb(name: str, port: int = 80, ip: str | None = "203.0.113.10", **spec: Any) -> dict[str, Any]:
    front: dict[str, Any] = {"port": port}
    if ip is not None:
        front["ip"] = ip
    spec = {"frontend": front, "backend": ["198.51.100.11:8080"], **spec}
    return {"apiVersion": API, "kind": "L4LB", "metadata": {"name": name}, "spec": spec}


def pool(name: str = "public", *addresses: str) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "IPPool", "metadata": {"name": name},
            "spec": {"addresses": list(addresses) or ["203.0.113.0/24"]}}


def text(*docs: Any) -> str:
    return yaml.safe_dump_all(docs, sort_keys=False)


def put(path: Path, *docs: Any) -> None:
    """Write next to it and rename into place, as editors and config management do."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text(*docs))
    tmp.replace(path)


def many(d: Path, n: int) -> None:
    put(d / "00-pool.yaml", pool())
    for i in range(n):
        put(d / f"lb{i:03}.yaml", lb(f"lb{i}", 1000 + i))


def messages(c: Contribution) -> dict[str, list[str]]:
    return {ref.key: [str(e) for e in errs] for ref, errs in c.errors.items()}


def loaded(path: Path) -> tuple[FileSource, Contribution]:
    s = FileSource(path)
    s.load()
    c = s.collect()
    assert c is not None and c.full
    return s, c


def test_single_file_and_directory_give_the_same_content(tmp_path: Path) -> None:
    docs = [pool(), lb("a", 80), lb("b", 81), lb("c", 82, ip=None)]
    put(tmp_path / "one.yaml", *docs)
    d = tmp_path / "dir"
    d.mkdir()
    for i, doc in enumerate(docs):
        put(d / f"{i}.yaml", doc)
    (d / "notes.txt").write_text("not configuration")
    (d / ".hidden.yaml").write_text("kind: [broken")
    (d / "3.yaml~").write_text("kind: [broken")
    (d / "#3.yaml#").write_text("kind: [broken")
    (d / "sub.yaml").mkdir()  # a directory is not a file
    single, c1 = loaded(tmp_path / "one.yaml")
    multi, c2 = loaded(d)
    assert c1.load_balancers == c2.load_balancers and c1.pools == c2.pools and not c1.errors and not c2.errors
    assert list(c2.load_balancers) == ["a", "b", "c"]
    assert single.desired() == multi.desired() == load_text(text(*docs))
    assert multi.files() == [str(d / f"{i}.yaml") for i in range(4)]
    assert c2.origins["b"] == ObjectRef("file", str(d / "2.yaml"))
    assert c1.origins["b"] == ObjectRef("file", str(tmp_path / "one.yaml"))
    assert single.name == f"file {tmp_path / 'one.yaml'}" and single.strict


def test_names() -> None:
    assert [n for n in ("a.yaml", "a.yml", "a.json", "a.YAML", ".a.yaml", "a.yaml.swp", "a.yaml~", "#a.yaml#",
                        "a.yaml.tmp", "a.txt", "..data") if is_config_name(n)] == ["a.yaml", "a.yml", "a.json"]


def test_one_changed_file_is_the_only_one_read_and_parsed(tmp_path: Path) -> None:
    many(tmp_path, 50)
    s, c = loaded(tmp_path)
    assert len(c.load_balancers) == 50
    s.commit(c)
    assert s.collect() is None
    parsed, read = s.parsed, s.read
    put(tmp_path / "lb007.yaml", lb("lb7", 2007))
    assert s.refresh([str(tmp_path / "lb007.yaml")]) == [str(tmp_path / "lb007.yaml")]
    assert (s.parsed - parsed, s.read - read) == (1, 1)
    c = s.collect()
    assert c is not None and not c.full and c.pools is None and not c.errors
    assert list(c.load_balancers) == ["lb7"] and c.load_balancers["lb7"].port == 2007  # type: ignore[union-attr]
    s.commit(c)
    # the same bytes again: read, hashed, not parsed, nothing to say
    put(tmp_path / "lb007.yaml", lb("lb7", 2007))
    assert s.refresh([str(tmp_path / "lb007.yaml")]) == [] and s.parsed - parsed == 1
    assert s.collect() is None


def test_rename_into_place_and_deletion_and_a_new_file(tmp_path: Path) -> None:
    many(tmp_path, 3)
    s, c = loaded(tmp_path)
    s.commit(c)
    # a file renamed into place under a new name: its L4LBs keep their names, their origin moves
    (tmp_path / "lb001.yaml").rename(tmp_path / "moved.yaml")
    s.refresh([str(tmp_path / "lb001.yaml"), str(tmp_path / "moved.yaml")])
    c = s.collect()
    assert c is not None and list(c.load_balancers) == ["lb1"]
    assert c.origins["lb1"] == ObjectRef("file", str(tmp_path / "moved.yaml"))
    s.commit(c)
    (tmp_path / "lb002.yaml").unlink()
    put(tmp_path / "new.yaml", lb("n1", 3000), lb("n2", 3001))
    s.refresh([str(tmp_path / "lb002.yaml"), str(tmp_path / "new.yaml")])
    c = s.collect()
    now = {x.name: x for x in s.desired().load_balancers}
    assert c is not None and dict(c.load_balancers) == {"lb2": None, "n1": now["n1"], "n2": now["n2"]}
    s.commit(c)
    assert s.collect() is None
    assert [x.name for x in s.desired().load_balancers] == ["lb0", "lb1", "n1", "n2"]


def test_a_bad_file_is_rejected_and_the_next_delta_is_against_the_committed_state(tmp_path: Path) -> None:
    many(tmp_path, 3)
    s, c = loaded(tmp_path)
    s.commit(c)
    committed_lb1 = c.load_balancers["lb1"]
    bad = tmp_path / "lb001.yaml"
    put(bad, lb("lb1", 70000))
    s.refresh([str(bad)])
    c = s.collect()
    assert c is not None
    assert messages(c) == {str(bad): ["L4LB lb1: spec.frontend.port: 70000 is not a port (1-65535)"]}
    assert s.error_lines() == [f"{bad}: L4LB lb1: spec.frontend.port: 70000 is not a port (1-65535)"]
    with pytest.raises(ValidationErrors):
        s.desired()
    # rejected (no commit); meanwhile another file changes, then the bad one is fixed differently
    put(tmp_path / "lb000.yaml", lb("lb0", 4000))
    s.refresh([str(tmp_path / "lb000.yaml")])
    put(bad, lb("lb1", 1001))  # back to exactly the committed content
    s.refresh([str(bad)])
    c = s.collect()
    assert c is not None and list(c.load_balancers) == ["lb0"]  # lb1 equals the committed one
    assert messages(c) == {str(bad): []}  # its errors are cleared
    s.commit(c)
    assert s.collect() is None
    put(bad, lb("lb1", 5001))
    s.refresh([str(bad)])
    c = s.collect()
    assert c is not None and list(c.load_balancers) == ["lb1"] and c.load_balancers["lb1"] != committed_lb1


def test_duplicate_name_across_files_names_both(tmp_path: Path) -> None:
    many(tmp_path, 2)
    s, c = loaded(tmp_path)
    s.commit(c)
    put(tmp_path / "zz.yaml", lb("lb0", 6000))
    s.refresh([str(tmp_path / "zz.yaml")])
    c = s.collect()
    assert c is not None
    a, b = str(tmp_path / "lb000.yaml"), str(tmp_path / "zz.yaml")
    text = f"L4LB lb0: metadata.name: L4LB lb0 is defined in more than one file: {a}, {b}"
    assert messages(c) == {a: [text], b: [text]}
    (tmp_path / "zz.yaml").unlink()
    s.refresh([b])
    c = s.collect()
    assert c is not None and messages(c) == {a: [], b: []} and not c.load_balancers


def test_cross_file_frontend_pool_reference_and_overlap(tmp_path: Path) -> None:
    put(tmp_path / "a.yaml", pool("p1", "203.0.113.0/25"), lb("web", 80))
    put(tmp_path / "b.yaml", lb("api", 80), lb("ref", 81, ip=None, pool="p2"))
    s, c = loaded(tmp_path)
    a, b = str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml")
    assert messages(c) == {a: [f"L4LB web: spec.frontend: 203.0.113.10 tcp/80 is already used by L4LB api (in {b})"],
                           b: ["L4LB ref: spec.pool: unknown IPPool 'p2'"]}
    put(tmp_path / "c.yaml", pool("p2", "203.0.113.100-203.0.113.200"))
    s.refresh([str(tmp_path / "c.yaml")])
    c = s.collect()
    assert c is not None and c.full  # nothing committed yet: full again, b.yaml has no errors
    c_file = str(tmp_path / "c.yaml")
    assert messages(c) == {
        a: [f"L4LB web: spec.frontend: 203.0.113.10 tcp/80 is already used by L4LB api (in {b})"],
        c_file: ["IPPool p2: spec.addresses[0]: 203.0.113.100-203.0.113.200 overlaps IPPool p1 (203.0.113.0/25)"],
    }


def test_same_errors_as_load_text_for_one_file(tmp_path: Path) -> None:
    docs = [pool("p1", "203.0.113.0/25"), pool("p2", "203.0.113.64/26"), lb("web", 80), lb("api", 80),
            lb("ref", 81, ip=None, pool="nope"), lb("bad", 70000)]
    put(tmp_path / "one.yaml", *docs)
    s, c = loaded(tmp_path / "one.yaml")
    with pytest.raises(ValidationErrors) as info:
        load_text(text(*docs), str(tmp_path / "one.yaml"))
    assert sorted(str(e) for e in info.value.errors) == sorted(messages(c)[str(tmp_path / "one.yaml")])
    assert sorted(s.error_lines()) == sorted(str(e) for e in info.value.errors)  # one file: no prefix


def test_not_utf8_is_an_error_naming_the_file(tmp_path: Path) -> None:
    many(tmp_path, 1)
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00junk")
    s, c = loaded(tmp_path)
    where = str(tmp_path / "bin.yaml")
    assert messages(c) == {where: [f"file {where}: not UTF-8 text (invalid start byte)"]}
    assert s.error_lines() == [f"file {where}: not UTF-8 text (invalid start byte)"]


def test_a_missing_single_file_is_an_error_not_an_empty_configuration(tmp_path: Path) -> None:
    put(tmp_path / "one.yaml", pool(), lb("a"))
    s, c = loaded(tmp_path / "one.yaml")
    s.commit(c)
    (tmp_path / "one.yaml").unlink()
    s.refresh([str(tmp_path / "one.yaml")])
    c = s.collect()
    assert c is not None and messages(c) == {
        str(tmp_path / "one.yaml"): [f"file {tmp_path / 'one.yaml'}: cannot read: No such file or directory"]}


def test_from_text_is_one_shot() -> None:
    s = FileSource.from_text(text(pool(), lb("a")), "<stdin>")
    notes: list[str] = []
    asyncio.run(s.run(notes.append))
    assert notes == ["loaded"] and s.synced
    c = s.collect()
    assert c is not None and c.full and list(c.load_balancers) == ["a"]
    assert c.origins["a"] == ObjectRef("file", "<stdin>")
    bad = FileSource.from_text("kind: [oops\n", "<stdin>")
    bad.load()
    (line,) = bad.error_lines()
    assert line.startswith("document 1: malformed YAML at <stdin> line 2, column 1: ")


def test_rejected_first_load_stays_full(tmp_path: Path) -> None:
    put(tmp_path / "a.yaml", lb("a", 70000))
    s, c = loaded(tmp_path)
    assert c.errors
    put(tmp_path / "a.yaml", lb("a", 80, ip=None))
    s.refresh([str(tmp_path / "a.yaml")])
    c2 = s.collect()
    assert c2 is not None and c2.full and list(c2.load_balancers) == ["a"] and not c2.errors


def test_incremental_checks_equal_a_fresh_load(tmp_path: Path) -> None:
    """Random edits of a few files: after each, the errors and content equal a fresh load's."""
    rng = random.Random(7)
    names = [f"f{i}.yaml" for i in range(6)]

    def random_docs() -> list[Any]:
        docs: list[Any] = []
        for _ in range(rng.randint(0, 3)):
            r = rng.random()
            if r < 0.2:
                docs.append(pool(rng.choice(["p1", "p2"]), rng.choice(["203.0.113.0/26", "203.0.113.32/27",
                                                                        "203.0.113.128/26"])))
            else:
                docs.append(lb(rng.choice("abcdefg"), rng.choice([80, 81]),
                               ip=rng.choice([None, "203.0.113.10"]), **({"pool": rng.choice(["p1", "p2"])}
                                                                         if rng.random() < 0.3 else {})))
        return docs

    s = FileSource(tmp_path)
    s.load()
    for _ in range(150):
        f = tmp_path / rng.choice(names)
        if rng.random() < 0.2 and f.exists():
            f.unlink()
        else:
            put(f, *random_docs())
        s.refresh([str(f)])
        fresh = FileSource(tmp_path)
        fresh.load()
        assert {r: [str(e) for e in errs] for r, errs in s.errors.items()} == {
            r: [str(e) for e in errs] for r, errs in fresh.errors.items()}
        if not s.errors:
            assert s.desired() == fresh.desired()


# --- watching -----------------------------------------------------------------------------------


class Rounds:
    """A stand-in reconciler: collect and commit on every notification."""

    def __init__(self, source: FileSource) -> None:
        self.source = source
        self.reasons: list[str] = []
        self.woken = asyncio.Event()

    def notify(self, why: str) -> None:
        self.reasons.append(why)
        self.woken.set()

    async def next(self, timeout: float = 5.0) -> Contribution:
        while True:
            await asyncio.wait_for(self.woken.wait(), timeout)
            self.woken.clear()
            c = self.source.collect()
            if c is not None:
                self.source.commit(c)
                return c


def watch(path: Path, body: Any) -> None:
    async def main() -> None:
        source = FileSource(path)
        rounds = Rounds(source)
        task = asyncio.create_task(source.run(rounds.notify))
        try:
            first = await rounds.next()
            assert first.full and source.synced
            await body(rounds, first)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(main())


def test_watcher_notifies_on_a_change(tmp_path: Path) -> None:
    many(tmp_path, 3)

    async def body(rounds: Rounds, first: Contribution) -> None:
        put(tmp_path / "lb001.yaml", lb("lb1", 7001))
        c = await rounds.next()
        assert list(c.load_balancers) == ["lb1"]
        assert rounds.reasons[-1] == f"file: file {tmp_path / 'lb001.yaml'}"
        (tmp_path / "lb002.yaml").unlink()
        c = await rounds.next()
        assert dict(c.load_balancers) == {"lb2": None}
        (tmp_path / ".lb000.yaml.swp").write_text("x")  # editor noise: nothing
        put(tmp_path / "lb000.yaml", lb("lb0", 7000))
        c = await rounds.next()
        assert list(c.load_balancers) == ["lb0"]

    watch(tmp_path, body)


def test_watched_single_file_replaced_by_rename(tmp_path: Path) -> None:
    put(tmp_path / "one.yaml", pool(), lb("a"))
    (tmp_path / "other.yaml").write_text("ignored: it is not the file")

    async def body(rounds: Rounds, first: Contribution) -> None:
        assert list(first.load_balancers) == ["a"]
        put(tmp_path / "one.yaml", pool(), lb("a"), lb("b", 81))
        c = await rounds.next()
        assert list(c.load_balancers) == ["b"]

    watch(tmp_path / "one.yaml", body)


def configmap(d: Path, stamp: str, files: dict[str, str]) -> None:
    """What the kubelet's atomic writer does: a new timestamped directory, a `..data_tmp` link to
    it renamed over `..data`, the user-visible names linking into `..data`, the old directory
    removed."""
    new = d / f"..{stamp}"
    new.mkdir()
    for name, content in files.items():
        (new / name).write_text(content)
    old = os.readlink(d / "..data") if (d / "..data").is_symlink() else None
    os.symlink(new.name, d / "..data_tmp")
    os.replace(d / "..data_tmp", d / "..data")
    for name in files:
        if not (d / name).is_symlink():
            os.symlink(f"..data/{name}", d / name)
    if old is not None:
        for f in (d / old).iterdir():
            f.unlink()
        (d / old).rmdir()


@pytest.mark.parametrize("single", [False, True])
def test_configmap_swaps_are_all_applied(tmp_path: Path, single: bool) -> None:
    d = tmp_path / "config"
    d.mkdir()
    configmap(d, "2026_12_01_00_00_00.1", {"lbs.yaml": text(pool(), lb("a", 80))})

    async def body(rounds: Rounds, first: Contribution) -> None:
        assert first.load_balancers["a"].port == 80  # type: ignore[union-attr]
        configmap(d, "2026_12_01_00_00_01.2", {"lbs.yaml": text(pool(), lb("a", 81))})
        c = await rounds.next()
        assert c.load_balancers["a"].port == 81  # type: ignore[union-attr]
        configmap(d, "2026_12_01_00_00_02.3", {"lbs.yaml": text(pool(), lb("a", 82))})  # right after
        c = await rounds.next()
        assert c.load_balancers["a"].port == 82  # type: ignore[union-attr]

    watch(d / "lbs.yaml" if single else d, body)


def test_watched_directory_recreated(tmp_path: Path) -> None:
    d = tmp_path / "config"
    d.mkdir()
    many(d, 2)

    async def body(rounds: Rounds, first: Contribution) -> None:
        gone = tmp_path / "old"
        d.rename(gone)
        c = await rounds.next()  # the directory is gone: an error, the last good content stays
        assert messages(c) == {str(d): [f"file {d}: cannot read: No such file or directory"]}
        d.mkdir()
        many(d, 3)
        for _ in range(10):  # the files may arrive in more than one round
            c = await rounds.next()
            if not rounds.source.errors and len(rounds.source.files()) == 4:
                break
        assert not rounds.source.errors
        # a change in the new directory is still seen
        put(d / "lb000.yaml", lb("lb0", 9000))
        for _ in range(5):
            c = await rounds.next()
            if "lb0" in c.load_balancers:
                break
        assert c.load_balancers["lb0"].port == 9000  # type: ignore[union-attr]
        assert [x.name for x in rounds.source.desired().load_balancers] == ["lb0", "lb1", "lb2"]

    watch(d, body)


def test_one_changed_file_of_200_through_the_daemon_is_one_parse_and_one_small_transaction(tmp_path: Path) -> None:
    """`gatelb run -f DIR` as the CLI composes it (watching, FakeNft): editing one of 200 files
    re-reads and re-parses that file only, and the kernel gets one transaction about its L4LB."""
    count = 200
    d = tmp_path / "lbs"
    d.mkdir()
    put(d / "00-pool.yaml", pool())
    for i in range(count):
        put(d / f"lb{i:03}.yaml", lb(f"lb{i}", 80, ip=f"203.0.113.{10 + i}"))

    async def main() -> None:
        nft = FakeNft()
        parts = file_parts([d])
        source = parts.sources[0]
        assert isinstance(source, FileSource)
        daemon = Daemon(parts, StateStore(tmp_path / "state"), nft, health=False)
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run(stop))
        try:
            async def until(ok: Any, timeout: float = 10.0) -> None:
                deadline = asyncio.get_running_loop().time() + timeout
                while not ok():
                    assert asyncio.get_running_loop().time() < deadline, "not reached in time"
                    assert not task.done(), "the daemon stopped"
                    await asyncio.sleep(0.02)

            # `services` is what the round decided; `rounds` counts once the kernel took it.
            await until(lambda: daemon.reconciler.rounds >= 1)
            assert len(daemon.reconciler.services) == count
            assert daemon.reconciler.rounds == 1  # the full load
            transactions, parsed, read = len(nft.transactions), source.parsed, source.read
            assert parsed == read == count + 1

            put(d / "lb123.yaml", lb("lb123", 80, ip="203.0.113.133", backend=["198.51.100.99:8080"]))
            await until(lambda: len(nft.transactions) > transactions)
            await asyncio.sleep(DEBOUNCE_MS / 1000 + 0.1)  # a late second batch would show now

            assert (source.parsed - parsed, source.read - read) == (1, 1)
            assert len(nft.transactions) == transactions + 1
            script = nft.last_transaction
            assert set(re.findall(r"203\.0\.113\.\d+", script)) == {"203.0.113.133"}, script
            assert "198.51.100.99" in script
            state = daemon.reconciler.last_state
            assert state is not None and state.changed == {"lb123"} and not state.full
        finally:
            stop.set()
            assert await asyncio.wait_for(task, 5), "a task of the daemon died"

    asyncio.run(main())
