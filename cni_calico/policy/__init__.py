"""Policy enforcement for calico-node (Felix's role): etcd policy → iptables chains and ipsets.

model (records, pure) → render (ruleset, pure) → iptables (the kernel) ← sync (etcd, composition).
Imported only by calico-node, never by the CNI plugin.
"""
