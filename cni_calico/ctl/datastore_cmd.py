"""`calicoctl datastore migrate export|import|lock|unlock`: move a whole etcd datastore.

As Calico's (commands/datastore/migrate): `lock` sets ClusterInformation `default`'s
datastoreReady to false (creating ClusterInformation if absent; "Datastore locked."), `unlock`
back to true ("Datastore unlocked."). export and `ipam split` require the lock, as Calico's. Calico's
CNI plugin and Felix also stop while it is false; ours do not read the flag yet (calico-node keeps
it as it is across restarts), so lock a cluster whose pods are not changing.
`export` refuses an unlocked datastore and prints Calico's three sections, separated by `===`
lines: every v3 resource as `<Kind>List` YAML documents (each followed by `---`; uid,
resourceVersion and creationTimestamp removed, as Calico's export removes them), then
ClusterInformation as JSON, then IPAM as JSON (`block_affinities`, `blocks`, `handles`, `config`).

Where we differ, because ours moves etcd to etcd (Calico's moves etcd to the Kubernetes API):
node names are kept (no `k8s` orchestrator reference is needed), Profiles and WorkloadEndpoints
are exported too (the Kubernetes datastore derives them; etcd holds them), and each IPAM entry is
`{"key", "value"}` with the value exactly as stored, so blocks, handles and affinities come back
byte for byte. `import -f FILE` reads such a file into an empty datastore: it refuses one holding
any Calico resource other than ClusterInformation and Calico's own tiers, or any IPAM data; every
resource is validated before anything is written (one invalid resource and nothing is); each write
is create-only, so nothing already there is overwritten. The datastore is left locked (the
exported ClusterInformation, with its clusterGUID, says so): `unlock` when ready.
"""

from __future__ import annotations

import argparse
import json
import sys

from cni_calico import datastore_lock, keys
from cni_calico.ctl import CommandError, config, output
from cni_calico.resources import KINDS, DocumentError, Kind, Resource, ValidationError, validate
from cni_calico.v3 import CALICO_VERSION, TIERS, new_uid

# Calico's export order (policies after tiers, nodes before what names them), then ours.
ORDER = ("ippools", "bgppeers", "tiers", "globalnetworkpolicies", "stagedglobalnetworkpolicies", "globalnetworksets",
         "hostendpoints", "kubecontrollersconfigurations", "networkpolicies", "stagednetworkpolicies",
         "stagedkubernetesnetworkpolicies", "networksets", "nodes", "bgpconfigurations", "felixconfigurations",
         "ipreservations", "bgpfilters", "profiles", "workloadendpoints")
NOT_RESOURCES = ("clusterinformations", "ipamconfigs")  # sections of their own
SEPARATOR = "===\n"
IPAM_SECTIONS = {"block_affinities": keys.host_dir(), "blocks": f"{keys.IPAM}/assignment/",
                 "handles": keys.handle_dir()}
HELP = """\
Migrate the contents of an etcdv3 datastore to another etcdv3 datastore.

examples:
  calicoctl datastore migrate lock
  calicoctl datastore migrate export > etcd-data.yaml
  ETCD_ENDPOINTS=http://new-etcd:2379 calicoctl datastore migrate import -f etcd-data.yaml
  ETCD_ENDPOINTS=http://new-etcd:2379 calicoctl datastore migrate unlock
"""
SUBCOMMANDS = {
    "export": "Export the contents of the etcdv3 datastore to YAML/JSON (the datastore must be locked).",
    "import": "Import the output of export into an empty etcdv3 datastore.",
    "lock": "Lock the datastore (ClusterInformation datastoreReady false) so nothing changes it.",
    "unlock": "Unlock the datastore (ClusterInformation datastoreReady true).",
}
CLUSTER_INFO = datastore_lock.KEY


def _kinds() -> list[Kind]:
    listed = sorted((k for k in KINDS.values() if k.plural not in NOT_RESOURCES and not k.store_key),
                    key=lambda k: ORDER.index(k.plural) if k.plural in ORDER else len(ORDER))
    return listed


def _locked(ds) -> bool:
    kv = ds.get(CLUSTER_INFO)
    if kv is None:
        raise CommandError("error while checking if datastore was locked: error retrieving ClusterInformation: "
                           "resource does not exist: ClusterInformation(default)")
    return datastore_lock.locked(kv.value)


