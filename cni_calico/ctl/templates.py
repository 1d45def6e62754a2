"""`calicoctl get -o go-template=…`: the part of Go's text/template that calicoctl's users write.

Pure: a template and data in, text out. The data is what real calicoctl hands its template: the
list of results, where listing a whole kind gives one `<Kind>List` (with `.Items`) and naming
resources gives the resources themselves, so `{{range .}}{{range .Items}}{{.Metadata.Name}}
{{end}}{{end}}` lists names and `{{range .}}{{.Spec.CIDR}}{{end}}` prints named pools' CIDRs.

Fields are Go's names for the JSON fields, matched case-insensitively (`.Spec.CIDR` is
`spec.cidr`, `.Spec.IPIPMode` `spec.ipipMode`); `.ObjectMeta` is `.Metadata`, and metadata's
fields are promoted as Go's embedding promotes them (`.Name`, `.Namespace`, `.Labels`). A field a
resource does not have is empty (Go's zero value), never an error.

Supported: text and `{{…}}` actions with `{{-`/`-}}` trimming and `{{/* comments */}}`;
pipelines with `|`; `.`, `$`, variables (`$x := …`, `$x = …`, `range $i, $e := …`); string
(interpreted and raw), number, true/false/nil literals; parentheses; `if`/`else if`/`else`,
`range` (lists and maps, sorted keys, with `else`), `with`/`else`, `end`; the functions `join`,
`joinAndTruncate` (calicoctl's), `printf`, `print`, `println`, `len`, `index`, `not`, `and`,
`or`, `eq`, `ne`, `lt`, `le`, `gt`, `ge`. Anything else (`define`, `template`, `block`, `break`,
`continue`, `call`, other functions) is refused with a message naming it, before any output.
A string literal may not hold `}}` (the action would end there).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field

SUPPORTED = ("join", "joinAndTruncate", "printf", "print", "println", "len", "index", "not", "and", "or",
             "eq", "ne", "lt", "le", "gt", "ge")
REFUSED_KEYWORDS = ("define", "template", "block", "break", "continue")


class TemplateError(Exception):
    """A template that cannot be parsed or run; the message is Go's shape: `template: get:LINE: …`."""


# --- parsing ---------------------------------------------------------------------------------------

_TOKEN = re.compile(r"""\s*(?:
    (?P<str>"(?:[^"\\]|\\.)*") | (?P<raw>`[^`]*`) | (?P<decl>:=) | (?P<assign>=) |
    (?P<var>\$[A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*) | (?P<field>(?:\.[A-Za-z_][A-Za-z0-9_]*)+|\.) |
    (?P<num>-?\d+(?:\.\d+)?) | (?P<ident>[A-Za-z_][A-Za-z0-9_]*) |
    (?P<punct>\)(?:\.[A-Za-z_][A-Za-z0-9_]*)*|[|(,])
    )""", re.VERBOSE)


@dataclass
class Node:
    kind: str  # text, action, if, range, with
    line: int
    text: str = ""
    pipe: list = field(default_factory=list)  # [(decl vars, assign?)] + commands; see _pipeline
    body: list = field(default_factory=list)
    orelse: list = field(default_factory=list)


def _tokens(src: str, line: int) -> list[tuple[str, str]]:
    out, pos = [], 0
    src = src.strip()
    while pos < len(src):
        m = _TOKEN.match(src, pos)
        if not m or m.end() == pos:
            raise TemplateError(f"template: get:{line}: unexpected {src[pos:].split()[0]!r} in command")
        out.append((m.lastgroup, m.group(m.lastgroup)))
        pos = m.end()
    return out


@dataclass
class Pipe:
    decl: list[str]
    assign: bool
    commands: list[list]  # operands: ("field", ".A.B"), ("var", "$x"), ("lit", v), ("fn", n), ("pipe", Pipe, path)


def _pipeline(tokens: list[tuple[str, str]], line: int) -> Pipe:
    decl: list[str] = []
    assign = False
    names = []
    i = 0
    while i < len(tokens) and tokens[i][0] == "var":
        names.append(tokens[i][1])
        if i + 1 < len(tokens) and tokens[i + 1] == ("punct", ","):
            i += 2
            continue
        if i + 1 < len(tokens) and tokens[i + 1][0] in ("decl", "assign"):
            decl, assign, tokens = names, tokens[i + 1][0] == "assign", tokens[i + 2:]
        break
    pipe, rest = _commands(tokens, line)
    if rest:
        raise TemplateError(f"template: get:{line}: unexpected {rest[0][1]!r} in operand")
    return Pipe(decl, assign, pipe)


