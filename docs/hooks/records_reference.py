"""The generated parts of the documentation, and the mkdocs hook that keeps the site current.

The records reference (docs/records.md) and the column list of `gradlab compare` (docs/compare.md)
are written from the declarations in `gradlab.vocab.quantities`, `gradlab.theory.activations` and
`gradlab.analysis.compare`, never by hand: a page marks each generated part with

    <!-- generated: NAME -->
    ...
    <!-- end generated -->

and `render` fills it with `BLOCKS[NAME]()`. Three users:

- `mkdocs build` (this file is a hook in mkdocs.yml): every page is rendered before it is built, so
  the site always shows the declarations as they are; the home page is the repository's README.md
  with its `docs/` links made relative to the site.
- `python docs/hooks/records_reference.py` rewrites the committed pages in place (so they read
  right on GitHub too); `--check` exits 1, naming the stale pages, instead of writing.
- tests/test_docs.py fails when a committed page is not what `render` makes of it.

Only gradlab's torch-free floors are imported (quantities, activations, compare's column meanings).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Callable, Iterable

DOCS = Path(__file__).resolve().parent.parent
ROOT = DOCS.parent

BEGIN = "<!-- generated: {name} -->"
END = "<!-- end generated -->"
_BLOCK = re.compile(r"<!-- generated: (?P<name>[\w-]+) -->\n.*?<!-- end generated -->", re.S)


def _cell(text: str) -> str:
    """A table cell: a literal | is escaped (the meanings write norms as ||x||)."""
    return str(text).replace("|", "\\|")


def table(header: Iterable[str], rows: Iterable[Iterable[str]]) -> str:
    header = list(header)
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def column_table(keys: dict[str, str], quantities: Iterable) -> str:
    """`| column | probe group | meaning |`: the key columns (no probe group), then the quantities."""
    rows = [(f"`{name}`", "", meaning) for name, meaning in keys.items()]
    rows += [(f"`{q.name}`", f"`{q.group}`", q.meaning) for q in quantities]
    return table(["column", "probe group", "meaning"], rows)


def quantity_table(quantities: Iterable) -> str:
    return column_table({}, quantities)


def meaning_table(meanings: dict[str, str], suffix: str = "") -> str:
    return table(["quantity", "meaning"], ((f"`{name}{suffix}`", meaning) for name, meaning in meanings.items()))


def _q():
    from gradlab.vocab import quantities

    return quantities


def _layers() -> str:
    q = _q()
    return column_table(q.LAYERS_KEYS, q.LAYER_QUANTITIES)


def _metrics() -> str:
    return table(["column", "meaning"], ((f"`{name}`", meaning) for name, meaning in _q().METRICS_COLUMNS.items()))


def _statuses() -> str:
    return "`status` is one of " + ", ".join(f"`{status}`" for status in _q().STATUSES) + "."


def _timesteps() -> str:
    q = _q()
    return column_table(q.TIMESTEPS_KEYS, q.TIMESTEP_QUANTITIES)


def _regions() -> str:
    from gradlab.theory import activations

    return activations.regions_table()


def _dead_rule() -> str:
    from gradlab.theory import activations

    return f"dead_frac is one rule for every activation: {activations.DEAD_RULE}."


def _compare_columns() -> str:
    from gradlab.analysis.compare import explain

    return table(["column", "meaning"], ((f"`{column}`", meaning) for column, meaning in explain()))


def _yaml_value(value) -> str:
    """A default as it would be written in a config (flow style: [a, b], {name: x}, null)."""
    import yaml

    if hasattr(value, "model_dump"):
        value = value.model_dump()
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10_000).strip()
    return text[: -len("...")].strip() if text.endswith("...") else text


# Meanings for the schema's fields that carry no description of their own (sections and component
# fields); a field's own description always wins.
_KEY_MEANINGS = {
    "data": "the dataset and its batches",
    "data.name": "the dataset: a name from datasets (below)",
    "data.classes": "classes of the synthetic classification datasets",
    "data.batch_size": "examples per training batch",
    "model": "the network",
    "model.kind": "mlp | cnn | rnn | lstm | gru",
    "model.activation": "a name from activations (below), or a mapping with its parameters: {name: leaky_relu, negative_slope: 0.2}",
    "model.norm": "a name from normalizations (below), or a mapping: {name: batchnorm, placement: pre, momentum: 0.1}",
    "model.bias": "whether the linear/conv layers have biases",
    "model.init": "initializers (below) per weight family",
    "model.pool": "cnn: max | avg",
    "loss": "a name from losses (below)",
    "optim": "a name from optimizers (below), or a mapping: {name: sgd, lr: 0.1, momentum: 0.9, grad_clip: 1.0, schedule: ...}",
    "train": "the training loop",
    "log": "what is measured and where it is written",
    "log.probes": "the probe groups measured on a logged step (the records reference lists each column's group)",
}


def _config_keys() -> str:
    """Every key of a config with its default and description, from the Experiment schema itself."""
    import pydantic
    from pydantic_core import PydanticUndefined

    from gradlab.config.experiment import Experiment

    rows = []

    def walk(model: type, prefix: str) -> None:
        for name, field in model.model_fields.items():
            key = prefix + name
            sub = field.annotation if isinstance(field.annotation, type) and issubclass(field.annotation, pydantic.BaseModel) else None
            if sub is not None:
                rows.append((f"`{key}`", "(section)", field.description or _KEY_MEANINGS.get(key, "")))
                walk(sub, key + ".")
                continue
            default = "(required)" if field.default is PydanticUndefined else f"`{_yaml_value(field.default)}`"
            rows.append((f"`{key}`", default, field.description or _KEY_MEANINGS.get(key, "")))

    walk(Experiment, "")
    return table(["key", "default", "meaning"], rows)


def _components() -> str:
    """Every component name a config may use, per kind, with its parameters and defaults."""
    from gradlab.vocab.registry import param_table
    from gradlab.vocab.specs import REGISTRIES

    parts = []
    for title, registry in REGISTRIES.items():
        rows = []
        for component in registry:
            params = ", ".join(f"{name}={default}" for name, _, default in param_table(component.params))
            aliases = f" (also: {', '.join(component.aliases)})" if component.aliases else ""
            rows.append((f"`{component.name}`", params, component.doc + aliases))
        parts.append(f"**{title}**\n\n" + table(["name", "parameters (default)", "what it is"], rows))
    return "\n\n".join(parts)


def _summary(path: Path) -> str:
    """A module's docstring up to its first blank line, on one line (read with ast: nothing imported)."""
    import ast

    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    return " ".join(doc.split("\n\n", 1)[0].split())


