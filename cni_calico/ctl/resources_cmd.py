"""calicoctl create / apply / replace / delete / get / validate: resources from files or by kind and name.

Every document is read and validated before the datastore is touched: one bad
field anywhere and nothing is written. Then each resource is handled in order
and a failure does not stop the others; the summary counts what succeeded and
every failure is printed with the resource it concerns (exit status 1).

The writes themselves are config.ResourceStore's (guarded etcd transactions).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from cni_calico.ctl import cleanup, config, output
from cni_calico.ctl.kinds.bgp import NODE
from cni_calico.ctl.kinds.bgpconfig import BGPCONFIGURATION
from cni_calico.datastore import DatastoreError
from cni_calico.resources import (
    AlreadyExists,
    DocumentError,
    DoesNotExist,
    FieldError,
    Kind,
    Resource,
    ResourceError,
    ValidationError,
    lookup,
    validate,
)
from cni_calico.v3 import DEFAULT_AS

log = logging.getLogger(__name__)

FILE_SUFFIXES = (".yaml", ".yml", ".json")


# --- reading what to act on -----------------------------------------------------------------


def load_file(path: str, recursive: bool = False, skip_empty: bool = False) -> list[Resource]:
    """Resources in a file ('-' for stdin) or in every .yaml/.yml/.json file of a directory (and, with
    -R, of its subdirectories, as calicoctl's file iterator walks them); with --skip-empty an empty file
    or directory is no error."""
    if path != "-" and os.path.isdir(path):
        if recursive:
            names = sorted(os.path.relpath(os.path.join(d, n), path) for d, _, files in os.walk(path)
                           for n in files if n.endswith(FILE_SUFFIXES))
        else:
            names = sorted(n for n in os.listdir(path) if n.endswith(FILE_SUFFIXES)
                           and not os.path.isdir(os.path.join(path, n)))
        found = [r for n in names for r in load_file(os.path.join(path, n), skip_empty=skip_empty)]
        if not found and not skip_empty:
            raise DocumentError(f"No resources specified in directory {path}")
        return found
    try:
        if path == "-":
            text = sys.stdin.read()
        else:
            with open(path, encoding="utf-8") as f:
                text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise DocumentError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    resources = output.parse_documents(text, "stdin" if path == "-" else path)
    if not resources and not skip_empty:
        raise DocumentError(f"No resources specified in file {path}")
    return resources


def _load(args: argparse.Namespace) -> list[Resource]:
    return load_file(args.filename, getattr(args, "recursive", False), getattr(args, "skip_empty", False))


def targets(args: argparse.Namespace) -> tuple[list[Resource], Kind | None]:
    """What get/delete act on: the file's resources, or KIND NAME...; the kind when listing all of it."""
    if args.filename:
        if args.kind:
            raise DocumentError("give either --filename or KIND [NAME...], not both")
        return [_scoped(r, args) for r in _load(args)], None
    if not args.kind:
        raise DocumentError("give a resource KIND (e.g. ippool) or --filename")
    kind = lookup(args.kind)
    if args.namespace and not kind.namespaced:
        raise DocumentError(f"{kind.name} is not namespaced")
    if any(not n for n in args.names):
        raise DocumentError("resource name may not be empty")
    if getattr(args, "all_namespaces", False) and args.names:
        raise DocumentError("--all-namespaces lists a whole kind: give no resource NAME with it")
    meta = {"namespace": args.namespace or "default"} if kind.namespaced else {}
    return [Resource(kind, {"name": n, **meta}, {}) for n in args.names], None if args.names else kind


def _scoped(res: Resource, args: argparse.Namespace) -> Resource:
    """Applies -n/--namespace the way calicoctl does (default namespace for namespaced kinds)."""
    ns = getattr(args, "namespace", None)
    if res.kind.namespaced and not res.namespace:
        res.metadata["namespace"] = ns or "default"
    elif ns and res.namespace and ns != res.namespace:
        raise DocumentError(f"{res.ident}: resource namespace does not match client namespace ({ns})")
    return res  # as calicoctl: -n does not apply to the global kinds of a file


# --- the commands ---------------------------------------------------------------------------

ACTIONS = {  # command: (past tense, what it does to one resource)
    "create": ("created", config.ResourceStore.create),
    "apply": ("applied", config.ResourceStore.apply),
    "replace": ("replaced", config.ResourceStore.replace),
    "delete": ("deleted", config.ResourceStore.delete),  # through cleanup.delete: Node and IPPool clean up
    "validate": ("validated", None),  # offline: nothing is written, etcd is never asked
}


def run_write(args: argparse.Namespace) -> int:
    """create, apply, replace and delete: check every resource first, then act on each in order."""
    action = args.command
    if action == "delete":
        resources, listed = targets(args)
        if listed is not None:
            raise DocumentError(f"give the NAME of the {listed.name} to delete")
    else:
        resources = [_scoped(r, args) for r in _load(args)]
        if not resources:  # all empty, with --skip-empty
            print("No resources specified")
            return 0
    invalid = []
    for res in resources:
        try:
            if action != "delete" and not res.kind.writable:
                raise ValidationError(res.ident, [FieldError("kind", read_only(res.kind, action))])
            if action != "delete":
                validate(res)
            elif not res.name:
                raise ValidationError(res.ident, [FieldError("metadata.name", "resource name may not be empty")])
        except ValidationError as exc:
            invalid.append((res, exc))
    if invalid:
        for res, exc in invalid:
            _failed(action, res, exc)
        if len(resources) > 1:
            print(f"Nothing was {ACTIONS[action][0]}: {len(invalid)} of {len(resources)} resources are invalid",
                  file=sys.stderr)
        return 1
    if action == "validate":
        return _report(action, resources, len(resources), [])
    ds = config.connect(config.load(args.config))
    done, failed = 0, []
    try:
        store = config.ResourceStore(ds)
        for res in resources:
            try:
                if action == "delete":
                    _, cleaned = cleanup.delete(store, res, force=args.force)
                    if cleaned:
                        print(cleaned)
                else:
                    ACTIONS[action][1](store, res)
                done += 1
            except (AlreadyExists, DoesNotExist) as exc:
                skip = args.skip_exists if isinstance(exc, AlreadyExists) else args.skip_not_exists
                if not skip:
                    failed.append((res, exc))
                    continue
                log.info("skipped %s: %s", res.ident, exc)
                done += 1
            except ResourceError as exc:
                failed.append((res, exc))
            except DatastoreError as exc:  # etcd gone: the rest would only wait for it too
                failed.append((res, exc))
                break
    finally:
        ds.close()
    return _report(action, resources, done, failed)


def printer(fmt: str) -> tuple[str, str]:
    """`-o` as calicoctl reads it: (format, its value for custom-columns/go-template/go-template-file).

    A template is read and parsed here, before the datastore is touched, so a bad one fails alone."""
    if fmt in output.FORMATS:
        return fmt, ""
    key, _, value = fmt.partition("=")
    if key not in output.TEMPLATED:
        raise DocumentError(f"unrecognized output format '{fmt}'")
    if not value:
        raise DocumentError({"custom-columns": "need to specify at least one column",
                             "go-template": "need to specify a template",
                             "go-template-file": "need to specify a template file"}[key])
    if key == "go-template-file":
        try:
            with open(value, encoding="utf-8") as f:
                key, value = "go-template", f.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise DocumentError(f"open {value}: {getattr(exc, 'strerror', None) or exc}") from None
    if key == "go-template":
        from cni_calico.ctl import templates

        try:
            templates.parse(value)
        except templates.TemplateError as exc:
            raise DocumentError(str(exc)) from None
    return key, value


def run_get(args: argparse.Namespace) -> int:
    fmt, fmt_value = printer(args.output)
    wanted, listed = targets(args)
    ds = config.connect(config.load(args.config))
    found: list[Resource] = []
    missing: list[Resource] = []
    context: dict = {}
    try:
        store = config.ResourceStore(ds)
        if listed is not None:
            namespace = "" if args.all_namespaces or not listed.namespaced else args.namespace or "default"
            found = store.list(listed, namespace)
        for res in wanted:
            current = store.get(res)
            (missing if current is None else found).append(current or res)
        if (fmt in ("wide", "custom-columns") or "asnumber" in fmt_value.lower()) and any(
                r.kind is NODE for r in found):
            default = store.get(Resource(BGPCONFIGURATION, {"name": "default"}, {}))
            context["asnumber"] = (default.spec.get("asNumber") if default else None) or DEFAULT_AS
    finally:
        ds.close()
    if args.export and listed is None:  # as calicoctl: named resources only, never a listing
        for res in found:
            for key in ("namespace", "uid", "resourceVersion", "creationTimestamp"):
                res.metadata.pop(key, None)
    namespace_column = args.all_namespaces or bool(args.namespace)  # as calicoctl: -A or -n adds NAMESPACE
    if fmt == "go-template":
        from cni_calico.ctl import templates

        # What calicoctl hands its template: a listed kind as one <Kind>List, named resources as themselves.
        data = [output.document(found, listed)] if listed is not None else [r.to_dict() for r in found]
        try:
            sys.stdout.write(templates.execute(fmt_value, data))
        except templates.TemplateError as exc:
            raise DocumentError(str(exc)) from None
    elif fmt == "custom-columns":
        sys.stdout.write(output.table(found, empty_kind=listed, all_namespaces=namespace_column, context=context,
                                      columns=[c.strip() for c in fmt_value.split(",")]))
    else:
        sys.stdout.write(output.render(found, fmt, listed, namespace_column, context))
    for res in missing:
        print(DoesNotExist(res.ident), file=sys.stderr)
    return 1 if missing else 0


def read_only(kind: Kind, action: str) -> str:
    """Why calicoctl refuses to write a kind: real calicoctl's ErrorOperationNotSupported for calico-node's
    ClusterInformation, ours for the CNI plugin's WorkloadEndpoints (which it may delete)."""
    if kind.writer == "calico-node":
        operation = "apply or replace" if action in ("replace", "patch", "label") else "create or apply"
        return f"operation {operation} is not supported on {kind.name} (calico-node writes it)"
    return f"{kind.name} resources are written by {kind.writer}: calicoctl can only get and delete them"


def _report(action: str, resources: list[Resource], done: int, failed: list[tuple[Resource, Exception]]) -> int:
    past = ACTIONS[action][0]
    kinds = {r.kind.name for r in resources}
    what = f"'{kinds.pop()}' resource(s)" if len(kinds) == 1 else "resource(s)"
    if not failed:
        print(f"Successfully {past} {done} {what}")
        return 0
    if done:
        print(f"Partial success: {past} {done} out of {len(resources)} {what}")
    for res, exc in failed:
        _failed(action, res, exc)
    return 1


def _failed(action: str, res: Resource, exc: Exception) -> None:
    detail = " ".join(str(exc).split())  # one line per failure, whatever the cause's own formatting
    print(f"Failed to {action} '{res.kind.name}' resource: [{detail}]", file=sys.stderr)


# --- the parsers ------------------------------------------------------------------------------


def register(sub: argparse._SubParsersAction) -> None:
    """Adds create, apply, replace, delete, get and validate to calicoctl's command parser."""
    from cni_calico.ctl.resources_help import BGP_HELP, COMMANDS, FELIX_HELP, KCC_HELP, KINDS_HELP

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", metavar="CONFIG",
                        help=f"CalicoAPIConfig file (YAML/JSON); default {config.DEFAULT_CONFIG} if it exists, "
                             "else the ETCD_* environment variables")
    common.add_argument("-n", "--namespace", default="", metavar="NS",
                        help="namespace of namespaced resources (NetworkPolicy, WorkloadEndpoint); default: default")
    common.add_argument("--allow-version-mismatch", action="store_true", help=argparse.SUPPRESS)
    for name, (summary, details) in COMMANDS.items():
        p = sub.add_parser(name, parents=[common], help=summary,
                           description=f"{summary}\n\n{KINDS_HELP}\n{FELIX_HELP}\n{BGP_HELP}\n{KCC_HELP}",
                           epilog=details, formatter_class=argparse.RawDescriptionHelpFormatter)
        file_help = 'file or directory of YAML/JSON resources; "-" reads stdin'
        if name in ("get", "delete"):
            p.add_argument("kind", nargs="?", metavar="KIND", help="resource type, e.g. ippool")
            p.add_argument("names", nargs="*", metavar="NAME", help="resource names")
            p.add_argument("-f", "--filename", help=file_help)
        else:
            p.add_argument("-f", "--filename", required=True, help=file_help)
        p.add_argument("-R", "--recursive", action="store_true",
                       help="with a directory as -f, its subdirectories' files too")
        p.add_argument("--skip-empty", action="store_true", help="do not fail on files or directories with no data")
        if name == "get":
            p.add_argument("--export", action="store_true",
                           help="with NAMEs: strip what belongs to this cluster (namespace, uid, resourceVersion, "
                                "creationTimestamp)")
            p.add_argument("-o", "--output", default="ps", metavar="FORMAT",
                           help="ps (default), wide, yaml, json, custom-columns=HEADING,..., go-template=TEMPLATE, "
                                "go-template-file=FILE")
            p.add_argument("-A", "--all-namespaces", action="store_true",
                           help="list namespaced resources of every namespace (adds a NAMESPACE column)")
        p.set_defaults(func=run_get if name == "get" else run_write, skip_exists=False, skip_not_exists=False,
                       force=False, all_namespaces=False)
        if name == "create":
            p.add_argument("--skip-exists", action="store_true", help="treat resources that already exist as created")
        if name == "delete":
            p.add_argument("-s", "--skip-not-exists", action="store_true", help="treat missing resources as deleted")
            p.add_argument("--force", action="store_true",
                           help="IPPool: delete it even while some of its addresses are allocated")
