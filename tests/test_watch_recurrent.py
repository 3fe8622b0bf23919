"""Time steps inside the user's nn.LSTM, nn.GRU and nn.RNN: gradlab.watch(model, time=True).

The reference is the recurrence written out from PyTorch's equations on the module's own parameters,
every a_t, h_t, c_t and gate kept with retain_grad() (`by_hand`), so every column of layers.csv and
timesteps.csv is checked against an independent computation; and watched models train bit for bit
as unwatched ones (torch.equal), the unrolled path included. oneDNN is switched off where the
unrolled cells are to run (an nn.LSTM in float32 on the CPU runs oneDNN's kernel otherwise: then
watch measures the input gradient only, tested too).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence

import gradlab
from gradlab.vocab.quantities import TIMESTEPS_COLUMNS
from watch_twins import assert_same_parameters, close, delta_rms, read_csv, read_layers, read_timesteps

GATES = {"lstm": ("input", "forget", "cell", "output"), "gru": ("reset", "update", "new"), "rnn": ()}


@pytest.fixture
def no_onednn():
    """The CPU's cell loop for nn.LSTM (oneDNN's kernel rounds otherwise), for the whole test."""
    with torch.backends.mkldnn.flags(enabled=False):
        yield


def kind_of(module: nn.RNNBase) -> str:
    return {"LSTM": "lstm", "GRU": "gru"}.get(module.mode, "rnn")


def by_hand(module: nn.RNNBase, x: torch.Tensor, kept: dict) -> torch.Tensor:
    """The module's output for batch-first x (B, T, F), from the equations (PyTorch's docs), with
    initial states 0; kept[(suffix, t)] gets every tensor of step t, kept[suffix] the direction's
    outputs (T, B, H), kept['input'] x."""
    kind = kind_of(module)
    H = module.hidden_size
    directions = 2 if module.bidirectional else 1
    x.retain_grad() if x.requires_grad else None
    kept["input"] = x
    sequence = x
    for layer in range(module.num_layers):
        outputs = []
        for d in range(directions):
            suffix = f"l{layer}" + ("_reverse" if d else "")
            W_ih, W_hh = getattr(module, f"weight_ih_{suffix}"), getattr(module, f"weight_hh_{suffix}")
            b_ih, b_hh = (getattr(module, f"bias_ih_{suffix}"), getattr(module, f"bias_hh_{suffix}")) if module.bias else (0, 0)
            steps = sequence.shape[1]
            h = torch.zeros(x.shape[0], H, dtype=x.dtype)
            c = torch.zeros_like(h)
            hidden = [None] * steps
            for t in range(steps) if d == 0 else range(steps - 1, -1, -1):
                gi = sequence[:, t] @ W_ih.T + b_ih
                gh = h @ W_hh.T + b_hh
                entry = {}
                if kind == "rnn":
                    a = gi + gh
                    h = torch.tanh(a) if module.nonlinearity == "tanh" else torch.relu(a)
                    entry["a"] = [a]
                elif kind == "lstm":
                    a = gi + gh
                    i, f, g, o = torch.sigmoid(a[:, :H]), torch.sigmoid(a[:, H : 2 * H]), torch.tanh(a[:, 2 * H : 3 * H]), torch.sigmoid(a[:, 3 * H :])
                    c = f * c + i * g
                    h = o * torch.tanh(c)
                    entry.update(input=i, forget=f, cell=g, output=o, a=[a], c=c)
                else:
                    a_rz = gi[:, : 2 * H] + gh[:, : 2 * H]
                    r, z = torch.sigmoid(a_rz[:, :H]), torch.sigmoid(a_rz[:, H:])
                    a_n = gi[:, 2 * H :] + r * gh[:, 2 * H :]
                    n = torch.tanh(a_n)
                    h = (1 - z) * n + z * h
                    entry.update(reset=r, update=z, new=n, a=[a_rz, a_n])
                entry["h"] = h
                for value in [*entry["a"], h] + ([c] if kind == "lstm" else []):
                    value.retain_grad()
                kept[(suffix, t)] = entry
                hidden[t] = h
            out = torch.stack(hidden, dim=1)  # (B, T, H)
            kept[suffix] = out
            outputs.append(out)
        sequence = outputs[0] if directions == 1 else torch.cat(outputs, dim=2)
    return sequence


def saturated(gate: str, g: torch.Tensor) -> float:
    small = 1 - g * g < 0.05 if gate in ("cell", "new") else g * (1 - g) < 0.05 * 0.25
    return small.double().mean().item()


def expected_time_steps(module: nn.RNNBase, kept: dict, name: str, steps: int) -> dict[tuple[str, int], dict]:
    """The timesteps.csv values of every (layer and direction, t), from the kept tensors."""
    kind = kind_of(module)
    rows = {}
    for suffix in [f"l{layer}" + ("_reverse" if d else "") for layer in range(module.num_layers) for d in range(2 if module.bidirectional else 1)]:
        for t in range(steps):
            entry = kept[(suffix, t)]
            row = {
                "delta_norm": math.sqrt(sum(part.grad.double().pow(2).sum().item() for part in entry["a"])),
                "hidden_delta_norm": entry["h"].grad.norm().item(),
                "cell_delta_norm": entry["c"].grad.norm().item() if kind == "lstm" else None,
                "hidden_norm": entry["h"].norm().item(),
                "input_delta_norm": kept["input"].grad[:, t].norm().item() if suffix == "l0" and kept["input"].grad is not None else None,
                "saturated_frac": (1 - entry["h"].detach() ** 2 < 0.05).double().mean().item() if kind == "rnn" and module.nonlinearity == "tanh" else None,
            }
            for gate in ("input", "forget", "cell", "output", "reset", "update", "new"):
                value = entry.get(gate)
                row[f"{gate}_mean"] = value.mean().item() if value is not None else None
                row[f"{gate}_saturated_frac"] = saturated(gate, value.detach()) if value is not None else None
            rows[(f"{name}.{suffix}", t)] = row
    return rows


def expected_layer(module: nn.RNNBase, kept: dict, suffix: str, steps: int, before: dict) -> dict:
    """A recurrent layer's layers.csv values (the weights as they were before the update `before`)."""
    W_ih, W_hh = getattr(module, f"weight_ih_{suffix}"), getattr(module, f"weight_hh_{suffix}")
    old_ih, old_hh = before[id(W_ih)], before[id(W_hh)]
    parts = [kept[(suffix, t)]["a"] for t in range(steps)]
    per_part = [sum(parts[t][j].grad.double().abs() for t in range(steps)) for j in range(len(parts[0]))]
    batch = parts[0][0].shape[0]
    out = kept[suffix].detach()
    row = {
        "delta_norm": math.sqrt(sum(p.grad.double().pow(2).sum().item() for step in parts for p in step)),
        "delta_rms": math.sqrt(batch * sum(p.pow(2).sum().item() for p in per_part)),
        "weight_norm": torch.cat([old_ih, old_hh], dim=1).norm().item(),
        "weight_grad_norm": torch.cat([W_ih.grad, W_hh.grad], dim=1).norm().item(),
        "ih_weight_norm": old_ih.norm().item(), "hh_weight_norm": old_hh.norm().item(),
        "ih_weight_grad_norm": W_ih.grad.norm().item(), "hh_weight_grad_norm": W_hh.grad.norm().item(),
        "ih_update_ratio": (W_ih.detach() - old_ih).norm().item() / old_ih.norm().item(),
        "hh_update_ratio": (W_hh.detach() - old_hh).norm().item() / old_hh.norm().item(),
        "update_ratio": torch.cat([W_ih.detach() - old_ih, W_hh.detach() - old_hh], 1).norm().item() / torch.cat([old_ih, old_hh], 1).norm().item(),
        "act_mean": out.mean().item(), "act_std": out.std(correction=0).item(),
    }  # fmt: skip
    if module.bias:
        b_ih, b_hh = getattr(module, f"bias_ih_{suffix}"), getattr(module, f"bias_hh_{suffix}")
        row |= {"bias_grad_norm": torch.cat([b_ih.grad, b_hh.grad]).norm().item(), "ih_bias_grad_norm": b_ih.grad.norm().item(),
                "hh_bias_grad_norm": b_hh.grad.norm().item()}  # fmt: skip
    return row