# --- lock / unlock ---------------------------------------------------------------------------------


def set_ready(ds, ready: bool) -> None:
    """ClusterInformation default's datastoreReady, guarded by its revision (created when absent)."""
    from cni_calico.datastore import Txn, transact
    from cni_calico.v3 import Resource as Stored
    from cni_calico.v3 import timestamp

    def attempt() -> tuple[Txn, None]:
        kv = ds.get(CLUSTER_INFO)
        if kv is None:  # what Calico's EnsureInitialized would have written, locked
            info = Stored("ClusterInformation", {"name": "default", "uid": new_uid(), "creationTimestamp": timestamp()},
                          {"clusterGUID": new_uid().replace("-", ""), "calicoVersion": CALICO_VERSION})
        else:
            info = Stored.from_value(kv.value)
        info.spec["datastoreReady"] = ready
        return Txn().put(CLUSTER_INFO, info.to_value(), kv.mod_revision if kv else 0), None

    transact(ds, attempt, "updating ClusterInformation")


def run_lock(args: argparse.Namespace, ready: bool) -> int:
    ds = config.connect(config.load(args.config))
    try:
        set_ready(ds, ready)
    finally:
        ds.close()
    print("Datastore unlocked." if ready else "Datastore locked.")
    return 0


# --- export ----------------------------------------------------------------------------------------


def export(ds) -> str:
    if not _locked(ds):
        raise CommandError("datastore is not locked. Run the `calicoctl datastore migrate lock` command in order to "
                           "begin migration")
    store = config.ResourceStore(ds)
    parts = []
    for kind in _kinds():
        found = store.list(kind)
        for res in found:
            for key in ("uid", "resourceVersion", "creationTimestamp"):
                res.metadata.pop(key, None)
        parts.append(output.render(found, "yaml", kind) + "---\n")
    info = ds.get(CLUSTER_INFO)
    parts.append(SEPARATOR + json.dumps(info.value if info else {}, indent=2) + "\n" + SEPARATOR)
    ipam: dict = {}
    for section, prefix in IPAM_SECTIONS.items():
        entries = [{"key": kv.key, "value": kv.value} for kv in ds.list(prefix)]
        if entries:
            ipam[section] = entries
    conf = ds.get(keys.ipam_config())
    if conf is not None:
        ipam["config"] = {"key": conf.key, "value": conf.value}
    parts.append(json.dumps(ipam, indent=2) + "\n")
    return "".join(parts)


def run_export(args: argparse.Namespace) -> int:
    ds = config.connect(config.load(args.config))
    try:
        text = export(ds)
    finally:
        ds.close()
    sys.stdout.write(text)
    return 0


# --- import ----------------------------------------------------------------------------------------


def read_export(path: str) -> tuple[list[Resource], dict, dict]:
    """(resources, ClusterInformation value, IPAM sections) of an export file; DocumentError if it is none."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise DocumentError(f"error while reading migration file: {getattr(exc, 'strerror', None) or exc}") from None
    sections = text.split(SEPARATOR)
    if len(sections) != 3:
        raise DocumentError(f"imported file: {path} is improperly formatted. Try recreating with 'calicoctl "
                            "datastore migrate export'")
    resources = output.parse_documents(sections[0], path)
    try:
        info, ipam = json.loads(sections[1] or "{}"), json.loads(sections[2] or "{}")
    except ValueError as exc:
        raise DocumentError(f"imported file: {path}: ClusterInformation or IPAM section is not JSON: {exc}") from None
    if not isinstance(info, dict) or not isinstance(ipam, dict):
        raise DocumentError(f"imported file: {path}: ClusterInformation and IPAM sections must be JSON objects")
    for section, entries in ipam.items():
        prefix = IPAM_SECTIONS.get(section, keys.ipam_config())
        listed = entries if section in IPAM_SECTIONS else [entries] if section == "config" else None
        if listed is None or not all(isinstance(e, dict) and isinstance(e.get("key"), str)
                                     and e["key"].startswith(prefix) and isinstance(e.get("value"), dict)
                                     for e in listed):
            raise DocumentError(f"failed to read IPAM resources: section {section!r} is not a list of "
                                f"{{key, value}} under {prefix}")
    return resources, info, ipam


def _existing(ds) -> list[str]:
    """What makes the datastore not empty: resources beyond ClusterInformation and Calico's tiers; IPAM."""
    found = []
    for kv in ds.list(keys.RESOURCES + "/", keys_only=True):
        parsed = keys.parse_resource(kv.key)
        if parsed is None or parsed.plural == "clusterinformations" or (
                parsed.plural == "tiers" and parsed.name in TIERS):
            continue
        found.append(kv.key)
    found += [kv.key for kv in ds.list(keys.IPAM + "/", keys_only=True)]
    return found


