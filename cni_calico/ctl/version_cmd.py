"""`calicoctl version`: this client's version and, from ClusterInformation `default`, the cluster's.

As Calico's (commands/version.go): `Client Version:`, `Git commit:`, then `Cluster Version:` (its
calicoVersion) and `Cluster Type:` (its clusterType), "unknown" for an empty one; `--client` stops
after the client's lines; `--poll DURATION` reprints the cluster's lines when they change until
interrupted. A cluster whose information cannot be read is "unable to retrieve Cluster Version or
Type: …" on stderr, exit status 1 (after the client's lines).
"""

from __future__ import annotations

import argparse
import sys
import time

from cni_calico import __version__, keys
from cni_calico.ctl import CommandError, config

HELP = """\
Display version information for calicoctl, and for the cluster when it can be reached.

examples:
  # Show client and cluster versions.
  calicoctl version

  # Show only the client version.
  calicoctl version --client

  # Print the cluster's version again whenever it changes.
  calicoctl version --poll=10s
"""


def git_commit() -> str:
    """The commit the bundle was built from (frozen in by build/cni-calico.spec); "unknown" elsewhere."""
    try:
        import _cni_calico_build  # type: ignore[import-not-found]  # only in the bundle
    except ImportError:
        return "unknown"
    return str(getattr(_cni_calico_build, "GIT_COMMIT", "") or "unknown")


def run_version(args: argparse.Namespace) -> int:
    poll = 0.0
    if args.poll:
        from cni_calico.v3 import parse_duration

        try:
            poll = parse_duration(args.poll)
        except ValueError:
            raise CommandError(f"invalid poll duration specified: {args.poll}") from None
    # Go's fmt.Println("Client Version:   ", v) puts one more space between its operands.
    print(f"Client Version:    {__version__}")
    print(f"Git commit:        {git_commit()}")
    if args.client:
        return 0
    sys.stdout.flush()
    ds = config.connect(config.load(args.config))
    shown: tuple[str, str] = ("", "")
    try:
        while True:
            error = ""
            try:
                info = ds.get(keys.resource("clusterinformations", "default"))
            except Exception as exc:  # noqa: BLE001 - any datastore failure is "unable to retrieve"
                info, error = None, str(exc)
            if info is None:
                error = error or "resource does not exist: ClusterInformation(default)"
                shown = ("", "")
            else:
                spec = info.value.get("spec") or {}
                now = (str(spec.get("calicoVersion") or "unknown"), str(spec.get("clusterType") or "unknown"))
                if now[0] != shown[0]:
                    print(f"Cluster Version:   {now[0]}")
                if now[1] != shown[1]:
                    print(f"Cluster Type:      {now[1]}")
                shown = now
            if not poll:
                break
            if error:
                print(f"unable to retrieve Cluster Version or Type: {error}", file=sys.stderr)
            sys.stdout.flush()
            time.sleep(poll)
    finally:
        ds.close()
    if error:
        raise CommandError(f"unable to retrieve Cluster Version or Type: {error}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Adds `version` to calicoctl's command parser."""
    p = sub.add_parser("version", help="Display the version of this binary.", description=HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", metavar="CONFIG",
                   help=f"CalicoAPIConfig file; default {config.DEFAULT_CONFIG} if it exists, else ETCD_* variables")
    p.add_argument("--client", action="store_true", help="display the client version only")
    p.add_argument("--poll", metavar="DURATION", help="poll for changes to the cluster information at this interval")
    p.add_argument("--allow-version-mismatch", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=run_version)
