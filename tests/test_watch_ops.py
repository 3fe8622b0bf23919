"""Every use of a parameter is a site (gradlab.watch, ops.py): attention, transformer layers, a
GPT-style block, tied weights and functional models, against twins measured by hand (watch_twins.py).

Where the watched model calls a fused module (nn.MultiheadAttention, nn.TransformerEncoderLayer),
its twin computes the same thing written out with matrix products, so that every projection's
output can be kept with retain_grad(); the other twins run the watched model's own forward with
retain_grad() on every use. And each model trains bit for bit the same watched and unwatched.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import gradlab
from watch_twins import assert_matches, assert_same_parameters, read_csv, read_layers, train_alone, train_twins

E, HEADS, T, B, CLASSES = 8, 2, 5, 6, 3


def attention_by_hand(x: torch.Tensor, attn: nn.MultiheadAttention, keep, prefix: str) -> torch.Tensor:
    """nn.MultiheadAttention's self-attention on batch-first x (B, T, E), written out."""
    batch, steps, _ = x.shape
    z = x @ attn.in_proj_weight.T + attn.in_proj_bias
    keep(f"{prefix}.in_proj_weight", z, attn.in_proj_weight, attn.in_proj_bias)
    q, k, v = (part.reshape(batch, steps, HEADS, E // HEADS).transpose(1, 2) for part in z.split(E, dim=-1))
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(E // HEADS), dim=-1)
    mixed = (weights @ v).transpose(1, 2).reshape(batch, steps, E)
    out = mixed @ attn.out_proj.weight.T + attn.out_proj.bias
    keep(f"{prefix}.out_proj", out, attn.out_proj.weight, attn.out_proj.bias)
    return out


class AttentionNet(nn.Module):
    """Self-attention over a sequence, mean-pooled, then a Linear head."""

    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(E, HEADS, batch_first=True)
        self.head = nn.Linear(E, CLASSES)

    def forward(self, x, keep=None):
        if keep is None:
            h, _ = self.attn(x, x, x)
        else:
            h = attention_by_hand(x, self.attn, keep, "attn")
        z = self.head(h.mean(dim=1))
        if keep is not None:
            keep("head", z, self.head.weight, self.head.bias)
        return z


class EncoderNet(nn.Module):
    """One nn.TransformerEncoderLayer (post-norm, ReLU) and a Linear head."""

    def __init__(self, dropout: float = 0.0):
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(E, HEADS, dim_feedforward=16, dropout=dropout, batch_first=True)
        self.head = nn.Linear(E, CLASSES)

    def forward(self, x, keep=None):
        layer = self.layer
        if keep is None:
            h = layer(x)
        else:
            h = layer.norm1(x + attention_by_hand(x, layer.self_attn, keep, "layer.self_attn"))
            u = h @ layer.linear1.weight.T + layer.linear1.bias
            keep("layer.linear1", u, layer.linear1.weight, layer.linear1.bias)
            f = torch.relu(u) @ layer.linear2.weight.T + layer.linear2.bias
            keep("layer.linear2", f, layer.linear2.weight, layer.linear2.bias)
            h = layer.norm2(h + f)
        z = self.head(h[:, 0])
        if keep is not None:
            keep("head", z, self.head.weight, self.head.bias)
        return z


class GPT(nn.Module):
    """A GPT-style block (Radford et al. 2019; nanoGPT's layout): token and position embeddings, a
    pre-norm causal self-attention with F.scaled_dot_product_attention, an MLP, and a head tied to
    the token embedding through a matrix product with its transpose."""

    def __init__(self, vocab: int = 11, dropout: float = 0.0):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, E), nn.Embedding(T, E)
        self.ln_1, self.ln_2, self.ln_f = nn.LayerNorm(E), nn.LayerNorm(E), nn.LayerNorm(E)
        self.c_attn, self.c_proj = nn.Linear(E, 3 * E), nn.Linear(E, E)
        self.c_fc, self.mlp_proj = nn.Linear(E, 4 * E), nn.Linear(4 * E, E)
        self.dropout = nn.Dropout(dropout)

    def forward(self, idx, keep=None):
        keep = keep or (lambda *args, **kwargs: None)
        batch, steps = idx.shape
        tokens = self.wte(idx)
        keep("wte", tokens, self.wte.weight)
        positions = self.wpe(torch.arange(steps))
        keep("wpe", positions, self.wpe.weight, examples=False)  # (T, E): no examples' dimension
        x = self.dropout(tokens + positions)
        qkv = self.c_attn(self.ln_1(x))
        keep("c_attn", qkv, self.c_attn.weight, self.c_attn.bias)
        q, k, v = (part.view(batch, steps, HEADS, E // HEADS).transpose(1, 2) for part in qkv.split(E, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(batch, steps, E)
        projected = self.c_proj(y)
        keep("c_proj", projected, self.c_proj.weight, self.c_proj.bias)
        x = x + self.dropout(projected)
        hidden = self.c_fc(self.ln_2(x))
        keep("c_fc", hidden, self.c_fc.weight, self.c_fc.bias)
        out = self.mlp_proj(F.gelu(hidden))
        keep("mlp_proj", out, self.mlp_proj.weight, self.mlp_proj.bias)
        x = x + self.dropout(out)
        logits = self.ln_f(x) @ self.wte.weight.T  # tied: the embedding's second use
        keep("wte#1", logits, self.wte.weight)
        return logits.transpose(1, 2)  # (B, vocab, T) for a label per position


class Functional(nn.Module):
    """Bare parameters used through F.linear, a matrix product and a bilinear map; W1 twice."""

    def __init__(self):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(E, E) / math.sqrt(E))
        self.b1 = nn.Parameter(torch.zeros(E))
        self.w2 = nn.Parameter(torch.randn(E, E) / math.sqrt(E))
        self.bilinear = nn.Bilinear(E, E, CLASSES)

    def forward(self, x, keep=None):
        keep = keep or (lambda *args, **kwargs: None)
        h = F.linear(x, self.w1, self.b1)
        keep("w1", h, self.w1, self.b1)
        h = torch.tanh(h)
        g = h @ self.w2
        keep("w2", g, self.w2)
        g = F.linear(torch.tanh(g), self.w1)  # W1 again, without its bias
        keep("w1#1", g, self.w1)
        z = self.bilinear(h, torch.tanh(g))
        keep("bilinear", z, self.bilinear.weight, self.bilinear.bias)
        return z


def sequences(n: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(B, T, E, generator=g), torch.randint(0, CLASSES, (B,), generator=g)) for _ in range(n)]


def tokens(n: int, vocab: int = 11, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, vocab, (B, T), generator=g), torch.randint(0, vocab, (B, T), generator=g)) for _ in range(n)]