def run_import(args: argparse.Namespace) -> int:
    from cni_calico.datastore import Txn

    resources, info, ipam = read_export(args.filename)
    invalid = []
    for res in resources:
        try:
            if res.kind.writable:  # WorkloadEndpoints are the CNI plugin's records, copied as they are
                validate(res)
        except ValidationError as exc:
            invalid.append(str(exc))
    if invalid:
        raise CommandError(f"failed to import v3 resources: {'; '.join(invalid)}")
    ds = config.connect(config.load(args.config))
    try:
        existing = _existing(ds)
        if existing:
            raise CommandError(f"datastore already has Calico resources: {existing[0]} ({len(existing)} in all). "
                               "Import only into an empty datastore")
        set_ready(ds, False)  # locked while importing, as Calico's import locks it
        store = config.ResourceStore(ds)
        for res in resources:
            if res.kind.plural == "tiers" and res.name in TIERS:
                store.apply(res)
            else:
                store.create(res)
        print(f"Successfully applied {len(resources)} resource(s)")
        current = ds.get(CLUSTER_INFO)
        if info and current is not None:
            merged = dict(current.value)
            spec = dict(merged.get("spec") or {})
            spec.update({k: v for k, v in (info.get("spec") or {}).items() if k in ("clusterGUID", "clusterType")})
            spec["datastoreReady"] = False
            merged["spec"] = spec
            if not ds.commit(Txn().put(CLUSTER_INFO, merged, current.mod_revision)):
                raise CommandError("failed to update cluster information: it changed during the import")
        print("Importing IPAM resources")
        entries = [e for section in IPAM_SECTIONS if section in ipam for e in ipam[section]]
        entries += [ipam["config"]] if "config" in ipam else []
        for start in range(0, len(entries), 100):  # etcd allows 128 operations a transaction
            txn = Txn()
            for entry in entries[start:start + 100]:
                txn.put(entry["key"], entry["value"], 0)
            if not ds.commit(txn):
                raise CommandError("failed to import IPAM resources: some already exist (written meanwhile?)")
        print(f"Successfully applied {len(entries)} IPAM resource(s)")
    finally:
        ds.close()
    print("Datastore information successfully imported. Run `calicoctl datastore migrate unlock` when ready.")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Adds `datastore migrate export|import|lock|unlock` to calicoctl's command parser."""
    raw = argparse.RawDescriptionHelpFormatter
    datastore = sub.add_parser("datastore", help="Calico datastore management: migrate.", description=HELP,
                               formatter_class=raw)
    verbs = datastore.add_subparsers(dest="datastore_command", metavar="<command>")
    verbs.required = True
    migrate = verbs.add_parser("migrate", help="Migrate the datastore: export, import, lock, unlock.",
                               description=HELP, formatter_class=raw)
    steps = migrate.add_subparsers(dest="migrate_command", metavar="<command>")
    steps.required = True
    runs = {"export": run_export, "import": run_import, "lock": lambda a: run_lock(a, False),
            "unlock": lambda a: run_lock(a, True)}
    for name, summary in SUBCOMMANDS.items():
        p = steps.add_parser(name, help=summary, description=summary, epilog=HELP, formatter_class=raw)
        p.add_argument("-c", "--config", metavar="CONFIG",
                       help=f"CalicoAPIConfig file; default {config.DEFAULT_CONFIG} if it exists, else ETCD_* "
                            "variables")
        p.add_argument("--allow-version-mismatch", action="store_true", help=argparse.SUPPRESS)
        if name == "import":
            p.add_argument("-f", "--filename", required=True, help="the file `datastore migrate export` wrote")
        p.set_defaults(func=runs[name])
