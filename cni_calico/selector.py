"""Calico label selectors: parse, evaluate and print (the semantics of libcalico-go ``lib/selector``).

Grammar (whitespace -- space, tab, CR, LF -- is insignificant between tokens)::

    selector := <empty> | or                    -- the empty selector is all()
    or       := and ( "||" and )*
    and      := unary ( "&&" unary )*
    unary    := "!"* primary                    -- "!!x" collapses to x, as in Calico
    primary  := "all()" | "global()" | "has(" KEY ")" | "(" or ")"
              | KEY ( "==" | "!=" | "contains" | "starts with" | "ends with" ) STRING
              | KEY ( "in" | "not in" ) "{" [ STRING ( "," STRING )* [","] ] "}"
    KEY      := [A-Za-z0-9_./-]{1,512}          -- e.g. app, projectcalico.org/namespace
    STRING   := "'" [^']* "'" | '"' [^"]* '"'    -- no escapes

The word after a KEY is always an operator, so keys may look like keywords (``in in {'a'}``). ``!=`` and
``not in`` match when the key is absent, the other key tests need it. ``str()`` prints Calico's canonical
form (each ``&&``/``||`` group parenthesised), which parses back to an equal AST of frozen dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

MAX_KEY_LEN = 512
MAX_DEPTH = 100  # nested parentheses; keeps parse/print/evaluate far from the recursion limit
_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_./-")
_SPACE = frozenset(" \t\r\n")  # Calico itself skips only space and tab
_TESTS = {"==": str.__eq__, "!=": str.__ne__, "contains": str.__contains__,
          "starts with": str.startswith, "ends with": str.endswith}
_WORD_OPS = {"contains": "contains", "in": "in", "notin": "not in", "startswith": "starts with",
             "endswith": "ends with"}  # keyed by the operator's words run together


class SelectorError(ValueError):
    """A selector that does not parse; ``position`` is the 0-based index of the problem in the text."""

    def __init__(self, msg: str, position: int) -> None:
        super().__init__(msg, position)
        self.msg, self.position = msg, position

    def __str__(self) -> str:
        return f"{self.msg} at position {self.position}"


def _quote(value: str) -> str:
    if '"' not in value:
        return f'"{value}"'
    if "'" in value:
        raise ValueError(f"label value {value!r} contains both quote characters: it cannot be written")
    return f"'{value}'"


class Selector:
    """Base of the AST nodes (frozen dataclasses: ``==`` and ``hash`` are structural)."""

    def evaluate(self, labels: dict[str, str]) -> bool:
        raise NotImplementedError

    def label_keys(self) -> frozenset[str]:
        """The label keys this selector tests."""
        if isinstance(self, _LabelTest):
            return frozenset((self.key,))
        children = (self.operand,) if isinstance(self, Not) else getattr(self, "operands", ())
        return frozenset().union(*(child.label_keys() for child in children))


@dataclass(frozen=True)
class All(Selector):
    """``all()``, also what the empty selector parses to."""

    def evaluate(self, labels: dict[str, str]) -> bool:
        return True

    def __str__(self) -> str:
        return "all()"


class Global(All):
    """``global()``: Calico's marker for non-namespaced resources; here it matches everything, like all()."""

    def __str__(self) -> str:
        return "global()"


@dataclass(frozen=True)
class _LabelTest(Selector):
    """A test of one label; validates the key."""

    key: str

    def __post_init__(self) -> None:
        key = self.key
        if not isinstance(key, str) or not key or len(key) > MAX_KEY_LEN or not _KEY_CHARS.issuperset(key):
            raise ValueError(f"invalid label key {key!r}")


class Has(_LabelTest):
    """``has(key)``."""

    def evaluate(self, labels: dict[str, str]) -> bool:
        return self.key in labels

    def __str__(self) -> str:
        return f"has({self.key})"


@dataclass(frozen=True)
class Compare(_LabelTest):
    """``key <op> value``, op one of ``==``, ``!=``, ``contains``, ``starts with``, ``ends with``."""

    op: str
    value: str

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.op not in _TESTS:
            raise ValueError(f"unknown operator {self.op!r}")
        _quote(self.value)

    def evaluate(self, labels: dict[str, str]) -> bool:
        got = labels.get(self.key)
        return self.op == "!=" if got is None else _TESTS[self.op](got, self.value)

    def __str__(self) -> str:
        return f"{self.key} {self.op} {_quote(self.value)}"


@dataclass(frozen=True)
class InSet(_LabelTest):
    """``key in {...}``, or ``key not in {...}`` if negated; ``values`` is normalised to sorted, unique."""

    values: tuple[str, ...]
    negated: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "values", tuple(sorted(set(self.values))))
        str(self)  # every value can be quoted

    def evaluate(self, labels: dict[str, str]) -> bool:
        got = labels.get(self.key)
        return self.negated if got is None else (got in self.values) != self.negated

    def __str__(self) -> str:
        return f"{self.key} {'not in' if self.negated else 'in'} {{{', '.join(map(_quote, self.values))}}}"


@dataclass(frozen=True)
class Not(Selector):
    """``!operand``."""

    operand: Selector

    def evaluate(self, labels: dict[str, str]) -> bool:
        return not self.operand.evaluate(labels)

    def __str__(self) -> str:
        # Calico prints Not(Not(x)) as "!!x", which parses back as x: parenthesise to keep the round trip.
        return f"!({self.operand})" if isinstance(self.operand, Not) else f"!{self.operand}"