def _commands(tokens: list[tuple[str, str]], line: int) -> tuple[list[list], list]:
    commands: list[list] = [[]]
    while tokens:
        kind, text = tokens[0]
        tokens = tokens[1:]
        if (kind, text) == ("punct", "|"):
            if not commands[-1]:
                raise TemplateError(f"template: get:{line}: missing command before |")
            commands.append([])
        elif (kind, text) == ("punct", "("):
            inner, tokens = _commands(tokens, line)
            if not tokens or not tokens[0][1].startswith(")"):
                raise TemplateError(f"template: get:{line}: unclosed left paren")
            path, tokens = tokens[0][1][1:], tokens[1:]  # `(…).Field`
            commands[-1].append(("pipe", Pipe([], False, inner), path))
        elif kind == "punct" and text.startswith(")"):
            return commands, [(kind, text), *tokens]
        elif kind in ("str", "raw"):
            commands[-1].append(("lit", json.loads(text) if kind == "str" else text[1:-1]))
        elif kind == "num":
            commands[-1].append(("lit", float(text) if "." in text else int(text)))
        elif kind == "ident":
            if text in ("true", "false", "nil"):
                commands[-1].append(("lit", {"true": True, "false": False, "nil": None}[text]))
            elif text in SUPPORTED:
                commands[-1].append(("fn", text))
            else:
                raise TemplateError(f'template: get:{line}: function "{text}" not defined (this calicoctl '
                                    f"supports {', '.join(SUPPORTED)})")
        elif kind in ("field", "var"):
            commands[-1].append((kind, text))
        else:
            raise TemplateError(f"template: get:{line}: unexpected {text!r} in command")
    if not commands[-1]:
        raise TemplateError(f"template: get:{line}: missing value for command")
    return commands, []


_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.DOTALL)


def parse(template: str) -> list[Node]:
    """The template's tree; TemplateError naming the line for anything outside the subset."""
    root: list[Node] = []
    stack: list[tuple[Node, list]] = []  # open blocks and the list currently filled
    current = root
    pos = 0
    pieces = []
    for m in _ACTION.finditer(template):
        pieces.append(("text", template[pos:m.start()], m.group(1) is not None, template.count("\n", 0, m.start())))
        pieces.append(("action", m.group(2), m.group(3) is not None, template.count("\n", 0, m.start()) + 1))
        pos = m.end()
    pieces.append(("text", template[pos:], False, 0))
    for i, (kind, text, trim, line) in enumerate(pieces):
        if kind == "text":
            if trim:  # this text precedes a `{{-`
                text = text.rstrip()
            if i > 0 and pieces[i - 1][2]:  # the action before ended with `-}}`
                text = text.lstrip()
            if "{{" in text:
                raise TemplateError(f"template: get:{line + text[:text.index('{{')].count(chr(10)) + 1}: "
                                    "unclosed action")
            if text:
                current.append(Node("text", line, text))
            continue
        body = text.strip()
        if body.startswith("/*"):
            if not body.endswith("*/"):
                raise TemplateError(f"template: get:{line}: unclosed comment")
            continue
        tokens = _tokens(body, line)
        word = tokens[0][1] if tokens and tokens[0][0] == "ident" else ""
        if word in REFUSED_KEYWORDS:
            raise TemplateError(f"template: get:{line}: {{{{{word}}}}} is not supported by this calicoctl")
        if word in ("if", "range", "with"):
            node = Node(word, line, pipe=[_pipeline(tokens[1:], line)])
            current.append(node)
            stack.append((node, current))
            current = node.body
        elif word == "else":
            if not stack or stack[-1][0].orelse or current is not stack[-1][0].body:
                raise TemplateError(f"template: get:{line}: unexpected {{{{else}}}}")
            node = stack[-1][0]
            current = node.orelse
            if len(tokens) > 1:  # else if / else with: a nested block closed by the same end
                if tokens[1][1] not in ("if", "with"):
                    raise TemplateError(f"template: get:{line}: unexpected {tokens[1][1]!r} after else")
                nested = Node(tokens[1][1], line, pipe=[_pipeline(tokens[2:], line)])
                current.append(nested)
                stack[-1] = (node, stack[-1][1])
                stack.append((nested, None))  # closed together with its parent
                current = nested.body
        elif word == "end":
            if not stack:
                raise TemplateError(f"template: get:{line}: unexpected {{{{end}}}}")
            while True:
                _, parent = stack.pop()
                if parent is not None:
                    current = parent
                    break
        else:
            current.append(Node("action", line, pipe=[_pipeline(tokens, line)]))
    if stack:
        raise TemplateError(f"template: get:{stack[-1][0].line}: unexpected EOF (a {{{{{stack[-1][0].kind}}}}} "
                            "has no {{end}})")
    return root


