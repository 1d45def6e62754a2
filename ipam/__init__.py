"""calico-ipam: etcd-backed address management in affine blocks, as Calico lays it out."""