# --------------------------------------------------------------------------------------------
# the LSTM language model of the issue: embedding -> 2-layer LSTM -> tied head
# --------------------------------------------------------------------------------------------

VOCAB, EMBED, T, B = 13, 8, 6, 5


class LanguageModel(nn.Module):
    def __init__(self, dropout: float = 0.0):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, EMBED)
        self.lstm = nn.LSTM(EMBED, EMBED, num_layers=2, batch_first=True, dropout=dropout)
        self.head = nn.Linear(EMBED, VOCAB)
        self.head.weight = self.embed.weight  # tied (Press & Wolf 2017)

    def forward(self, idx, kept=None):
        x = self.embed(idx)
        if kept is None:
            h, _ = self.lstm(x)
        else:
            x.retain_grad()
            kept["embed"] = x
            h = by_hand(self.lstm, x, kept)
        logits = self.head(h)
        if kept is not None:
            logits.retain_grad()
            kept["head"] = logits
        return logits.transpose(1, 2)  # (B, vocab, T): next-token labels per position


def token_batches(n: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, VOCAB, (B, T), generator=g), torch.randint(0, VOCAB, (B, T), generator=g)) for _ in range(n)]


def test_lstm_language_model_against_the_recurrence_by_hand(tmp_path, no_onednn):
    torch.manual_seed(0)
    model = LanguageModel()
    twin = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    twin_opt = torch.optim.SGD(twin.parameters(), lr=0.5, momentum=0.9)
    checked = 0
    with gradlab.watch(model, out=tmp_path, every=2, name="lm", optimizer=opt, time=True) as w:
        for step, (idx, y) in enumerate(token_batches(5)):
            opt.zero_grad()
            loss = F.cross_entropy(model(idx), y)
            loss.backward()
            opt.step()
            w.step(loss=loss)
            twin_opt.zero_grad()
            kept = {}
            F.cross_entropy(twin(idx, kept), y).backward()
            before = {id(p): p.detach().clone() for p in twin.parameters()}
            twin_opt.step()
            if step % 2:
                continue
            layers, steps = read_layers(w.run_dir)[step], read_timesteps(w.run_dir)[step]
            assert list(layers) == ["embed", "lstm.l0", "lstm.l1", "head"]
            assert [layers[n]["kind"] for n in layers] == ["hidden", "hidden", "hidden", "head"]
            for suffix in ("l0", "l1"):
                for column, value in expected_layer(twin.lstm, kept, suffix, T, before).items():
                    assert close(layers[f"lstm.{suffix}"][column], value), (step, suffix, column, layers[f"lstm.{suffix}"][column], value)
                    checked += 1
            embedding, head = kept["embed"].grad, kept["head"].grad
            assert close(layers["embed"]["delta_norm"], embedding.norm().item()) and close(layers["embed"]["delta_rms"], delta_rms(embedding))
            assert close(layers["head"]["delta_norm"], head.norm().item()) and close(layers["head"]["delta_rms"], delta_rms(head))
            tied = twin.embed.weight
            assert layers["head"]["weight_grad_norm"] == layers["embed"]["weight_grad_norm"]
            assert close(layers["head"]["weight_grad_norm"], tied.grad.norm().item())
            assert close(layers["head"]["update_ratio"], (tied.detach() - before[id(tied)]).norm().item() / before[id(tied)].norm().item())
            expected = expected_time_steps(twin.lstm, kept, "lstm", T)
            assert sorted(steps) == sorted(expected)
            for key, values in expected.items():
                assert steps[key]["layer"] == layers[key[0]]["layer"]
                for column, value in values.items():
                    if column.endswith("saturated_frac"):  # counts of float32 values near a threshold: float64 test below
                        continue
                    assert close(steps[key][column], value, rel=2e-5), (step, key, column, steps[key][column], value)
                    checked += value is not None
    assert checked > 300  # (3 measured steps: 2 layers x 17 columns, 2 x 6 time steps x 10 columns, each)
    with open(w.run_dir / "timesteps.csv") as file:
        assert file.readline().strip().split(",") == TIMESTEPS_COLUMNS
    config = gradlab.load(w.run_dir).config
    assert list(config["model"]["layers"]) == ["embed", "lstm.l0", "lstm.l1", "head"]
    assert config["model"]["time"] == {"lstm": config["model"]["time"]["lstm"]} and config["model"]["time"]["lstm"].startswith("exact")


