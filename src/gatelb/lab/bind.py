"""A real BIND 9 (`named -g`) serving one zone that takes TSIG-signed updates, for DNS tests,
benchmarks and demos. Everything lives in its own directory; nothing under /etc is read.

::

    key = tsig_keygen("gatelb")                     # (name, algorithm, base64 secret)
    named = Named(workdir, "lb.example.", key, "198.51.100.53", prefix=["ip", "netns", "exec", ns])
    named.start(records=["taken 60 IN A 192.0.2.99"])
    named.lookup("web.lb.example.", "A")            # ["203.0.113.10"], via dig
    named.stop(); named.start()                     # the zone and its journal survive a restart
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from gatelb.lab.procs import stop_process

START_TIMEOUT_S = 15.0


class NamedError(RuntimeError):
    pass


def available() -> str | None:
    """Why BIND cannot run here, or None."""
    for tool in ("named", "tsig-keygen", "dig"):
        if shutil.which(tool) is None:
            return f"{tool} not found (apt-get install bind9 bind9-utils bind9-dnsutils)"
    return None


def tsig_keygen(name: str, algorithm: str = "hmac-sha256") -> tuple[str, str, str]:
    """A fresh key from BIND's own tsig-keygen: (name, algorithm, base64 secret)."""
    out = subprocess.run(["tsig-keygen", "-a", algorithm, name], capture_output=True, text=True, check=True).stdout
    found = re.search(r'secret "([^"]+)"', out)
    if not found:
        raise NamedError(f"tsig-keygen printed no secret: {out!r}")
    return name, algorithm, found.group(1)


class Named:
    def __init__(self, directory: Path, zone: str, key: tuple[str, str, str], address: str, port: int = 53,
                 prefix: Sequence[str] = ()) -> None:
        self.directory = directory
        self.zone = zone.rstrip(".") + "."
        self.key = key
        self.address = address
        self.port = port
        self.prefix = list(prefix)  # e.g. ["ip", "netns", "exec", NS]
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.directory / "named.log"

    @property
    def zone_file(self) -> Path:
        return self.directory / f"{self.zone}db"

    def config(self) -> str:
        name, algorithm, secret = self.key
        d = self.directory
        return f"""options {{
    directory "{d}";
    pid-file "{d}/named.pid";
    session-keyfile "{d}/session.key";
    managed-keys-directory "{d}";
    listen-on port {self.port} {{ {self.address}; }};
    listen-on-v6 {{ none; }};
    recursion no;
    dnssec-validation no;
    notify no;
    allow-transfer {{ none; }};
}};
controls {{ }};
key "{name}" {{ algorithm {algorithm}; secret "{secret}"; }};
zone "{self.zone}" {{
    type primary;
    file "{self.zone_file}";
    update-policy {{ grant {name} zonesub ANY; }};
}};
"""

    def start(self, records: Sequence[str] = ()) -> Named:
        """Start named; the first start writes the zone (SOA, NS and `records`, zone file lines)."""
        if self._proc is not None and self._proc.poll() is None:
            raise NamedError("named already running")
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "named.conf").write_text(self.config())
        if not self.zone_file.exists():
            lines = ["$TTL 60", f"@ IN SOA ns.{self.zone} hostmaster.{self.zone} 1 60 60 600 60",
                     f"@ IN NS ns.{self.zone}", f"ns IN A {self.address}", *records]
            self.zone_file.write_text("\n".join(lines) + "\n")
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child from here on
        try:
            self._proc = subprocess.Popen([*self.prefix, "named", "-g", "-c", str(self.directory / "named.conf")],
                                          stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        finally:
            log.close()
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise NamedError(f"named exited {self._proc.returncode}:\n{self.log_text()[-3000:]}")
            if self.lookup(self.zone, "SOA", timeout=1):
                return
            time.sleep(0.05)
        raise NamedError(f"named did not answer within {START_TIMEOUT_S} s:\n{self.log_text()[-3000:]}")

    def stop(self) -> None:
        if self._proc is not None:
            stop_process(self._proc, timeout=5)
            self._proc = None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> Named:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def dig(self, *args: str, timeout: float = 2) -> str:
        argv = [*self.prefix, "dig", f"@{self.address}", "-p", str(self.port), "+norecurse",
                f"+time={max(1, int(timeout))}", "+tries=1", *args]
        return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout + 5).stdout

    def lookup(self, name: str, rtype: str, timeout: float = 2) -> list[str]:
        """The record set's values as dig +short prints them (TXT with its quotes), sorted."""
        out = self.dig("+short", name, rtype, timeout=timeout)
        return sorted(line for line in out.splitlines() if line and not line.startswith(";"))

    def txt(self, name: str) -> list[str]:
        return [v.strip('"') for v in self.lookup(name, "TXT")]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on `host` now (also taken for UDP by named: good enough for tests)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
