"""First end-to-end check: one ADD, the address configured, DEL leaves nothing."""

from tests.lab import Lab


def test_add_del_leaves_nothing(lab, node, make_pod, pool, conf, etcd):
    pod = make_pod()
    run = Lab.run_plugin(node, "ADD", conf(), "c0ffee000001", Lab.netns_path(pod))
    assert run.rc == 0, run.stdout + run.stderr
    address = run.out["ips"][0]["address"]
    assert address.startswith("10.60.0.")
    assert address.split("/")[0] in lab.in_ns(pod, "ip", "-4", "addr").stdout
    run = Lab.run_plugin(node, "DEL", conf(), "c0ffee000001", Lab.netns_path(pod))
    assert run.rc == 0, run.stdout + run.stderr
    assert not [k for k in etcd.keys("/calico/ipam/v2/handle/")]
    assert not [link for link in lab.links(node) if link.startswith("cali")]