def test_the_language_model_trains_bit_for_bit_as_unwatched(tmp_path, no_onednn):
    """Dropout between the LSTM's layers included: the unrolled path draws the same masks."""
    torch.manual_seed(0)
    model = LanguageModel(dropout=0.3)
    twin = copy.deepcopy(model)
    for net, watched in ((model, True), (twin, False)):
        opt = torch.optim.Adam(net.parameters(), lr=0.01)
        torch.manual_seed(3)
        w = gradlab.watch(net, out=tmp_path, every=2, optimizer=opt, time=True) if watched else None
        for idx, y in token_batches(6):
            opt.zero_grad()
            F.cross_entropy(net(idx), y).backward()
            opt.step()
            if w is not None:
                w.step()
        if w is not None:
            run_dir = w.close()
    assert_same_parameters(model, twin)
    assert len(read_timesteps(run_dir)) == 3  # steps 0, 2 and 4 were measured


@pytest.mark.slow
def test_compare_plot_and_report_read_the_time_steps(tmp_path, no_onednn):
    torch.manual_seed(0)
    model = LanguageModel()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    with gradlab.watch(model, out=tmp_path / "runs", every=1, optimizer=opt, time=True) as w:
        for idx, y in token_batches(3):
            opt.zero_grad()
            F.cross_entropy(model(idx), y).backward()
            opt.step()
            w.step()
    run = gradlab.load(w.run_dir)
    assert run.timesteps is not None and len(run.timesteps) == 3 * 2 * T and not run.notes
    table = gradlab.comparison([w.run_dir]).table
    last = run.timesteps[(run.timesteps["step"] == 0) & (run.timesteps["name"] == "lstm.l1")].sort_values("t")["delta_norm"].to_numpy()
    assert math.isclose(table["time_gain@0"][0], last[0] / last[-1], rel_tol=1e-12)
    assert gradlab.plot([w.run_dir], tmp_path / "figures")
    report = gradlab.write_report([w.run_dir], tmp_path / "report.html")
    assert report.runs == 1


