"""gradlab: gradient-stability experiments from a YAML file, and per-layer gradient records of any
PyTorch model.

    import gradlab
    run = gradlab.run("configs/example.yaml", {"train.steps": 100})   # train, then read back
    run.layers, run.metrics                                         # pandas DataFrames
    table = gradlab.comparison(["results/a", "results/b"])           # what `gradlab compare` shows
    gradlab.plot(["results/a"], "figures")                           # what `gradlab plot` draws
    with gradlab.watch(model, out="results", every=10) as w:        # your own model and loop
        ...; w.step(loss=loss)

Everything is imported on first use (module `__getattr__`): `import gradlab` loads neither torch
nor pandas, so the command line and scripts that only read records start fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> (module, attribute): the library's API, each a thin re-export
_API = {
    "run": ("gradlab.api", "run"),
    "experiment": ("gradlab.api", "experiment"),
    "load": ("gradlab.api", "load"),
    "load_runs": ("gradlab.api", "load_runs"),
    "comparison": ("gradlab.api", "comparison"),
    "render": ("gradlab.api", "render"),
    "figures": ("gradlab.api", "figures"),
    "plot": ("gradlab.api", "plot"),
    "check": ("gradlab.api", "check"),
    "write_report": ("gradlab.api", "write_report"),
    "export_tensorboard": ("gradlab.api", "export_tensorboard"),
    "watch": ("gradlab.watcher", "watch"),
    "Watch": ("gradlab.watcher", "Watch"),
    "Run": ("gradlab.records", "Run"),
    "Experiment": ("gradlab.config", "Experiment"),
    "GradlabError": ("gradlab.errors", "GradlabError"),
}

__all__ = ["__version__", *_API]

if TYPE_CHECKING:
    from gradlab.api import check, comparison, experiment, export_tensorboard, figures, load, load_runs, plot, render, run, write_report
    from gradlab.config import Experiment
    from gradlab.errors import GradlabError
    from gradlab.records import Run
    from gradlab.watcher import Watch, watch


def __getattr__(name: str):
    if name in _API:
        import importlib

        module, attribute = _API[name]
        value = getattr(importlib.import_module(module), attribute)
        globals()[name] = value  # once: later lookups do not come here
        return value
    raise AttributeError(f"module 'gradlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
