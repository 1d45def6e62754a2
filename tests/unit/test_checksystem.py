"""calicoctl node checksystem's decisions (cni_calico.ctl.node_checksystem), on given kernel facts."""

from __future__ import annotations

import gzip

from cni_calico.ctl.node_checksystem import Module, kernel_config, kernel_version_ok, module_present

XT_SET = Module("xt_set", ("CONFIG_NETFILTER_XT_SET",), ("ipt_set",))


def test_a_module_is_present_loaded_listed_or_built():
    assert module_present(XT_SET, {"xt_set"}, "", "")
    assert module_present(XT_SET, {"ipt_set"}, "", "")  # its alternative
    assert module_present(XT_SET, set(), "kernel/net/netfilter/xt_set.ko.xz: kernel/net/netfilter/ipset/ip_set.ko", "")
    assert module_present(XT_SET, set(), "", "CONFIG_A=y\nCONFIG_NETFILTER_XT_SET=m\n")
    assert not module_present(XT_SET, {"ip_set"}, "kernel/net/netfilter/xt_setx.ko", "CONFIG_NETFILTER_XT_SET=n\n")
    assert not module_present(XT_SET, set(), "", "# CONFIG_NETFILTER_XT_SET is not set\n")
    assert module_present(Module("vfio-pci", ()), {"vfio_pci"}, "", "")  # sysfs spells it with _


def test_kernel_version_against_calicos_minimum():
    assert kernel_version_ok("6.18.44-fc-v1147") and kernel_version_ok("2.6.24")
    assert not kernel_version_ok("2.6.23-old") and not kernel_version_ok("2.4")


def test_kernel_config_reads_the_override_gzipped_or_not(tmp_path):
    plain, packed = tmp_path / "config", tmp_path / "config.gz"
    plain.write_text("CONFIG_IP_SET=y\n")
    with gzip.open(packed, "wt") as f:
        f.write("CONFIG_VXLAN=m\n")
    assert kernel_config(str(plain), "x") == "CONFIG_IP_SET=y\n"
    assert kernel_config(str(packed), "x") == "CONFIG_VXLAN=m\n"
    assert kernel_config(str(tmp_path / "none"), "x") == ""
