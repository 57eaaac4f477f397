import copy
import subprocess
import sys

import pytest
import torch
from torch import nn

from kompakt.errors import ConfigError
from kompakt.export import export_onnx
from kompakt.models import build_model
from kompakt.train import TrainConfig, fit, load_checkpoint, model_from_checkpoint
from kompakt.train.prune import prune_checkpoint
from kompakt.train.pruning import (
    RelevanceConfig,
    RelevancePruner,
    apply_masks,
    compact_,
    euclidean_prune,
    find_groups,
    l1_prune,
)

ZOO = [("lenet5", {}), ("vgg16-cifar", {"width": 0.125}), ("resnet18-cifar", {"width": 0.125})]


def predicted_params(model, groups):
    """Parameter count after compaction, from the masks and the layer shapes alone."""
    out_kept, in_kept, bn_kept = {}, {}, {}
    for g in groups:
        kept = int(g.mask.sum())
        for conv, bn in g.producers:
            out_kept[conv] = kept
            if bn:
                bn_kept[bn] = kept
        for name, per_channel in g.consumers:
            in_kept[name] = kept * per_channel
    total = 0
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            out, inp = out_kept.get(name, m.out_channels), in_kept.get(name, m.in_channels)
            total += out * inp * m.weight[0, 0].numel() + (out if m.bias is not None else 0)
        elif isinstance(m, nn.BatchNorm2d):
            total += 2 * bn_kept.get(name, m.num_features)
        elif isinstance(m, nn.Linear):
            total += in_kept.get(name, m.in_features) * m.out_features + m.out_features
        elif not list(m.children()):
            total += sum(p.numel() for p in m.parameters())
    return total


@pytest.mark.parametrize("name, kwargs", ZOO)
def test_compaction_reproduces_the_masked_model_with_fewer_parameters(name, kwargs):
    torch.manual_seed(0)
    model = build_model(name, 10, 1, 28, **kwargs).eval()
    groups = find_groups(model, torch.zeros(1, 1, 28, 28))
    gen = torch.Generator().manual_seed(1)
    for g in groups:  # random masks, at least one channel kept
        g.mask = (torch.rand(g.channels, generator=gen) > 0.5).float()
        g.mask[0] = 1
    x = torch.randn(4, 1, 28, 28)
    masker = apply_masks(model, groups)
    with torch.no_grad():
        masked = model(x)
    masker.remove()
    before = sum(p.numel() for p in model.parameters())
    predicted = predicted_params(model, groups)
    compact_(model, groups)
    with torch.no_grad():
        compacted = model(x)
    assert (masked - compacted).abs().max().item() < 1e-5
    assert sum(p.numel() for p in model.parameters()) == predicted < before


def test_residual_channels_are_tied_across_adds():
    model = build_model("resnet18-cifar", 10, 3, 32, width=0.125)
    groups = {g.name: g for g in find_groups(model, torch.zeros(1, 3, 32, 32))}
    stem = groups["stem.0"]
    assert [conv for conv, _ in stem.producers] == [
        "stem.0",
        "layers.0.0.conv2",
        "layers.0.1.conv2",
    ]
    stage2 = next(g for g in groups.values() if "layers.1.0.shortcut.0" in dict(g.producers))
    assert len(stage2.producers) == 3  # conv2 of both blocks + the 1x1 shortcut conv


def test_l1_drops_the_smallest_filters_and_euclidean_the_duplicates():
    model = nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1, bias=False), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 2)
    )
    with torch.no_grad():
        w = model[0].weight
        w.copy_(torch.randn_like(w))
        w[1] *= 0.01
        w[4] *= 0.01
        w[5] = w[2] * 1.001  # a near-duplicate of filter 2
    x = torch.zeros(1, 1, 4, 4)
    (group,) = l1_prune(copy.deepcopy(model), 2 / 6, example=x)
    assert group.mask.tolist() == [1, 0, 1, 1, 0, 1]
    (group,) = euclidean_prune(model, ratio=1 / 6, example=x)
    assert group.mask[2] + group.mask[5] == 1 and group.mask.sum() == 5
    with pytest.raises(ConfigError, match="exactly one of ratio or threshold"):
        euclidean_prune(model, example=x)


@pytest.mark.parametrize("prune", [l1_prune, euclidean_prune])
def test_criteria_prune_what_the_model_computes_and_compact_keeps_it(prune):
    """After l1_prune / euclidean_prune the model already evaluates the pruned network (no
    silent evaluation of the unpruned one); compact() keeps exactly those outputs; undo()
    restores the unpruned outputs."""
    torch.manual_seed(0)
    model = build_model("lenet5", 10, 1, 28).eval()
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        unpruned = model(x)
    pruning = prune(model, ratio=0.5, example=torch.zeros(1, 1, 28, 28))
    assert 0.45 < pruning.sparsity < 0.55
    with torch.no_grad():
        masked = model(x)
    assert (masked - unpruned).abs().max() > 1e-3  # the pruned state is what users see
    pruning.undo()
    with torch.no_grad():
        assert torch.equal(model(x), unpruned)
    pruning = prune(model, ratio=0.5, example=torch.zeros(1, 1, 28, 28))
    before = sum(p.numel() for p in model.parameters())
    records = pruning.compact()
    assert records and sum(p.numel() for p in model.parameters()) < before
    with torch.no_grad():
        assert (model(x) - masked).abs().max() < 1e-5