# --------------------------------------------------------------------------------------------
# every shape of module, in float64 (no oneDNN kernel: counts near thresholds are exact too)
# --------------------------------------------------------------------------------------------

SHAPES = [
    ("lstm", {"num_layers": 2, "bidirectional": True, "batch_first": True}),
    ("gru", {"num_layers": 2, "bidirectional": True, "batch_first": False}),
    ("rnn", {"num_layers": 2, "bidirectional": False, "batch_first": True, "nonlinearity": "tanh"}),
    ("rnn", {"num_layers": 1, "bidirectional": True, "batch_first": False, "nonlinearity": "relu"}),
    ("lstm", {"num_layers": 1, "bidirectional": False, "batch_first": False, "bias": False}),
]


class Tagger(nn.Module):
    """A recurrent module over (projected) features and a Linear read-out at every step."""

    def __init__(self, kind: str, options: dict):
        super().__init__()
        self.batch_first = options.get("batch_first", False)
        self.proj = nn.Linear(3, 4)
        self.rnn = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[kind](4, 5, **options)
        self.head = nn.Linear(5 * (2 if options.get("bidirectional") else 1), 3)

    def forward(self, x, kept=None):  # x (B, T, 3)
        u = torch.tanh(self.proj(x))
        if kept is not None:
            h = by_hand(self.rnn, u, kept)
        elif self.batch_first:
            h, _ = self.rnn(u)
        else:
            h, _ = self.rnn(u.transpose(0, 1))
            h = h.transpose(0, 1)
        return self.head(h).transpose(1, 2)  # (B, classes, T)


