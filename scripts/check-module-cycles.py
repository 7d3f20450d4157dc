#!/usr/bin/env python3
"""Fails when the modules of a crate depend on each other in a cycle.

    scripts/check-module-cycles.py [--tests] CRATE_DIR...   e.g. crdt protocol sfu

Each file module of the crate's library (`src/lib.rs`, else `src/main.rs`) is a
node; inline modules count as part of their file. A module depends on another
when it names it in a `use` or in a `crate::`/`super::` path in code; a path to a
name the target module re-exports counts as a dependency on where the name comes
from. A module depending on its own children is not a cycle. `#[cfg(test)]` items
are left out unless `--tests` is given (like `cargo modules dependencies`).

Prints each cycle with the lines that make it and exits 1 if there is one.
Standard library only; the Rust is scanned with regular expressions, not parsed.
"""

import os
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MOD_DECL = re.compile(r"\b(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*([;{])")
USE = re.compile(r"\buse\s+([^;]+);")
CODE_PATH = re.compile(r"\b(?:crate|super)(?:\s*::\s*\w+)+")


def strip(src):
    """Blanks out comments, strings and char literals, keeping line breaks."""
    out, i, n = [], 0, len(src)
    while i < n:
        c = src[i]
        if src.startswith("//", i):
            j = src.find("\n", i)
            i = n if j < 0 else j
        elif src.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                depth += src.startswith("/*", j) - src.startswith("*/", j)
                j += 2 if src.startswith(("/*", "*/"), j) else 1
            out.append("\n" * src.count("\n", i, j))
            i = j
        elif c in "br" and (m := re.match(r'b?r(#*)"', src[i:i + 260])):
            end = src.find('"' + m.group(1), i + m.end())
            end = n if end < 0 else end + 1 + len(m.group(1))
            out.append('""' + "\n" * src.count("\n", i, end))
            i = end
        elif c == '"':
            j = i + 1
            while j < n and src[j] != '"':
                j += 2 if src[j] == "\\" else 1
            out.append('""' + "\n" * src.count("\n", i, j))
            i = j + 1
        elif c == "'" and (m := re.match(r"'(\\.[^']*|[^\\'])'", src[i:i + 12])):
            out.append("' '")
            i += m.end()
        else:
            out.append(c)
            i += 1
    return "".join(out)


def block_end(code, start):
    """The index after the `}` matching the first `{` at or after `start`."""
    depth, i = 0, code.index("{", start)
    while True:
        depth += {"{": 1, "}": -1}.get(code[i], 0)
        i += 1
        if depth == 0:
            return i


def drop_test_items(code):
    """Blanks out every item marked `#[cfg(test)]`, keeping offsets."""
    while m := re.search(r"#\[cfg\(test\)\](\s*#\[[^\]]*\])*", code):
        semi, brace = code.find(";", m.end()), code.find("{", m.end())
        end = semi + 1 if semi >= 0 and (brace < 0 or semi < brace) else block_end(code, m.end())
        code = code[:m.start()] + re.sub(r"[^\n]", " ", code[m.start():end]) + code[end:]
    return code


def use_paths(tree):
    """Expands a use tree into (path, name bound) pairs."""
    tree = " ".join(tree.split())
    if "{" not in tree:
        path, _, alias = tree.partition(" as ")
        path = path.strip().removesuffix("::self")
        return [(path, alias.strip() or path.split("::")[-1])]
    head, inner = tree[:tree.index("{")], tree[tree.index("{") + 1:tree.rindex("}")]
    parts, depth, last = [], 0, 0
    for i, c in enumerate(inner + ","):
        depth += (c == "{") - (c == "}")
        if c == "," and depth == 0:
            parts.append(inner[last:i])
            last = i + 1
    head = head.rstrip(":")
    return [(f"{head}::{p}", name) if p != "self" else (head, head.split("::")[-1] if name == "self" else name)
            for part in parts if part.strip() for p, name in use_paths(part)]