def _pruned_per_group(allocation: str) -> list[float]:
    """Sparsity of each group after a relevance run forced to 50 % on a net whose first conv's
    filters all carry signal and whose second conv has 6 dead filters out of 8."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )
    config = RelevanceConfig(every=10, warmup=10, target=0.5, allocation=allocation)
    pruner = RelevancePruner(model, config, example=torch.zeros(1, 1, 8, 8), seed=0)
    for step in range(40):
        pruner.before_step()
        pruner.after_step(1.0 + 0.01 * (step % 3))
    # relevances decided by hand: group 1's filters 2..7 are the least relevant of all
    pruner.relevance[0][:] = torch.arange(8, 16, dtype=torch.float64)
    pruner.relevance[1][:] = torch.tensor([20.0, 21.0, 0, 1, 2, 3, 4, 5], dtype=torch.float64)
    groups = pruner.finish()
    return [float((g.mask == 0).float().mean()) for g in groups]


def test_relevance_allocation_global_or_per_group():
    assert _pruned_per_group("global") == [0.25, 0.75]  # the dead layer gives up the most
    assert _pruned_per_group("per-group") == [0.5, 0.5]  # like the L1 / Euclidean baselines
    with pytest.raises(ConfigError, match="allocation"):
        RelevanceConfig(allocation="layer")
    with pytest.raises(ConfigError, match="unknown relevance pruning option"):
        TrainConfig(model="lenet5", data="digits", prune="relevance", prune_options={"x": 1})
    with pytest.raises(ConfigError, match="need --prune relevance"):
        TrainConfig(model="lenet5", data="digits", prune_options={"dummies": 8})


def test_relevance_removes_the_filters_known_to_be_useless():
    """Filters 4..7 are zero and frozen (their presence cannot change the loss); 0..3 carry the
    signal. The pruner must rank 0..3 as more relevant and remove exactly 4..7."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )
    with torch.no_grad():
        model[0].weight[4:] = 0
    model[0].weight.register_hook(lambda g: torch.cat([g[:4], torch.zeros_like(g[4:])]))
    patterns = torch.randn(4, 1, 8, 8)
    gen = torch.Generator().manual_seed(0)
    config = RelevanceConfig(
        exclude_fraction=0.3, every=50, delta=0.75, target=0.5, dummies=64, warmup=300
    )
    pruner = RelevancePruner(model, config, example=torch.zeros(1, 1, 8, 8), seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(600):
        y = torch.randint(0, 4, (32,), generator=gen)
        x = patterns[y] + 0.5 * torch.randn(32, 1, 8, 8, generator=gen)
        pruner.before_step()
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        pruner.after_step(loss.item())
    (group,) = pruner.finish()
    relevance = pruner.relevance[0]
    assert relevance[:4].min() > relevance[4:].max()  # the sign: useful filters rank higher
    assert group.mask.tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    assert pruner.sparsity() == 0.5


def test_pruned_checkpoints_reload_and_export(tmp_path):
    fit(
        TrainConfig(
            model="vgg16-cifar",
            data="digits",
            epochs=1,
            out=str(tmp_path / "base"),
            quiet=True,
            model_kwargs={"width": 0.125},
        )
    )
    result = prune_checkpoint(
        str(tmp_path / "base" / "best.pt"), "l1", 0.6, 0, str(tmp_path / "pruned")
    )
    ckpt = load_checkpoint(result["best"])
    model = model_from_checkpoint(ckpt)
    assert sum(p.numel() for p in model.parameters()) == result["params"]
    base = model_from_checkpoint(load_checkpoint(tmp_path / "base" / "best.pt"))
    assert result["params"] < 0.5 * sum(p.numel() for p in base.parameters())
    report = export_onnx(result["best"], tmp_path / "pruned.onnx")
    assert report.ok and report.trt_lint["errors"] == 0
    first_conv = model.features[0]
    assert first_conv.out_channels == round(8 * 0.4)  # 60 % of 8 filters removed


@pytest.mark.slow
def test_cli_train_with_relevance_pruning_and_prune_command(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "kompakt.cli",
            "train",
            "--model",
            "lenet5",
            "--data",
            "digits",
            "--epochs",
            "2",
            "--prune",
            "relevance",
            "--prune-target",
            "0.3",
            "--out",
            str(tmp_path / "rel"),
            "--quiet",
            "--json",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    ckpt = load_checkpoint(tmp_path / "rel" / "best.pt")
    assert ckpt["model"]["resized"] and model_from_checkpoint(ckpt)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "kompakt.cli",
            "prune",
            str(tmp_path / "rel" / "best.pt"),
            "--method",
            "euclidean",
            "--ratio",
            "0.3",
            "--finetune-epochs",
            "1",
            "--out",
            str(tmp_path / "euc"),
            "--quiet",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "pruned (euclidean, 30% of filters)" in proc.stdout
