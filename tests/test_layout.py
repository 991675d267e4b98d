"""The house's floor plan, enforced: the pipeline, the store and the worker run without
Flask; the core's modules import each other without cycles, and the rooms only downwards
(web and cli on top, then the pipeline, then the store)."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import dolibarr_webhooks

PACKAGE = Path(dolibarr_webhooks.__file__).parent
NAME = "dolibarr_webhooks"


def module_name(path: Path) -> str:
    parts = [NAME, *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules ``name`` imports, at any depth of its code (an import inside a
    function is an arrow too: the issue's cycles were such imports)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            # ``from . import fastjson`` imports a module; ``from .events import Event`` a name.
            targets = [f"{origin}.{alias.name}" if f"{origin}.{alias.name}" in known else origin
                       for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # ``a.b.name`` -> the module ``a.b``
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports_of(name, path, set(found)) for name, path in found.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as the list of its nodes (first repeated last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_find_cycle_finds_one():
    """The finder below must be able to fail."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_imports_of_resolves_relative_imports(tmp_path):
    source = tmp_path / "mod.py"
    source.write_text("from . import fastjson\nfrom .store import Store\nimport json\n"
                      "def f():\n    from .pipeline.parse import event_from_body\n")
    known = {NAME, f"{NAME}.fastjson", f"{NAME}.store", f"{NAME}.pipeline", f"{NAME}.pipeline.parse"}
    assert imports_of(f"{NAME}.mod", source, known) == {f"{NAME}.fastjson", f"{NAME}.store",
                                                        f"{NAME}.pipeline.parse"}
    nested = tmp_path / "nested.py"
    nested.write_text("from ..store import Store\nfrom .. import __version__\n")
    assert imports_of(f"{NAME}.pipeline.nested", nested, known) == {f"{NAME}.store", NAME}


def test_no_import_cycles():
    graph = import_graph()
    assert len(graph) > 30 and f"{NAME}.pipeline.deliver" in graph
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


# Rooms and the rooms they must not import: arrows only downwards. "" is the ground floor
# beside them (events, settings, plugins, credentials, logs...), which every room may use.
ROOMS = ("cli", "web", "pipeline", "store")
FORBIDDEN = {
    "store": ("pipeline", "web", "cli"),
    "pipeline": ("web", "cli"),
    "web": ("cli",),
    "cli": (),
    "": ROOMS,
}
# The roof: the package's top (the app factory: web and cli), the plugin kit (the plugins'
# one door, which hands them what the rooms make) and the pytest plugin.
ROOF = (NAME, f"{NAME}.pluginkit", f"{NAME}.testing")


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ROOMS else ""


def test_arrows_only_downwards():
    graph = import_graph()
    assert room(f"{NAME}.store") == "store" and room(f"{NAME}.web.views") == "web" and room(f"{NAME}.events") == ""
    wrong = [f"{source} imports {target}" for source, targets in graph.items() for target in targets
             if source not in ROOF and room(target) in FORBIDDEN[room(source)]]
    assert not wrong


def test_nothing_inside_imports_the_package_top():
    """The top (``dolibarr_webhooks/__init__.py``) imports the app factory when called; a module
    that imported it back would hang every room on the roof."""
    wrong = [name for name, targets in import_graph().items() if NAME in targets and name != f"{NAME}.testing"]
    assert not wrong


NO_FLASK = textwrap.dedent("""
    import sys, tempfile, os
    import dolibarr_webhooks.pipeline.deliver, dolibarr_webhooks.pipeline.ingest, dolibarr_webhooks.pipeline.parse
    import dolibarr_webhooks.pipeline.verify, dolibarr_webhooks.pipeline.wakeup, dolibarr_webhooks.store
    from dolibarr_webhooks.metrics import Metrics
    from dolibarr_webhooks.pipeline.ingest import Service
    from dolibarr_webhooks.plugins import build_plugins
    from dolibarr_webhooks.samples import sample_body
    from dolibarr_webhooks.settings import load_settings
    from dolibarr_webhooks.store import Store

    # The worker's whole path, without Flask: settings, plugins, an event stored, delivered.
    folder = tempfile.mkdtemp()
    settings = load_settings({"DATABASE_URL": f"sqlite:///{folder}/w.sqlite3", "PLUGINS": ["log"]},
                             environ={}, env_file="")
    store = Store(settings["DATABASE_URL"])
    store.migrate()
    service = Service(settings=settings, plugins=build_plugins(settings), store=store, metrics=Metrics())
    source = next(iter(service.sources.values()))
    result = service.ingest(service.event_from_body(sample_body("BILL_PAYED"), source))
    assert result.deliveries == 1, result
    service.make_worker().run(stop_after_idle=0.2)
    assert store.stats()["deliveries"]["delivered"] == 1, store.stats()
    print("flask" in sys.modules, sorted(m for m in sys.modules if m.split(".")[0] in ("flask", "werkzeug")))
""")


def test_pipeline_store_and_worker_run_without_flask():
    done = subprocess.run([sys.executable, "-c", NO_FLASK], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "False []", done.stdout


@pytest.mark.parametrize("module", ["dolibarr_webhooks.web.app", "dolibarr_webhooks.cli"])
def test_the_check_sees_flask(module):
    """The probe of the test above can fail: the web and the CLI do load Flask."""
    done = subprocess.run([sys.executable, "-c", f"import sys, {module}; print('flask' in sys.modules)"],
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "True", done.stderr
