"""The performance work keeps every number: ReLU's counts as sign sums and batched unit maxima,
the whole step fetched in one stack per dtype, against the plain per-tensor computations (bit for
bit); the thread count chosen for a run; the GPU path's deferred loss reads, driven on the CPU."""

from __future__ import annotations

import math

import pytest
import torch

from gradlab.config.experiment import validate
from gradlab.build.data import Batches, load_dataset
from gradlab.build.models import build_model
from gradlab.measure.pending import PendingMeasurement, _count_positives
from gradlab.measure.probe import Probe
from gradlab.build.sites import Site
from gradlab.orchestrate import train
from gradlab.orchestrate.train import PARALLEL_MIN_MACS, Trainer, largest_layer_macs, resolve_threads
from probing import measured_pass

LOSS = torch.nn.functional.cross_entropy


def reference_step(model, x, y, optimizer):
    """What the probe measures, computed the plain way: torch._foreach_norm over cold tensors, a
    snapshot copied before the step, (y > 0) counts, each value converted on its own."""
    layers = model.measured_layers()
    weights = [layer.weight.detach().clone() for layer in layers]
    model.zero_grad(set_to_none=True)
    outs = []
    hooks = [b.act.register_forward_hook(lambda m, i, o: outs.append(o.detach())) for b in model.blocks]
    loss = LOSS(model(x), y)
    loss.backward()
    for h in hooks:
        h.remove()
    grads = [p.grad for p in model.parameters()]
    grad_norms = torch._foreach_norm(grads)
    expected = {
        "weight_norm": [float(n) for n in torch._foreach_norm(weights)],
        "grad_norm": float(torch.linalg.vector_norm(torch.stack(grad_norms))),
        "inactive_frac": [(o.numel() - float((o > 0).sum())) / o.numel() for o in outs],
        "dead_frac": [(o.shape[1] - float((o.amax(dim=(0, *range(2, o.dim()))) > 0).sum())) / o.shape[1] for o in outs],
    }
    optimizer.step()
    after = [layer.weight.detach() for layer in layers]
    sizes = torch.stack(torch._foreach_norm(weights))
    torch._foreach_sub_(weights, after)
    expected["update_ratio"] = (torch.stack(torch._foreach_norm(weights)) / sizes).tolist()
    return expected


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_fast_counts_and_batched_fetch_are_bit_identical_to_the_plain_computation(kind):
    data = {"name": "images"} if kind == "cnn" else {}
    pooling = {"pool_every": 2} if kind == "cnn" else {}
    cfg = validate({"model": {"kind": kind, "depth": 3, "width": 8, "activation": "relu", **pooling}, "data": data})
    shape = (1, 8, 8) if kind == "cnn" else (6,)
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(16, *shape, generator=g), torch.randint(0, 3, (16,), generator=g)
    torch.manual_seed(0)
    model = build_model(cfg.model, shape, 3)
    twin = build_model(cfg.model, shape, 3)
    twin.load_state_dict(model.state_dict())
    expected = reference_step(twin, x, y, torch.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9))

    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    probe = Probe(model)
    columns, extras = measured_pass(probe, model, x, y)
    probe.snapshot_weights()
    optimizer.step()
    columns.update(probe.update_ratios())
    rows = probe.rows(0, columns)
    assert [r["weight_norm"] for r in rows] == expected["weight_norm"]  # ==: the same bits
    assert extras["grad_norm"] == expected["grad_norm"]
    assert [r["update_ratio"] for r in rows] == expected["update_ratio"]
    assert [r["inactive_frac"] for r in rows[:-1]] == expected["inactive_frac"]
    assert [r["dead_frac"] for r in rows[:-1]] == expected["dead_frac"]


def test_positive_counts_by_segment():
    vectors = [torch.tensor([1.0, -1.0, 0.0, 2.0]), torch.tensor([-3.0]), torch.tensor([0.5, 0.5, float("nan")])]
    assert _count_positives(vectors).tolist() == [2.0, 0.0, 2.0]


