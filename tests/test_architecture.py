"""The package's layering, checked on its import graph (docs/design.md, "Layers").

Every import counts, lazy ones inside functions too; only imports under `if TYPE_CHECKING:` are left out.
"""
from __future__ import annotations

import ast
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "pid_trt"


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(path: pathlib.Path) -> set[str]:
    """pid_trt modules `path` imports (resolving `from pid_trt.x import y` to pid_trt.x.y when y is a module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("pid_trt"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pid_trt") and not node.level:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in MODULES else node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


FILES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
MODULES = set(FILES)
GRAPH = {name: {m for m in _imports(path) if m in MODULES} - {name} for name, path in FILES.items()}


def _parents(module: str) -> set[str]:
    """Importing a.b.c runs a/__init__ and a/b/__init__ first."""
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def test_no_import_cycles():
    # edges: a module imports its targets (and thereby their package __init__s)
    edges = {m: set().union(*[{t} | (_parents(t) - _parents(m) - {m}) for t in targets]) if targets else set()
             for m, targets in GRAPH.items()}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def dfs(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                dfs(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            dfs(module)
    assert not cycles, "import cycles: " + " | ".join(" -> ".join(c) for c in cycles)


# docs/design.md "Layers": a module imports from its own layer or the ones before it
LAYERS = [
    ("pid_trt", "pid_trt.config", "pid_trt.errors", "pid_trt.atomic", "pid_trt.formats", "pid_trt.integrity"),
    ("pid_trt.registry",),
    ("pid_trt.model", "pid_trt.checkpoint", "pid_trt.tiny", "pid_trt.latents", "pid_trt.text", "pid_trt.vae",
     "pid_trt.images", "pid_trt.memory"),
    ("pid_trt.sampler", "pid_trt.teacher"),
    ("pid_trt.export",),
    ("pid_trt.engines",),
    ("pid_trt.runtime",),
    ("pid_trt.parity", "pid_trt.bench", "pid_trt.layerwise", "pid_trt.fp8_sweep"),
    ("pid_trt.workflows", "pid_trt.diffusers", "pid_trt.serve"),
    ("pid_trt.cli", "pid_trt.__main__"),
]


def _layer(module: str) -> int:
    matches = [(len(prefix), i) for i, layer in enumerate(LAYERS) for prefix in layer
               if module == prefix or module.startswith(prefix + ".")]
    assert matches, f"{module} belongs to no layer in docs/design.md"
    return max(matches)[1]


def test_data_flows_one_way():
    upward = [f"{m} -> {t}" for m, targets in GRAPH.items() for t in targets if _layer(t) > _layer(m)]
    assert not upward, upward


def test_only_the_cli_imports_the_cli():
    offenders = {m: sorted(t for t in targets if t.startswith("pid_trt.cli"))
                 for m, targets in GRAPH.items()
                 if not m.startswith("pid_trt.cli")}
    assert not {m: t for m, t in offenders.items() if t}


def test_command_modules_import_only_the_shared_options():
    for module, targets in GRAPH.items():
        if module.startswith("pid_trt.cli.") and module != "pid_trt.cli.options":
            cli_imports = {t for t in targets if t.startswith("pid_trt.cli")}
            assert cli_imports <= {"pid_trt.cli", "pid_trt.cli.options"}, (module, cli_imports)


def test_package_inits_only_re_export():
    for module, path in FILES.items():
        if path.name != "__init__.py" or module == "pid_trt.cli":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            assert isinstance(node, (ast.Import, ast.ImportFrom, ast.Expr, ast.Assign, ast.FunctionDef)), \
                f"{module}: {type(node).__name__} in a package __init__"
            if isinstance(node, ast.FunctionDef):  # the lazy attribute hook of pid_trt/__init__.py
                assert node.name == "__getattr__", f"{module} defines {node.name}"


def test_runtime_never_imports_the_builder():
    for module, targets in GRAPH.items():
        if module.startswith("pid_trt.runtime"):
            assert not targets & {"pid_trt.engines.build", "pid_trt.engines.plan", "pid_trt.engines.trt"}, module


def test_tensorrt_is_imported_in_one_place():
    importers = [m for m, p in FILES.items() if re.search(r"^\s*(import tensorrt|from tensorrt)", p.read_text(), re.M)]
    assert importers == ["pid_trt.engines.detect"]


def test_every_module_states_its_job():
    for module, path in FILES.items():
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        assert doc and doc.strip(), f"{module} has no docstring"


def test_nothing_refers_outside_the_repository():
    found = subprocess.run(["grep", "-rnE", r"\.\./shared|pid-net\.md|pid-sampler\.md|pid-upstream-cli\.md",
                            "pid_trt", "tests", "docs", "README.md", "cpp", "scripts"],
                           cwd=ROOT, capture_output=True, text=True)
    assert found.stdout == "", found.stdout


COMMANDS = sorted(p.stem.removesuffix("_cmd").replace("_", "-") for p in (PACKAGE / "cli").glob("*_cmd.py"))


@pytest.mark.parametrize("args", [["--help"], *([name, "--help"] for name in COMMANDS),
                                  ["decode", "--no-such-option"], ["build", "--size", "4096x"], ["no-such-command"]])
def test_cli_help_and_usage_errors_do_not_import_torch(args):
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "pid_trt", *args], cwd=ROOT,
                         capture_output=True, text=True, check=False)
    imported = {line.split("|")[-1].strip() for line in out.stderr.splitlines() if "|" in line}
    assert "torch" not in imported and "numpy" not in imported
    assert out.returncode == (0 if args[-1] == "--help" else 2)
    assert ("Commands:" in out.stdout) if args == ["--help"] else ("Usage:" in out.stdout or "error: " in out.stderr)


def test_version_is_defined_once():
    import pid_trt

    assert pid_trt.__version__ != "0+unknown"
    hits = subprocess.run(["grep", "-rnE", r"__version__ *= *['\"]|^version *= *['\"]", "pid_trt", "pyproject.toml"],
                          cwd=ROOT, capture_output=True, text=True).stdout.splitlines()
    assert len(hits) == 1 and hits[0].startswith("pyproject.toml"), hits
