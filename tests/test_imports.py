"""The import graph of the library (diffusion/ and samplers/) has no cycle: a module never needs, directly or
through others, a module that needs it (issue #31). Imports inside functions count too, and so does a module named
in a string (the task registry imports its modules by name, `importlib.import_module`)."""
import ast
from pathlib import Path

from tests.conftest import REPO

PACKAGES = ("diffusion", "samplers")


def module_name(path: Path, repo: Path = REPO) -> str:
    parts = list(path.relative_to(repo).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(repo: Path = REPO) -> dict[str, set[str]]:
    modules = {module_name(p, repo): p for pkg in PACKAGES for p in (repo / pkg).rglob("*.py")}
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in modules:
                targets = [node.value]  # imported by name
            for target in targets:
                while target and target not in modules:  # `from a.b import c`: the module a.b (or a)
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_library_import_graph_has_no_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_sees_the_registrys_imports_by_name(tmp_path):
    """A task module importing the predictor, which asks the registry for the task: the cycle issue #31 found."""
    for name, text in {"diffusion/__init__.py": "", "diffusion/tasks/__init__.py": 'BUILTIN = {"ct": "diffusion.tasks.ct"}',
                       "diffusion/tasks/ct.py": "from diffusion.inference import Predictor",
                       "diffusion/inference.py": "from diffusion.tasks import get_task", "samplers/__init__.py": ""}.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert find_cycle(import_graph(tmp_path)) == ["diffusion.inference", "diffusion.tasks", "diffusion.tasks.ct",
                                                  "diffusion.inference"]


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
