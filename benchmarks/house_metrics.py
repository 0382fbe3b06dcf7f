"""Figures of the package's shape (issue 18): the longest functions, the module import graph
(cycles, imports made inside functions), and how many places define each concept.

    python benchmarks/house_metrics.py [--package fcosdet]   # prints JSON

Read as text and with `ast`: nothing is imported or run.
"""
from __future__ import annotations

import argparse
import ast
import json
import re
from pathlib import Path

# concept -> a regular expression matching a line that defines (not uses) it
CONCEPTS = {
    "point grid (arange * stride + offset)": r"torch\.arange\(.*\)\s*\*\s*(stride|s|sy|sx)\b",
    "strides literal 8..128": r"\(8,\s*16,\s*32,\s*64,\s*128\)|\[8,\s*16,\s*32,\s*64,\s*128\]",
    "regress ranges literal": r"\(-1,\s*64\),\s*\(64,\s*128\)",
    "ImageNet mean literal": r"0\.485,\s*0\.456,\s*0\.406|123\.675,\s*116\.28",
    "strip 'module.'": r"removeprefix\(\"module\.\"\)",
    "unwrap DDP (.module if hasattr)": r"\.module if hasattr\(",
    "xyxy -> xywh by hand": r"x2\s*-\s*x1|\[2\]\s*-\s*\w+\[0\],\s*\w+\[3\]\s*-",
    "image suffix list": r"\(\"\.jpg\",\s*\"\.jpeg\"",
    "safetensors metadata key literal": r"f\"\{META_PREFIX\}\w+\"",
    "to-numpy helper": r"def _(to|as)_numpy",
    "'only test.*' check": r"startswith\(\"test\.\"\)",
}


def modules(package: Path) -> dict[str, Path]:
    root = package.parent
    return {".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): p
            for p in sorted(package.rglob("*.py"))}


def resolve(name: str, module: str, level: int, is_pkg: bool) -> str:
    if level == 0:
        return name
    base = module.split(".")
    base = base if is_pkg else base[:-1]
    base = base[:len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def imports(mods: dict[str, Path]) -> tuple[dict[str, set[str]], list[str]]:
    graph: dict[str, set[str]] = {m: set() for m in mods}
    lazy = []
    for mod, path in mods.items():
        tree = ast.parse(path.read_text())
        top = set(id(n) for n in tree.body)
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.ImportFrom):
                base = resolve(node.module or "", mod, node.level, is_pkg)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            targets = [t for t in targets if t in mods and t != mod]
            if not targets:
                continue
            if id(node) in top or _in_type_checking(tree, node):
                graph[mod].update(targets)
            else:
                lazy += [f"{mod} -> {t}" for t in targets]
    return graph, sorted(set(lazy))


def _in_type_checking(tree: ast.Module, node: ast.AST) -> bool:
    for stmt in tree.body:
        if isinstance(stmt, ast.If) and "TYPE_CHECKING" in ast.unparse(stmt.test):
            if any(n is node for n in ast.walk(stmt)):
                return True
    return False


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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
    for v in graph:
        if v not in index:
            visit(v)
    return out


def longest_functions(mods: dict[str, Path], n: int = 10) -> list[str]:
    rows = []
    for mod, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                rows.append((node.end_lineno - node.lineno + 1, f"{mod}.{node.name}"))
    rows.sort(reverse=True)
    return [f"{length} {name}" for length, name in rows[:n]]


def concept_counts(mods: dict[str, Path]) -> dict[str, dict]:
    out = {}
    for concept, pattern in CONCEPTS.items():
        where = [f"{mod}:{i}" for mod, path in mods.items()
                 for i, line in enumerate(path.read_text().splitlines(), 1)
                 if re.search(pattern, line) and not line.lstrip().startswith("#")]
        out[concept] = {"count": len(where), "where": where}
    return out


def torch_load_calls(mods: dict[str, Path]) -> dict:
    """Calls of torch.load in code (not in docstrings)."""
    where = [f"{mod}:{node.lineno}" for mod, path in mods.items() for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load"]
    return {"count": len(where), "where": where}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", type=Path, default=Path(__file__).resolve().parents[1] / "fcosdet")
    args = parser.parse_args()
    mods = modules(args.package)
    graph, lazy = imports(mods)
    biggest = max(graph, key=lambda m: len(graph[m]))
    print(json.dumps({
        "modules": len(mods),
        "lines": sum(len(p.read_text().splitlines()) for p in mods.values()),
        "largest_modules": [f"{len(p.read_text().splitlines())} {m}" for m, p in
                            sorted(mods.items(), key=lambda kv: -len(kv[1].read_text().splitlines()))[:5]],
        "longest_functions": longest_functions(mods),
        "functions_over_60_lines": sum(1 for r in longest_functions(mods, 10 ** 6) if int(r.split()[0]) > 60),
        "most_imports": f"{biggest} imports {len(graph[biggest])} of {len(mods)} modules",
        "import_cycles": cycles(graph),
        "imports_inside_functions": lazy,
        "concepts": {**concept_counts(mods), "torch.load call": torch_load_calls(mods)},
    }, indent=1))


if __name__ == "__main__":
    main()
