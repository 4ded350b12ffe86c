#!/usr/bin/env python3
"""The plugin crate's internal module import graph, from src/**/*.rs, checked against the layer order.

Usage:
  scripts/module-graph.py            rewrite the generated block of docs/architecture.md
  scripts/module-graph.py --check    exit 1 if that block is out of date, or an import points up the
                                     layer order, reaches an unranked module, or closes a cycle
  scripts/module-graph.py --edges    print every import edge with where it is made

What counts as an import of module `m` (a top-level module of src/lib.rs; `provider::sm2` is `provider`):
`use` trees and in-code paths that resolve to `m` through `crate::`, `super::` or `self::` (and
`$crate::`). Comments, doc comments and string literals are ignored, and so are items under a test-only
`#[cfg(test)]` / `#[cfg(all(test, ...))]` (inline test modules, and out-of-line ones with their files).
Items defined in src/lib.rs itself (not its `pub use` re-exports, which resolve to their module) are the
node `lib.rs`, in the bottom leaf group. src/main.rs is the binary crate and not part of the graph.

Python 3 standard library only.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
DOC = ROOT / "docs" / "architecture.md"
BEGIN = "<!-- module-graph:begin -->"
END = "<!-- module-graph:end -->"

# The layer order, top to bottom (DESIGN §1, issue 11). A module may import only modules of a strictly
# lower rank, or modules of its own rank when that rank is a leaf group (which must stay acyclic).
RANKS: list[tuple[int, list[str], str]] = [
    (9, ["cli"], "command line: runs the plugin, keygen, encrypt/decrypt"),
    (
        8,
        ["plugin", "recover", "probe"],
        "the running plugin: loads config and keys, wires everything, reloads; offline recovery of etcd "
        "values; the `status` client",
    ),
    (7, ["server", "http"], "the unix-socket gRPC server; the /healthz /livez /metrics listener"),
    (6, ["api"], "the two KMS gRPC services, error kinds to status codes"),
    (5, ["health", "metrics"], "background health state; metrics rendered from a snapshot"),
    (4, ["envelope"], "seal and open payloads"),
    (3, ["datakeys"], "current data key, rotation, unwrap cache, single-flight"),
    (2, ["keyring"], "key-encryption keys by id, one primary"),
    (1, ["provider"], "key providers: sm2, jdcloud, sdf; the KeyProvider seam"),
    (
        0,
        ["cipher", "ciphertext", "config", "error", "keyfile", "secret", "selftest", "proto", "lib.rs"],
        "leaf group: may import each other, acyclically",
    ),
]
LEAF_RANKS = {0}
LIB_NODE = "lib.rs"
RANK = {m: r for r, mods, _ in RANKS for m in mods}

PATH_KEYWORDS = {"crate", "super", "self"}


# ---------------------------------------------------------------------------------------------------
# Lexing: identifiers, `::`, punctuation and literals, with line numbers; comments dropped.


@dataclass
class Tok:
    kind: str  # "id", "p" (punctuation, `::` is one token), "lit" (string/char/number literal)
    text: str
    line: int


def lex(src: str) -> list[Tok]:
    toks: list[Tok] = []
    i, n, line = 0, len(src), 1

    def skip_quoted(j: int, quote: str) -> int:
        """j is just past the opening quote; returns the index just past the closing one."""
        nonlocal line
        while j < n:
            c = src[j]
            if c == "\\":
                if j + 1 < n and src[j + 1] == "\n":
                    line += 1
                j += 2
                continue
            if c == "\n":
                line += 1
            if c == quote:
                return j + 1
            j += 1
        return j

    def skip_raw(j: int) -> int | None:
        """j at the `#`s or `"` after an `r` prefix; returns the end of the raw string or None."""
        nonlocal line
        hashes = 0
        while j < n and src[j] == "#":
            hashes += 1
            j += 1
        if j >= n or src[j] != '"':
            return None
        close = '"' + "#" * hashes
        end = src.find(close, j + 1)
        end = n if end < 0 else end + len(close)
        line += src.count("\n", j, end)
        return end

    while i < n:
        c = src[i]
        if c == "\n":
            line += 1
            i += 1
        elif c.isspace():
            i += 1
        elif src.startswith("//", i):
            j = src.find("\n", i)
            i = n if j < 0 else j
        elif src.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if src.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif src.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    if src[j] == "\n":
                        line += 1
                    j += 1
            i = j
        elif c == '"':
            start = line
            j = skip_quoted(i + 1, '"')
            toks.append(Tok("lit", src[i + 1 : j - 1], start))
            i = j
        elif c == "'":
            # A char literal ('a', '\n', '\u{1F600}') or a lifetime / label ('a, 'static).
            if i + 1 < n and src[i + 1] == "\\":
                j = skip_quoted(i + 1, "'")
                toks.append(Tok("lit", src[i:j], line))
                i = j
            elif i + 2 < n and src[i + 2] == "'":
                toks.append(Tok("lit", src[i : i + 3], line))
                i += 3
            else:
                j = i + 1
                while j < n and (src[j].isalnum() or src[j] == "_"):
                    j += 1
                toks.append(Tok("p", src[i:j], line))
                i = j
        elif c.isalpha() or c == "_":
            j = i
            while j < n and (src[j].isalnum() or src[j] == "_"):
                j += 1
            word = src[i:j]
            start = line
            if word in ("r", "br", "cr") and j < n and src[j] in "#\"":
                end = skip_raw(j)
                if end is not None:
                    toks.append(Tok("lit", "", start))
                    i = end
                    continue
                if word == "r" and src[j] == "#":  # raw identifier r#type
                    k = j + 1
                    while k < n and (src[k].isalnum() or src[k] == "_"):
                        k += 1
                    toks.append(Tok("id", src[j + 1 : k], line))
                    i = k
                    continue
            if word in ("b", "c") and j < n and src[j] in "\"'":
                end = skip_quoted(j + 1, src[j])
                toks.append(Tok("lit", "", start))
                i = end
                continue
            toks.append(Tok("id", word, line))
            i = j
        elif c.isdigit():
            j = i
            while j < n and (src[j].isalnum() or src[j] == "_"):
                j += 1
            toks.append(Tok("lit", src[i:j], line))
            i = j
        elif src.startswith("::", i):
            toks.append(Tok("p", "::", line))
            i += 2
        elif c == "$" and src.startswith("crate", i + 1) and not (src[i + 6 : i + 7].isalnum() or src[i + 6 : i + 7] == "_"):
            toks.append(Tok("id", "crate", line))  # $crate in a macro_rules! body
            i += 6
        else:
            toks.append(Tok("p", c, line))
            i += 1
    return toks


# ---------------------------------------------------------------------------------------------------
# Test-only items out.


def matching(toks: list[Tok], i: int) -> int:
    """toks[i] is an opening bracket; returns the index of its closing one (or len(toks))."""
    pairs = {"(": ")", "[": "]", "{": "}"}
    stack = [pairs[toks[i].text]]
    j = i + 1
    while j < len(toks) and stack:
        t = toks[j]
        if t.kind == "p":
            if t.text in pairs:
                stack.append(pairs[t.text])
            elif t.text == stack[-1]:
                stack.pop()
        j += 1
    return j - 1


def is_test_cfg(attr: list[Tok]) -> bool:
    """attr is the token list inside `#[ ... ]`: `cfg(test)` or `cfg(all(..., test, ...))`."""
    words = [t.text for t in attr]
    if words[:2] != ["cfg", "("] or words[-1] != ")":
        return False
    inner = words[2:-1]
    if inner == ["test"]:
        return True
    if inner[:2] == ["all", "("]:
        depth, top = 0, []
        for w in inner[2:-1]:
            if w in ("(", "["):
                depth += 1
            elif w in (")", "]"):
                depth -= 1
            elif depth == 0:
                top.append(w)
        return "test" in top
    return False


ITEM_WORDS = {
    "fn", "mod", "impl", "struct", "enum", "union", "use", "const", "static", "type", "trait",
    "macro_rules", "let", "async", "unsafe", "extern",
}


def item_end(toks: list[Tok], j: int) -> int:
    """The index just after the item, statement, field, variant or arm starting at toks[j]."""
    k = j
    while k < len(toks) and toks[k].text == "pub":
        k += 1
        if k < len(toks) and toks[k].text == "(":
            k = matching(toks, k) + 1
    if k < len(toks) and toks[k].text in ITEM_WORDS:
        # An item or statement: up to its first `;`, or through its first `{...}`, outside () and [].
        depth = 0
        while j < len(toks):
            x = toks[j].text if toks[j].kind == "p" else None
            if x in ("(", "["):
                depth += 1
            elif x in (")", "]"):
                depth -= 1
            elif depth == 0 and x == ";":
                return j + 1
            elif depth == 0 and x == "{":
                return matching(toks, j) + 1
            j += 1
        return j
    # A field, variant, match arm or expression: up to a `,` or `;`, or before the closing `}`.
    depth = 0
    while j < len(toks):
        x = toks[j].text if toks[j].kind == "p" else None
        if x in ("(", "[", "{"):
            depth += 1
        elif x in (")", "]", "}"):
            if depth == 0:
                return j
            depth -= 1
        elif depth == 0 and x in (",", ";"):
            return j + 1
        j += 1
    return j


def strip_test_items(toks: list[Tok]) -> list[Tok]:
    out: list[Tok] = []
    i = 0
    while i < len(toks):
        t = toks[i]
        if t.text == "#" and i + 1 < len(toks) and toks[i + 1].text == "!":
            # Inner attribute: a file-wide #![cfg(test)] drops the whole file.
            if i + 2 < len(toks) and toks[i + 2].text == "[":
                close = matching(toks, i + 2)
                if is_test_cfg(toks[i + 3 : close]):
                    return []
        if t.text == "#" and i + 1 < len(toks) and toks[i + 1].text == "[":
            close = matching(toks, i + 1)
            if is_test_cfg(toks[i + 2 : close]):
                j = close + 1
                while j + 1 < len(toks) and toks[j].text == "#" and toks[j + 1].text == "[":
                    j = matching(toks, j + 1) + 1
                i = item_end(toks, j)
                continue
        out.append(t)
        i += 1
    return out


# ---------------------------------------------------------------------------------------------------
# Modules, files, references.


@dataclass
class Ref:
    target: list[str]  # absolute module path segments (first = top-level module) or [] for the root
    from_root: bool  # resolved from the crate root (so a non-module first segment is a lib.rs item)
    line: int


def parse_use_tree(toks: list[Tok], i: int, prefix: list[str]) -> tuple[list[list[str]], int]:
    """Parses one use tree at toks[i]; returns the full paths it names and the index after it."""
    segs = list(prefix)
    if not prefix and i < len(toks) and toks[i].text == "::":  # `use ::ext::...`: an extern crate
        segs = ["::"]
        i += 1
    while i < len(toks):
        t = toks[i]
        if t.text == "{":
            paths: list[list[str]] = []
            i += 1
            while i < len(toks) and toks[i].text not in ("}", ";"):
                sub, nxt = parse_use_tree(toks, i, segs)
                paths += sub
                i = nxt if nxt > i else i + 1
                if i < len(toks) and toks[i].text == ",":
                    i += 1
            return paths, i + 1
        if t.text == "*":
            return [segs], i + 1
        if t.kind != "id":
            return [], i
        if not (t.text == "self" and segs and segs == prefix):  # `{self, ...}` names the prefix
            segs = segs + [t.text]
        i += 1
        if i < len(toks) and toks[i].text == "::":
            i += 1
            continue
        if i + 1 < len(toks) and toks[i].text == "as":
            i += 2
        return [segs], i
    return [], i


def resolve(cur: list[str], segs: list[str]) -> tuple[list[str], bool] | None:
    """An absolute path for segs used in module cur, or None when it is not a crate path."""
    if not segs or segs[0] == "::":
        return None
    head = segs[0]
    if head == "crate":
        return segs[1:], True
    if head in ("self", "super"):
        base = list(cur)
        k = 0
        if segs[0] == "self":
            k = 1
        while k < len(segs) and segs[k] == "super":
            if not base:
                return None
            base = base[:-1]
            k += 1
        return base + segs[k:], not base
    if not cur:  # in lib.rs a bare first segment may be one of its modules
        return segs, True
    return None


@dataclass
class ModFile:
    path: Path
    module: list[str]  # e.g. ["provider", "jdcloud", "sign"]; [] for lib.rs
    mod_rs: bool  # lib.rs or mod.rs: child files sit next to it


def scan_file(mf: ModFile) -> tuple[list[Ref], list[tuple[str, Path]], list[str], dict[str, str]]:
    """Returns the crate references, the out-of-line child modules (name, file), the inline child
    module names, and (for lib.rs) the names its `pub use` re-exports, by top-level module."""
    toks = strip_test_items(lex(mf.path.read_text(encoding="utf-8")))
    refs: list[Ref] = []
    children: list[tuple[str, Path]] = []
    inline: list[str] = []
    reexports: dict[str, str] = {}
    stack: list[tuple[str, int]] = []  # inline `mod x {` with the brace depth inside it
    depth = 0
    i = 0
    pending_path: str | None = None

    def cur() -> list[str]:
        return mf.module + [name for name, _ in stack]

    def child_dir() -> Path:
        d = mf.path.parent if mf.mod_rs else mf.path.parent / mf.path.stem
        for name, _ in stack:
            d = d / name
        return d

    while i < len(toks):
        t = toks[i]
        if t.text == "#" and i + 1 < len(toks) and toks[i + 1].text == "[":
            close = matching(toks, i + 1)
            words = [x.text for x in toks[i + 2 : close]]
            if words[:2] == ["path", "="] and close - (i + 2) == 3:
                pending_path = toks[i + 4].text
            i = close + 1
            continue
        if t.kind == "p" and t.text == "{":
            depth += 1
        elif t.kind == "p" and t.text == "}":
            depth -= 1
            if stack and depth < stack[-1][1]:
                stack.pop()
        elif t.kind == "p" and t.text == ";":
            pending_path = None
        elif t.kind == "id" and t.text == "mod" and i + 2 < len(toks) and toks[i + 1].kind == "id":
            name, nxt = toks[i + 1].text, toks[i + 2].text
            if nxt == ";":
                if pending_path is not None:
                    f = mf.path.parent / pending_path
                else:
                    f = child_dir() / f"{name}.rs"
                    if not f.exists():
                        f = child_dir() / name / "mod.rs"
                children.append((name, f))
                pending_path = None
                i += 3
                continue
            if nxt == "{":
                depth += 1
                stack.append((name, depth))
                inline.append(name)
                pending_path = None
                i += 3
                continue
        elif t.kind == "id" and t.text == "use":
            public = i > 0 and (toks[i - 1].text == "pub" or toks[i - 1].text == ")")
            paths, j = parse_use_tree(toks, i + 1, [])
            for p in paths:
                r = resolve(cur(), p)
                if r is None:
                    continue
                target, from_root = r
                if not mf.module and public and not stack and target:
                    # lib.rs `pub use m::{A, B}`: A and B at the root are m's.
                    reexports[p[-1]] = target[0]
                    continue
                refs.append(Ref(target, from_root, t.line))
            i = j
            continue
        elif t.kind == "id" and t.text in PATH_KEYWORDS and i + 1 < len(toks) and toks[i + 1].text == "::":
            prev = [x.text for x in toks[max(0, i - 2) : i]]
            segs = [t.text]
            j = i + 1
            while j + 1 < len(toks) and toks[j].text == "::" and toks[j + 1].kind == "id":
                segs.append(toks[j + 1].text)
                j += 2
            if prev != ["(", "in"]:  # `pub(in crate::x)` is a visibility, not an import
                r = resolve(cur(), segs)
                if r is not None:
                    refs.append(Ref(r[0], r[1], t.line))
            i = j
            continue
        i += 1
    return refs, children, inline, reexports


def crate_files() -> tuple[list[ModFile], list[str]]:
    """Every non-test file of the library crate, from src/lib.rs down its `mod` declarations."""
    lib = ModFile(SRC / "lib.rs", [], True)
    files, top = [], []
    queue = [lib]
    while queue:
        mf = queue.pop(0)
        files.append(mf)
        _, children, inline, _ = scan_file(mf)
        if not mf.module:
            top += [name for name, _ in children] + inline
        for name, f in children:
            if not f.exists():
                sys.exit(f"module-graph: {mf.path.relative_to(ROOT)} declares `mod {name};` but {f.relative_to(ROOT)} is missing")
            queue.append(ModFile(f, mf.module + [name], f.name == "mod.rs"))
    return files, top


@dataclass
class Graph:
    modules: list[str]
    edges: dict[tuple[str, str], list[str]]  # (from, to) -> ["src/x.rs:12", ...]


def build_graph() -> Graph:
    files, top = crate_files()
    lib_refs, _, _, reexports = scan_file(files[0])
    modules = sorted(set(top)) + [LIB_NODE]
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    for mf in files:
        refs = lib_refs if not mf.module else scan_file(mf)[0]
        src = mf.module[0] if mf.module else LIB_NODE
        where_file = mf.path.relative_to(ROOT).as_posix()
        for r in refs:
            if r.target and r.target[0] in top:
                dst = r.target[0]
            elif r.target and r.target[0] in reexports:
                dst = reexports[r.target[0]]
            elif r.from_root:
                dst = LIB_NODE  # an item of lib.rs itself (or a glob of the root)
            else:
                continue
            if dst == src or (src == LIB_NODE and not mf.module and dst in top):
                # lib.rs naming its own modules (declarations, re-exports) is not an import.
                continue
            where = f"{where_file}:{r.line}"
            if where not in edges[(src, dst)]:
                edges[(src, dst)].append(where)
    return Graph(modules, dict(edges))


# ---------------------------------------------------------------------------------------------------
# Checks.


def cycles(g: Graph) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    succ: dict[str, list[str]] = defaultdict(list)
    for a, b in g.edges:
        succ[a].append(b)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(succ[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(set(g.modules) | {x for e in g.edges for x in e}):
        if v not in index:
            visit(v)
    return sorted(out)


def edge_ok(a: str, b: str) -> bool:
    ra, rb = RANK.get(a), RANK.get(b)
    if ra is None or rb is None:
        return False
    return rb < ra or (rb == ra and ra in LEAF_RANKS)


def violations(g: Graph) -> list[str]:
    out = []
    for m in g.modules:
        if m not in RANK:
            out.append(f"module `{m}` has no rank in scripts/module-graph.py (RANKS)")
    for (a, b), where in sorted(g.edges.items()):
        if a in RANK and b in RANK and not edge_ok(a, b):
            how = "up" if RANK[b] > RANK[a] else "same rank, not a leaf group"
            shown = ", ".join(where[:4]) + (f" (+{len(where) - 4} more)" if len(where) > 4 else "")
            out.append(f"{a} (rank {RANK[a]}) -> {b} (rank {RANK[b]}): {how}: {shown}")
    for comp in cycles(g):
        out.append("cycle: " + " <-> ".join(comp))
    return out


# ---------------------------------------------------------------------------------------------------
# The generated block of docs/architecture.md.


def render(g: Graph) -> str:
    def node(m: str) -> str:
        return "m_" + m.replace(".", "_")

    lines = [
        BEGIN,
        "<!-- Generated by scripts/module-graph.py from src/**/*.rs; edit the script, not this block. -->",
        "",
        "| rank | modules | |",
        "|---|---|---|",
    ]
    for rank, mods, what in RANKS:
        lines.append(f"| {rank} | {', '.join(f'`{m}`' for m in mods)} | {what} |")
    lines += [
        "",
        "A module may import only modules of a lower rank, or of its own rank in the leaf group (acyclically).",
        f"{len(g.edges)} imports between {len(g.modules)} modules"
        + (" (dashed: against the order)." if any(not edge_ok(a, b) for a, b in g.edges) else "."),
        "",
        "```mermaid",
        "flowchart TD",
    ]
    ranked = set()
    for rank, mods, _ in RANKS:
        present = [m for m in mods if m in g.modules]
        if not present:
            continue
        lines.append(f'  subgraph r{rank}["rank {rank}"]')
        lines.append("    direction LR")
        for m in present:
            lines.append(f'    {node(m)}["{m}"]')
            ranked.add(m)
        lines.append("  end")
    for m in g.modules:
        if m not in ranked:
            lines.append(f'  {node(m)}["{m} (unranked)"]')
    for a, b in sorted(g.edges):
        arrow = "-->" if edge_ok(a, b) else "-.->"
        lines.append(f"  {node(a)} {arrow} {node(b)}")
    lines += ["```", END]
    return "\n".join(lines)


def current_block(doc: str) -> str | None:
    start, end = doc.find(BEGIN), doc.find(END)
    if start < 0 or end < start:
        return None
    return doc[start : end + len(END)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="fail if the doc is stale or the layering is broken")
    ap.add_argument("--edges", action="store_true", help="print every import edge and where it is made")
    args = ap.parse_args()

    g = build_graph()
    problems = violations(g)
    if args.edges:
        for (a, b), where in sorted(g.edges.items()):
            mark = "" if edge_ok(a, b) else "   <-- against the layer order"
            print(f"{a} -> {b}{mark}")
            for w in where:
                print(f"    {w}")
        return 0

    block = render(g)
    doc = DOC.read_text(encoding="utf-8") if DOC.exists() else ""
    old = current_block(doc)
    failed = False
    if args.check:
        if old is None:
            print(f"module-graph: {DOC.relative_to(ROOT)} has no {BEGIN} ... {END} block", file=sys.stderr)
            failed = True
        elif old != block:
            print(f"module-graph: {DOC.relative_to(ROOT)} is out of date; run scripts/module-graph.py", file=sys.stderr)
            sys.stderr.writelines(
                difflib.unified_diff(
                    (old + "\n").splitlines(True), (block + "\n").splitlines(True), "docs", "src", n=1
                )
            )
            failed = True
    else:
        if old is None:
            doc = doc.rstrip("\n") + ("\n\n" if doc else "") + block + "\n"
        else:
            doc = doc.replace(old, block)
        DOC.write_text(doc, encoding="utf-8")
        print(f"module-graph: wrote {DOC.relative_to(ROOT)} ({len(g.edges)} imports, {len(g.modules)} modules)")
    if problems:
        print(f"module-graph: {len(problems)} layering violation(s):", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        failed = failed or args.check
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
