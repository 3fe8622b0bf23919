"""The front page (README.md) and the documentation site (mkdocs.yml, docs/): the site builds with
`--strict`, its generated tables are the declarations, and what the pages tell a newcomer to type
exists and works — the commands, configs, files and Python names they mention — without pinning
their wording."""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
PAGES = sorted(DOCS.rglob("*.md"))


def generator():
    """docs/hooks/records_reference.py, the generator of the pages' tables (also the mkdocs hook)."""
    spec = importlib.util.spec_from_file_location("records_reference", DOCS / "hooks" / "records_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def texts() -> dict[Path, str]:
    return {path: path.read_text(encoding="utf-8") for path in [README, *PAGES]}


def code_blocks(text: str, lang: str = "bash") -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, re.S)


# --------------------------------------------------------------------------------------------
# The site
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_site_builds_with_strict(tmp_path):
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (the docs extra: pip install -e '.[docs]')")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", str(tmp_path / "site")]
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    site = tmp_path / "site"
    home = (site / "index.html").read_text(encoding="utf-8")
    assert "make demo" in home and 'src="depth-profile.png"' in home  # the home page is the README
    reference = (site / "reference" / "api.html").read_text(encoding="utf-8")
    assert 'id="gradlab.orchestrate.api.run"' in reference  # the API reference came from the docstrings


def test_every_page_is_in_the_navigation():
    import yaml

    config = yaml.load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"), Loader=yaml.BaseLoader)

    def pages(node) -> list[str]:
        if isinstance(node, str):
            return [node]
        if isinstance(node, dict):
            return [page for value in node.values() for page in pages(value)]
        return [page for item in node for page in pages(item)]

    assert sorted(pages(config["nav"])) == sorted(str(p.relative_to(DOCS)) for p in PAGES)


# --------------------------------------------------------------------------------------------
# The generated tables
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_committed_pages_hold_what_the_declarations_generate():
    records_reference = generator()
    pages = records_reference.generated_pages()
    assert DOCS / "records.md" in pages
    for page in pages:
        text = page.read_text(encoding="utf-8")
        assert records_reference.render(text) == text, (
            f"{page.relative_to(ROOT)} is stale: run python docs/hooks/records_reference.py"
        )


def table_names(text: str) -> set[str]:
    """The names in the first cell of every table row of a page."""
    return set(re.findall(r"^\| `([^`]+)` \|", text, re.M))


def test_the_records_reference_defines_every_column_of_every_file():
    from gradlab.vocab import quantities

    listed = table_names((DOCS / "records.md").read_text(encoding="utf-8"))
    columns = {
        *quantities.RECURRENT_LAYERS_COLUMNS,  # layers.csv's columns and a recurrent run's
        *quantities.RESIDUAL,
        *quantities.NORM,
        *quantities.NOISE,
        *quantities.TIMESTEPS_COLUMNS,
        *quantities.METRICS_COLUMNS,
        *(f"{name}@<step>" for name in [*quantities.PROFILE_QUANTITIES, *quantities.TIME_QUANTITIES]),
        *quantities.FINAL_QUANTITIES,
        *quantities.THEORY_QUANTITIES,
    }
    assert columns - listed == set()


# --------------------------------------------------------------------------------------------
# What the pages tell a newcomer to type
# --------------------------------------------------------------------------------------------


def test_the_readme_lists_every_command_and_only_commands_that_exist():
    import typer

    from gradlab.cli.app import app

    commands = set(typer.main.get_command(app).commands)
    listed = set(re.findall(r"^\| `gradlab (\w+)", README.read_text(encoding="utf-8"), re.M))
    assert listed == commands


def test_the_make_targets_the_readme_names_exist():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    targets = set(re.findall(r"^([\w-]+):", makefile, re.M))
    named = set(re.findall(r"`make ([\w-]+)`", README.read_text(encoding="utf-8")))
    assert {"demo", "test", "docs"} <= named
    assert named - targets == set()


def test_the_readme_lists_every_shipped_config():
    readme = README.read_text(encoding="utf-8")
    listed = set(re.findall(r"^\| `([\w./*-]+\.yaml)` \|", readme, re.M))
    shipped = {p.name for p in (ROOT / "configs").glob("*.yaml")} | {f"{d.name}/*.yaml" for d in (ROOT / "configs").iterdir() if d.is_dir()}
    assert listed == shipped


def gradlab_commands(text: str) -> list[list[str]]:
    """Every `gradlab ...` line of the bash blocks, as arguments after `gradlab` (a `\\` continues a line)."""
    commands = []
    for block in code_blocks(text):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#", 1)[0].strip()
            match = re.match(r"(?:\.venv/bin/)?gradlab (.*)", line)
            if match:
                commands.append(shlex.split(match[1]))
    return commands