def test_fetch_groups_scalars_by_dtype_and_keeps_every_site():
    pending = PendingMeasurement()
    sites = [Site(k, f"blocks.{k}", "hidden") for k in range(3)]
    for k, site in enumerate(sites):
        pending.add("act_mean", site, torch.tensor(k + 0.25))
        pending.add("saturated_frac", site, torch.tensor(k, dtype=torch.int64), 4.0, complement=True)
        pending.add_positives("dead_frac", site, torch.tensor([1.0, -1.0, 0.0, float(k)]), 4.0, complement=True)
    pending.columns["weight_norm"] = ([s.key for s in sites], torch.tensor([1.0, 2.0, 3.0]), 1.0)
    pending.extras["loss"] = torch.tensor(0.5)
    columns, extras = pending.fetch()
    keys = [s.key for s in sites]
    assert [columns["act_mean"][k] for k in keys] == [0.25, 1.25, 2.25]
    assert [columns["saturated_frac"][k] for k in keys] == [1.0, 0.75, 0.5]
    assert [columns["dead_frac"][k] for k in keys] == [0.75, 0.5, 0.5]
    assert [columns["weight_norm"][k] for k in keys] == [1.0, 2.0, 3.0]
    assert extras == {"loss": 0.5}
    with pytest.raises(RuntimeError, match="measured twice"):
        pending.add_positives("dead_frac", sites[0], torch.ones(2), 2.0)


# -- threads ---------------------------------------------------------------------------------


def test_auto_threads_is_one_for_small_layers_and_a_fixed_count_is_kept(monkeypatch):
    small = validate({"model": {"depth": 6, "width": 32}, "data": {"dim": 32, "batch_size": 128}})
    assert largest_layer_macs(small, (32,)) == 128 * 32 * 32  # by hand: batch x width x width
    assert resolve_threads("auto", small, (32,)) == 1
    assert resolve_threads(3, small, (32,)) == 3
    big = validate({"model": {"depth": 2, "width": 1024}, "data": {"dim": 64, "batch_size": 128}})
    assert largest_layer_macs(big, (64,)) == 128 * 1024 * 1024 >= PARALLEL_MIN_MACS
    monkeypatch.setattr(train, "available_cores", lambda: 8)
    assert resolve_threads("auto", big, (64,)) == train.AUTO_MAX_THREADS
    assert resolve_threads("auto", big, (64,), share=4) == 2  # a sweep's --jobs 4 on 8 cores
    cnn = validate({"model": {"kind": "cnn", "depth": 2, "width": 16, "kernel_size": 3}, "data": {"name": "images", "batch_size": 32}})
    assert largest_layer_macs(cnn, (1, 28, 28)) == 32 * 28 * 28 * 16 * 16 * 9


# -- the GPU path, driven on the CPU ----------------------------------------------------------


def drive(trainer: Trainer, exp, data, every: int):
    """The run loop's use of the trainer: check before every logged step, plain steps deferred."""
    batches = Batches(trainer.data.x_train, trainer.data.y_train, exp.data.batch_size, exp.seed)
    for step in range(exp.train.steps + 1):
        x, y = next(batches)
        logged = step % every == 0 or step == exp.train.steps
        if logged:
            bad = trainer.check()
            if bad is not None:
                return bad[0], bad[1]
            loss = trainer.logged_step(step, x, y, step < exp.train.steps)
        else:
            loss = trainer.plain_step(x, y, step)
        if loss is not None and not math.isfinite(loss):
            return step, x
    return None, None


