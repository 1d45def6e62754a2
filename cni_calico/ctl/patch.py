"""`calicoctl patch KIND NAME --patch PATCH`: change some fields of one existing resource in place.

As Calico's (crud_commands.go, resourcemgr.Patch): the resource is read, the patch applied to its
JSON, the result validated field by field like any write and stored guarded by the revision read
(a concurrent change is never overwritten: the patch is re-applied to the new version, under the
one retry policy). Output and errors are real calicoctl's: `Successfully patched 1 'IPPool'
resource`, else `hit error: …` on stderr and exit status 1.

`--type` (`-t`): `strategic` (the default) and `merge` are a JSON merge patch (RFC 7386: objects
merge, `null` removes a field, anything else, lists too, replaces), which is what Kubernetes'
strategic merge does to Calico's types (they declare no list merge keys); `json` is a JSON Patch
(RFC 6902: a list of add/remove/replace/move/copy/test operations). Real calicoctl accepts
`--type` but always merges; honouring `json` is ours.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys

from cni_calico.ctl import CommandError, config, output
from cni_calico.resources import (
    DocumentError,
    FieldError,
    Resource,
    ResourceError,
    ValidationError,
    lookup,
    validate,
)

TYPES = ("strategic", "merge", "json")
HELP = """\
Patch a single existing Calico resource in place: change some fields without
supplying the whole resource, as replace needs. The patched resource is
validated as create/apply/replace validate it; an invalid field is named and
nothing is written.

--type strategic (default) or merge: a JSON merge patch (objects merge, null
removes a field, lists and values replace). --type json: a JSON Patch, a list
of {"op": "add|remove|replace|move|copy|test", "path": "/spec/...", ...}.

examples:
  # Set a route reflector cluster ID on a node.
  calicoctl patch node node-0 --patch '{"spec":{"bgp":{"routeReflectorClusterID":"224.0.0.1"}}}'

  # Disable an IP pool.
  calicoctl patch ippool pool1 -p '{"spec":{"disabled":true}}'

  # Remove a label, as a JSON Patch.
  calicoctl patch ippool pool1 --type json -p '[{"op":"remove","path":"/metadata/labels/zone"}]'