def vectors(n: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(B, E, generator=g), torch.randint(0, CLASSES, (B,), generator=g)) for _ in range(n)]


MODELS = {  # name: (make, batches, sites in call order)
    "attention": (AttentionNet, sequences, ["attn.in_proj_weight", "attn.out_proj", "head"]),
    "encoder": (EncoderNet, sequences, ["layer.self_attn.in_proj_weight", "layer.self_attn.out_proj", "layer.linear1", "layer.linear2", "head"]),
    "gpt": (GPT, tokens, ["wte", "wpe", "c_attn", "c_proj", "c_fc", "mlp_proj", "wte#1"]),
    "functional": (Functional, vectors, ["w1", "w2", "w1#1", "bilinear"]),
}


def watcher(tmp_path, name, every):
    return lambda model, opt: gradlab.watch(model, out=tmp_path, every=every, name=name, optimizer=opt)


@pytest.mark.parametrize("name", list(MODELS))
def test_every_use_of_a_parameter_against_its_twin(tmp_path, name):
    make, data, sites = MODELS[name]
    torch.manual_seed(0)
    run_dir, expected = train_twins(make(), data(5), F.cross_entropy, watcher(tmp_path, name, 2), every=2)
    recorded = read_layers(run_dir)
    assert list(recorded[0]) == sites
    assert [recorded[0][site]["layer"] for site in sites] == list(range(len(sites)))
    assert [recorded[0][site]["kind"] for site in sites] == ["hidden"] * (len(sites) - 1) + ["head"]
    assert_matches(recorded, expected)
    # config.yaml lists exactly the sites that write rows
    config = gradlab.load(run_dir).config
    assert list(config["model"]["layers"]) == sites and config["model"]["depth"] == len(sites) - 1


