"""The help texts of create, apply, replace, delete and get: what each does, with examples."""

from __future__ import annotations

import textwrap

from cni_calico.ctl import output  # noqa: F401 - registers every kind before KINDS is read
from cni_calico.resources import KINDS
from cni_calico.v3 import FELIX_HONOURED, FELIX_INERT

KINDS_HELP = "Valid resource types are:\n" + "".join(
    f"  * {k.name:<20} ({', '.join(dict.fromkeys(a for a in k.aliases if a != k.name.lower()))})"
    f"{'  namespaced' if k.namespaced else ''}\n" for k in KINDS.values()) + "\n" + (
    "The resource type is case-insensitive and may be pluralized or shortened (ippool, ippools, pool).\n"
    "Namespaced kinds use the namespace of -n/--namespace, else of the resource, else 'default'.\n"
)

# What calico-node does with FelixConfiguration, said where it is written (every other field is refused).
FELIX_HELP = textwrap.fill(
    "FelixConfiguration (default, or node.<name> for one node): calico-node honours "
    + ", ".join(FELIX_HONOURED) + "; it accepts " + ", ".join(f"{k} only as {v!r}" for k, v in FELIX_INERT.items())
    + " (what it does anyway); every other Felix field is refused, naming it, as not supported.", 79,
    break_on_hyphens=False) + "\n"

# Where BGP passwords come from, and what of Calico's BGP fields is refused (said where they are written).
BGP_HELP = textwrap.fill(
    "BGPConfiguration, BGPPeer, BGPFilter: every field Calico's confd renders into BIRD is rendered the "
    "same way; the others are refused, naming them, as not supported. Passwords (BGPPeer password, "
    "BGPConfiguration nodeMeshPassword: {secretKeyRef: {name, key}}) are read by each calico-node from the "
    "file $CALICO_SECRETS_DIR/<name>/<key> (default /etc/calico/secrets/<name>/<key>); a session whose "
    "secret cannot be read stays disabled.", 79, break_on_hyphens=False) + "\n"

# What calico-kube-controllers does with KubeControllersConfiguration (the rest is refused, naming it).
KCC_HELP = textwrap.fill(
    "KubeControllersConfiguration (default): calico-kube-controllers honours logSeverityScreen, healthChecks "
    "(its status file), etcdV3CompactionPeriod, prometheusMetricsPort, which controllers run (node, policy, "
    "workloadEndpoint, serviceAccount, namespace: a section present), each reconcilerPeriod, node.syncLabels and "
    "node.leakGracePeriod; Calico's environment variables (LOG_LEVEL, ENABLED_CONTROLLERS, RECONCILER_PERIOD, "
    "COMPACTION_PERIOD, HEALTH_ENABLED, SYNC_NODE_LABELS) win where set. It refuses, naming the field, "
    "debugProfilePort other than 0, node.hostEndpoint autoCreate Enabled and templates, and loadBalancer or "
    "migration other than as Calico's default writes them.", 79, break_on_hyphens=False) + "\n"

COMMANDS = {
    "create": ("Create resources by filename or stdin.", """\
Every resource is validated first: one invalid field anywhere and nothing is
written. Creating a resource that already exists is an error unless
--skip-exists is given (skipped resources count as successes).
WorkloadEndpoints are written by the CNI plugin only.

examples:
  # Create the IP pools in pools.yaml.
  calicoctl create -f ./pools.yaml

  # Create a pool from JSON on stdin.
  cat pool.json | calicoctl create -f -

  # Create a policy in namespace prod (unless the file names another namespace).
  calicoctl create -f policy.yaml -n prod
"""),
    "apply": ("Apply resources by filename or stdin: create them, or replace them if they exist.", """\
examples:
  # Apply the IP pools in pools.yaml.
  calicoctl apply -f ./pools.yaml

  # Set the IPAM configuration (kind IPAMConfig, name default; see also
  # calicoctl ipam configure).
  calicoctl apply -f ipamconfig.yaml
"""),
    "replace": ("Replace existing resources by filename or stdin.", """\
The complete resource must be given. With metadata.resourceVersion in the
file (as `get -o yaml` prints it), the replace is refused if the resource
changed since it was read. An IP pool's cidr and blockSize cannot change.

examples:
  # Change a node: get it, edit it, replace it.
  calicoctl get node node1 -o yaml > node1.yaml
  calicoctl replace -f node1.yaml
"""),
    "validate": ("Validate resources by filename or stdin without applying them.", """\
Every resource is checked as create/apply/replace check it, field by field,
offline: the datastore is not asked, so what depends on it (an IP pool
overlapping another, a policy's tier existing) is checked only when written.

examples:
  # Validate the resources in policy.yaml.
  calicoctl validate -f ./policy.yaml
"""),
    "delete": ("Delete resources by filename, stdin, or kind and name.", """\
Deleting a resource that does not exist is an error unless -s/--skip-not-exists
is given (skipped resources count as successes).

Deleting a Node also cleans up after it, as Calico does: the addresses held
for its WorkloadEndpoints and its tunnel addresses are released, those
endpoints deleted, its block affinities released (empty blocks deleted),
its BGPPeers and its node.<name> BGPConfiguration deleted; the summary says
what was cleaned.

Deleting an IPPool is refused while addresses of the pool are allocated
(the message says how many) unless --force is given. The pool is disabled,
its block affinities released and empty blocks deleted, then it is deleted;
with --force, blocks still holding addresses are kept (affine to no node) so
those addresses stay valid until released.

examples:
  # Delete the IP pool named pool1.
  calicoctl delete ippool pool1

  # Delete a departed node and everything it held.
  calicoctl delete node node3

  # Delete a workload endpoint left behind (namespace prod).
  calicoctl delete wep -n prod node1-k8s-web--0-eth0

  # Delete the resources described in pools.yaml.
  calicoctl delete -f ./pools.yaml
"""),
    "get": ("Display resources by filename, stdin, or kind and (optional) names.", """\
Output formats (-o): ps (the default table), wide (more columns), yaml, json,
custom-columns=HEADING,... (any of the kind's wide headings, and a few more:
an unknown one is refused listing those the kind has), go-template=TEMPLATE
and go-template-file=FILE. YAML and JSON output is valid input to create,
apply, replace and delete. Namespaced kinds list namespace 'default' unless
-n NS or -A (every namespace) is given; either adds a NAMESPACE column.

A template gets what real calicoctl's gets: a list holding the <Kind>List of a
listed kind (range over .Items), or the named resources. Fields are Go's
names (.Metadata.Name or .ObjectMeta.Name or .Name, .Spec.CIDR, .Labels),
matched case-insensitively. Supported: {{.Field}}, range/else, if/else
if/else, with, variables, pipelines, parentheses, and the functions join,
joinAndTruncate, printf, print, println, len, index, not, and, or, eq, ne, lt,
le, gt, ge; define/template/block and other functions are refused by name.

examples:
  # List all IP pools.
  calicoctl get ippools

  # Nodes with their AS numbers and addresses.
  calicoctl get nodes -o wide

  # Workload endpoints of every namespace.
  calicoctl get weps -A

  # Show one policy with all its fields, as YAML.
  calicoctl get networkpolicy allow-web -n prod -o yaml

  # Chosen columns.
  calicoctl get ippools -o custom-columns=NAME,CIDR,NAT

  # One line per pool: name and CIDR.
  calicoctl get ippools -o go-template='{{range .}}{{range .Items}}{{.Metadata.Name}} {{.Spec.CIDR}}
  {{end}}{{end}}'
"""),
}
