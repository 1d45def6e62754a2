"""`calicoctl node status` against a real BIRD 2: two namespaces joined by a veth, one BIRD in each.

The namespaces and links carry this module's own unique prefix and are removed in the fixture's
teardown, also after a failure; each BIRD runs in the foreground (`bird -f`) as our child and is
stopped by its PID. Nothing touches the machine's own network.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.integration.test_calicoctl import run
from tests.lab import sh, wait_for

pytestmark = pytest.mark.skipif(shutil.which("bird") is None or shutil.which("birdc") is None,
                                reason="BIRD 2 (Debian bird2) is not installed")

ADDRESSES = {"a": ("192.168.200.1", "fd00:5::1"), "b": ("192.168.200.2", "fd00:5::2")}
EXTRA_PEERS = """
protocol bgp Global_192_168_200_9 {
  local 192.168.200.1 as 64512; neighbor 192.168.200.9 as 65000;
  connect delay time 1; connect retry time 1; ipv4 { import all; export none; };
}
protocol bgp tor1 {
  description "Node_192_168_200_254";
  local 192.168.200.1 as 64512; neighbor 192.168.200.254 as 65001;
  connect delay time 1; connect retry time 1; ipv4 { import all; export none; };
}
protocol bgp Mesh_fd00_5__2 {
  local fd00:5::1 as 64512; neighbor fd00:5::2 as 64512;
  connect delay time 1; connect retry time 1; ipv6 { import all; export none; };
}
"""


@dataclass
class BirdPair:
    prefix: str
    workdir: Path
    namespaces: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen] = field(default_factory=list)

    def run_dir(self, side: str) -> str:
        return str(self.workdir / side)

    def birdc(self, side: str, *command: str) -> str:
        return sh("birdc", "-s", f"{self.run_dir(side)}/bird.ctl", *command, check=False).stdout


def _config(side: str) -> str:
    me4, me6 = ADDRESSES[side]
    other4, other6 = ADDRESSES["b" if side == "a" else "a"]
    text = (f"router id {me4};\nprotocol device {{}}\n"
            f"protocol bgp Mesh_{other4.replace('.', '_')} {{\n  local {me4} as 64512; neighbor {other4} as 64512;\n"
            "  connect delay time 1; connect retry time 1; ipv4 { import all; export none; };\n}\n")
    if side == "b":  # b answers a's IPv6 session
        text += (f"protocol bgp Mesh_{other6.replace(':', '_')} {{\n  local {me6} as 64512; neighbor {other6} as 64512;"
                 "\n  connect delay time 1; connect retry time 1; ipv6 { import all; export none; };\n}\n")
    return text + (EXTRA_PEERS if side == "a" else "")


@pytest.fixture
def birds(tmp_path):
    pair = BirdPair(f"c5n{os.getpid() % 10000}{uuid.uuid4().hex[:3]}", tmp_path)
    try:
        for side in ("a", "b"):
            ns = f"{pair.prefix}{side}"
            sh("ip", "netns", "add", ns)
            pair.namespaces.append(ns)
        a, b = pair.namespaces
        sh("ip", "link", "add", f"{pair.prefix}va", "netns", a, "type", "veth", "peer", "name", f"{pair.prefix}vb",
           "netns", b)
        for side, ns in zip("ab", pair.namespaces, strict=True):
            dev = f"{pair.prefix}v{side}"
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "addr", "add", f"{ADDRESSES[side][0]}/24", "dev", dev)
            sh("ip", "-n", ns, "addr", "add", f"{ADDRESSES[side][1]}/64", "dev", dev, "nodad")
            sh("ip", "-n", ns, "link", "set", dev, "up")
            run_dir = Path(pair.run_dir(side))
            run_dir.mkdir()
            (run_dir / "bird.cfg").write_text(_config(side))
            pair.procs.append(subprocess.Popen(
                ["ip", "netns", "exec", ns, "bird", "-f", "-c", str(run_dir / "bird.cfg"),
                 "-s", str(run_dir / "bird.ctl"), "-P", str(run_dir / "bird.pid")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        yield pair
    finally:
        for proc in pair.procs:  # `ip netns exec` execs BIRD: the child's PID is BIRD's
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for ns in pair.namespaces:
            sh("ip", "netns", "del", ns, check=False)


def test_node_status_shows_the_bgp_peers(birds):
    wait_for(lambda: re.search(r"Mesh_192_168_200_2 +BGP .* up .*Established", birds.birdc("a", "show", "protocols")),
             30, "the IPv4 mesh session to be Established")
    wait_for(lambda: re.search(r"Mesh_fd00_5__2 +BGP .*Established", birds.birdc("a", "show", "protocols")),
             30, "the IPv6 mesh session to be Established")
    r = run(None, "node", "status", env={"CALICO_RUN_DIR": birds.run_dir("a")})
    assert r.returncode == 0 and r.stderr == "", r.stderr
    lines = r.stdout.split("\n")
    assert lines[:3] == ["Calico process is running.", "", "IPv4 BGP status"]
    rows = {cells[0]: cells[1:] for cells in
            ([c.strip() for c in line.strip("|").split("|")] for line in lines if line.startswith("| "))}
    assert rows["192.168.200.2"][:2] == ["node-to-node mesh", "up"]
    assert rows["192.168.200.2"][3] == "Established"
    assert re.fullmatch(r"\d\d:\d\d:\d\d", rows["192.168.200.2"][2])
    assert rows["192.168.200.9"][:2] == ["global", "start"]
    assert rows["192.168.200.254"][:2] == ["node specific", "start"]  # named tor1; its description tells
    assert rows["fd00:5::2"][:2] == ["node-to-node mesh", "up"] and rows["fd00:5::2"][3] == "Established"
    v6 = lines.index("IPv6 BGP status")
    assert lines[v6 + 1].startswith("+---") and "fd00:5::2" in lines[v6 + 4] and r.stdout.endswith("+\n\n")
    assert all(len(line) == len(lines[3]) for line in lines[3:v6 - 1]), "the IPv4 table is not aligned"

    assert rows["PEER ADDRESS"] == ["PEER TYPE", "STATE", "SINCE", "INFO"]

    r = run(None, "node", "status", env={"CALICO_RUN_DIR": birds.run_dir("b")})
    assert r.returncode == 0 and "| 192.168.200.1 | node-to-node mesh |" in r.stdout
    assert "| fd00:5::1    | node-to-node mesh |" in r.stdout


def test_node_status_with_only_a_mesh_peer_prints_calicos_table(birds):
    wait_for(lambda: "Established" in birds.birdc("b", "show", "protocols"), 30, "b's session to be Established")
    (birds.workdir / "b" / "bird.cfg").write_text(_config("b").split("protocol bgp Mesh_fd00")[0])
    assert "Reconfigur" in birds.birdc("b", "configure")
    wait_for(lambda: "Mesh_fd00" not in birds.birdc("b", "show", "protocols"), 10, "the IPv6 peer to go")
    # A loaded machine may see the IPv4 session restart around the reconfiguration: wait it back.
    wait_for(lambda: "Established" in birds.birdc("b", "show", "protocols"), 30, "b's session to be Established")
    r = run(None, "node", "status", env={"CALICO_RUN_DIR": birds.run_dir("b")})
    since = re.search(r"\| (\d\d:\d\d:\d\d) \|", r.stdout).group(1)
    assert r.stdout == (
        "Calico process is running.\n\nIPv4 BGP status\n"
        "+---------------+-------------------+-------+----------+-------------+\n"
        "| PEER ADDRESS  |     PEER TYPE     | STATE |  SINCE   |    INFO     |\n"
        "+---------------+-------------------+-------+----------+-------------+\n"
        f"| 192.168.200.1 | node-to-node mesh | up    | {since} | Established |\n"
        "+---------------+-------------------+-------+----------+-------------+\n"
        "\nIPv6 BGP status\nNo IPv6 peers found.\n\n")


def test_node_status_when_bird_is_gone(birds, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run(None, "node", "status", env={"CALICO_RUN_DIR": str(empty)})
    assert (r.returncode, r.stdout) == (1, "Calico process is not running.\n")
    assert r.stderr == (f"no BIRD control socket at {empty}/bird.ctl: is calico-node running on this host? "
                        "(set CALICO_RUN_DIR if it uses another run directory)\n")
    stale = tmp_path / "stale"
    stale.mkdir()
    with socket.socket(socket.AF_UNIX) as s:  # a socket nobody listens on: what a killed BIRD leaves
        s.bind(str(stale / "bird.ctl"))
    r = run(None, "node", "status", env={"CALICO_RUN_DIR": str(stale)})
    assert r.returncode == 1 and r.stdout == "Calico process is not running.\n"
    assert r.stderr.startswith(f"BIRD does not answer on {stale}/bird.ctl: ") and "Connection refused" in r.stderr

    proc = birds.procs[0]
    wait_for(lambda: os.path.exists(f"{birds.run_dir('a')}/bird.ctl"), 10, "BIRD's socket")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    r = run(None, "node", "status", env={"CALICO_RUN_DIR": birds.run_dir("a")})
    assert (r.returncode, r.stdout) == (1, "Calico process is not running.\n") and r.stderr.count("\n") == 1
