"""Which endpoints each active selector matches, kept up to date per endpoint change (pure).

Felix's label index, in our terms, at the grain of distinct label sets: the pods of one workload
share their labels, so selectors are evaluated once per label set, and an endpoint moving to a label
set that already exists evaluates nothing at all. Each label set remembers which active selectors
match it; an endpoint's selectors are its label set's.

How candidates are found when a new label set (or a new selector) must be evaluated:

- A selector that requires `k == v` (itself, or one operand of its top-level `&&`) can only match
  label sets holding `k: v`: it is filed under (k, v), preferring a requirement on a label other
  than the namespace (every namespaced selector requires its namespace; a pod's own labels narrow
  far more), and a new such selector evaluates only the label sets holding (k, v).
- Any other selector is filed under each label key it tests; it is a candidate for a label set that
  has one of those keys. On a label set with none of its keys it evaluates as on no labels at all,
  so that is decided once, when it is added (`_matches_empty`).

What holds: for every active selector `s`, `endpoints(s)` is exactly the set of endpoint keys whose
labels `s` matches; `update`/`remove` return which selectors an endpoint joined and left.
"""

from __future__ import annotations

from cni_calico.selector import And, Compare, Selector, parse

NAMESPACE_LABEL = "projectcalico.org/namespace"

LabelKey = frozenset  # a label set's identity: frozenset of its (key, value) items


class LabelSet:
    __slots__ = ("labels", "members", "selectors")

    def __init__(self, labels: dict[str, str]) -> None:
        self.labels = labels
        self.members: set[str] = set()  # endpoint keys
        self.selectors: set[str] = set()  # active selectors matching these labels


def _requirement(sel: Selector) -> tuple[str, str] | None:
    """A (key, value) every match must carry, if the selector has one."""
    terms = sel.operands if isinstance(sel, And) else (sel,)
    found = [(t.key, t.value) for t in terms if isinstance(t, Compare) and t.op == "=="]
    if not found:
        return None
    return next((f for f in found if f[0] != NAMESPACE_LABEL), found[0])


class SelectorIndex:
    def __init__(self) -> None:
        self.sets: dict[LabelKey, LabelSet] = {}
        self.of_endpoint: dict[str, LabelSet] = {}
        self.by_label: dict[tuple[str, str], set[LabelKey]] = {}  # (k, v) -> label sets holding it
        self.parsed: dict[str, Selector] = {}  # active selector text -> AST
        self.matches: dict[str, set[LabelKey]] = {}  # active selector -> label sets it matches
        self._by_requirement: dict[tuple[str, str], set[str]] = {}
        self._by_key: dict[str, set[str]] = {}
        self._matches_empty: set[str] = set()  # selectors without a requirement that match no labels

    # --- reading -----------------------------------------------------------------------------

    def labels(self, ep: str) -> dict[str, str]:
        """An endpoint's labels (shared with every endpoint of the same labels: do not change)."""
        return self.of_endpoint[ep].labels

    def selectors(self, ep: str) -> set[str]:
        ls = self.of_endpoint.get(ep)
        return set(ls.selectors) if ls is not None else set()

    def endpoints(self, selector: str) -> set[str]:
        out: set[str] = set()
        for key in self.matches.get(selector, ()):
            out |= self.sets[key].members
        return out

    # --- selectors --------------------------------------------------------------------------

    def add_selector(self, text: str) -> set[str]:
        """Starts tracking `text`; returns the endpoints it matches now."""
        if text in self.parsed:
            return self.endpoints(text)
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
            candidates = self.sets.keys()  # type: ignore[assignment] - rare: a selector with no requirement
        found = {key for key in candidates if sel.evaluate(self.sets[key].labels)}
        self.matches[text] = found
        for key in found:
            self.sets[key].selectors.add(text)
        return self.endpoints(text)

    def remove_selector(self, text: str) -> None:
        sel = self.parsed.pop(text, None)
        if sel is None:
            return
        need = _requirement(sel)
        if need is not None:
            discard(self._by_requirement, need, text)
        else:
            for key in sel.label_keys():
                discard(self._by_key, key, text)
            self._matches_empty.discard(text)
        for key in self.matches.pop(text):
            self.sets[key].selectors.discard(text)

    # --- endpoints --------------------------------------------------------------------------

    def _label_set(self, labels: dict[str, str]) -> LabelSet:
        key = frozenset(labels.items())
        ls = self.sets.get(key)
        if ls is not None:
            return ls
        ls = self.sets[key] = LabelSet(dict(labels))
        for item in labels.items():
            self.by_label.setdefault(item, set()).add(key)
        candidates = set(self._matches_empty)
        for item in labels.items():
            candidates.update(self._by_requirement.get(item, ()))
        for name in labels:
            candidates.update(self._by_key.get(name, ()))
        for text in candidates:
            if self.parsed[text].evaluate(labels):
                ls.selectors.add(text)
                self.matches[text].add(key)
        return ls

    def _leave(self, ep: str, ls: LabelSet) -> None:
        ls.members.discard(ep)
        if not ls.members:  # nobody carries these labels any more
            key = frozenset(ls.labels.items())
            del self.sets[key]
            for item in ls.labels.items():
                discard(self.by_label, item, key)
            for text in ls.selectors:
                self.matches[text].discard(key)

    def update(self, ep: str, labels: dict[str, str]) -> tuple[set[str], set[str]]:
        """Sets an endpoint's labels; returns (selectors it joined, selectors it left)."""
        old = self.of_endpoint.get(ep)
        new = self._label_set(labels)
        if old is new:
            return set(), set()
        new.members.add(ep)
        self.of_endpoint[ep] = new
        before = set(old.selectors) if old is not None else set()
        if old is not None:
            self._leave(ep, old)
        return new.selectors - before, before - new.selectors

    def remove(self, ep: str) -> set[str]:
        """Forgets an endpoint; returns the selectors it left."""
        old = self.of_endpoint.pop(ep, None)
        if old is None:
            return set()
        left = set(old.selectors)
        self._leave(ep, old)
        return left


def discard(index: dict, key, member) -> None:
    """Removes `member` from `index[key]`, and the key once its set is empty."""
    members = index.get(key)
    if members is not None:
        members.discard(member)
        if not members:
            del index[key]