@pytest.mark.parametrize("every", [3, 1000])
def test_deferred_loss_reads_stop_at_the_same_step_with_the_same_state(tmp_path, every):
    from gradlab.records.write import RunRecords

    exp = validate({
        "data": {"name": "gaussian", "dim": 12, "classes": 4, "n_train": 256, "n_test": 32, "batch_size": 32},
        "model": {"depth": 6, "width": 16, "activation": "rrelu", "init": {"weight": {"name": "normal", "std": 2.0}}},
        "optim": {"name": "sgd", "lr": 1.0, "momentum": 0.9}, "train": {"steps": 60},
    })  # fmt: skip
    data = load_dataset(exp.data, exp.seed)

    def run(deferred: bool, every: int):
        trainer = Trainer(exp, torch.device("cpu"), data)
        trainer.deferred = deferred
        folder = tmp_path / f"run-{deferred}-{every}"
        folder.mkdir()
        trainer.records = RunRecords(folder, exp.to_yaml(), {})
        step, x = drive(trainer, exp, data, every)
        return step, x, {k: v.clone() for k, v in trainer.model.state_dict().items()}, torch.get_rng_state()

    for every in range(every, every + 10):  # a cadence where it diverges between two logged steps
        step_a, x_a, state_a, rng_a = run(False, every)
        assert step_a is not None and 0 < step_a < 60
        if step_a % every != 0:
            break
    step_b, x_b, state_b, rng_b = run(True, every)
    assert step_a % every != 0  # found between logged steps
    assert step_a == step_b and torch.equal(x_a, x_b) and torch.equal(rng_a, rng_b)
    assert state_a.keys() == state_b.keys()
    assert all(torch.equal(state_a[k], state_b[k]) or (state_a[k].isnan() == state_b[k].isnan()).all() for k in state_a)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none visible to torch here)")
def test_on_a_gpu_the_dataset_is_placed_and_plain_steps_do_not_sync(tmp_path):
    exp = validate({"data": {"name": "gaussian", "dim": 12, "n_train": 256, "n_test": 32, "batch_size": 32},
                    "model": {"depth": 3, "width": 16}, "device": "cuda"})  # fmt: skip
    data = load_dataset(exp.data, exp.seed)
    trainer = Trainer(exp, torch.device("cuda"), data)
    assert trainer.deferred and trainer.data.x_train.is_cuda
    batches = Batches(trainer.data.x_train, trainer.data.y_train, exp.data.batch_size, exp.seed)
    trainer.plain_step(*next(batches), step=1)  # warm-up: first-use allocations may sync
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(2, 6):
            assert trainer.plain_step(*next(batches), step=step) is None
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert trainer.check() is None


# -- start-up: the optimizer without torch._dynamo -------------------------------------------