def _floors() -> str:
    """The subpackages in the order of the import-linter `layers` contract (imports point down the
    table), each with its docstring and its modules' first paragraphs."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    contracts = project["tool"]["importlinter"]["contracts"]
    layers = next(c["layers"] for c in contracts if c.get("type") == "layers")
    rows = []
    # "gradlab.cli | gradlab.integrations": siblings on one floor (neither imports the other)
    for layer in (sibling.strip() for floor in layers for sibling in floor.split("|")):
        folder = ROOT / Path(*layer.split("."))
        rows.append((f"**`{layer.split('.')[-1]}/`**", "", _summary(folder / "__init__.py")))
        for module in sorted(folder.glob("*.py")):
            if module.name != "__init__.py":
                rows.append(("", f"`{module.stem}`", _summary(module)))
    return table(["floor", "module", "what it holds"], rows)


BLOCKS: dict[str, Callable[[], str]] = {
    "floors": _floors,
    "config-keys": _config_keys,
    "components": _components,
    "layers-columns": _layers,
    "activation-rules": _regions,
    "dead-rule": _dead_rule,
    "residual-columns": lambda: quantity_table(_q().RESIDUAL_QUANTITIES),
    "norm-columns": lambda: quantity_table(_q().NORM_QUANTITIES),
    "spectrum-columns": lambda: quantity_table(_q().SPECTRUM_QUANTITIES),
    "noise-columns": lambda: quantity_table(_q().NOISE_QUANTITIES),
    "coordinates-columns": lambda: quantity_table(_q().COORDINATE_QUANTITIES),
    "coordcheck-columns": lambda: meaning_table(_q().COORDCHECK_COLUMNS),
    "recurrent-layers-columns": lambda: quantity_table(_q().RECURRENT_LAYER_QUANTITIES),
    "timesteps-columns": _timesteps,
    "jacobian-columns": lambda: column_table(_q().JACOBIAN_KEYS, _q().JACOBIAN_QUANTITIES),
    "metrics-columns": _metrics,
    "statuses": _statuses,
    "profile-quantities": lambda: meaning_table(_q().PROFILE_QUANTITIES, "@<step>"),
    "time-quantities": lambda: meaning_table(_q().TIME_QUANTITIES, "@<step>"),
    "final-quantities": lambda: meaning_table(_q().FINAL_QUANTITIES),
    "theory-quantities": lambda: meaning_table(_q().THEORY_QUANTITIES),
    "compare-columns": _compare_columns,
}


def render(text: str) -> str:
    """`text` with every generated part filled in from the declarations (an unknown name: KeyError)."""

    def fill(match: re.Match) -> str:
        name = match["name"]
        if name not in BLOCKS:
            raise KeyError(f"unknown generated part {name!r}; known: {', '.join(BLOCKS)}")
        return f"{BEGIN.format(name=name)}\n\n{BLOCKS[name]()}\n\n{END}"

    return _BLOCK.sub(fill, text)


def generated_pages() -> list[Path]:
    """The committed pages that hold generated parts."""
    return sorted(p for p in DOCS.rglob("*.md") if _BLOCK.search(p.read_text(encoding="utf-8")))


def readme_as_home(readme: str) -> str:
    """README.md as the site's home page: its links into docs/ made relative to docs/."""
    return re.sub(r"\]\(docs/", "](", readme)


# --------------------------------------------------------------------------------------------
# mkdocs hook
# --------------------------------------------------------------------------------------------


def on_page_markdown(markdown: str, page, config, files) -> str:
    if page.file.src_uri == "index.md":
        return readme_as_home((ROOT / "README.md").read_text(encoding="utf-8"))
    return render(markdown)


# --------------------------------------------------------------------------------------------
# python docs/hooks/records_reference.py [--check]
# --------------------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for page in generated_pages():
        text = page.read_text(encoding="utf-8")
        fresh = render(text)
        if fresh != text:
            stale.append(page.relative_to(ROOT))
            if not check:
                page.write_text(fresh, encoding="utf-8")
    for page in stale:
        print(f"{'stale' if check else 'rewrote'}: {page}")
    return 1 if check and stale else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main(sys.argv[1:]))