class Crate:
    def __init__(self, src, tests):
        self.tests, self.files, self.code, self.inline = tests, {}, {}, {}
        root = src / "lib.rs" if (src / "lib.rs").exists() else src / "main.rs"
        self.load((), root, src)
        self.imports = {m: self.uses(code) for m, code in self.code.items()}

    def load(self, path, file, folder):
        """Reads a file module and, recursively, the file modules it declares."""
        code = strip(file.read_text())
        code = code if self.tests else drop_test_items(code)
        self.files[path], self.code[path] = file, code
        self.inline[path] = []  # (start, end) of inline `mod x { }` blocks
        for m in MOD_DECL.finditer(code):
            if m.group(2) == "{":
                self.inline[path].append((m.start(), block_end(code, m.start())))
            elif not any(s < m.start() < e for s, e in self.inline[path]):
                name = m.group(1)
                for child in (folder / f"{name}.rs", folder / name / "mod.rs"):
                    if child.exists():
                        self.load(path + (name,), child, folder / name)
                        break

    @staticmethod
    def uses(code):
        """Name bound by a `use` in a module -> the path it names."""
        return {name: path for tree in USE.findall(code) for path, name in use_paths(tree)}

    def resolve(self, module, pos, path, hops=0):
        """The file module a path written in `module` at `pos` points into."""
        segs = [s.strip() for s in path.split("::") if s.strip()]
        if segs and module + (segs[0],) in self.files:
            segs.insert(0, "self")  # a path relative to the module, naming a child
        if not segs or segs[0] not in ("crate", "super", "self"):
            return None
        at = module
        if segs[0] != "crate":
            inline_depth = sum(s < pos < e for s, e in self.inline[module])
            while segs and segs[0] in ("super", "self"):
                if segs.pop(0) == "super":
                    if inline_depth:
                        inline_depth -= 1
                    else:
                        at = at[:-1]
        else:
            at, segs = (), segs[1:]
        while segs and at + (segs[0],) in self.files:
            at += (segs.pop(0),)
        target = self.imports[at].get(segs[0]) if segs else None
        if target and hops < 5:
            return self.resolve(at, -1, target, hops + 1) or at
        return at

    def edges(self):
        """(from, to) -> line where `from` first names `to`."""
        found = {}
        for module, code in self.code.items():
            spans = [(m.start(), m.group(1)) for m in USE.finditer(code)]
            paths = [(pos, p) for pos, tree in spans for p, _ in use_paths(tree)]
            paths += [(m.start(), m.group()) for m in CODE_PATH.finditer(code)]
            for pos, path in paths:
                to = self.resolve(module, pos, path)
                if to is not None and to[:len(module)] != module and (module, to) not in found:
                    line = code.count("\n", 0, pos) + 1
                    found[(module, to)] = f"{os.path.relpath(self.files[module])}:{line}"
        return found


def cycles(nodes, edges):
    """Each tangle (strongly connected component of more than one module) as a
    list of cycles that between them pass through all of its modules."""
    graph = {n: sorted(t for f, t in edges if f == n) for n in nodes}
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while not scc or scc[-1] != v:
                scc.append(stack.pop())
                on.discard(scc[-1])
            if len(scc) > 1:
                loops, covered = [], set()
                for n in sorted(scc):
                    if n not in covered:
                        loops.append(shortest_loop(n, graph, set(scc)))
                        covered.update(loops[-1])
                out.append(loops)

    sys.setrecursionlimit(10000)
    for n in sorted(nodes):
        if n not in index:
            visit(n)
    return out


def shortest_loop(start, graph, within):
    paths, seen = [[start]], {start}
    while paths:
        path = paths.pop(0)
        for w in graph[path[-1]]:
            if w == start:
                return path + [start]
            if w in within and w not in seen:
                seen.add(w)
                paths.append(path + [w])


def name(module):
    return "::".join(("crate",) + module)


def main(args):
    tests = "--tests" in args
    failed = False
    for arg in (a for a in args if a != "--tests"):
        folder = Path(arg) if (Path(arg) / "src").is_dir() else REPO / arg
        crate = Crate(folder / "src", tests)
        edges = crate.edges()
        found = cycles(crate.files, edges)
        print(f"{arg}: {len(crate.files)} modules, {len(found)} tangle(s) of modules in a cycle")
        for i, loops in enumerate(found, 1):
            print(f"  tangle {i}: {', '.join(sorted({name(m) for loop in loops for m in loop}))}")
            for loop in loops:
                print("    cycle: " + " -> ".join(name(m) for m in loop))
                for a, b in zip(loop, loop[1:]):
                    print(f"      {name(a)} -> {name(b)}  ({edges[(a, b)]})")
        failed |= bool(found)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
