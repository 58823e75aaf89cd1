"""The import graph is the architecture (DESIGN.md): each module imports only from the layers
below it, so a later chapter cannot quietly make the toolbox depend on a chapter, or a model on
the training loop. Read from every module's import statements, including those inside functions.
And every module keeps to a line budget."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "minidiff"
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def module_name(path):
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path):
    """The ``minidiff`` modules a file imports (``from . import x`` counts as ``x``)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("minidiff"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base_pkg = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{base_pkg}.{base}" if base else base_pkg
            if not base.startswith("minidiff"):
                continue
            for alias in node.names:  # `from .models import unet` imports minidiff.models.unet
                sub = f"{base}.{alias.name}"
                found.add(sub if (PACKAGE.parent / sub.replace(".", "/")).with_suffix(".py")
                          .exists() or (PACKAGE.parent / sub.replace(".", "/")).is_dir()
                          else base)
    return found - {name}


# Layers, bottom to top: a module may import from its own layer group only where the rule says.
CHAPTERS = ["score", "dsm", "ddpm", "sde", "samplers", "flow", "metrics", "interpolants", "distill",
            "plot"]  # story order


def layer(name):
    short = name.removeprefix("minidiff").lstrip(".")
    if short == "":
        return (5, 0)  # the package docstring: imports nothing
    top = short.split(".")[0]
    order = {"nn": (0, 0), "targets": (1, 0), "datasets": (1, 1), "captions": (1, 2),
             "process": (2, 0), "train": (3, 0), "models": (4, 0), "guidance": (6, 0),
             "images": (6, 1), "text_encoder": (6, 2), "latent": (6, 3), "latent_flow": (6, 4),
             "distill_mnist": (6, 5), "distill_latent": (6, 6),
             "tools": (7, 0), "demo": (7, 1), "pipeline": (7, 2), "__main__": (8, 0)}
    if top in CHAPTERS:
        return (5, CHAPTERS.index(top))
    return order[top]


def allowed(importer, imported):
    a, b = importer.removeprefix("minidiff."), imported.removeprefix("minidiff.")
    if a.startswith("nn"):
        return b.startswith("nn")  # the ground floor stands on autograd and numpy alone
    if a.startswith("models"):
        return b.startswith(("nn", "models"))  # models are functions of their params: nn only
    if a.startswith("tools") and b.startswith("tools"):
        return True
    return layer(imported) < layer(importer)


@pytest.mark.parametrize("path", MODULES, ids=module_name)
def test_each_module_imports_only_from_the_layers_below_it(path):
    name = module_name(path)
    wrong = sorted(m for m in imports_of(path) if not allowed(name, m))
    assert not wrong, f"{name} must not import {wrong} (DESIGN.md: the import graph)"


def test_the_layering_rule_sees_a_violation():
    # The rule itself is tested: a model importing the training loop, the toolbox importing a
    # chapter, a chapter importing a later one, the spine importing images are all refused.
    assert not allowed("minidiff.models.ideal", "minidiff.ddpm")
    assert not allowed("minidiff.models.classifier", "minidiff.train")
    assert not allowed("minidiff.nn.conv", "minidiff.targets")
    assert not allowed("minidiff.ddpm", "minidiff.sde")
    assert not allowed("minidiff.targets", "minidiff.process")
    assert not allowed("minidiff.images", "minidiff.tools.sweep")
    assert allowed("minidiff.sde", "minidiff.ddpm") and allowed("minidiff.images", "minidiff.ddpm")


def code_lines(path):
    """Lines of code: not blank, not comments, not docstrings."""
    source = path.read_text()
    doc_lines = set()
    for node in ast.walk(ast.parse(source)):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(getattr(body[0], "value", None), ast.Constant) \
                and isinstance(body[0].value.value, str):
            doc_lines.update(range(body[0].lineno, body[0].end_lineno + 1))
    return sum(1 for i, line in enumerate(source.splitlines(), 1)
               if line.strip() and not line.strip().startswith("#") and i not in doc_lines)


@pytest.mark.parametrize("path", MODULES, ids=module_name)
def test_every_module_stays_within_the_line_budget(path):
    # STYLE.md: about 250 lines of code per chapter module, 300 for any module unless a comment
    # at its top ("# line budget: ...") says why it needs more (docstrings and comments are free).
    name = module_name(path).removeprefix("minidiff.")
    budget = 250 if name in CHAPTERS + ["process", "targets", "datasets", "train"] else 300
    if "# line budget:" in path.read_text()[:3000]:
        budget = int(path.read_text().split("# line budget:")[1].split()[0])
    assert code_lines(path) <= budget, f"{name}: {code_lines(path)} lines of code > {budget}"
