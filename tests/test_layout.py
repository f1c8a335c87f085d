"""The library's layers: data < core < eval < train; config, tracking and report stand beside them."""
import ast

from tests.conftest import ROOT

LAYERS = ["data", "core", "eval", "train"]
# What each module beside the layers may import: generate, the inference command, samples models and
# never imports training code; report's command line (`python -m pipeline.report`) reads params.yaml.
BESIDE = {"config": {"data"}, "tracking": set(), "report": {"config", "data", "eval"},
          "generate": {"data", "core", "eval"}}


def _imports(path) -> set[str]:
    """The pipeline sub-packages or top-level modules `path` imports (the part after `pipeline.`)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pipeline"):
            parts = node.module.split(".")
            out |= {parts[1]} if len(parts) > 1 else {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("pipeline.")}
    return out


def test_each_package_imports_only_its_own_layer_or_those_below():
    for path in sorted(ROOT.glob("pipeline/*/*.py")):
        layer = LAYERS.index(path.parent.name)
        for name in _imports(path):
            assert name in LAYERS, f"{path.relative_to(ROOT)} imports pipeline.{name}: pass it the params instead"
            assert LAYERS.index(name) <= layer, f"{path.relative_to(ROOT)} imports the layer above it: {name}"


def test_the_modules_beside_the_layers_import_little():
    for name, allowed in BESIDE.items():
        assert _imports(ROOT / "pipeline" / f"{name}.py") <= allowed, name


def test_every_module_is_in_a_layer_or_beside_them():
    top = {p.stem for p in ROOT.glob("pipeline/*.py")} - {"__init__"}
    assert top == set(BESIDE)
    assert {p.name for p in ROOT.glob("pipeline/*/") if p.name != "__pycache__"} == set(LAYERS)
