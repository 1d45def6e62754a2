"""A man page from an executable's --help text, as help2man would make it (help2man is not needed).

`make deb` runs it for calicoctl, calico-node and calico (build/deb/build-deb.sh). The --help texts are
argparse's shape (cni_calico/plugin_help.py writes the plugins' in the same shape):
    usage: NAME ...            -> SYNOPSIS
    a paragraph                -> NAME's one-line summary (its first sentence) and DESCRIPTION
    heading:                   -> a section (OPTIONS, POSITIONAL ARGUMENTS, EXAMPLES, ENVIRONMENT ...)
      term    description      -> a tagged paragraph (.TP); much deeper-indented lines continue it
    any other paragraph        -> a plain paragraph
Usage:
    python build/make_man.py EXECUTABLE NAME SECTION VERSION DATE OUT.gz
The page is gzipped with -9n (no name, no time stamp: the same input gives the same bytes). COLUMNS=80
fixes argparse's wrapping so the text does not depend on the terminal of whoever builds.
"""

from __future__ import annotations

import gzip
import os
import re
import subprocess
import sys

SECTION_TITLES = {"1": "User Commands", "8": "System Administration Utilities"}
# A line indented this much deeper than a section's entries continues a description (argparse puts
# entries at 2 or, for sub-commands, 4 columns, and descriptions at a column of its choosing, 10 or more).
CONTINUATION_INDENT = 6


def escape(text: str) -> str:
    """Text safe for roff: backslashes, hyphens as minus signs (options), no leading control characters."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + text if text.startswith((".", "'")) else text


def blocks(text: str) -> list[list[str]]:
    """The --help text as paragraphs (runs of non-blank lines)."""
    out: list[list[str]] = [[]]
    for line in text.rstrip().splitlines():
        if line.strip():
            out[-1].append(line.rstrip())
        elif out[-1]:
            out.append([])
    return [block for block in out if block]


def entries(lines: list[str]) -> list[tuple[str, str]]:
    """A section's body as (term, description) pairs."""
    out: list[tuple[str, str]] = []
    base = min(len(line) - len(line.lstrip()) for line in lines) if lines else 0
    for line in lines:
        indent = len(line) - len(line.lstrip())
        if indent >= base + CONTINUATION_INDENT and out:
            term, desc = out[-1]
            out[-1] = (term, f"{desc} {line.strip()}".strip())
            continue
        parts = re.split(r"\s{2,}", line.strip(), maxsplit=1)  # "term  description" or "term" alone
        out.append((parts[0], parts[1] if len(parts) > 1 else ""))
    return out


def render(help_text: str, name: str, section: str, version: str, date: str) -> str:
    paragraphs = blocks(help_text)
    if not paragraphs or not paragraphs[0][0].startswith("usage: "):
        raise ValueError(f"{name} --help does not start with a usage line")
    usage = " ".join(line.strip() for line in paragraphs[0])[len("usage: "):]
    rest = paragraphs[1:]
    description: list[str] = []
    while rest and not rest[0][0].endswith(":") and not rest[0][0].startswith(" "):
        description.append(" ".join(line.strip() for line in rest.pop(0)))
    summary = re.split(r"(?<=[a-z)])[.:](\s|$)", description[0], maxsplit=1)[0] if description else name
    page = [
        f'.TH {name.upper()} {section} "{date}" "cni-calico v{version}" "{SECTION_TITLES[section]}"',
        ".SH NAME", f"{escape(name)} \\- {escape(summary)}",
        ".SH SYNOPSIS", f".B {escape(usage.split(' ', 1)[0])}", escape(usage.split(" ", 1)[1]) if " " in usage else "",
        ".SH DESCRIPTION",
    ]
    for paragraph in description:
        page += [".PP", escape(paragraph)]
    for block in rest:
        head = block[0]
        if head.endswith(":") and not head.startswith(" "):
            page.append(f".SH {escape(head[:-1].upper())}")
            for term, desc in entries(block[1:]):
                page += [".TP", f".B {escape(term)}"] + ([escape(desc)] if desc else [])
        else:
            page += [".PP", escape(" ".join(line.strip() for line in block))]
    page += [".SH VERSION", f"This page describes {escape(name)} v{escape(version)} of cni\\-calico; "
             f"{escape(name)} \\-v prints the version it is." if name != "calicoctl" else
             f"This page describes calicoctl v{escape(version)} of cni\\-calico (calicoctl version)."]
    return "\n".join(line for line in page if line != "") + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 6:
        sys.stderr.write(__doc__ or "")
        return 2
    exe, name, section, version, date, out = argv
    env = {**os.environ, "COLUMNS": "80"}
    env = {k: v for k, v in env.items() if not k.startswith("CNI_")}
    # argv[0] is the name the bundle dispatches on; the executable may be any link to it.
    proc = subprocess.run([name, "--help"], executable=exe, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=60)
    if proc.returncode != 0:
        sys.stderr.write(f"make_man: {name} --help failed ({proc.returncode}): {proc.stderr}")
        return 1
    text = render(proc.stdout, name, section, version, date)
    with open(out, "wb") as raw, gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=raw, mtime=0) as f:
        f.write(text.encode())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
