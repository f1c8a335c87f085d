"""The library's layers: data < curation < core < eval < train; config, tracking and report stand beside them."""
import ast

from tests.conftest import ROOT

LAYERS = ["data", "curation", "core", "eval", "train"]
# What each module beside the layers may import: generate, the inference command, samples models and
# never imports training code; report's command line (`python -m pipeline.report`) reads params.yaml.
BESIDE = {"config": {"data"}, "tracking": set(), "report": {"config", "data", "eval"},
          "generate": {"data", "curation", "core", "eval"}, "figures": {"eval"}}


def _imports(path) -> set[str]:
    """The pipeline sub-packages or top-level modules `path` (a module, or a package: all its modules)
    imports (the part after `pipeline.`), its own package aside."""
    if path.is_dir():
        return set().union(*(_imports(p) for p in path.rglob("*.py"))) - {path.name}
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pipeline"):
            parts = node.module.split(".")
            out |= {parts[1]} if len(parts) > 1 else {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("pipeline.")}
    return out


def test_each_package_imports_only_its_own_layer_or_those_below():
    for path in sorted(p for layer in LAYERS for p in (ROOT / "pipeline" / layer).rglob("*.py")):
        layer = LAYERS.index(path.relative_to(ROOT / "pipeline").parts[0])
        for name in _imports(path):
            assert name in LAYERS, f"{path.relative_to(ROOT)} imports pipeline.{name}: pass it the params instead"
            assert LAYERS.index(name) <= layer, f"{path.relative_to(ROOT)} imports the layer above it: {name}"


def test_the_modules_beside_the_layers_import_little():
    for name, allowed in BESIDE.items():
        module = ROOT / "pipeline" / f"{name}.py"
        assert _imports(module if module.exists() else ROOT / "pipeline" / name) <= allowed, name


def test_every_module_is_in_a_layer_or_beside_them():
    top = {p.stem for p in ROOT.glob("pipeline/*.py")} - {"__init__"}
    packages = {p.name for p in ROOT.glob("pipeline/*/") if p.name != "__pycache__"}
    assert top | (packages - set(LAYERS)) == set(BESIDE) and set(LAYERS) <= packages