def test_tied_and_repeated_uses_share_the_parameter_columns(tmp_path):
    torch.manual_seed(0)
    run_dir, _ = train_twins(GPT(), tokens(1), F.cross_entropy, watcher(tmp_path, "gpt", 1), every=1)
    row = read_layers(run_dir)[0]
    shared = ("weight_norm", "weight_grad_norm", "update_ratio")
    assert all(row["wte"][q] == row["wte#1"][q] for q in shared)
    assert row["wte"]["delta_norm"] != row["wte#1"]["delta_norm"]
    assert row["wpe"]["delta_rms"] is None and row["wpe"]["delta_norm"] > 0  # (T, E): no examples
    description = gradlab.load(run_dir).config["model"]["layers"]
    assert description["wte#1"] == "matmul(wte.weight (11, 8))"
    assert description["c_attn"] == "linear(c_attn.weight (24, 8), bias c_attn.bias (24,))"


class TiedLM(nn.Module):
    """An embedding whose weight is also the head's (nn.Linear): one parameter, two modules."""

    def __init__(self, vocab: int = 11):
        super().__init__()
        self.embed = nn.Embedding(vocab, E)
        self.mix = nn.Linear(E, E)
        self.head = nn.Linear(E, vocab)
        self.head.weight = self.embed.weight

    def forward(self, idx, keep=None):
        keep = keep or (lambda *args, **kwargs: None)
        x = self.embed(idx)
        keep("embed", x, self.embed.weight)
        h = self.mix(x)
        keep("mix", h, self.mix.weight, self.mix.bias)
        z = self.head(torch.tanh(h))
        keep("head", z, self.head.weight, self.head.bias)
        return z.transpose(1, 2)


def test_an_embedding_tied_to_the_head_is_named_after_each_module(tmp_path):
    torch.manual_seed(0)
    run_dir, expected = train_twins(TiedLM(), tokens(4), F.cross_entropy, watcher(tmp_path, "tied", 1), every=1)
    recorded = read_layers(run_dir)
    assert list(recorded[0]) == ["embed", "mix", "head"]
    assert_matches(recorded, expected)
    assert recorded[0]["head"]["weight_grad_norm"] == recorded[0]["embed"]["weight_grad_norm"]
    assert recorded[0]["head"]["bias_grad_norm"] > 0 and recorded[0]["embed"]["bias_grad_norm"] is None


@pytest.mark.parametrize("name", list(MODELS))
def test_training_is_bit_for_bit_the_unwatched_one(tmp_path, name):
    """Watched every 2 steps (the mode on, off, on ...) or not at all: the same parameters, with
    dropout on (its random draws must be the same too)."""
    make, data, _ = MODELS[name]
    torch.manual_seed(0)
    model = make(dropout=0.2) if name in ("encoder", "gpt") else make()
    twin = copy.deepcopy(model)
    batches = data(5)
    torch.manual_seed(7)
    train_alone(model, batches, F.cross_entropy, watcher(tmp_path, name, 2))
    torch.manual_seed(7)
    train_alone(twin, batches, F.cross_entropy)
    assert_same_parameters(model, twin)