@pytest.mark.slow
def test_a_run_does_not_import_torch_dynamo(tmp_path):
    import subprocess
    import sys

    script = (
        "import sys, torch\n"
        "from gradlab.config.experiment import validate\n"
        "from gradlab.build.data import load_dataset\n"
        "from gradlab.orchestrate.train import Trainer\n"
        "for name in ('sgd', 'adam', 'adamw', 'rmsprop'):\n"
        "    exp = validate({'optim': {'name': name, 'lr': 0.01, 'grad_clip': 1.0}, 'model': {'depth': 2, 'width': 4},"
        " 'data': {'n_train': 32, 'n_test': 16, 'batch_size': 16}})\n"
        "    data = load_dataset(exp.data, 0)\n"
        "    trainer = Trainer(exp, torch.device('cpu'), data)\n"
        "    trainer.plain_step(data.x_train[:16], data.y_train[:16])\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


@pytest.mark.parametrize("spec", [{"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-3}, {"name": "adam", "lr": 0.01}, {"name": "rmsprop", "lr": 0.01}])
def test_the_unwrapped_step_is_the_optimizers_step(spec):
    from gradlab.build.components import build_optimizer

    cfg = validate({"model": {"depth": 2, "width": 8}, "optim": spec})
    torch.manual_seed(0)
    a = build_model(cfg.model, (6,), 3)
    b = build_model(cfg.model, (6,), 3)
    b.load_state_dict(a.state_dict())
    opt_a, opt_b = build_optimizer(cfg.optim, a.parameters()), build_optimizer(cfg.optim, b.parameters())
    step_a = train.optimizer_step(opt_a)
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    for _ in range(3):
        for model, step in ((a, step_a), (b, opt_b.step)):
            model.zero_grad(set_to_none=True)
            LOSS(model(x), y).backward()
            step()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert opt_a.state_dict()["state"].keys() == opt_b.state_dict()["state"].keys()


# -- the thread count of a run, and the GPU path through the run loop -------------------------


def tiny(tmp_path, **sections):
    base = {
        "name": "t", "device": "cpu",
        "data": {"name": "gaussian", "dim": 12, "classes": 4, "n_train": 256, "n_test": 64, "batch_size": 32},
        "model": {"depth": 4, "width": 16, "activation": "relu"},
        "train": {"steps": 20, "eval_every": 10}, "log": {"every": 5, "out": str(tmp_path)},
    }  # fmt: skip
    return validate({**base, **sections})


def test_a_run_computes_with_its_thread_count_and_restores_the_process(tmp_path, monkeypatch):
    import json

    from gradlab.orchestrate.runner import run_experiment

    seen = []
    plain_step = Trainer.plain_step
    monkeypatch.setattr(Trainer, "plain_step", lambda self, *a, **k: (seen.append(torch.get_num_threads()), plain_step(self, *a, **k))[1])
    before = torch.get_num_threads()
    two = run_experiment(tiny(tmp_path, threads=2))
    assert set(seen) == {2} and torch.get_num_threads() == before
    assert json.loads((two.run_dir / "meta.json").read_text())["threads"] == 2
    assert "threads: 2" in (two.run_dir / "config.yaml").read_text()
    seen.clear()
    auto = run_experiment(tiny(tmp_path))  # a 16-wide MLP: one thread, and nothing said about it
    assert set(seen) == {1}
    assert "threads" not in json.loads((auto.run_dir / "meta.json").read_text())
    assert "threads" not in (auto.run_dir / "config.yaml").read_text()


@pytest.mark.parametrize("value", [0, -1, True, 1.5, "many"])
def test_threads_must_be_auto_or_a_whole_number(value):
    from gradlab.vocab.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        validate({"threads": value})
    assert caught.value.lines[0].startswith("threads: got ") and caught.value.lines[0].endswith("allowed: auto, or a whole number of threads >= 1")


def test_threads_beyond_four_per_core_are_refused():
    from gradlab.vocab.errors import ConfigError

    exp = validate({"threads": 4 * train.available_cores() + 1})
    with pytest.raises(ConfigError, match="more than 4 x the"):
        resolve_threads(exp.threads, exp, (64,))


def test_gradlab_run_takes_threads_for_a_single_run(tmp_path, invoke):
    import json

    import yaml

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny(tmp_path).model_dump(mode="json")))
    done = invoke("run", str(config), "--threads", "2", "--quiet")
    assert done.exit_code == 0, done.output
    run_dir = __import__("pathlib").Path(done.output.strip())
    assert json.loads((run_dir / "meta.json").read_text())["threads"] == 2


def test_the_run_loop_with_deferred_loss_reads_writes_the_same_records(tmp_path, monkeypatch):
    """The GPU path, forced on the CPU: a run that diverges between logged and evaluated steps gives
    byte-identical layers.csv and metrics.csv (time aside) and the same meta.json divergence."""
    import json

    import pandas as pd

    from gradlab.orchestrate.runner import run_experiment

    sections = {
        "model": {"depth": 6, "width": 16, "activation": "rrelu", "init": {"weight": {"name": "normal", "std": 2.0}}},
        "optim": {"name": "sgd", "lr": 1.0, "momentum": 0.9}, "train": {"steps": 60, "eval_every": 20}, "log": {"every": 3, "out": str(tmp_path)},
    }  # fmt: skip
    runs, found = [], []
    check = Trainer.check
    monkeypatch.setattr(Trainer, "check", lambda self: (found.append(check(self)), found[-1])[1])
    for deferred in (False, True):
        monkeypatch.setattr(train, "defers_loss_reads", lambda device, deferred=deferred: deferred)
        runs.append(run_experiment(tiny(tmp_path, **sections)))
    read, deferred_read = runs
    assert found and found[-1] is not None and found[-1][0] == read.divergence["step"]  # found by check()
    assert read.status == deferred_read.status == "diverged"
    assert read.divergence == deferred_read.divergence and read.divergence["step"] % 3 != 0
    assert read.steps_done == deferred_read.steps_done
    assert (read.run_dir / "layers.csv").read_bytes() == (deferred_read.run_dir / "layers.csv").read_bytes()
    metrics = [pd.read_csv(r.run_dir / "metrics.csv").drop(columns="time_s").to_csv(index=False) for r in runs]
    assert metrics[0] == metrics[1]
    metas = [json.loads((r.run_dir / "meta.json").read_text()) for r in runs]
    assert metas[0]["divergence"] == metas[1]["divergence"] and metas[0]["steps_done"] == metas[1]["steps_done"]