"""


class PatchError(Exception):
    """A patch that cannot be applied to the resource."""


def merge_patch(target: object, patch: object) -> object:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def _pointer(path: object) -> list[str]:
    if not isinstance(path, str) or (path and not path.startswith("/")):
        raise PatchError(f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path.split("/")[1:]]


def _step(node: object, part: str, path: str) -> object:
    """One pointer segment down: a mapping's key or a list's index."""
    if isinstance(node, dict) and part in node:
        return node[part]
    if isinstance(node, list) and part.isdigit() and int(part) < len(node):
        return node[int(part)]
    raise PatchError(f"path {path!r} does not exist")


def _parent(doc: object, parts: list[str], path: str) -> tuple[object, str]:
    if not parts:
        raise PatchError(f"cannot change the whole document at {path!r}")
    node = doc
    for part in parts[:-1]:
        node = _step(node, part, path)
    return node, parts[-1]


def _get(doc: object, path: str) -> object:
    node = doc
    for part in _pointer(path):
        node = _step(node, part, path)
    return node


def _remove(doc: object, path: str) -> object:
    node, last = _parent(doc, _pointer(path), path)
    if isinstance(node, dict) and last in node:
        return node.pop(last)
    if isinstance(node, list) and last.isdigit() and int(last) < len(node):
        return node.pop(int(last))
    raise PatchError(f"path {path!r} does not exist")


def _add(doc: object, path: str, value: object) -> None:
    node, last = _parent(doc, _pointer(path), path)
    if isinstance(node, dict):
        node[last] = copy.deepcopy(value)
    elif isinstance(node, list) and (last == "-" or (last.isdigit() and int(last) <= len(node))):
        node.insert(len(node) if last == "-" else int(last), copy.deepcopy(value))
    else:
        raise PatchError(f"cannot add at {path!r}")


def json_patch(doc: object, operations: object) -> object:
    """RFC 6902, on a copy of doc."""
    if not isinstance(operations, list):
        raise PatchError("a JSON Patch is a list of operations")
    doc = copy.deepcopy(doc)
    for i, op in enumerate(operations):
        if not isinstance(op, dict) or "path" not in op:
            raise PatchError(f"operation {i} has no path")
        name, path = op.get("op"), op["path"]
        if name in ("add", "replace", "test") and "value" not in op:
            raise PatchError(f"operation {i} ({name}) has no value")
        if name == "add":
            _add(doc, path, op["value"])
        elif name == "remove":
            _remove(doc, path)
        elif name == "replace":
            _remove(doc, path)
            _add(doc, path, op["value"])
        elif name in ("move", "copy"):
            value = _remove(doc, op.get("from", "")) if name == "move" else copy.deepcopy(_get(doc, op.get("from", "")))
            _add(doc, path, value)
        elif name == "test":
            if _get(doc, path) != op["value"]:
                raise PatchError(f"test failed at {path!r}")
        else:
            raise PatchError(f"operation {i}: unknown op {name!r} (add, remove, replace, move, copy, test)")
    return doc


def apply_patch(current: Resource, text: str, kind_of_patch: str) -> Resource:
    """The resource the patch makes of `current` (not yet validated)."""
    try:
        patch = json.loads(text)
    except ValueError as exc:
        raise PatchError(f"the patch is not JSON: {exc}") from None
    doc = current.to_dict()
    patched = json_patch(doc, patch) if kind_of_patch == "json" else merge_patch(doc, patch)
    if not isinstance(patched, dict):
        raise PatchError("the patched resource is not an object")
    resources = output.parse_documents(json.dumps(patched), "the patched resource")
    if len(resources) != 1 or resources[0].kind is not current.kind:
        raise PatchError(f"a patch cannot change the kind of {current.ident}")
    res = resources[0]
    for key in ("name", "namespace"):
        if res.metadata.get(key) != current.metadata.get(key):
            raise PatchError(f"a patch cannot change metadata.{key} of {current.ident}")
    return res


def run_patch(args: argparse.Namespace) -> int:
    if args.type not in TYPES:
        raise CommandError(f"hit error: unknown patch type {args.type!r} (one of {', '.join(TYPES)})")
    kind = lookup(args.kind)
    if args.namespace and not kind.namespaced:
        raise DocumentError(f"{kind.name} is not namespaced")
    if not args.name:
        raise DocumentError("resource name may not be empty")
    meta = {"name": args.name, **({"namespace": args.namespace or "default"} if kind.namespaced else {})}
    target = Resource(kind, meta, {})
    ds = config.connect(config.load(args.config))
    try:
        store = config.ResourceStore(ds)
        try:
            if not kind.writable:
                from cni_calico.ctl.resources_cmd import read_only

                raise ValidationError(target.ident, [FieldError("kind", read_only(kind, "patch"))])
            _patch_once(store, target, args)
        except (ResourceError, PatchError, DocumentError) as exc:
            what = "updating existing resource: " if isinstance(exc, ValidationError) else ""
            if isinstance(exc, (PatchError, DocumentError)):
                what = "performing patch: "
            print(f"hit error: {what}{' '.join(str(exc).split())}", file=sys.stderr)
            return 1
    finally:
        ds.close()
    print(f"Successfully patched 1 '{kind.name}' resource")
    return 0


def _patch_once(store: config.ResourceStore, target: Resource, args: argparse.Namespace) -> None:
    """Read, patch, validate, write guarded by the revision read; re-done on a concurrent change."""
    from cni_calico.datastore import retry_on_conflict
    from cni_calico.resources import UpdateConflict

    def once() -> None:
        current = store.current(target)
        res = apply_patch(current, args.patch, args.type)
        res.metadata["resourceVersion"] = current.resource_version  # the guard: the version patched
        validate(res)
        try:
            store.replace(res)
        except UpdateConflict:
            from cni_calico.datastore import ConflictError

            raise ConflictError(target.ident) from None

    retry_on_conflict(once, f"patching {target.ident}")


def register(sub: argparse._SubParsersAction) -> None:
    """Adds `patch` to calicoctl's command parser."""
    p = sub.add_parser("patch", help="Patch a pre-existing resource in place.", description=HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", metavar="KIND", help="resource type, e.g. ippool")
    p.add_argument("name", metavar="NAME", help="resource name")
    p.add_argument("-p", "--patch", required=True, help="the patch, as JSON")
    p.add_argument("-t", "--type", default="strategic", help="strategic (default), merge or json")
    p.add_argument("-c", "--config", metavar="CONFIG",
                   help=f"CalicoAPIConfig file; default {config.DEFAULT_CONFIG} if it exists, else ETCD_* variables")
    p.add_argument("-n", "--namespace", default="", metavar="NS", help="namespace of a namespaced resource")
    p.add_argument("--allow-version-mismatch", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=run_patch)
