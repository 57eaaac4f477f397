import json
import subprocess
import sys

import onnx
import pytest
import torch
from torch import nn

from kompakt.errors import CheckpointError, ConfigError
from kompakt.export import export_onnx
from kompakt.search import MixedOp, SearchConfig, search
from kompakt.search.darts import bilevel_step
from kompakt.train import TrainConfig, fit, load_checkpoint, model_from_checkpoint


class OneEdge(nn.Module):
    """A one-edge 'supernet' where the target is exactly linear, so 'linear' is clearly best."""

    def __init__(self):
        super().__init__()
        from kompakt.models.searched import Zero

        edge = MixedOp(
            {
                "linear": nn.Linear(8, 8),
                "zero": Zero(),
                "identity": nn.Identity(),
                "tanh": nn.Tanh(),
            }
        )
        self.edges = nn.ModuleDict({"0_1": edge})  # the shape structure_penalty expects
        self.edge = edge

    def forward(self, x):
        return self.edges["0_1"](x)


def test_bilevel_search_picks_the_clearly_best_candidate():
    torch.manual_seed(0)
    net = OneEdge()
    target = torch.randn(8, 8)
    gamma = [net.edge.gamma]
    weights = [p for n, p in net.named_parameters() if not n.endswith("gamma")]
    arch = torch.optim.Adam(gamma, lr=0.05)
    opt = torch.optim.SGD(weights, lr=0.05)
    config = SearchConfig(prior="dirichlet", prior_weight=0.001)
    costs = [torch.zeros(4)]
    gen = torch.Generator().manual_seed(0)
    for _ in range(300):
        xv, xt = torch.randn(32, 8, generator=gen), torch.randn(32, 8, generator=gen)
        bilevel_step(
            net,
            arch,
            opt,
            (xv, (xv @ target).reshape(-1)),
            (xt, (xt @ target).reshape(-1)),
            "regression",
            config,
            costs,
        )
    assert net.edge.choice() == "linear"
    assert net.edge.weights()[0] > 0.5


def test_search_writes_a_plain_model_that_retrains_and_exports_without_mixtures(tmp_path):
    result = search(
        SearchConfig(
            space="mlp",
            data="synthetic",
            epochs=2,
            width=16,
            nodes=2,
            out=str(tmp_path / "s"),
            quiet=True,
        )
    )
    genotype = json.loads((tmp_path / "s" / "genotype.json").read_text())["genotype"]
    assert genotype == result["genotype"] and all(e["op"] != "zero" for e in genotype["edges"])
    ckpt = load_checkpoint(result["searched"])
    model = model_from_checkpoint(ckpt)
    assert not any(isinstance(m, MixedOp) for m in model.modules())
    assert not any("gamma" in name for name in ckpt["state_dict"])
    report = export_onnx(result["searched"], tmp_path / "searched.onnx")
    ops = {n.op_type for n in onnx.load(tmp_path / "searched.onnx").graph.node}
    assert report.ok and "Softmax" not in ops  # no mixture weights left in the graph
    retrained = fit(
        TrainConfig(
            init_from=result["searched"],
            data="synthetic",
            epochs=1,
            out=str(tmp_path / "r"),
            quiet=True,
        )
    )
    assert retrained["params"] == result["params"]


def test_conv_space_and_cli(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "kompakt.cli",
            "search",
            "--space",
            "conv",
            "--data",
            "synthetic",
            "--epochs",
            "1",
            "--width",
            "8",
            "--nodes",
            "1",
            "--out",
            str(tmp_path / "c"),
            "--quiet",
            "--json",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["genotype"]["space"] == "conv" and len(result["genotype"]["edges"]) == 1


def test_a_cell_of_only_parameter_free_edges_is_never_returned():
    from kompakt.search import SuperNet

    net = SuperNet("mlp", 3, 1, 8, width=8, nodes=2)
    with torch.no_grad():
        for edge in net.edges.values():  # identity wins every edge by far
            edge.gamma.zero_()
            edge.gamma[edge.names.index("identity")] = 10.0
            edge.gamma[edge.names.index("linear-narrow")] = 1.0
    genotype = net.genotype()
    ops = [e["op"] for e in genotype["edges"]]
    assert "linear-narrow" in ops and set(ops) - {"linear-narrow"} <= {"identity"}


def test_search_saves_the_best_epoch_on_validation(tmp_path):
    result = search(
        SearchConfig(
            space="mlp",
            data="synthetic",
            epochs=3,
            width=16,
            nodes=1,
            out=str(tmp_path),
            quiet=True,
        )
    )
    history = json.loads((tmp_path / "history.json").read_text())
    scores = [h["discretised_val"]["accuracy"] for h in history]
    assert result["best_epoch"] == 1 + scores.index(max(scores))
    assert result["val"]["accuracy"] == max(scores)
    assert result["genotype"] == history[result["best_epoch"] - 1]["genotype"]


def test_regression_search_and_retrain_do_not_diverge_with_defaults(tmp_path):
    result = search(
        SearchConfig(
            space="mlp",
            data="boston",
            epochs=2,
            width=16,
            nodes=1,
            out=str(tmp_path / "s"),
            quiet=True,
        )
    )
    retrained = fit(
        TrainConfig(
            init_from=result["searched"],
            data="boston",
            epochs=2,
            out=str(tmp_path / "r"),
            quiet=True,
        )
    )
    assert retrained["test"]["rmse"] < 20


def test_conv_space_defaults_are_small_and_old_genotypes_keep_their_stem():
    from kompakt.models.searched import SearchedNet

    config = SearchConfig(space="conv")
    assert (config.width, config.nodes) == (16, 2)
    assert (SearchConfig(space="mlp").width, SearchConfig(space="mlp").nodes) == (64, 3)
    old = {
        "space": "conv",
        "width": 8,
        "nodes": 1,
        "edges": [{"from": 0, "to": 1, "op": "conv3x3"}],
    }
    net = SearchedNet(10, 1, 28, old)
    assert net.stem.body[0].stride == (1, 1)  # a genotype without stem_stride: as it was built
    net = SearchedNet(10, 1, 28, {**old, "stem_stride": 2})
    assert net.stem.body[0].stride == (2, 2) and net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def _small_search(out, epochs, **changes):
    options = dict(space="mlp", data="digits", epochs=epochs, width=16, nodes=2, quiet=True)
    return SearchConfig(**{**options, "out": str(out), **changes})


def test_search_resume_continues_bit_for_bit(tmp_path):
    import torch

    whole = search(_small_search(tmp_path / "whole", 3))
    search(_small_search(tmp_path / "split", 2))
    resumed = search(_small_search(tmp_path / "split", 3, resume=True))
    assert resumed["genotype"] == whole["genotype"]
    assert resumed["best_epoch"] == whole["best_epoch"] and resumed["val"] == whole["val"]
    a = load_checkpoint(whole["searched"])["state_dict"]
    b = load_checkpoint(resumed["searched"])["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    history = json.loads((tmp_path / "split" / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2, 3]


def test_search_resume_refuses_changed_options_and_done_runs(tmp_path):
    search(_small_search(tmp_path / "s", 1))
    with pytest.raises(ConfigError, match=r"width: 16 -> 32"):
        search(_small_search(tmp_path / "s", 2, resume=True, width=32))
    with pytest.raises(ConfigError, match="already searched 1 epochs"):
        search(_small_search(tmp_path / "s", 1, resume=True))
    (tmp_path / "s" / "search_state.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="not a readable search state"):
        search(_small_search(tmp_path / "s", 2, resume=True))
