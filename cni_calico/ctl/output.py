"""calicoctl's formats: YAML/JSON documents read into resources; resources shown as tables, YAML, JSON.

Pure: text in, text out; the commands read files and print. Input may hold
several documents, a YAML/JSON list, or a `List`/`<Kind>List` with `items`
(JSON is read as the YAML it is). On output, keys are sorted, as
calicoctl's own output is, which puts apiVersion, kind, metadata, spec in that
order. One resource renders as itself; a whole kind listed renders as a
`<Kind>List` (as calicoctl does), several named resources as a `List`; either
is valid input to create/apply/replace/delete again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping

import cni_calico.ctl.kinds  # noqa: F401 - registers every kind beyond IPPool
from cni_calico.resources import API_VERSION, KINDS, TOP_LEVEL, DocumentError, Kind, Resource
from cni_calico.v3 import WITH_STATUS

log = logging.getLogger(__name__)

FORMATS = ("ps", "wide", "yaml", "yml", "json")
TEMPLATED = ("custom-columns", "go-template", "go-template-file")  # -o KEY=VALUE
MIN_WIDTH = 5  # as calicoctl's tabwriter: minimum cell width 5, padding 3
PADDING = 3


def parse_documents(text: str, source: str) -> list[Resource]:
    """Every resource in the text, in order; a document that is not a resource is a DocumentError."""
    import yaml  # deferred: calicoctl only, never the plugin's hot path

    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        raise DocumentError(f"cannot parse {source}: {' '.join(str(exc).split())}") from None
    return [r for doc in docs for r in _flatten(doc, source)]


def _flatten(doc: object, source: str) -> list[Resource]:
    if doc is None:
        return []
    if isinstance(doc, list):
        return [r for item in doc for r in _flatten(item, source)]
    if not isinstance(doc, dict):
        raise DocumentError(f"{source}: expected a resource (a mapping with apiVersion and kind), got {doc!r}")
    kind_name = doc.get("kind")
    if not isinstance(kind_name, str) or not kind_name:
        raise DocumentError(f"{source}: a document has no 'kind'")
    if kind_name == "List" or (kind_name.endswith("List") and kind_name[:-4] in KINDS):
        items = doc.get("items") or []
        if not isinstance(items, list):
            raise DocumentError(f"{source}: 'items' of a {kind_name} must be a list")
        return [r for item in items for r in _flatten(item, source)]
    if doc.get("apiVersion") != API_VERSION or kind_name not in KINDS:
        raise DocumentError(
            f"{source}: unknown resource type ({kind_name}) and/or version ({doc.get('apiVersion')}); "
            f"supported: {', '.join(KINDS)} in {API_VERSION}"
        )
    metadata, spec = doc.get("metadata") or {}, doc.get("spec") or {}
    extra = {k: v for k, v in doc.items() if k not in TOP_LEVEL}
    status = extra.pop("status", None) if kind_name in WITH_STATUS else None  # only the kinds Calico gives one
    if status is not None and not isinstance(status, dict):
        extra["status"], status = status, None
    if not isinstance(metadata, dict):
        extra["metadata"], metadata = metadata, {}
    if not isinstance(spec, dict):
        extra["spec"], spec = spec, {}
    return [Resource(KINDS[kind_name], dict(metadata), dict(spec), extra, status)]


def render(resources: list[Resource], fmt: str, listed: Kind | None = None, all_namespaces: bool = False,
           context: Mapping | None = None) -> str:
    """resources in format fmt; `listed` is the kind when a whole kind was listed (headings even if empty).

    Tables of namespaced kinds get a leading NAMESPACE column with all_namespaces (`-A`); `context`
    carries what some columns show besides the resource (the default AS number for nodes)."""
    if fmt in ("ps", "wide"):
        return table(resources, wide=fmt == "wide", empty_kind=listed, all_namespaces=all_namespaces,
                     context=context or {})
    doc = document(resources, listed)
    if doc is None:
        return ""
    if fmt == "json":
        return json.dumps(doc, indent=2, sort_keys=True) + "\n"
    import yaml  # deferred: calicoctl only

    return yaml.safe_dump(doc, sort_keys=True, default_flow_style=False, allow_unicode=True)


def document(resources: list[Resource], listed: Kind | None = None) -> dict | None:
    if listed is not None:
        return {
            "apiVersion": API_VERSION,
            "kind": f"{listed.name}List",
            "metadata": {},
            "items": [r.to_dict() for r in resources],
        }
    if not resources:
        return None
    if len(resources) == 1:
        return resources[0].to_dict()
    return {"apiVersion": API_VERSION, "kind": "List", "metadata": {}, "items": [r.to_dict() for r in resources]}


def table(resources: list[Resource], wide: bool = False, empty_kind: Kind | None = None,
          all_namespaces: bool = False, context: Mapping | None = None, columns: list[str] | None = None) -> str:
    """One aligned table per kind, in order of first appearance, each followed by a blank line.

    `columns` (`-o custom-columns=NAME,CIDR`) replaces the kind's default headings; a heading the
    kind does not have is a DocumentError listing those it has, as calicoctl's "unknown heading"."""
    kinds: list[Kind] = []
    for res in resources:
        if res.kind not in kinds:
            kinds.append(res.kind)
    if not kinds and empty_kind is not None:
        kinds.append(empty_kind)
    out = []
    for kind in kinds:
        headings = tuple(columns) if columns else kind.wide_headings if wide else kind.headings
        unknown = [h for h in headings if h not in kind.columns]
        if unknown:
            raise DocumentError(f"unknown heading {unknown[0]}, valid values are: {', '.join(kind.columns)}")
        cells = [kind.columns[h] for h in headings]
        if all_namespaces and kind.namespaced:
            headings, cells = ("NAMESPACE", *headings), [lambda r, c: r.namespace, *cells]
        rows = [list(headings)]
        rows += [[cell(r, context or {}) for cell in cells] for r in resources if r.kind is kind]
        out.append(_align(rows) + "\n")
    return "".join(out)


def _align(rows: list[list[str]]) -> str:
    widths = [max(MIN_WIDTH, max(len(row[i]) for row in rows) + PADDING) for i in range(len(rows[0]))]
    return "".join("".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() + "\n" for row in rows)


def box(headings: list[str], rows: list[list[str]], right: frozenset[int] = frozenset(), pretty: bool = False) -> str:
    """A table drawn as calicoctl's tablewriter draws it: `+---+` rules, centred headings, one space padding.

    Cells are left-aligned except the columns whose index is in `right`. `pretty`: as go-pretty's
    default style draws it instead (headings left-aligned; no empty body between two rules), which
    calicoctl uses for `ipam show --show-borrowed`."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headings, *rows, strict=True)]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+\n"

    def centred(text: str, width: int) -> str:
        gap = width - len(text)
        return " " * (gap // 2) + text + " " * (gap - gap // 2)

    head = "|" + "|".join(f" {h.ljust(w) if pretty else centred(h, w)} "
                          for h, w in zip(headings, widths, strict=True)) + "|\n"
    body = "".join(
        "|" + "|".join(f" {c.rjust(w) if i in right else c.ljust(w)} "
                       for i, (c, w) in enumerate(zip(row, widths, strict=True))) + "|\n"
        for row in rows
    )
    if pretty and not rows:
        return rule + head + rule
    return rule + head + rule + body + rule