# --- running -----------------------------------------------------------------------------------------


def execute(template: str, data: object) -> str:
    """Runs the template over data (the JSON shapes of the resources); TemplateError on failure."""
    tree = parse(template)
    out: list[str] = []
    _run(tree, data, {"$": data}, out)
    return "".join(out)


def _run(nodes: list[Node], dot: object, scope: dict, out: list[str]) -> None:
    for node in nodes:
        if node.kind == "text":
            out.append(node.text)
        elif node.kind == "action":
            value = _eval_pipe(node.pipe[0], dot, scope, node.line)
            if not node.pipe[0].decl:
                out.append(go_str(value))
        elif node.kind in ("if", "with"):
            inner = dict(scope)
            value = _eval_pipe(node.pipe[0], dot, inner, node.line)
            if _truth(value):
                _run(node.body, value if node.kind == "with" else dot, inner, out)
            else:
                _run(node.orelse, dot, inner, out)
        else:  # range
            inner = dict(scope)
            pipe = node.pipe[0]
            value = _eval_pipe(Pipe([], False, pipe.commands), dot, inner, node.line)
            items = (sorted(value.items()) if isinstance(value, dict) else list(enumerate(value))
                     if isinstance(value, list) else None)
            if items is None and value is not None:
                raise TemplateError(f"template: get:{node.line}: range can't iterate over {go_str(value)}")
            if not items:
                _run(node.orelse, dot, inner, out)
            for key, item in items or []:
                if len(pipe.decl) == 1:
                    inner[pipe.decl[0]] = item
                elif len(pipe.decl) == 2:
                    inner[pipe.decl[0]], inner[pipe.decl[1]] = key, item
                _run(node.body, item, inner, out)


def _eval_pipe(pipe: Pipe, dot: object, scope: dict, line: int) -> object:
    value: object = _NOTHING
    for command in pipe.commands:
        value = _eval_command(command, dot, scope, line, value)
    if pipe.decl:
        if pipe.assign and pipe.decl[0] not in scope:
            raise TemplateError(f"template: get:{line}: undefined variable: {pipe.decl[0]}")
        scope[pipe.decl[-1]] = value
    return value


_NOTHING = object()


def _eval_command(command: list, dot: object, scope: dict, line: int, piped: object) -> object:
    head, *args = command
    if head[0] == "fn":
        values = [_operand(a, dot, scope, line) for a in args]
        if piped is not _NOTHING:
            values.append(piped)
        return _call(head[1], values, line)
    if args or piped is not _NOTHING:
        what = "(…)" if head[0] == "pipe" else head[1]
        raise TemplateError(f"template: get:{line}: can't give argument to non-function {what}")
    return _operand(head, dot, scope, line)


def _operand(op: tuple, dot: object, scope: dict, line: int) -> object:
    kind, text = op[0], op[1]
    if kind == "lit":
        return text
    if kind == "pipe":
        value = _eval_pipe(text, dot, dict(scope), line)
        return _fields(value, op[2][1:].split(".")) if op[2] else value
    if kind == "var":
        name, _, path = text.partition(".")
        if name not in scope:
            raise TemplateError(f"template: get:{line}: undefined variable: {name}")
        return _fields(scope[name], path.split(".") if path else [])
    return dot if text == "." else _fields(dot, text[1:].split("."))


def _fields(value: object, names: list[str]) -> object:
    for name in names:
        value = field_of(value, name)
    return value


def field_of(value: object, name: str) -> object:
    """Go's `.Name` on the JSON shape of a Calico object (see the module docstring)."""
    if not isinstance(value, dict):
        return None
    if name in value:
        return value[name]
    lower = name.lower()
    if lower == "objectmeta":
        lower = "metadata"
    for key in value:
        if key.lower() == lower:
            return value[key]
    meta = value.get("metadata")
    if isinstance(meta, dict) and "apiVersion" in value:  # promoted from the embedded ObjectMeta
        for key in meta:
            if key.lower() == lower:
                return meta[key]
    return None


