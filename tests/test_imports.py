"""The library's import graph: no cycle, and the core never imports the embedded default.

Read from the source with `ast`, function-level imports included, over every module of
`prompt_tuning/` and `tasks/` (installed as `prompt_tuning.tasks`); and checked once more by
importing the core in a fresh interpreter.
"""

import ast
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGE_DIRS = {
    "prompt_tuning": REPO / "prompt_tuning",
    "prompt_tuning.tasks": REPO / "tasks",
    "prompt_tuning.configs": REPO / "configs",
}
EMBEDDED = "prompt_tuning.embedded"
# The embedded default's task registrations live with the other tasks; they may use its world,
# but only inside functions, so that importing the task modules never imports it.
# The serving command serves the embedded default when no checkpoint is given.
LAZY_USERS_OF_EMBEDDED = ("prompt_tuning.tasks.synthetic", "prompt_tuning.serve")


def _modules() -> dict[str, pathlib.Path]:
  """Module name -> source file, for every module of the installed package."""
  out = {}
  for package, root in PACKAGE_DIRS.items():
    for path in root.rglob("*.py"):
      parts = path.relative_to(root).with_suffix("").parts
      if parts[-1] == "__init__":
        parts = parts[:-1]
      out[".".join((package,) + parts)] = path
  return out


MODULES = _modules()


def _is_package(name: str) -> bool:
  return MODULES[name].name == "__init__.py"


class _Imports(ast.NodeVisitor):
  """Every module an import statement names, and whether it sits inside a function."""

  def __init__(self, module: str):
    self.module = module
    self.depth = 0
    self.found: list[tuple[str, bool]] = []  # (imported module, inside a function)

  def _function(self, node):
    self.depth += 1
    self.generic_visit(node)
    self.depth -= 1

  visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

  def visit_Import(self, node: ast.Import):
    self.found += [(alias.name, self.depth > 0) for alias in node.names]

  def visit_ImportFrom(self, node: ast.ImportFrom):
    base = node.module or ""
    if node.level:  # Relative: from the module's package, `level` packages up.
      package = self.module if _is_package(self.module) else self.module.rpartition(".")[0]
      for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
      base = f"{package}.{base}" if base else package
    for alias in node.names:
      # `from a import b` imports the module a.b when there is one, else a name from a.
      candidate = f"{base}.{alias.name}"
      self.found.append((candidate if candidate in MODULES else base, self.depth > 0))


def _imports(module: str) -> list[tuple[str, bool]]:
  visitor = _Imports(module)
  visitor.visit(ast.parse(MODULES[module].read_text(), str(MODULES[module])))
  return visitor.found


def _with_packages(name: str) -> list[str]:
  """Importing a.b.c runs a/__init__ and a/b/__init__ first: the library's ones count too."""
  parts = name.split(".")
  return [m for m in (".".join(parts[:i]) for i in range(1, len(parts) + 1)) if m in MODULES]


def _graph() -> dict[str, set[str]]:
  graph = {}
  for module in MODULES:
    graph[module] = {dep for name, _ in _imports(module) for dep in _with_packages(name)}
    graph[module].discard(module)
  return graph


def _find_cycle(graph: dict[str, set[str]]):
  """One cycle as a list of modules (first == last), or None."""
  state = dict.fromkeys(graph, 0)  # 0 unvisited, 1 on the current path, 2 done.
  path = []

  def visit(node):
    state[node] = 1
    path.append(node)
    for dep in sorted(graph[node]):
      if state[dep] == 1:
        return path[path.index(dep) :] + [dep]
      if state[dep] == 0:
        cycle = visit(dep)
        if cycle:
          return cycle
    path.pop()
    state[node] = 2
    return None

  for node in sorted(graph):
    if state[node] == 0:
      cycle = visit(node)
      if cycle:
        return cycle
  return None


def _is_core(module: str) -> bool:
  return not (module == EMBEDDED or module.startswith(EMBEDDED + "."))


def test_the_graph_sees_the_library():
  # Guards the checks below against passing on an empty or partial graph.
  for name in (
      "prompt_tuning.training",
      "prompt_tuning.embedded",
      "prompt_tuning.embedded.world",
      "prompt_tuning.tasks.super_glue",
      "prompt_tuning.data.pipeline",
  ):
    assert name in MODULES, name
  graph = _graph()
  assert "prompt_tuning.trainer" in graph["prompt_tuning.training"]
  # A function-level import counts: config.py imports the data pipeline inside a function.
  assert "prompt_tuning.data.pipeline" in graph["prompt_tuning.config"]
  assert "prompt_tuning.embedded" in graph["prompt_tuning.tasks.synthetic"]
  assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]


def test_import_graph_has_no_cycle():
  cycle = _find_cycle(_graph())
  assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_core_never_imports_the_embedded_default():
  offenders = []
  for module in filter(_is_core, MODULES):
    for name, in_function in _imports(module):
      if name == EMBEDDED or name.startswith(EMBEDDED + "."):
        if not (module in LAZY_USERS_OF_EMBEDDED and in_function):
          offenders.append(f"{module} imports {name}" + (" in a function" if in_function else ""))
  assert not offenders, offenders


def test_importing_the_core_leaves_the_embedded_default_unloaded():
  core = sorted(m for m in MODULES if _is_core(m) and not m.endswith("__main__"))
  script = (
      "import importlib, sys\n"
      f"for name in {core!r}:\n"
      "  importlib.import_module(name)\n"
      f"loaded = sorted(m for m in sys.modules if m.startswith({EMBEDDED!r}))\n"
      "assert not loaded, loaded\n"
      "print('ok', len(sys.modules))\n"
  )
  out = subprocess.run(
      [sys.executable, "-c", script],
      capture_output=True,
      text=True,
      cwd=REPO,
      timeout=300,
      check=False,
  )
  assert out.returncode == 0 and out.stdout.startswith("ok"), out.stderr[-3000:]
  assert "prompt_tuning.training" in core and "prompt_tuning.tasks.synthetic" in core