@pytest.mark.parametrize("kind,options", SHAPES, ids=[f"{k}-{i}" for i, (k, _) in enumerate(SHAPES)])
def test_every_layer_and_direction_against_the_recurrence_by_hand(tmp_path, kind, options):
    torch.manual_seed(0)
    model = Tagger(kind, options).double()
    for name, p in model.rnn.named_parameters():  # weights and biases that saturate some gates sometimes
        with torch.no_grad():
            p.mul_(3.0 if name.startswith("bias") else 4.0)
    twin = copy.deepcopy(model)
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(7, 6, 3, generator=g, dtype=torch.float64), torch.randint(0, 3, (7, 6), generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradlab.watch(model, out=tmp_path, every=1, optimizer=opt, time=True) as w:
        F.cross_entropy(model(x), y).backward()
        opt.step()
        w.step()
    kept = {}
    twin_opt = torch.optim.SGD(twin.parameters(), lr=0.1)
    F.cross_entropy(twin(x, kept), y).backward()
    before = {id(p): p.detach().clone() for p in twin.parameters()}
    twin_opt.step()
    layers, steps = read_layers(w.run_dir)[0], read_timesteps(w.run_dir)[0]
    suffixes = [f"l{layer}" + ("_reverse" if d else "") for layer in range(twin.rnn.num_layers) for d in range(2 if twin.rnn.bidirectional else 1)]
    assert list(layers) == ["proj", *(f"rnn.{s}" for s in suffixes), "head"]
    for suffix in suffixes:
        for column, value in expected_layer(twin.rnn, kept, suffix, 6, before).items():
            assert close(layers[f"rnn.{suffix}"][column], value, rel=1e-10), (suffix, column)
    if kind == "rnn":  # the activation's regions over every (t, example, unit)
        for suffix in suffixes:
            a = torch.stack([kept[(suffix, t)]["a"][0].detach() for t in range(6)])
            if options["nonlinearity"] == "tanh":
                assert close(layers[f"rnn.{suffix}"]["saturated_frac"], (1 - torch.tanh(a) ** 2 < 0.05).double().mean().item())
                assert layers[f"rnn.{suffix}"]["inactive_frac"] is None
            else:
                assert close(layers[f"rnn.{suffix}"]["inactive_frac"], (a <= 0).double().mean().item())
                assert close(layers[f"rnn.{suffix}"]["dead_frac"], (a <= 0).all(0).all(0).double().mean().item())
    expected = expected_time_steps(twin.rnn, kept, "rnn", 6)
    assert sorted(steps) == sorted(expected)
    for key, values in expected.items():
        for column, value in values.items():
            assert close(steps[key][column], value, rel=1e-10), (key, column, steps[key][column], value)
    if kind != "rnn":  # the thresholds are exercised
        assert any(0 < steps[key][f"{gate}_saturated_frac"] < 1 for gate in GATES[kind] for key in steps)


@pytest.mark.parametrize("kind,options", SHAPES, ids=[f"{k}-{i}" for i, (k, _) in enumerate(SHAPES)])
def test_every_shape_trains_bit_for_bit_as_unwatched(tmp_path, kind, options, no_onednn):
    """float32, with the initial states given (a truncated back-propagation loop passes them on)."""
    torch.manual_seed(0)
    options = {**options, "dropout": 0.25} if options["num_layers"] > 1 else options
    model = Tagger(kind, options)
    twin = copy.deepcopy(model)
    g = torch.Generator().manual_seed(2)
    data = [(torch.randn(4, 5, 3, generator=g), torch.randint(0, 3, (4, 5), generator=g)) for _ in range(5)]
    for net, watched in ((model, True), (twin, False)):
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        torch.manual_seed(5)
        w = gradlab.watch(net, out=tmp_path, every=2, optimizer=opt, time=True) if watched else None
        for x, y in data:
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()
            w.step() if w is not None else None
        w.close() if w is not None else None
    assert_same_parameters(model, twin)


def test_initial_states_and_final_states_are_the_fused_calls(no_onednn, tmp_path):
    """hx given, (h_n, c_n) returned: the same tensors as the fused call, bit for bit."""
    torch.manual_seed(0)
    lstm = nn.LSTM(4, 5, num_layers=2, bidirectional=True)
    x = torch.randn(6, 3, 4)
    h0, c0 = torch.randn(4, 3, 5), torch.randn(4, 3, 5)
    expected = lstm(x, (h0, c0))
    with gradlab.watch(lstm, out=tmp_path, every=1, time=True):
        got = lstm(x, (h0, c0))
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1][0], expected[1][0]) and torch.equal(got[1][1], expected[1][1])


