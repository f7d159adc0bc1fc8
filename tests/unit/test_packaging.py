"""Packaging that cannot be run here (no container engine, no helm, no Kubernetes) is at least
parsed and cross-checked: the Containerfile, the DaemonSet, the Helm chart, the systemd unit
(verified by systemd-analyze where it exists)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "gatelb"


def test_containerfile_installs_the_runtime_tools_and_the_package() -> None:
    dockerfile = pytest.importorskip("dockerfile")  # the official Go parser (dev extra)
    commands = dockerfile.parse_file(str(ROOT / "Containerfile"))
    by = {}
    for c in commands:
        by.setdefault(c.cmd, []).append(c)
    assert [c.value for c in by["FROM"]] == [("debian:12-slim",)]
    apt = " ".join(v for c in by["RUN"] for v in c.value if "apt-get install" in v)
    for package in ("nftables", "iproute2", "conntrack", "frr", "python3-venv"):
        assert re.search(rf"\b{package}\b", apt), package
    assert "--no-install-recommends" in apt and "rm -rf /var/lib/apt/lists" in apt
    for c in by["COPY"]:
        for source in c.value[:-1]:
            assert (ROOT / source).exists(), source
    assert by["ENTRYPOINT"][0].value == ("gatelb",)
    assert any("9469" in v for c in by["EXPOSE"] for v in c.value)


def daemonset(doc: dict[str, Any]) -> dict[str, Any]:
    assert doc["kind"] == "DaemonSet"
    spec: dict[str, Any] = doc["spec"]["template"]["spec"]
    return spec


def check_gateway_pod(spec: dict[str, Any]) -> None:
    assert spec["hostNetwork"] is True and spec["priorityClassName"] == "system-node-critical"
    (c,) = spec["containers"]
    assert c["securityContext"]["capabilities"] == {"add": ["NET_ADMIN"], "drop": ["ALL"]}
    # Readiness on /healthz, on the port the daemon serves it (bound to the node's address, which
    # the kubelet reaches: the default loopback address it could not); no liveness probe: a restart
    # fixes none of the causes of a 503.
    probe = c["readinessProbe"]["httpGet"]
    assert probe["path"] == "/healthz" and probe["port"] == "metrics" and "livenessProbe" not in c
    assert {"name": "metrics", "containerPort": 9469, "protocol": "TCP"} in c["ports"]
    assert c["args"][:2] == ["run", "--in-cluster"]
    assert c["args"][c["args"].index("--metrics-address") + 1] == "$(POD_IP):9469"


def test_the_daemonset_fits_the_gateway_model() -> None:
    (doc,) = yaml.safe_load_all((ROOT / "deploy" / "daemonset.yaml").read_text())
    check_gateway_pod(daemonset(doc))
    # The arguments are ones `gatelb run` accepts.
    from gatelb.cli.main import build_parser

    args = build_parser().parse_args(daemonset(doc)["containers"][0]["args"])
    assert args.in_cluster and args.backend_mode == "nodeport"


def render(template: str, values: dict[str, Any]) -> str:
    """Enough of Helm's template language for this chart (no helm here): `.Values.a.b`,
    `.Release.*`, `toYaml ... | nindent N`, `if`/`end` and comments."""
    def lookup(path: str) -> Any:
        value: Any = values
        for part in path.split("."):
            value = value[part]  # KeyError: a value the chart uses but values.yaml lacks
        return value

    def expr(m: re.Match[str]) -> str:
        body = m.group(1).strip()
        if body.startswith("/*"):
            return ""
        nindent = re.fullmatch(r"toYaml \.Values\.([\w.]+) \| nindent (\d+)", body)
        if nindent:
            pad = " " * int(nindent.group(2))
            text = yaml.safe_dump(lookup(nindent.group(1)), default_flow_style=False).rstrip()
            return "\n" + "\n".join(pad + line for line in text.splitlines())
        if body.startswith(".Release."):
            return {"Namespace": "gatelb-system", "Name": "gatelb"}[body.split(".")[2]]
        value = re.fullmatch(r"\.Values\.([\w.]+)", body)
        assert value, f"not understood: {body}"
        return str(lookup(value.group(1)))

    def block(m: re.Match[str]) -> str:
        return m.group(2) if lookup(m.group(1)) else ""

    template = re.sub(r"\{\{-?\s*if \.Values\.([\w.]+)\s*-?\}\}(.*?)\{\{-?\s*end\s*-?\}\}", block, template,
                      flags=re.S)
    out = re.sub(r"\{\{-?(.*?)-?\}\}", expr, template, flags=re.S)
    return "\n".join(line for line in out.splitlines() if line.strip())


def test_the_helm_chart_renders_to_the_same_objects_as_deploy() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert yaml.safe_load((CHART / "Chart.yaml").read_text())["name"] == "gatelb"
    assert (CHART / "crds" / "crds.yaml").read_text() == (ROOT / "deploy" / "crds.yaml").read_text()
    (ds,) = yaml.safe_load_all(render((CHART / "templates" / "daemonset.yaml").read_text(), values))
    check_gateway_pod(daemonset(ds))
    (plain,) = yaml.safe_load_all((ROOT / "deploy" / "daemonset.yaml").read_text())
    assert daemonset(ds)["containers"][0]["args"] == daemonset(plain)["containers"][0]["args"]
    rbac = list(yaml.safe_load_all(render((CHART / "templates" / "rbac.yaml").read_text(), values)))
    plain_rbac = [d for d in yaml.safe_load_all((ROOT / "deploy" / "rbac.yaml").read_text())
                  if d["kind"] != "Namespace"]
    assert [(d["kind"], d.get("rules")) for d in rbac] == [(d["kind"], d.get("rules")) for d in plain_rbac]


def test_the_systemd_unit(tmp_path: Path) -> None:
    unit = (ROOT / "deploy" / "gatelb.service").read_text()
    assert "ExecReload=/bin/kill -HUP $MAINPID" in unit and re.search(r"^LimitNOFILE=\d+$", unit, re.M)
    docs = re.search(r"^Documentation=file://(\S+)", unit, re.M)
    assert docs is not None
    # docs/operations.md installs that file, and says so.
    assert docs.group(1) in (ROOT / "docs" / "operations.md").read_text()
    start = re.search(r"^ExecStart=(\S+) (.*)$", unit, re.M)
    assert start is not None and start.group(1) == "/usr/local/bin/gatelb"
    from gatelb.cli.main import build_parser

    assert build_parser().parse_args(start.group(2).split()).command == "run"
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # Verified with the command pointing at this interpreter's gatelb (none is installed here).
    local = tmp_path / "gatelb.service"
    local.write_text(unit.replace("/usr/local/bin/gatelb", str(Path(sys.executable).parent / "gatelb")))
    done = subprocess.run([analyze, "verify", str(local)], capture_output=True, text=True, timeout=60)
    problems = [line for line in done.stderr.splitlines() if "gatelb.service" in line]
    assert done.returncode == 0 and not problems, done.stderr
