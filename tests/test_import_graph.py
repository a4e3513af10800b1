"""The library's modules import each other without cycles, and only the
layer picks a backend's fused kernel (as Keras' LSTM takes its kernel from
the backend): the kernel modules import nothing above them."""

import ast
import pathlib

import keras_vrnn

PACKAGE = pathlib.Path(keras_vrnn.__file__).parent


def _import_graph():
    """module -> the keras_vrnn modules it imports, anywhere in its body
    (inside functions too)."""
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    graph = {}
    for name in modules:
        targets = set()
        for node in ast.walk(ast.parse((PACKAGE / f"{name}.py").read_text())):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                if node.module == "keras_vrnn":
                    targets.update(f"keras_vrnn.{a.name}" for a in node.names)
                else:
                    targets.add(node.module)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                targets.add(node.value)  # importlib.import_module("keras_vrnn.x")
        graph[name] = {
            t.split(".")[1] for t in targets
            if t.startswith("keras_vrnn.") and t.split(".")[1] in modules - {name}
        }
    return graph


def test_no_import_cycles():
    graph = _import_graph()
    done, active = set(), []

    def visit(name):
        if name in active:
            raise AssertionError(f"import cycle: {active[active.index(name):] + [name]}")
        if name in done:
            return
        active.append(name)
        for target in sorted(graph[name]):
            visit(target)
        active.pop()
        done.add(name)

    for name in sorted(graph):
        visit(name)


def test_kernel_modules_import_nothing_above_them():
    graph = _import_graph()
    assert graph["fused"] == set()
    assert graph["probe"] == set()
    assert graph["fused_tf"] <= {"fused", "native"}
    assert graph["fused_jax"] <= {"fused"}
    assert graph["fused_torch"] <= {"fused"}