# --------------------------------------------------------------------------------------------
# where the unrolled cells cannot run: the input gradient per time step, said so
# --------------------------------------------------------------------------------------------


def test_onednn_lstm_falls_back_to_the_input_gradient_and_says_why(tmp_path):
    """An nn.LSTM in float32 on the CPU with oneDNN on (PyTorch's default) runs oneDNN's kernel:
    watch leaves it running and measures ||dL/dx_t|| only; training stays bit for bit."""
    if not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
        pytest.skip("oneDNN is not available here")
    torch.manual_seed(0)
    model = LanguageModel()
    twin = copy.deepcopy(model)
    reference = copy.deepcopy(model)
    batches = token_batches(3)
    run_dir = None
    for net, watched in ((model, True), (twin, False)):
        opt = torch.optim.SGD(net.parameters(), lr=0.5)
        w = gradlab.watch(net, out=tmp_path, every=1, optimizer=opt, time=True) if watched else None
        for idx, y in batches:
            opt.zero_grad()
            F.cross_entropy(net(idx), y).backward()
            opt.step()
            w.step() if w is not None else None
        run_dir = w.close() if w is not None else run_dir
    assert_same_parameters(model, twin)
    # the reference: the embedding's output kept with retain_grad, around the same fused call
    x = reference.embed(batches[0][0])
    x.retain_grad()
    h, _ = reference.lstm(x)
    F.cross_entropy(reference.head(h).transpose(1, 2), batches[0][1]).backward()
    steps = read_timesteps(run_dir)[0]
    assert sorted(steps) == [("lstm.l0", t) for t in range(T)]
    for t in range(T):
        assert close(steps[("lstm.l0", t)]["input_delta_norm"], x.grad[:, t].norm().item())
        assert all(value is None for column, value in steps[("lstm.l0", t)].items() if column not in ("input_delta_norm", "layer"))
    layers = read_layers(run_dir)[0]
    assert list(layers) == ["embed", "lstm.l0", "lstm.l1", "head"]
    assert layers["lstm.l0"]["delta_norm"] is None and close(layers["lstm.l1"]["hh_weight_grad_norm"], reference.lstm.weight_hh_l1.grad.norm().item())
    why = gradlab.load(run_dir).config["model"]["time"]["lstm"]
    assert why.startswith("input gradient only: on the CPU nn.LSTM runs oneDNN's fused kernel") and "torch.backends.mkldnn.enabled = False" in why


