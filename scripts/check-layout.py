#!/usr/bin/env python3
"""Checks the source layout of every crate in the workspace: no import cycle between files, and no
file longer than MAX_LINES unless it is listed in ALLOWED_LONG with the reason.

An edge A -> B means that file A names an item of module B through a path (`crate::…`, `super::…`,
`self::…`, or a child module's name), in a `use` or inline. Not edges: `mod` declarations,
re-exports (`pub use`, `pub(crate) use`: a facade is a map, not a dependency), and everything
from a file's `#[cfg(test)]` block on (tests may use anything). Run from the repository root:

    python3 scripts/check-layout.py

Exits 1 with the cycles and the long files it found, 0 otherwise.
"""

import os
import re
import sys

MAX_LINES = 600

# Files allowed to be longer, with the reason (kept short, checked in review).
ALLOWED_LONG = {
    # One concern: the datagram layouts, the seal, the encoder and the decoder, with 113 lines of
    # tests; splitting it would scatter the format over files.
    "src/cluster/wire.rs": "the wire format, whole",
    # Nearly all one type: `Users`, the load client's mio loop (about 520 lines).
    "perf/src/load/users.rs": "one event loop",
}

CRATES = ["src", "server/src", "perf/src", "bindings/elixir/native/headcount_nif/src"]

PATH_RE = re.compile(r"\b(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)+)")
USE_RE = re.compile(r"(?m)^\s*(pub(?:\([^)]*\))?\s+)?use\s+([^;]+);")
MOD_RE = re.compile(r"(?m)^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+([A-Za-z_][A-Za-z0-9_]*)\s*;")
TEST_RE = re.compile(r"(?m)^\s*#\[cfg\((?:all\()?test\b")


def module_of(rel):
    """src-relative file path -> module path tuple."""
    parts = rel[:-3].split(os.sep)
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return tuple(parts)


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def expand_use_tree(tree):
    """`a::{b, c::{d, e}}` -> ["a::b", "a::c::d", "a::c::e"]."""
    tree = re.sub(r"\s+", "", tree)
    depth = 0
    for i, ch in enumerate(tree):
        if ch == "{":
            if depth == 0:
                prefix, inner = tree[:i], tree[i + 1 : tree.rindex("}")]
                out, start, d = [], 0, 0
                for j, c in enumerate(inner):
                    if c == "{":
                        d += 1
                    elif c == "}":
                        d -= 1
                    elif c == "," and d == 0:
                        out.append(inner[start:j])
                        start = j + 1
                out.append(inner[start:])
                res = []
                for part in out:
                    if part:
                        res += [prefix + p for p in expand_use_tree(part)]
                return res
            depth += 1
    return [re.sub(r"\bas\b.*$", "", tree)]


def check_crate(root):
    files = {}
    for d, dirs, names in os.walk(root):
        if d == root and "bin" in dirs:
            dirs.remove("bin")  # each binary under src/bin is a crate of its own
        for n in names:
            if n.endswith(".rs"):
                path = os.path.join(d, n)
                files[module_of(os.path.relpath(path, root))] = path
    edges = {}
    long = []
    for mod, path in sorted(files.items()):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        lines = text.count("\n")
        if lines > MAX_LINES and path not in ALLOWED_LONG:
            long.append((path, lines))
        m = TEST_RE.search(text)
        if m:
            text = text[: m.start()]
        text = strip_comments(text)
        children = set(MOD_RE.findall(text))
        # This file's module, and where `super` starts from.
        me = mod
        paths = []
        for pub, tree in USE_RE.findall(text):
            if pub:
                continue
            paths += expand_use_tree(tree)
        body = USE_RE.sub("", text)
        paths += [m.group(0) for m in PATH_RE.finditer(body)]
        for c in children:
            paths += [m.group(0) for m in re.finditer(r"\b" + c + r"((?:::[A-Za-z_][A-Za-z0-9_]*)+)", body)]
        targets = set()
        for p in paths:
            segs = [s for s in p.split("::") if s]
            if not segs:
                continue
            if segs[0] == "crate":
                cur, segs = (), segs[1:]
            elif segs[0] == "self":
                cur, segs = me, segs[1:]
            elif segs[0] == "super":
                cur = me
                while segs and segs[0] == "super":
                    cur, segs = cur[:-1], segs[1:]
            elif segs[0] in children:
                cur = me
            else:
                continue  # std, an outside crate, or a local item
            for s in segs:
                if cur + (s,) in files:
                    cur = cur + (s,)
                else:
                    break
            if cur != mod and cur in files:
                targets.add(cur)
        edges[mod] = targets
    return files, edges, long


def cycles(edges):
    """Strongly connected components with more than one file (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
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
                out.append(comp)

    sys.setrecursionlimit(10000)
    for v in list(edges):
        if v not in index:
            visit(v)
    return out


def main():
    bad = False
    roots = list(CRATES)
    for base in CRATES:
        bins = os.path.join(base, "bin")
        if os.path.isdir(bins):
            roots += sorted(os.path.join(bins, b) for b in os.listdir(bins) if os.path.isdir(os.path.join(bins, b)))
    for root in roots:
        if not os.path.isdir(root):
            continue
        files, edges, long = check_crate(root)
        for comp in cycles(edges):
            bad = True
            names = sorted(files[m] for m in comp)
            print(f"import cycle in {root}: " + " <-> ".join(names))
            for m in sorted(comp):
                inside = sorted(files[t] for t in edges[m] if t in comp)
                print(f"    {files[m]} uses {', '.join(inside)}")
        for path, n in long:
            bad = True
            print(f"{path}: {n} lines (more than {MAX_LINES}; split it, or list it in ALLOWED_LONG with the reason)")
        print(f"{root}: {len(files)} files, {sum(len(t) for t in edges.values())} edges")
    if bad:
        sys.exit(1)
    print("layout ok: no import cycle, no file over the limit")


if __name__ == "__main__":
    main()
