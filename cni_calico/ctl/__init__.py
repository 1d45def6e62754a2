"""calicoctl: the operator's command line over the Calico v3 resources in etcd.

`main` builds the argparse tree and is the one place where an exception becomes
a message on stderr and an exit status (0 success, 1 any failure). Each command
family is a module with a `register(subparsers)` function: `resources_cmd`
(create, apply, replace, delete, get; `cleanup` for what deleting a Node or an
IPPool takes with it), `ipam_cmd` (ipam show/check/release/configure, with
`ipam_check`), `node_cmd` (node status from BIRD); `config` finds and opens the
datastore; `output` reads and renders YAML/JSON and tables. The kinds
themselves (names, defaults, validation) are `cni_calico.resources` (IPPool
and the registry) and `cni_calico.ctl.kinds` (all others).
"""


class CommandError(Exception):
    """A command that cannot do what was asked; calicoctl prints it as one line and exits 1."""
