"""cni-calico: Calico-style pure L3 container networking (CNI plugin, IPAM, node agent, CLI)."""

__version__ = "0.1.0"