def _truth(value: object) -> bool:
    return value is not None and value is not False and value != 0 and value not in ("", [], {})


def _call(name: str, args: list, line: int) -> object:
    fn = FUNCTIONS[name]
    try:
        return fn(*args)
    except TypeError:
        raise TemplateError(f"template: get:{line}: wrong number of args for {name}: got {len(args)}") from None
    except (ValueError, IndexError, KeyError) as exc:
        raise TemplateError(f"template: get:{line}: error calling {name}: {exc}") from None


def go_str(value: object) -> str:
    """How Go's fmt prints a value: maps as map[k:v], lists as [a b]; a field the object lacks as Go's
    zero value for it would print, which is empty for the strings most fields are."""
    if value is None or value is _NOTHING:
        return ""
    return _fmt(value)


def _fmt(value: object) -> str:
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{_fmt(v)}" for k, v in sorted(value.items())) + "]"
    if isinstance(value, list):
        return "[" + " ".join(_fmt(v) for v in value) + "]"
    return str(value)


def join_and_truncate(items: object, separator: str, max_len: int = 0) -> str:
    """calicoctl's joinAndTruncate: maps as sorted k=v, a single value as itself; "…" past max_len."""
    if items is None:
        return ""
    if isinstance(items, dict):
        items = sorted(f"{k}={_fmt(v)}" for k, v in items.items())
    if not isinstance(items, list):
        items = [items]
    text = ""
    for i, item in enumerate(items):
        text += (separator if i else "") + _fmt(item)
        if max_len > 0 and len(text) > max_len:
            return text[:max_len - 3] + "..."
    return text


_VERB = re.compile(r"%([-+ #0]*\d*(?:\.\d+)?)([a-zA-Z%])")


def printf(fmt: str, *args: object) -> str:
    values = list(args)

    def one(m: re.Match) -> str:
        flags, verb = m.groups()
        if verb == "%":
            return "%"
        if not values:
            return f"%!{verb}(MISSING)"
        value = values.pop(0)
        if verb in "sv":
            return f"%{flags}s" % _fmt(value)
        if verb == "q":
            return f"%{flags}s" % json.dumps(_fmt(value))
        if verb == "t":
            return _fmt(value)
        if verb in "dxXo" and isinstance(value, (int, float)) and not isinstance(value, bool):
            return f"%{flags}{verb}" % int(value)
        if verb in "feg" and isinstance(value, (int, float)) and not isinstance(value, bool):
            return f"%{flags}{verb}" % float(value)
        return f"%!{verb}({_fmt(value)})"

    return _VERB.sub(one, fmt)


def _index(value: object, *keys: object) -> object:
    for key in keys:
        if isinstance(value, dict):
            value = value.get(key)  # type: ignore[arg-type]
        elif isinstance(value, list) and isinstance(key, int):
            if not 0 <= key < len(value):
                raise IndexError(f"index out of range: {key}")
            value = value[key]
        else:
            raise ValueError(f"can't index item of type {type(value).__name__}")
    return value


def _compare(op: Callable[[object, object], bool]) -> Callable[..., bool]:
    def compare(a: object, b: object) -> bool:
        try:
            return op(a, b)
        except TypeError:
            raise ValueError("incompatible types for comparison") from None

    return compare


def _and(*args: object) -> object:
    for a in args[:-1]:
        if not _truth(a):
            return a
    return args[-1]


def _or(*args: object) -> object:
    for a in args[:-1]:
        if _truth(a):
            return a
    return args[-1]


FUNCTIONS: dict[str, Callable[..., object]] = {
    "join": lambda items, sep: join_and_truncate(items, sep),
    "joinAndTruncate": join_and_truncate,
    "printf": printf,
    "print": lambda *a: " ".join(_fmt(x) for x in a),
    "println": lambda *a: " ".join(_fmt(x) for x in a) + "\n",
    "len": lambda v: len(v) if v is not None else 0,
    "index": _index,
    "not": lambda v: not _truth(v),
    "and": _and,
    "or": _or,
    "eq": lambda a, *bs: any(a == b for b in bs),
    "ne": _compare(lambda a, b: a != b),
    "lt": _compare(lambda a, b: a < b),  # type: ignore[operator]
    "le": _compare(lambda a, b: a <= b),  # type: ignore[operator]
    "gt": _compare(lambda a, b: a > b),  # type: ignore[operator]
    "ge": _compare(lambda a, b: a >= b),  # type: ignore[operator]
}