def test_packed_sequences_and_projections_fall_back_to_the_input_gradient(tmp_path, no_onednn):
    class Packed(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(3, 4)
            self.lstm = nn.LSTM(4, 5, batch_first=True, proj_size=2)
            self.head = nn.Linear(2, 3)

        def forward(self, x, lengths, keep=None):
            packed = pack_padded_sequence(torch.tanh(self.proj(x)), lengths, batch_first=True, enforce_sorted=False)
            if keep is not None:
                packed.data.retain_grad()
                keep.append(packed)
            _, (h, _) = self.lstm(packed)
            return self.head(h[-1])

    torch.manual_seed(0)
    model = Packed()
    twin = copy.deepcopy(model)
    x, lengths, y = torch.randn(4, 6, 3), torch.tensor([6, 2, 4, 5]), torch.randint(0, 3, (4,))
    with gradlab.watch(model, out=tmp_path, every=1, time=True) as w:
        F.cross_entropy(model(x, lengths), y).backward()
        w.step()
    keep = []
    F.cross_entropy(twin(x, lengths, keep), y).backward()
    (packed,) = keep
    per_step = packed.data.grad.split(packed.batch_sizes.tolist())
    steps = read_timesteps(w.run_dir)[0]
    assert sorted(steps) == [("lstm.l0", t) for t in range(6)]
    for t in range(6):
        assert close(steps[("lstm.l0", t)]["input_delta_norm"], per_step[t].norm().item())
    assert gradlab.load(w.run_dir).config["model"]["time"]["lstm"] == "input gradient only: a packed sequence (the unrolled cells run padded sequences only)"
    # the projection's weight counts in the layer's weights
    layers = read_layers(w.run_dir)[0]
    own = model.lstm
    assert close(layers["lstm.l0"]["weight_norm"], torch.cat([own.weight_ih_l0.flatten(), own.weight_hh_l0.flatten(), own.weight_hr_l0.flatten()]).norm().item())

    with gradlab.watch(model.lstm, out=tmp_path, every=1, time=True) as w:  # the module alone, on padded data
        h, _ = model.lstm(torch.randn(4, 6, 4))
        h.sum().backward()
        w.step()
    assert gradlab.load(w.run_dir).config["model"]["time"]["LSTM"] == "input gradient only: proj_size=2 (the unrolled cells have no projection)"
    assert not read_timesteps(w.run_dir)  # the data itself takes no gradient: no time step to measure


def test_without_time_a_recurrent_module_is_one_site(tmp_path):
    torch.manual_seed(0)
    model = LanguageModel()
    with gradlab.watch(model, out=tmp_path, every=1) as w:
        idx, y = token_batches(1)[0]
        F.cross_entropy(model(idx), y).backward()
        w.step()
    layers = read_layers(w.run_dir)[0]
    assert list(layers) == ["embed", "lstm", "head"] and layers["lstm"]["delta_norm"] is None
    assert not (w.run_dir / "timesteps.csv").exists()
    assert [c for c in read_csv(w.run_dir, "layers.csv")[0] if c.startswith("ih_")] == []


@pytest.mark.parametrize("kind,options", [SHAPES[1], SHAPES[2]], ids=["gru", "rnn"])
def test_gru_and_rnn_are_exact_with_onednn_on(tmp_path, kind, options):
    """PyTorch's CPU GRU and RNN have no oneDNN kernel: their time steps are measured exactly with
    PyTorch's default flags (a torch that gave them one would fail here, not in a user's training)."""
    torch.manual_seed(0)
    model = Tagger(kind, options)
    twin = copy.deepcopy(model)
    data = [(torch.randn(4, 5, 3), torch.randint(0, 3, (4, 5))) for _ in range(3)]
    for net, watched in ((model, True), (twin, False)):
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        w = gradlab.watch(net, out=tmp_path, every=1, optimizer=opt, time=True) if watched else None
        for x, y in data:
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()
            w.step() if w is not None else None
        if w is not None:
            run_dir = w.close()
    assert_same_parameters(model, twin)
    assert gradlab.load(run_dir).config["model"]["time"]["rnn"].startswith("exact")
