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

from gradlab.vocab.version import __version__

# public name -> (module, attribute): the library's API, each a thin re-export
_API = {
    "run": ("gradlab.orchestrate.api", "run"),
    "experiment": ("gradlab.orchestrate.api", "experiment"),
    "load": ("gradlab.orchestrate.api", "load"),
    "load_runs": ("gradlab.orchestrate.api", "load_runs"),
    "comparison": ("gradlab.orchestrate.api", "comparison"),
    "render": ("gradlab.orchestrate.api", "render"),
    "figures": ("gradlab.orchestrate.api", "figures"),
    "plot": ("gradlab.orchestrate.api", "plot"),
    "check": ("gradlab.orchestrate.api", "check"),
    "write_report": ("gradlab.orchestrate.api", "write_report"),
    "export_tensorboard": ("gradlab.orchestrate.api", "export_tensorboard"),
    "export_mlflow": ("gradlab.orchestrate.api", "export_mlflow"),
    "watch": ("gradlab.measure.watch", "watch"),
    "Watch": ("gradlab.measure.watch", "Watch"),
    "Run": ("gradlab.records.run", "Run"),
    "Experiment": ("gradlab.config.experiment", "Experiment"),
    "GradlabError": ("gradlab.vocab.errors", "GradlabError"),
}

__all__ = ["__version__", *_API]

if TYPE_CHECKING:
    from gradlab.config.experiment import Experiment
    from gradlab.measure.watch import Watch, watch
    from gradlab.orchestrate.api import (
        check,
        comparison,
        experiment,
        export_mlflow,
        export_tensorboard,
        figures,
        load,
        load_runs,
        plot,
        render,
        run,
        write_report,
    )
    from gradlab.records.run import Run
    from gradlab.vocab.errors import GradlabError


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
