"""Property tests for cni_calico.selector: robustness on arbitrary text, print/parse round trips over
generated ASTs (canonical and independently rendered with noise), and evaluation against a reference
evaluator written here, independent of the module's own ``evaluate``."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cni_calico.selector import All, And, Compare, Global, Has, InSet, Not, Or, SelectorError, matches, parse

SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])

# A small alphabet, so generated selectors and label dicts actually hit each other. The keys include
# keyword look-alikes: a word right after a key is always an operator.
KEYS = ["a", "b", "app", "projectcalico.org/namespace", "app.kubernetes.io/name", "in", "not", "has", "all", "x-y_9"]
key = st.sampled_from(KEYS)
value = st.one_of(  # one kind of quote or the other, never both: no quoting could hold both
    st.sampled_from(["", "a", "b", "ab", "ba", "it's", 'say "hi"', " "]),
    st.text("ab' é", max_size=4),
    st.text('ab" é', max_size=4),
)
OPS = ["==", "!=", "contains", "starts with", "ends with"]

leaf = st.one_of(
    st.just(All()),
    st.just(Global()),
    st.builds(Has, key),
    st.builds(Compare, key, st.sampled_from(OPS), value),
    st.builds(InSet, key, st.lists(value, max_size=3).map(tuple), st.booleans()),
)
ast = st.recursive(
    leaf,
    lambda inner: st.one_of(
        st.builds(Not, inner),
        st.builds(And, st.lists(inner, min_size=2, max_size=4).map(tuple)),
        st.builds(Or, st.lists(inner, min_size=2, max_size=4).map(tuple)),
    ),
    max_leaves=8,
)
labels = st.dictionaries(key, value, max_size=6)


def reference(node, lab: dict[str, str]) -> bool:
    """Calico's semantics, spelled out directly over the AST's fields."""
    kind = type(node)
    if kind in (All, Global):
        return True
    if kind is Has:
        return node.key in lab
    if kind is Compare:
        if node.key not in lab:
            return node.op == "!="
        got = lab[node.key]
        return {
            "==": got == node.value,
            "!=": got != node.value,
            "contains": node.value in got,
            "starts with": got[: len(node.value)] == node.value,
            "ends with": got[len(got) - len(node.value):] == node.value,
        }[node.op]
    if kind is InSet:
        if node.key not in lab:
            return node.negated
        return (lab[node.key] in set(node.values)) != node.negated
    if kind is Not:
        return not reference(node.operand, lab)
    if kind is And:
        return all(reference(op, lab) for op in node.operands)
    if kind is Or:
        return any(reference(op, lab) for op in node.operands)
    raise AssertionError(f"unknown node {node!r}")


# --- an independent, noisy renderer: random whitespace, quote styles, spellings, redundant parentheses,
# --- set values shuffled and duplicated. Parenthesises only where the grammar needs it.

SPACE = st.sampled_from(["", "", " ", "  ", "\t", "\n", " \r\n "])
GAP = st.sampled_from([" ", "  ", "\t", "\n"])  # required between two words


def render(draw, node, needs_parens: bool = False) -> str:
    def ws() -> str:
        return draw(SPACE)

    kind = type(node)
    if kind in (And, Or):
        sep = " && " if kind is And else " || "
        # Inside an And, any And/Or child needs parentheses; inside an Or, only an Or child does.
        parts = [render(draw, op, type(op) is kind or (kind is And and type(op) is Or)) for op in node.operands]
        text = (ws() + sep.strip() + ws()).join(parts) if draw(st.booleans()) else sep.join(parts)
    elif kind is Not:  # an odd number of "!"s: pairs cancel out
        operand = render(draw, node.operand, type(node.operand) in (Not, And, Or))
        text = "!" * draw(st.sampled_from([1, 1, 3])) + ws() + operand
    elif kind in (All, Global):
        text = ("all(" if kind is All else "global(") + ws() + ")"
    elif kind is Has:
        text = "has(" + ws() + node.key + ws() + ")"
    elif kind is Compare:
        if node.op in ("==", "!="):
            text = node.key + ws() + node.op + ws() + quote(draw, node.value)
        else:
            spelling = draw(st.sampled_from([node.op, node.op.replace(" ", ""), node.op.replace(" ", draw(GAP))]))
            text = node.key + draw(GAP) + spelling + ws() + quote(draw, node.value)
    else:
        assert kind is InSet
        op = draw(st.sampled_from(["not in", "notin", "not" + draw(GAP) + "in"])) if node.negated else "in"
        values = list(node.values)
        if values:  # shuffled, with duplicates: the AST keeps them sorted and unique
            values = draw(st.permutations(values + draw(st.lists(st.sampled_from(values), max_size=2))))
        body = (ws() + "," + ws()).join(quote(draw, v) for v in values)
        if values and draw(st.booleans()):
            body += ws() + ","  # Calico accepts a trailing comma
        text = node.key + draw(GAP) + op + ws() + "{" + ws() + body + ws() + "}"
    for _ in range(draw(st.integers(0, 2)) + (1 if needs_parens else 0)):
        text = "(" + ws() + text + ws() + ")"
    if (kind not in (And, Or) or text.startswith("(")) and draw(st.integers(0, 4)) == 0:
        text = "!" + ws() + "!" + ws() + text  # a double negation of a primary changes nothing
    return text


def quote(draw, v: str) -> str:
    q = "'" if '"' in v else '"' if "'" in v else draw(st.sampled_from(["'", '"']))
    return q + v + q


@st.composite
def rendered(draw):
    node = draw(ast)
    return node, draw(SPACE) + render(draw, node) + draw(SPACE)


# --- (1) arbitrary text: SelectorError or a selector that round-trips ----------------------------------

TOKENS = ["a", "app", "k.io/x", "==", "!=", "!", "&&", "||", "(", ")", "{", "}", ",", "'x'", '"y"', "''", "in", "not",
          "not in", "contains", "starts", "with", "ends", "has(", "has", "all()", "all(", "global()", "=", "&", "|",
          "'", '"', " ", "\t", "\n", "é"]


def check_text(text: str) -> None:
    try:
        sel = parse(text)
    except SelectorError as err:
        assert 0 <= err.position <= len(text)
        assert str(err) == f"{err.msg} at position {err.position}"
        return
    printed = str(sel)
    assert parse(printed) == sel
    assert str(parse(printed)) == printed
    assert isinstance(sel.evaluate({}), bool)


@settings(SETTINGS, max_examples=1000)
@given(st.lists(st.sampled_from(TOKENS), max_size=14).flatmap(lambda ts: st.sampled_from(["".join(ts), " ".join(ts)])))
def test_token_soup_parses_or_raises_selector_error(text):
    check_text(text)


@settings(SETTINGS, max_examples=1000)
@given(st.text(st.sampled_from(list("ab.-/_ ()!{},'\"=&|\t\n")), max_size=30) | st.text(max_size=30))
def test_arbitrary_text_parses_or_raises_selector_error(text):
    check_text(text)


# --- (2) generated ASTs print and parse back -----------------------------------------------------------


@settings(SETTINGS, max_examples=500)
@given(rendered())
def test_round_trips(case):
    node, noisy = case
    canonical = str(node)
    assert parse(canonical) == node
    assert str(parse(canonical)) == canonical
    # The independent, noisy spelling of the same AST parses to it too.
    assert parse(noisy) == node


# --- (3) evaluation agrees with the reference evaluator ------------------------------------------------


@settings(SETTINGS, max_examples=500)
@given(ast, st.lists(labels, min_size=1, max_size=4))
def test_evaluation_matches_reference(node, label_sets):
    sel = parse(str(node))  # test_round_trips shows any other spelling parses to the same AST
    for lab in label_sets:
        expected = reference(node, lab)
        assert sel.evaluate(lab) is expected
        assert node.evaluate(lab) is expected
        assert matches(str(node), lab) is expected


@settings(SETTINGS, max_examples=600)
@given(leaf, st.lists(labels, max_size=2))
def test_leaf_evaluation_matches_reference(node, label_sets):
    # Alone, a leaf is decisive. Label values made from the leaf's own value(s) tell every operator apart.
    extra: list[dict[str, str]] = [{}]
    if isinstance(node, (Has, Compare, InSet)):
        near = ["", "x"] + list(getattr(node, "values", ()))
        if isinstance(node, Compare):
            v = node.value
            near += [v, "x" + v, v + "x", "x" + v + "x", v[1:], v[:-1]]
        extra += [{node.key: n} for n in near]
    for lab in label_sets + extra:
        assert parse(str(node)).evaluate(lab) is reference(node, lab)


@settings(SETTINGS, max_examples=200)
@given(ast)
def test_label_keys_are_the_keys_that_matter(node):
    keys = node.label_keys()
    # Labels outside label_keys() never change the outcome.
    base = {k: "a" for k in KEYS if k in keys}
    assert node.evaluate(base) == node.evaluate({**base, **{k: "zz" for k in KEYS if k not in keys}})