@dataclass(frozen=True)
class _BoolOp(Selector):
    """Base of And and Or: two or more operands."""

    operands: tuple[Selector, ...]
    _sep, _any = "", False  # class attributes (not annotated, so not fields)

    def __post_init__(self) -> None:
        object.__setattr__(self, "operands", tuple(self.operands))
        if len(self.operands) < 2:
            raise ValueError(f"{type(self).__name__} needs at least two operands")

    def evaluate(self, labels: dict[str, str]) -> bool:
        for operand in self.operands:  # short-circuit at the first True for Or, False for And
            if operand.evaluate(labels) == self._any:
                return self._any
        return not self._any

    def __str__(self) -> str:
        return "(" + self._sep.join(map(str, self.operands)) + ")"


class And(_BoolOp):
    """All operands match: an n-ary ``&&`` (a parenthesised ``&&`` group stays a nested And)."""

    _sep, _any = " && ", False


class Or(_BoolOp):
    """Any operand matches: an n-ary ``||``."""

    _sep, _any = " || ", True


class _Parser:
    """Scannerless recursive descent; ``i`` is the current position in ``s``."""

    def __init__(self, text: str) -> None:
        self.s, self.i, self.depth = text, 0, 0

    def peek(self) -> str:
        """Skip whitespace and return the next character ("" at the end)."""
        while self.s[self.i:self.i + 1] in _SPACE:
            self.i += 1
        return self.s[self.i:self.i + 1]

    def take(self, lit: str, expected: str = "") -> bool:
        """Consume ``lit`` if it comes next; if not, fail if something was ``expected``, else return False."""
        if self.peek() != "" and self.s.startswith(lit, self.i):
            self.i += len(lit)
            return True
        if expected:
            raise SelectorError(f"expected {expected}", self.i)
        return False

    def word(self) -> str:
        start = self.i
        while self.s[self.i:self.i + 1] in _KEY_CHARS:
            self.i += 1
        if self.i - start > MAX_KEY_LEN:
            raise SelectorError("label too long", start)
        return self.s[start:self.i]

    def string(self) -> str:
        quote, start = self.peek(), self.i
        if quote not in ("'", '"'):
            raise SelectorError("expected string", start)
        end = self.s.find(quote, start + 1)
        if end < 0:
            raise SelectorError("unterminated string starting", start)
        self.i = end + 1
        return self.s[start + 1:end]

    def unexpected(self) -> SelectorError:
        """The error for what comes next, which can neither start nor continue an expression."""
        c, s, i = self.peek(), self.s, self.i
        if c in ("&", "|", "=") and s[i:i + 2] != c * 2:
            return SelectorError(f'expected "{c * 2}"', i)
        if c in ("'", '"'):
            self.string()  # raises if unterminated
        elif c in _KEY_CHARS:
            self.word()
        else:
            self.i += 2 if s[i:i + 2] in ("==", "!=", "&&", "||") else 1
        return SelectorError(f'unexpected token "{s[i:self.i]}"' if c else "unexpected end of input", i)

    def chain(self, op: str = "||") -> Selector:
        """An "||"-separated chain of "&&"-separated chains of unary expressions."""
        operands = [self.chain("&&") if op == "||" else self.unary()]
        while self.take(op):
            operands.append(self.chain("&&") if op == "||" else self.unary())
        return operands[0] if len(operands) == 1 else (Or if op == "||" else And)(operands)

    def unary(self) -> Selector:
        negated = False
        while self.peek() == "!" and not self.s.startswith("!=", self.i):
            self.i, negated = self.i + 1, not negated
        sel = self.primary()
        return Not(sel) if negated else sel

    def primary(self) -> Selector:
        c = self.peek()
        if c == "(":
            if self.depth >= MAX_DEPTH:
                raise SelectorError("selector nested too deeply", self.i)
            self.i, self.depth = self.i + 1, self.depth + 1
            sel = self.chain()
            self.take(")", '")"')
            self.depth -= 1
            return sel
        if c not in _KEY_CHARS:  # including the end of input
            raise self.unexpected()
        key = self.word()
        if key in ("has", "all", "global") and self.take("("):
            self.peek()
            at, name = self.i, self.word()
            if (key == "has") != bool(name):
                raise SelectorError("expected label" if key == "has" else 'expected ")"', at)
            self.take(")", '")"')
            return Has(name) if key == "has" else All() if key == "all" else Global()
        c = self.peek()
        if self.take("==") or self.take("!="):
            return Compare(key, "==" if c == "=" else "!=", self.string())
        at, op = self.i, self.word()
        if op in ("starts", "ends", "not"):  # a two-word operator
            self.peek()
            op += self.word()
        if op not in _WORD_OPS:
            raise SelectorError(f'expected operator after label "{key}"', at)
        if _WORD_OPS[op] not in ("in", "not in"):
            return Compare(key, _WORD_OPS[op], self.string())
        self.take("{", '"{"')
        values = []
        while not self.take("}"):
            values.append(self.string())
            if not self.take(","):
                self.take("}", '"," or "}"')
                break
        return InSet(key, values, op == "notin")


def parse(text: str) -> Selector:
    """Parse a Calico selector; raises SelectorError carrying the position of the first problem."""
    parser = _Parser(text)
    if not parser.peek():
        return All()
    sel = parser.chain()
    if parser.peek():
        raise parser.unexpected()
    return sel


_parse_cached = lru_cache(maxsize=1024)(parse)


def matches(text: str, labels: dict[str, str]) -> bool:
    """Whether selector ``text`` (parsed once, then cached) matches ``labels``."""
    return _parse_cached(text).evaluate(labels)
