"""Policy enforcement for calico-node (Felix's role): etcd policy → iptables and ip6tables chains and ipsets.

model (records, pure) → render (one ruleset per IP family, pure; names in layout) → iptables (the
kernel: iptables-restore for IPv4, ip6tables-restore for IPv6) ← sync (etcd, composition).
Imported only by calico-node, never by the CNI plugin.
"""
