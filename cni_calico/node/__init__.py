"""calico-node: registers the node, keeps BIRD in step with etcd, programs tunnel routes."""
