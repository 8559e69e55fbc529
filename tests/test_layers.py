"""The floor plan holds: folders are layers, imports point down, the library speaks no CLI.

Read from the source (every import, also those inside functions), so a rule breaks here before it breaks
for a user: an upward import, a circle, rich outside the CLI, a `--flag` in a library message, a file that
grew past one concern, torch creeping into the CLI's start-up.
"""

from __future__ import annotations

import ast
import io
import re
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "src" / "vmae_cli"

BASE = {"errors", "files", "jsonfile", "runtime", "hub", "limits", "_version"}
# Which layers each layer may import (besides itself). Inference never imports training; video and models
# know nothing of each other; convert builds models; only the CLI (and the lazy package front) sees all.
MAY_IMPORT = {
    "base": set(),
    "models": {"base"},
    "video": {"base"},
    "convert": {"base", "models"},
    "inference": {"base", "models", "video"},
    "training": {"base", "models", "video", "inference"},
    "cli": {"base", "models", "video", "convert", "inference", "training"},
    "front": {"base", "models", "video", "cli"},  # vmae_cli/__init__ (lazy public names), __main__
}
UI_PACKAGES = ("rich", "typer", "click")
MAX_LINES = 450
# Imported before torch when `vmae --help` or `vmae classify` starts (see cli/app.py and inference/ahead.py).
TORCH_FREE = ("vmae_cli", "vmae_cli.cli.app", "vmae_cli.inference.ahead", "vmae_cli.inference.options")
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9]*(?:-[a-z0-9]+)*")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in ("__main__",):
        return "front"
    return "base" if parts[1] in BASE else parts[1]


def imports_of(path: Path) -> list[tuple[str, int]]:
    """(module, line) of every import of `path`, relative ones made absolute; `from . import x` counts x."""
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package[: len(package) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            found.append((base, node.lineno))
            found += [(f"{base}.{alias.name}", node.lineno) for alias in node.names]
    return found


def graph() -> dict[str, dict[str, int]]:
    """module -> {vmae module it imports: line}; an import of a name inside a module counts as the module."""
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges: dict[str, dict[str, int]] = {}
    for module, path in files.items():
        edges[module] = {}
        for target, line in imports_of(path):
            while target and target not in files:
                target = target.rpartition(".")[0]
            if target and target != module:
                edges[module].setdefault(target, line)
    return edges


def climbs(edges: dict[str, dict[str, int]]) -> list[str]:
    bad = []
    for module, targets in edges.items():
        for target, line in targets.items():
            src, dst = layer(module), layer(target)
            if src != dst and dst not in MAY_IMPORT[src]:
                bad.append(f"{module}:{line} ({src}) imports {target} ({dst})")
    return bad


def circles(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def library_files() -> list[Path]:
    return [p for p in sorted(PACKAGE.rglob("*.py")) if layer(module_name(p)) not in ("cli", "front")]


def test_no_import_climbs_a_layer():
    assert climbs(graph()) == []


def test_no_circles():
    assert circles(graph()) == []


def test_the_check_catches_a_climb_and_a_circle():
    edges = graph()
    edges["vmae_cli.models.config"] = {**edges["vmae_cli.models.config"], "vmae_cli.inference.engine": 1}
    edges["vmae_cli.video.reader"] = {**edges["vmae_cli.video.reader"], "vmae_cli.models.config": 2}
    edges["vmae_cli.errors"] = {**edges["vmae_cli.errors"], "vmae_cli.files": 3}
    assert climbs(edges) == [
        "vmae_cli.models.config:1 (models) imports vmae_cli.inference.engine (inference)",
        "vmae_cli.video.reader:2 (video) imports vmae_cli.models.config (models)",
    ]
    assert ["vmae_cli.errors", "vmae_cli.files"] in circles(edges)


def test_the_core_never_imports_the_cli_or_its_ui():
    bad = [
        f"{module_name(path)}:{line} imports {target}"
        for path in library_files()
        for target, line in imports_of(path)
        if target.split(".")[0] in UI_PACKAGES
    ]
    assert bad == []


def strings_and_comments(path: Path):
    """(line, text) of every string literal (docstrings, f-string parts) and comment of a file."""
    tokens = tokenize.generate_tokens(io.StringIO(path.read_text(encoding="utf-8")).readline)
    for token in tokens:
        if token.type in (tokenize.STRING, tokenize.COMMENT) or token.type == getattr(
            tokenize, "FSTRING_MIDDLE", -1
        ):
            yield token.start[0], token.string


def test_no_library_module_names_a_cli_flag():
    """The library names its parameters (errors.option) and cli/errors.py spells them as flags."""
    bad = [
        f"{path.relative_to(PACKAGE)}:{line}: {FLAG.search(text).group()}"
        for path in library_files()
        for line, text in strings_and_comments(path)
        if FLAG.search(text)
    ]
    assert bad == []


def test_the_flag_check_sees_strings_docstrings_fstrings_and_comments(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        '"""Use --out."""\nx = f"{1} pass --num-frames"  # or --force\ny = "a -- b, x--y, -5"\n'
    )
    found = [FLAG.search(text).group() for _, text in strings_and_comments(sample) if FLAG.search(text)]
    assert found == ["--out", "--num-frames", "--force"]


def test_no_file_is_over_450_lines():
    sizes = {
        str(p.relative_to(PACKAGE)): len(p.read_text(encoding="utf-8").splitlines())
        for p in PACKAGE.rglob("*.py")
    }
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}


@pytest.mark.parametrize("module", TORCH_FREE)
def test_start_up_modules_do_not_import_torch(module):
    code = f"import sys, {module}; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0, (
        f"{module} imports torch"
    )


def test_the_readme_layout_names_every_module():
    """README's layout section stays true: each module of the package is named under its folder there."""
    readme = (PACKAGE.parents[1] / "README.md").read_text(encoding="utf-8")
    tree = readme[readme.index("Layout: `src/vmae_cli/`") :].split("```")[1]
    sections = {"": ""}  # folder -> its text in the tree ("" for the package's own modules)
    folder = ""
    for line in tree.splitlines()[2:]:
        head = re.match(r"  (\w+)/ ", line)
        folder = head.group(1) if head else folder
        sections[folder] = sections.get(folder, "") + line + "\n"
    missing = [
        str(rel)
        for rel in (p.relative_to(PACKAGE) for p in PACKAGE.rglob("*.py"))
        if not rel.name.startswith("__")
        and rel.stem != "_version"
        and not re.search(rf"(?<![\w/])\b{rel.stem}\b", sections.get(str(rel.parent).strip("."), ""))
    ]
    assert missing == []