def test_the_readme_run_commands_are_valid_configs(invoke):
    # what `gradlab run` would train, validated as it would be (no training: no torch, a second)
    runs = [args for args in gradlab_commands(README.read_text(encoding="utf-8")) if args[0] == "run"]
    assert len(runs) >= 3
    for args in runs:
        config, sets = args[1], [args[i + 1] for i, a in enumerate(args) if a == "--set"]
        result = invoke("validate", config, *(item for value in sets for item in ("--set", value)), prog_name="gradlab")
        assert result.exit_code == 0, (args, result.output)


def test_the_readme_commands_name_real_options():
    from gradlab.cli.app import app
    import typer

    group = typer.main.get_command(app)
    for args in gradlab_commands(README.read_text(encoding="utf-8")):
        command = group.commands[args[0]]
        options = {opt for param in command.params for opt in param.opts}
        used = {a.split("=", 1)[0] for a in args[1:] if a.startswith("-")}
        assert used <= options, (args, used - options)


def test_what_the_readme_says_theory_predicts_is_what_it_prints(invoke):
    readme = README.read_text(encoding="utf-8")
    quoted = re.search(r"`(layer_factor \d\.\d+)` from this input", readme)[1]
    result = invoke("theory", "configs/example.yaml", prog_name="gradlab")
    assert result.exit_code == 0, result.output
    assert quoted.split() in [line.split() for line in result.output.splitlines()]


def test_the_links_of_the_readme_and_the_pages_lead_to_files():
    for path, text in texts().items():
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            assert (path.parent / target).exists(), f"{path.relative_to(ROOT)}: {target}"


REPO_PATH = re.compile(r"`((?:gradlab|tests|benchmarks|tools|configs|docs)/[\w./-]+\.(?:py|yaml|json|ipynb|md))`")


def test_the_files_the_pages_name_exist():
    for path, text in texts().items():
        for name in REPO_PATH.findall(text):
            assert (ROOT / name).exists(), f"{path.relative_to(ROOT)} names {name}, which does not exist"


# Python names are checked where they are defined, in the source, without importing the modules
# that hold them: the pages name torch-heavy ones (and Lightning's), which would cost seconds each.


def module_file(dotted: str) -> Path | None:
    """gradlab's source file of a module or package, or None."""
    base = ROOT.joinpath(*dotted.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def defined(path: Path, inside: str | None = None) -> set[str]:
    """The names a module (or one of its classes, `inside`) defines, assigns or imports at its top
    level, including under `if` and `try` (TYPE_CHECKING imports, fallbacks)."""
    import ast

    body = ast.parse(path.read_text(encoding="utf-8")).body
    if inside is not None:
        body = next((node.body for node in body if isinstance(node, ast.ClassDef) and node.name == inside), [])
    names: set[str] = set()
    nodes = list(body)
    while nodes:
        node = nodes.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
        elif isinstance(node, (ast.If, ast.Try)):
            nodes += [*node.body, *node.orelse, *getattr(node, "finalbody", []), *(n for h in getattr(node, "handlers", []) for n in h.body)]
    return names


def exists(dotted: str) -> bool:
    """Whether gradlab.a.b.name names a module, or a name a module defines (and, one level down, a
    name its class defines). A package's names include what its __init__ offers lazily (dir())."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        path = module_file(".".join(parts[:i]))
        if path is None:
            continue
        rest = parts[i:]
        if not rest:
            return True
        names = defined(path)
        if path.name == "__init__.py":  # floors' __init__ files import nothing heavy, by contract
            names |= set(dir(importlib.import_module(".".join(parts[:i]))))
        if rest[0] not in names:
            return False
        members = defined(path, inside=rest[0])  # empty unless rest[0] is a class of this module
        return len(rest) == 1 or not members or rest[1] in members
    return False


def test_the_python_names_the_pages_give_exist():
    # `gradlab.theory.batchnorm.batchnorm_gradient_factor_finite_batch`, `gradlab.watch`, ...:
    # a module moved or a function renamed shows here, not in a reader's traceback
    names = {name for text in texts().values() for name in re.findall(r"`(gradlab(?:\.\w+)+)", text)}
    assert len(names) > 10
    assert [name for name in sorted(names) if not exists(name)] == []


def test_the_imports_of_the_pages_python_examples_work():
    # the `import` lines of every ```python block: an example that names a moved module fails here
    # (other packages: where installed; an optional extra that is not is left out)
    lines = [
        line.strip()
        for text in texts().values()
        for block in code_blocks(text, "python")
        for line in block.splitlines()
        if re.match(r"\s*(from \S+ import|import) ", line)
    ]
    assert lines
    for line in lines:
        module, _, names = line.removeprefix("from ").removeprefix("import ").partition(" import ")
        module = module.split(" as ")[0].strip()
        if not module.startswith("gradlab"):
            assert importlib.util.find_spec(module.split(".")[0]) is not None or module in ("lightning", "ray", "mlflow"), line
            continue
        for name in ([n.split(" as ")[0].strip() for n in names.split(",")] if names else [None]):
            assert exists(module if name is None else f"{module}.{name}"), line
