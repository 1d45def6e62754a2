"""`calicoctl label KIND NAME key=value | key --remove`: set, overwrite or remove one label.

As Calico's (label_command.go), messages and all: `Successfully set label K on KIND NAME`,
`Successfully updated label …` (with --overwrite, or the same value again), `Successfully removed
label K from KIND NAME`; a key already there without --overwrite, a key to remove that is absent,
or a missing resource is an error on stderr, exit status 1. The resource is written back guarded
by the revision read, so a change made meanwhile is never lost (the label is re-applied to it).
A label name or value Kubernetes would refuse is named (ours: real calicoctl says only "label not
changed").
"""

from __future__ import annotations

import argparse

from cni_calico.ctl import CommandError, config
from cni_calico.ctl.kinds import fields
from cni_calico.resources import DocumentError, Resource, ResourceError, ValidationError, lookup, validate

HELP = """\
Add, update, or remove a label on an existing Calico resource. Set a label
with key=value (add --overwrite to replace an existing value), or remove one
by passing the key with --remove.

examples:
  # Add a label to a node.
  calicoctl label nodes node1 cluster=frontend

  # Overwrite an existing label value.
  calicoctl label nodes node1 cluster=backend --overwrite

  # Remove a label.
  calicoctl label nodes node1 cluster --remove
"""


def run_label(args: argparse.Namespace) -> int:
    kind_text, name = args.kind, args.name
    if args.remove:
        key, value = args.label, ""
    else:
        key, sep, value = args.label.partition("=")
        if not sep:
            raise CommandError(f"invalid label {args.label}")
        errors = fields.labels("metadata.labels", {key: value})
        if errors:
            raise CommandError(f"invalid label {args.label}: {'; '.join(str(e) for e in errors)}")
    kind = lookup(kind_text)
    if args.namespace and not kind.namespaced:
        raise DocumentError(f"{kind.name} is not namespaced")
    meta = {"name": name, **({"namespace": args.namespace or "default"} if kind.namespaced else {})}
    target = Resource(kind, meta, {})
    ds = config.connect(config.load(args.config))
    try:
        store = config.ResourceStore(ds)
        outcome = _label(store, target, key, value, args, f"{kind_text} {name}")
    finally:
        ds.close()
    print(f"Successfully {outcome} label {key} {'from' if args.remove else 'on'} {kind_text} {name}")
    return 0


def _label(store: config.ResourceStore, target: Resource, key: str, value: str, args: argparse.Namespace,
           what: str) -> str:
    """Changes the stored resource's labels; 'set', 'updated' or 'removed'."""
    from cni_calico.datastore import ConflictError, retry_on_conflict
    from cni_calico.resources import UpdateConflict

    def once() -> str:
        current = store.get(target)
        if current is None:
            raise CommandError(f"{what} not found")
        labels = dict(current.metadata.get("labels") or {})
        outcome = "set"
        if args.remove:
            if key not in labels:
                raise CommandError(f"cannot remove label of {what}, key {key} does not exist")
            del labels[key]
            outcome = "removed"
        elif key in labels:
            if not args.overwrite and labels[key] != value:
                raise CommandError(f"failed to update label of {what}, key {key} is already present. please use "
                                   "'--overwrite' to set a new value")
            outcome = "updated"
        if not args.remove:
            labels[key] = value
        current.metadata["labels"] = labels
        if not labels:
            del current.metadata["labels"]
        if current.kind.writer == "calico-node":
            from cni_calico.ctl.resources_cmd import read_only

            raise CommandError(f"failed to update {what}, label not changed: {read_only(current.kind, 'label')}")
        try:
            if current.kind.writable:
                validate(current)
            store.replace(current)
        except UpdateConflict:
            raise ConflictError(target.ident) from None
        except (ValidationError, ResourceError) as exc:
            raise CommandError(f"failed to update {what}, label not changed: {exc}") from None
        return outcome

    return retry_on_conflict(once, f"labelling {target.ident}")


def register(sub: argparse._SubParsersAction) -> None:
    """Adds `label` to calicoctl's command parser."""
    p = sub.add_parser("label", help="Add or update labels of resources.", description=HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", metavar="KIND", help="resource type, e.g. nodes")
    p.add_argument("name", metavar="NAME", help="resource name")
    p.add_argument("label", metavar="key=value|key", help="the label to set, or its key with --remove")
    p.add_argument("--overwrite", action="store_true", help="overwrite the value when the key is already present")
    p.add_argument("--remove", action="store_true", help="remove the key from the labels")
    p.add_argument("-c", "--config", metavar="CONFIG",
                   help=f"CalicoAPIConfig file; default {config.DEFAULT_CONFIG} if it exists, else ETCD_* variables")
    p.add_argument("-n", "--namespace", default="", metavar="NS", help="namespace of a namespaced resource")
    p.add_argument("--allow-version-mismatch", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=run_label)
