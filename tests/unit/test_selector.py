"""Calico label selectors (cni_calico.selector): evaluation table, printing, AST shape and error positions."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from cni_calico.selector import All, And, Compare, Global, Has, InSet, Not, Or, SelectorError, matches, parse

POD = {
    "app": "web",
    "tier": "frontend",
    "projectcalico.org/namespace": "prod",
    "app.kubernetes.io/name": "nginx",
    "x-y_z.9": "v",
}

# (selector, labels, expected)
EVAL_CASES = [
    # all(), global() and the empty selector
    ("", {}, True),
    ("", POD, True),
    (" \t\n ", {}, True),
    ("all()", {}, True),
    ("all( )", POD, True),
    ("global()", POD, True),
    ("!all()", POD, False),
    # ==
    ("app == 'web'", POD, True),
    ('app == "web"', POD, True),
    ("app == 'api'", POD, False),
    ("missing == 'web'", POD, False),
    ("app == ''", POD, False),
    ("a == ''", {"a": ""}, True),
    # != is true when the key is absent
    ("app != 'api'", POD, True),
    ("app != 'web'", POD, False),
    ("missing != 'web'", POD, True),
    ("missing != ''", {}, True),
    # in / not in (not in is true when the key is absent)
    ("app in {'web', 'api'}", POD, True),
    ("app in {'api', 'db'}", POD, False),
    ("app in {}", POD, False),
    ("missing in {'web'}", POD, False),
    ("app in {'web',}", POD, True),
    ("app not in {'api', 'db'}", POD, True),
    ("app not in {'web', 'api'}", POD, False),
    ("app not in {}", POD, True),
    ("missing not in {'web'}", POD, True),
    ("app notin {'web'}", POD, False),
    ("app not \t in {'api'}", POD, True),
    # has()
    ("has(app)", POD, True),
    ("has( app )", POD, True),
    ("has(missing)", POD, False),
    ("!has(missing)", POD, True),
    ("!has(app)", POD, False),
    # contains / starts with / ends with need the key present
    ("app contains 'e'", POD, True),
    ("app contains 'web'", POD, True),
    ("app contains ''", POD, True),
    ("app contains 'x'", POD, False),
    ("missing contains ''", POD, False),
    ("app starts with 'we'", POD, True),
    ('app starts with "eb"', POD, False),
    ("app startswith 'w'", POD, True),
    ("missing starts with ''", POD, False),
    ("app ends with 'eb'", POD, True),
    ("app ends with 'we'", POD, False),
    ("app endswith ''", POD, True),
    ("missing ends with ''", POD, False),
    # precedence: && binds tighter than ||, so this is a || (b && c)
    ("a == 'x' || b == 'y' && c == 'z'", {"a": "x"}, True),
    ("a == 'x' || b == 'y' && c == 'z'", {"b": "y"}, False),
    ("a == 'x' || b == 'y' && c == 'z'", {"b": "y", "c": "z"}, True),
    ("b == 'y' && c == 'z' || a == 'x'", {"a": "x"}, True),
    ("(a == 'x' || b == 'y') && c == 'z'", {"a": "x"}, False),
    ("(a == 'x' || b == 'y') && c == 'z'", {"a": "x", "c": "z"}, True),
    # ! binds tightest: (!has(a)) || has(b), not !(has(a) || has(b))
    ("!has(a) || has(b)", {"a": "1", "b": "1"}, True),
    ("!has(a) && has(b)", {"b": "1"}, True),
    ("!has(a) && has(b)", {"a": "1", "b": "1"}, False),
    ("!a == 'x'", {}, True),
    ("!a == 'x'", {"a": "x"}, False),
    ("!a in {'x'}", {"a": "y"}, True),
    # ! on parenthesised groups
    ("!(a == 'x' || b == 'y')", {"a": "x"}, False),
    ("!(a == 'x' || b == 'y')", {"a": "z", "b": "z"}, True),
    ("!(a == 'x' && b == 'y')", {"a": "x"}, True),
    ("!(a == 'x' && b == 'y')", {"a": "x", "b": "y"}, False),
    ("!(!has(a))", {"a": "1"}, True),
    ("!!has(a)", {"a": "1"}, True),
    ("!!!has(a)", {"a": "1"}, False),
    ("((((has(a)))))", {"a": "1"}, True),
    # quotes of both kinds, each able to hold the other
    ("a == \"it's\"", {"a": "it's"}, True),
    ("a == 'say \"hi\"'", {"a": 'say "hi"'}, True),
    ("a in {'x', \"y\"}", {"a": "y"}, True),
    ("a == ' padded '", {"a": " padded "}, True),
    ("a == 'π'", {"a": "π"}, True),
    # keys with DNS prefixes, dots, dashes, digits
    ("projectcalico.org/namespace == 'prod'", POD, True),
    ("app.kubernetes.io/name in {'nginx', 'envoy'}", POD, True),
    ("has(app.kubernetes.io/name)", POD, True),
    ("x-y_z.9 == 'v'", POD, True),
    # a word after a key is an operator, so keys may look like keywords
    ("in in {'a'}", {"in": "a"}, True),
    ("has == 'x'", {"has": "x"}, True),
    ("all == 'x'", {"all": "x"}, True),
    ("not not in {'a'}", {"not": "b"}, True),
    ("contains contains 'o'", {"contains": "foo"}, True),
    # whitespace is insignificant
    ("app=='web'", POD, True),
    ("   app   ==   'web'   ", POD, True),
    ("app\t==\t'web'", POD, True),
    ("\napp == 'web'\r\n", POD, True),
    ("(app=='web')&&(tier=='frontend')", POD, True),
    ("app in{'web','api'}", POD, True),
    ("!has(missing)&&has(app)||has(nope)", POD, True),
    ("app == 'web' &&\n  tier == 'frontend'", POD, True),
    ("app == 'web'&&tier != 'frontend'", POD, False),
]


@pytest.mark.parametrize("text,labels,expected", EVAL_CASES)
def test_evaluate(text, labels, expected):
    sel = parse(text)
    assert sel.evaluate(labels) is expected
    assert matches(text, labels) is expected
    # Whatever the input spelling, the canonical printing parses back to the same selector.
    assert parse(str(sel)) == sel
    assert parse(str(sel)).evaluate(labels) is expected


def test_matches_caches_parse():
    text = "app == 'web' && has(tier)"
    assert matches(text, POD)
    assert not matches(text, {"app": "web"})
    with pytest.raises(SelectorError):
        matches("app ==", POD)


# --- AST shape and printing ---------------------------------------------------------------------------


def test_precedence_ast():
    a, b, c = Compare("a", "==", "x"), Compare("b", "==", "y"), Compare("c", "==", "z")
    assert parse("a == 'x' || b == 'y' && c == 'z'") == Or((a, And((b, c))))
    assert parse("(a == 'x' || b == 'y') && c == 'z'") == And((Or((a, b)), c))
    assert parse("!a == 'x' && b == 'y'") == And((Not(a), b))
    assert parse("!(a == 'x' && b == 'y')") == Not(And((a, b)))
    # Chains are n-ary; a parenthesised group of the same operator stays nested (as in Calico).
    assert parse("has(a) && has(b) && has(c)") == And((Has("a"), Has("b"), Has("c")))
    assert parse("(has(a) && has(b)) && has(c)") == And((And((Has("a"), Has("b"))), Has("c")))
    # Parentheses alone make no node; "!!" cancels out, as in Calico.
    assert parse("((has(a)))") == Has("a")
    assert parse("!!has(a)") == Has("a")
    assert parse("! ! ! has(a)") == Not(Has("a"))
    assert parse("!(!has(a))") == Not(Not(Has("a")))


def test_leaf_asts():
    assert parse("") == All()
    assert parse("all()") == All()
    assert parse("global()") == Global() != All()
    assert parse("has(projectcalico.org/namespace)") == Has("projectcalico.org/namespace")
    assert parse("k != 'v'") == Compare("k", "!=", "v")
    assert parse("k starts  with 'v'") == Compare("k", "starts with", "v")
    assert parse("k in {'b', 'a', 'b'}") == InSet("k", ("a", "b"))
    assert parse("k not in {}") == InSet("k", (), negated=True)


@pytest.mark.parametrize(
    "text,canonical",
    [
        ("", "all()"),
        ("global( )", "global()"),
        ("a == 'x' || b == 'y' && c == 'z'", '(a == "x" || (b == "y" && c == "z"))'),
        ("(a=='x'||b=='y')&&c=='z'", '((a == "x" || b == "y") && c == "z")'),
        ("!(k in {'b', 'a', 'a'})", '!k in {"a", "b"}'),
        ("k notin {}", "k not in {}"),
        ("k == 'say \"hi\"'", "k == 'say \"hi\"'"),
        ("k == \"it's\"", 'k == "it\'s"'),
        ("k startswith 'a' && k endswith 'b' && k contains 'c'",
         '(k starts with "a" && k ends with "b" && k contains "c")'),
        ("has( app )", "has(app)"),
        ("!!has(a)", "has(a)"),
        ("!(!has(a))", "!(!has(a))"),
        ("!(has(a) || has(b))", "!(has(a) || has(b))"),
    ],
)
def test_canonical_printing(text, canonical):
    sel = parse(text)
    assert str(sel) == canonical
    assert parse(canonical) == sel
    assert str(parse(canonical)) == canonical


def test_nodes_are_frozen_hashable_and_normalised():
    assert InSet("k", ["b", "a", "a"]) == InSet("k", ("a", "b"))
    assert InSet("k", ("a",)).values == ("a",)
    assert And([Has("a"), Has("b")]).operands == (Has("a"), Has("b"))
    assert len({parse("has(a)"), Has("a"), parse("  has( a ) ")}) == 1
    assert And((Has("a"), Has("b"))) != Or((Has("a"), Has("b")))
    assert InSet("k", ("a",)) != InSet("k", ("a",), negated=True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        Has("a").key = "b"  # type: ignore[misc]


@pytest.mark.parametrize(
    "build",
    [
        lambda: Has(""),
        lambda: Has("bad key"),
        lambda: Has("k" * 513),
        lambda: Compare("k", "=~", "v"),
        lambda: Compare("k", "==", "both ' and \""),
        lambda: InSet("k", ("ok", "both ' and \"")),
        lambda: And((Has("a"),)),
        lambda: Or(()),
    ],
)
def test_unprintable_nodes_are_rejected(build):
    with pytest.raises(ValueError):
        build()


def test_label_keys():
    sel = parse("a == 'x' && (b in {'1'} || !has(c) || d starts with 'q') && a != 'y' && all()")
    assert sel.label_keys() == frozenset({"a", "b", "c", "d"})
    assert parse("").label_keys() == frozenset()
    assert parse("has(projectcalico.org/namespace)").label_keys() == {"projectcalico.org/namespace"}


# --- errors -------------------------------------------------------------------------------------------

ERROR_CASES = [
    # (selector, position, message start)
    ("role == ", 8, "expected string"),
    ("role ==", 7, "expected string"),
    ("has(", 4, "expected label"),
    ("has()", 4, "expected label"),
    ("has(a", 5, 'expected ")"'),
    ("a == 'x' &&", 11, "unexpected end of input"),
    ("a == 'x' ||   ", 14, "unexpected end of input"),
    ("k in {'a' 'b'}", 10, 'expected "," or "}"'),
    ("k in {'a'", 9, 'expected "," or "}"'),
    ("k in {,}", 6, "expected string"),
    ("k in 'a'", 5, 'expected "{"'),
    ("'unterminated", 0, "unterminated string starting"),
    ("k == 'unterminated", 5, "unterminated string starting"),
    ('k == "mixed\'', 5, "unterminated string starting"),
    ("k == 'v' 'x", 9, "unterminated string starting"),
    ("k === 'v'", 4, "expected string"),
    ("k = 'v'", 2, 'expected operator after label "k"'),
    ("k equals 'v'", 2, 'expected operator after label "k"'),
    ("k starts 'v'", 2, 'expected operator after label "k"'),
    ("k", 1, 'expected operator after label "k"'),
    (")(", 0, 'unexpected token ")"'),
    ("(", 1, "unexpected end of input"),
    ("()", 1, 'unexpected token ")"'),
    ("(has(a)", 7, 'expected ")"'),
    ("has(a))", 6, 'unexpected token ")"'),
    ("has(k) == 'x'", 7, 'unexpected token "=="'),
    ("k == 'v' == 'x'", 9, 'unexpected token "=="'),
    ("k == 'v' & j == 'w'", 9, 'expected "&&"'),
    ("k == 'v' | j == 'w'", 9, 'expected "||"'),
    ("k == 'v' j == 'w'", 9, 'unexpected token "j"'),
    ("k == 'v' 'w'", 9, "unexpected token \"'w'\""),
    ("&& k == 'v'", 0, 'unexpected token "&&"'),
    ("!= 'v'", 0, 'unexpected token "!="'),
    ("!", 1, "unexpected end of input"),
    ("k == v", 5, "expected string"),
    ("all(x)", 4, 'expected ")"'),
    ("all() && 'x'", 9, "unexpected token \"'x'\""),
    ("k == 'é' && ü", 12, 'unexpected token "ü"'),
    ("k == 'v' @", 9, 'unexpected token "@"'),
    ("(" * 101 + "has(a)" + ")" * 101, 100, "selector nested too deeply"),
    ("k" * 513 + " == 'v'", 0, "label too long"),
]


@pytest.mark.parametrize("text,position,message", ERROR_CASES)
def test_error_position(text, position, message):
    with pytest.raises(SelectorError) as info:
        parse(text)
    err = info.value
    assert err.position == position
    assert err.msg.startswith(message)
    assert str(err) == f"{err.msg} at position {position}"
    assert isinstance(err, ValueError)


def test_error_pickles_and_nesting_limit_is_generous():
    err = pickle.loads(pickle.dumps(SelectorError("expected string", 3)))
    assert (err.msg, err.position, str(err)) == ("expected string", 3, "expected string at position 3")
    assert parse("(" * 100 + "has(a)" + ")" * 100) == Has("a")
    assert parse("k" * 512 + " == 'v'") == Compare("k" * 512, "==", "v")
