"""Which endpoints each active selector matches, kept up to date per endpoint change (pure).

Felix's label index, in our terms: an endpoint's update evaluates only the selectors that could
match it, and a new selector evaluates only the endpoints that could match it, so no update
scans every selector against every endpoint.

How candidates are found:

- A selector that requires `k == v` (itself, or one operand of its top-level `&&`) can only match
  endpoints labelled `k: v`: it is filed under (k, v), preferring a requirement on a label other
  than the namespace (every namespaced selector requires its namespace; the pod's own labels
  narrow far more).
- Any other selector is filed under each label key it tests; it is a candidate for an endpoint
  that has one of those keys. On an endpoint with none of its keys it evaluates as on no labels
  at all, so it is decided once, when added (`matches_empty`).

What holds: `matches[s]` is exactly the set of endpoint keys whose labels `s` matches, for every
active selector `s`; `update`/`remove`/`add_selector`/`remove_selector` return what changed.
"""

from __future__ import annotations

from cni_calico.selector import And, Compare, Selector, parse

NAMESPACE_LABEL = "projectcalico.org/namespace"


def _requirement(sel: Selector) -> tuple[str, str] | None:
    """A (key, value) every match must carry, if the selector has one."""
    terms = sel.operands if isinstance(sel, And) else (sel,)
    found = [(t.key, t.value) for t in terms if isinstance(t, Compare) and t.op == "=="]
    if not found:
        return None
    return next((f for f in found if f[0] != NAMESPACE_LABEL), found[0])


class SelectorIndex:
    def __init__(self) -> None:
        self.labels: dict[str, dict[str, str]] = {}  # endpoint key -> its (effective) labels
        self.by_label: dict[tuple[str, str], set[str]] = {}  # (k, v) -> endpoint keys carrying it
        self.parsed: dict[str, Selector] = {}  # active selector text -> AST
        self.matches: dict[str, set[str]] = {}  # active selector -> endpoint keys it matches
        self.of_endpoint: dict[str, set[str]] = {}  # endpoint key -> active selectors matching it (non-empty only)
        self._by_requirement: dict[tuple[str, str], set[str]] = {}
        self._by_key: dict[str, set[str]] = {}
        self._matches_empty: set[str] = set()  # selectors without a requirement that match no labels

    # --- selectors --------------------------------------------------------------------------

    def add_selector(self, text: str) -> set[str]:
        """Starts tracking `text`; returns the endpoints it matches now."""
        if text in self.parsed:
            return self.matches[text]
        sel = self.parsed[text] = parse(text)
        need = _requirement(sel)
        if need is not None:
            self._by_requirement.setdefault(need, set()).add(text)
            candidates = self.by_label.get(need, set())
        else:
            for key in sel.label_keys():
                self._by_key.setdefault(key, set()).add(text)
            if sel.evaluate({}):
                self._matches_empty.add(text)
            candidates = self.labels.keys()  # type: ignore[assignment] - rare: a selector with no requirement
        found = {ep for ep in candidates if sel.evaluate(self.labels[ep])}
        self.matches[text] = found
        for ep in found:
            self.of_endpoint.setdefault(ep, set()).add(text)
        return found

    def remove_selector(self, text: str) -> None:
        sel = self.parsed.pop(text, None)
        if sel is None:
            return
        need = _requirement(sel)
        if need is not None:
            _discard(self._by_requirement, need, text)
        else:
            for key in sel.label_keys():
                _discard(self._by_key, key, text)
            self._matches_empty.discard(text)
        for ep in self.matches.pop(text):
            _discard(self.of_endpoint, ep, text)

    # --- endpoints --------------------------------------------------------------------------

    def _candidates(self, labels: dict[str, str]) -> set[str]:
        out = set(self._matches_empty)
        for item in labels.items():
            out.update(self._by_requirement.get(item, ()))
        for key in labels:
            out.update(self._by_key.get(key, ()))
        return out

    def update(self, ep: str, labels: dict[str, str]) -> tuple[set[str], set[str]]:
        """Sets an endpoint's labels; returns (selectors it joined, selectors it left)."""
        old_labels = self.labels.get(ep)
        if old_labels is not None:
            for item in old_labels.items():
                if labels.get(item[0]) != item[1]:
                    _discard(self.by_label, item, ep)
        for item in labels.items():
            self.by_label.setdefault(item, set()).add(ep)
        self.labels[ep] = labels
        now = {s for s in self._candidates(labels) if self.parsed[s].evaluate(labels)}
        before = self.of_endpoint.get(ep, set())
        joined, left = now - before, before - now
        for s in joined:
            self.matches[s].add(ep)
        for s in left:
            self.matches[s].discard(ep)
        if now:
            self.of_endpoint[ep] = now
        else:
            self.of_endpoint.pop(ep, None)
        return joined, left

    def remove(self, ep: str) -> set[str]:
        """Forgets an endpoint; returns the selectors it left."""
        labels = self.labels.pop(ep, None)
        for item in (labels or {}).items():
            _discard(self.by_label, item, ep)
        left = self.of_endpoint.pop(ep, set())
        for s in left:
            self.matches[s].discard(ep)
        return left


def _discard(index: dict, key, member) -> None:
    members = index.get(key)
    if members is not None:
        members.discard(member)
        if not members:
            del index[key]