def test_cross_attention_uses_the_packed_weight_twice(tmp_path):
    """Encoder-decoder attention (key is value, query another tensor): PyTorch splits
    in_proj_weight into its query part and its key-value part: two uses of one parameter."""

    class Cross(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(E, HEADS, batch_first=True)
            self.head = nn.Linear(E, CLASSES)

        def forward(self, x):
            memory = torch.tanh(x.flip(1))
            h, _ = self.attn(x, memory, memory)
            return self.head(h.mean(1))

    torch.manual_seed(0)
    train_alone(Cross(), sequences(1), F.cross_entropy, watcher(tmp_path, "cross", 1))
    (run_dir,) = (tmp_path / "cross").iterdir()
    row = read_layers(run_dir)[0]
    assert list(row) == ["attn.in_proj_weight", "attn.in_proj_weight#1", "attn.out_proj", "head"]
    assert row["attn.in_proj_weight"]["weight_grad_norm"] == row["attn.in_proj_weight#1"]["weight_grad_norm"]
    assert row["attn.in_proj_weight"]["delta_norm"] != row["attn.in_proj_weight#1"]["delta_norm"]
    # the query part (L, N, E) and the key-value part (S, N, 2E): each with its examples in dimension 1
    assert row["attn.in_proj_weight"]["delta_rms"] > 0 and row["attn.in_proj_weight#1"]["delta_rms"] > 0


def test_unmeasured_steps_run_without_the_mode(tmp_path):
    """No torch function mode is active outside a measured forward pass, nor after one that raised."""
    from torch.overrides import _get_current_function_mode_stack

    torch.manual_seed(0)
    model = AttentionNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = []
    model.head.register_forward_hook(lambda *args: seen.append(len(_get_current_function_mode_stack())))
    with gradlab.watch(model, out=tmp_path, every=2, optimizer=opt) as w:
        for x, y in sequences(4):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            assert not _get_current_function_mode_stack()
            opt.step()
            w.step()
        with pytest.raises(AssertionError, match="embedding dimension"):
            model(torch.randn(2, 3, 5))  # a wrong feature size: the forward raises inside attention (a measured step)
        assert not _get_current_function_mode_stack()
    assert seen == [1, 0, 1, 0]  # (the pass that raised never reached the head)
    assert [r["step"] for r in read_csv(w.run_dir, "metrics.csv")] == ["0", "2"]


def test_a_sparse_embedding_and_keyword_arguments(tmp_path):
    """nn.Embedding(sparse=True) has a sparse gradient (its norm: the coalesced values'), and a
    functional call may name its weight."""

    class Bag(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(11, E, sparse=True)
            self.w = nn.Parameter(torch.randn(CLASSES, E))

        def forward(self, idx):
            return F.linear(input=self.embed(idx).mean(1), weight=self.w)

    torch.manual_seed(0)
    model = Bag()
    idx, y = torch.tensor([[1, 2, 2], [3, 1, 0]]), torch.tensor([0, 2])
    with gradlab.watch(model, out=tmp_path, every=1) as w:
        F.cross_entropy(model(idx), y).backward()
        w.step()
    row = read_layers(w.run_dir)[0]
    assert list(row) == ["embed", "w"]
    assert math.isclose(row["embed"]["weight_grad_norm"], model.embed.weight.grad.to_dense().norm().item(), rel_tol=1e-6)
    assert math.isclose(row["w"]["weight_grad_norm"], model.w.grad.norm().item(), rel_tol=1e-6)


@pytest.mark.slow
def test_compare_plot_and_report_read_the_transformer_records(tmp_path):
    torch.manual_seed(0)
    for name in ("encoder", "gpt"):
        make, data, sites = MODELS[name]
        train_alone(make(), data(3), F.cross_entropy, watcher(tmp_path / "runs", name, 1))
    runs = sorted((tmp_path / "runs").glob("*/*"))
    comparison = gradlab.comparison(runs)
    for (run_dir,), gain in zip(comparison.runs, comparison.table["gain@0"]):
        rows = read_layers(run_dir)[0]
        hidden = [n for n, r in rows.items() if r["kind"] == "hidden"]
        assert math.isclose(gain, rows[hidden[0]]["delta_rms"] / rows[hidden[-1]]["delta_rms"], rel_tol=1e-12)
    assert len(gradlab.plot(runs, tmp_path / "figures")) >= 4
    assert gradlab.write_report(runs, tmp_path / "report.html").runs == 2
