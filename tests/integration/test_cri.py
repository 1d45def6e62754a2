"""The plugin driven through containerd's CRI, as the kubelet drives it: `crictl` (cri-tools v1.37.0,
built by `make crictl`) plays the kubelet against containerd 1.6's CRI plugin.

containerd runs as in test_containerd.py (private mount namespace, a lab node's network namespace),
with the CRI plugin enabled: its sandbox image is the test's busybox image, its CNI directories
are ours. `crictl runp` makes a pod sandbox for a pod that exists in the real kube-apiserver;
containerd creates the pod's network namespace and calls our plugin with K8S_POD_NAMESPACE,
K8S_POD_NAME, K8S_POD_INFRA_CONTAINER_ID and K8S_POD_UID in CNI_ARGS, the kubeconfig reaching the
API through the node's bridge; `crictl stopp` and `rmp` run DEL.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from tests.integration.test_containerd import (
    CONFIG_TOML,
    HOST_PATHS,
    IMAGE,
    NODENAME,
    Containerd,
    build_image,
    bundle,  # noqa: F401 - the session fixture, used by `cri`
)
from tests.kube_apiserver import KUBE_CACHE
from tests.lab import REFERENCE_CNI_DIR, REPO, add_pool, sh, wait_for

CRICTL = os.environ.get("CRICTL") or f"{KUBE_CACHE}/crictl-v1.37.0"
RES = "/calico/resources/v3/projectcalico.org"

pytestmark = pytest.mark.skipif(not os.access(CRICTL, os.X_OK), reason="no crictl: run `make crictl`")

# test_containerd.py's config with the CRI plugin enabled and configured.
CRI_CONFIG = CONFIG_TOML.replace('"io.containerd.grpc.v1.cri", ', "") + """
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{image}"
  enable_selinux = false
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/opt/cni/bin"
    conf_dir = "/etc/cni/net.d"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
"""


class CriContainerd(Containerd):
    """containerd with its CRI plugin, in the `k8s.io` namespace the CRI uses."""

    def __init__(self, workdir: Path, node: str) -> None:
        super().__init__(workdir, node)
        self.namespace = "k8s.io"
        self.config_toml = CRI_CONFIG.replace("{image}", IMAGE)

    def crictl(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        proc = subprocess.run([CRICTL, "--runtime-endpoint", f"unix://{self.socket}", "--timeout", "60s", *args],
                              capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode:
            raise AssertionError(f"crictl {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
                                 f"\ncontainerd log:\n{self.log()[-3000:]}")
        return proc


@pytest.fixture
def cri(lab, node, etcd, bundle, kube_apiserver):  # noqa: F811
    before = {path: os.path.lexists(path) for path in HOST_PATHS}
    workdir = Path(tempfile.mkdtemp(prefix="cni-calico-cri-"))
    bin_dir, conf_dir = workdir / "opt/cni/bin", workdir / "etc/cni/net.d"
    sh("make", "-C", str(REPO), "-s", "-o", "build", "install", f"CNI_BIN_DIR={bin_dir}",
       f"CNI_CONF_DIR={workdir / 'install-conf'}", timeout=300)
    for plugin in ("loopback", "portmap", "bandwidth"):
        shutil.copy2(f"{REFERENCE_CNI_DIR}/{plugin}", bin_dir / plugin)
    conf_dir.mkdir(parents=True)
    kube_apiserver.bridge(node)
    conflist = json.loads((REPO / "examples/10-calico.conflist").read_text())
    conflist["cniVersion"] = "1.0.0"
    conflist["plugins"][0].update(etcd_endpoints=etcd.url, nodename=NODENAME, log_level="debug",
                                  log_file_path=str(workdir / "cni.log"), policy={"type": "k8s"},
                                  kubernetes={"kubeconfig": kube_apiserver.kubeconfig(workdir / "kubeconfig")})
    (conf_dir / "10-calico.conflist").write_text(json.dumps(conflist, indent=2))
    runtime = CriContainerd(workdir, node)
    try:
        runtime.start()
        runtime.ctr("images", "import", str(build_image(workdir / "image.tar")))
        yield runtime
    finally:
        for pod in runtime.crictl("pods", "-q", check=False).stdout.split():
            runtime.crictl("stopp", pod, check=False)
            runtime.crictl("rmp", "-f", pod, check=False)
        runtime.close()
        shutil.rmtree(workdir, ignore_errors=True)
        assert {path: os.path.lexists(path) for path in HOST_PATHS} == before, "the machine's paths changed"


def test_crictl_as_the_kubelet_runs_our_plugin_through_the_cri(lab, node, etcd, cri, kube_apiserver, tmp_path):
    add_pool(etcd, "cri-pool", "10.62.0.0/24", 26)
    api = kube_apiserver.api()
    namespace = f"cri-{uuid.uuid4().hex[:5]}"
    api.namespace(namespace, {"team": "cri"})
    created = api.pod(namespace, "web", NODENAME, {"app": "web"})
    config = tmp_path / "pod.json"
    config.write_text(json.dumps({"metadata": {"name": "web", "namespace": namespace,
                                               "uid": created["metadata"]["uid"], "attempt": 0},
                                  "log_directory": str(tmp_path), "linux": {}}))
    sandbox = cri.crictl("runp", str(config)).stdout.strip()
    status = json.loads(cri.crictl("inspectp", sandbox).stdout)["status"]
    address = status["network"]["ip"]
    assert address.startswith("10.62.0."), status["network"]
    key = f"{RES}/workloadendpoints/{namespace}/{NODENAME.replace('-', '--')}-k8s-web-eth0"
    wep = wait_for(lambda: etcd.get_json(key), 10, "the pod's WorkloadEndpoint")
    assert wep["metadata"]["labels"]["app"] == "web" and wep["metadata"]["labels"]["pcns.team"] == "cri"
    assert wep["spec"]["containerID"] == sandbox
    assert lab.ping(node, address, within=5), "the node reaches the pod"
    cri.crictl("stopp", sandbox)
    cri.crictl("rmp", sandbox)
    wait_for(lambda: etcd.get_json(key) is None, 10, "the endpoint removed by DEL")
