"""The code's shape: the pipeline declared once, no import cycles, stages that load only what they need."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from schemas import pipeline
from schemas.models import Article

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("schemas", "tasks", "workers")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports(path: Path, modules: set[str]) -> set[str]:
    """The project modules ``path`` imports, at top level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in modules}
    return found


def import_graph() -> dict[str, set[str]]:
    files = [path for package in PACKAGES for path in (ROOT / package).rglob("*.py") if "migrations" not in path.parts]
    modules = {module_name(path) for path in files}
    return {module_name(path): project_imports(path, modules) - {module_name(path)} for path in files}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_packages_have_no_import_cycle() -> None:
    graph = import_graph()
    assert {"tasks.fetch", "workers.celery_app", "schemas.pipeline"} <= set(graph)
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_schemas_depend_on_nothing_else_of_feedmill() -> None:
    leaks = {module: sorted(t for t in targets if not t.startswith("schemas"))
             for module, targets in import_graph().items() if module.startswith("schemas")}
    assert {module: targets for module, targets in leaks.items() if targets} == {}


def test_no_stage_module_imports_another_stage_module() -> None:
    """Stages hand on through the registry, so a stage's module never names another stage's."""
    graph = import_graph()
    stage_modules = {stage.module for stage in pipeline.STAGES if stage.module.startswith("tasks.")}
    for module in stage_modules:
        assert graph[module] & (stage_modules - {module}) == set(), module


def test_importing_fetch_loads_no_article_stage_dependencies() -> None:
    code = "import tasks.fetch, sys; assert 'numpy' not in sys.modules and 'tasks.classify' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_the_registry_is_consistent() -> None:
    assert pipeline.LINE == ("fetch", "parse", *pipeline.ARTICLE_STAGES)
    assert pipeline.ARTICLE_POSITIONS[-1] == pipeline.DONE
    assert Article.__table__.c.stage.default.arg == pipeline.FIRST_ARTICLE_STAGE
    for stage in pipeline.STAGES:
        assert stage.task.startswith("feedmill.") and stage.queue in pipeline.QUEUES
        assert pipeline.stage_of_task(stage.task) == stage.name
        if stage.successor is not None:
            assert stage.successor in pipeline.BY_NAME
    assert set(pipeline.REPROCESS_STAGES) <= set(pipeline.ARTICLE_STAGES)


def test_celery_routes_and_includes_come_from_the_registry() -> None:
    from workers.celery_app import app

    assert [queue.name for queue in app.conf.task_queues] == list(pipeline.QUEUES)
    assert app.conf.task_routes == {stage.task: {"queue": stage.queue} for stage in pipeline.STAGES}
    app.loader.import_default_modules()
    assert {stage.task for stage in pipeline.STAGES} <= set(app.tasks)


def test_sql_is_written_only_in_the_storage_layer() -> None:
    """Outside tasks/storage (and schemas, which define the tables), no module builds or runs a query."""
    builders = {"select", "insert", "update", "delete", "text", "func", "or_", "and_"}
    writers = []
    for package in ("tasks", "workers"):
        for path in (ROOT / package).rglob("*.py"):
            if "storage" in path.relative_to(ROOT).parts:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if (isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sqlalchemy")
                        and builders & {alias.name for alias in node.names}):
                    writers.append(f"{module_name(path)} imports {node.module}")
                if isinstance(node, ast.Attribute) and node.attr in {"execute", "scalars", "scalar"}:
                    writers.append(f"{module_name(path)}:{node.lineno} calls .{node.attr}")
    assert writers == []
