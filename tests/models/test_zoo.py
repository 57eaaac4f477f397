import dataclasses
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from kompakt.errors import ConfigError
from kompakt.layers import MetaHead, TTConv2d, TTLinear
from kompakt.models import (
    MODELS,
    MetaHeadConfig,
    TTConfig,
    apply_layer_specs_,
    build_model,
    compress_,
    layer_specs,
)

SMALL = {"resnet18-cifar": {"width": 0.125}, "vgg16-cifar": {"width": 0.125}}


@pytest.mark.parametrize("name", MODELS.names())
@pytest.mark.parametrize("channels, size", [(1, 8), (1, 28), (3, 32)])
def test_every_model_runs_on_every_input_size(name, channels, size):
    model = build_model(name, 10, channels, size, **SMALL.get(name, {})).eval()
    assert model(torch.randn(2, channels, size, size)).shape == (2, 10)


def test_garipov_conv_fc_has_the_thesis_fc_sizes():
    model = build_model("garipov-conv-fc", 10, 3, 32)
    linears = [m for m in model.head if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears[:2]] == [(8192, 1536), (1536, 512)]
    tt = build_model("garipov-tt-conv-tt-fc", 10, 3, 32)
    assert sum(isinstance(m, TTConv2d) for m in tt.modules()) == 3
    assert sum(isinstance(m, TTLinear) for m in tt.modules()) == 2


def test_unknown_model_kwarg_is_a_clear_error():
    with pytest.raises(ConfigError, match="lenet5"):
        build_model("lenet5", 10, 1, 28, depth=3)


class UserNet(nn.Module):
    """A user's own model, not from the zoo."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 4 * 4, 256)
        self.out = nn.Linear(256, 10)

    def forward(self, x):
        return self.out(torch.relu(self.fc1(torch.relu(self.conv(x)).flatten(1))))


def test_compress_tt_on_a_user_module_full_rank_is_exact():
    torch.manual_seed(0)
    model = UserNet().double().eval()
    x = torch.randn(3, 16, 4, 4, dtype=torch.float64)
    before = model(x)
    report = compress_(
        model, TTConfig(ranks=None, eps=1e-12), filter_fn=lambda name, m: name in ("conv", "fc1")
    )
    assert isinstance(model.conv, TTConv2d) and isinstance(model.fc1, TTLinear)
    assert [row["name"] for row in report.layers] == ["conv", "fc1"]
    assert all(row["rel_error"] < 1e-9 for row in report.layers)
    assert torch.allclose(model(x), before, atol=1e-8)


def test_compress_default_filter_only_replaces_layers_that_shrink():
    model = UserNet()
    report = compress_(model, TTConfig(ranks=4))
    assert all(row["params_after"] <= 0.9 * row["params_before"] for row in report.layers)
    assert "fc1" in [row["name"] for row in report.layers]
    assert report.params_after < report.params_before


def test_compress_meta_head_starts_from_the_block_diagonal():
    torch.manual_seed(0)
    model = UserNet()
    report = compress_(model, MetaHeadConfig(groups=4), filter_fn=lambda n, m: n == "fc1")
    assert isinstance(model.fc1, MetaHead)
    assert 0 < report.layers[0]["rel_error"] < 1


def test_layer_specs_rebuild_the_compressed_architecture():
    torch.manual_seed(0)
    model = UserNet()
    compress_(model, TTConfig(ranks=3))
    specs = layer_specs(model)
    fresh = apply_layer_specs_(UserNet(), specs)
    fresh.load_state_dict(model.state_dict())
    x = torch.randn(2, 16, 4, 4)
    assert torch.equal(fresh(x), model(x))


def test_compress_reports_layers_it_cannot_convert_with_the_reason():
    class Awkward(nn.Module):
        def __init__(self):
            super().__init__()
            self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=4)
            self.same = nn.Conv2d(16, 16, 3, padding="same")
            self.reflect = nn.Conv2d(16, 16, 3, padding=1, padding_mode="reflect")
            self.thin = nn.Conv2d(3, 16, 3, padding=1)
            self.fc = nn.Linear(256, 64)

    model = Awkward()
    every = {"grouped", "same", "reflect", "thin", "fc"}
    report = compress_(model, TTConfig(ranks=4), filter_fn=lambda n, m: n in every)
    reasons = {row["name"]: row["reason"] for row in report.skipped}
    assert set(reasons) == {"grouped", "same", "reflect", "thin"}
    assert "groups=4" in reasons["grouped"] and "'same'" in reasons["same"]
    assert "reflect" in reasons["reflect"] and "3 input channels" in reasons["thin"]
    assert [row["name"] for row in report.layers] == ["fc"] and "not replaced: thin" in str(report)
    meta = compress_(Awkward(), MetaHeadConfig(groups=3), filter_fn=lambda n, m: n == "fc")
    assert "do not divide into 3 groups" in meta.skipped[0]["reason"]


def test_compress_is_all_or_nothing_and_names_the_failing_layer():
    from kompakt.compression import COMPRESSIONS, Compression

    @dataclass(frozen=True)
    class Flaky:
        pass

    @COMPRESSIONS.register("flaky-test")
    class FlakyCompression(Compression):
        config_type = Flaky

        def replace(self, module, config):
            if module.out_features == 10:
                raise ValueError("cannot factorise 10")
            return nn.Identity(), 0.0

    try:
        model = UserNet()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        with pytest.raises(ConfigError, match=r"layer 'out'.*cannot factorise 10.*unchanged"):
            compress_(model, Flaky(), filter_fn=lambda n, m: isinstance(m, nn.Linear))
        assert isinstance(model.fc1, nn.Linear)  # fc1 converted fine, but nothing was replaced
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    finally:
        COMPRESSIONS.unregister("flaky-test")


def test_meta_groups_zero_is_a_config_error_and_larger_twins_warn():
    with pytest.raises(ConfigError, match="groups >= 1"):
        MetaHeadConfig(groups=0)
    model = nn.Sequential(nn.Linear(8, 8))
    with pytest.warns(UserWarning, match="more parameters than the dense layer"):
        compress_(model, TTConfig(ranks=8), filter_fn=lambda n, m: n == "0")


def test_training_with_a_compression_that_replaces_nothing_is_refused(tmp_path):
    from kompakt.train import TrainConfig, fit

    config = TrainConfig(model="lenet5", data="digits", epochs=1, compress="tt:ranks=4")
    with pytest.raises(ConfigError, match="replaced no layer of lenet5"):
        fit(dataclasses.replace(config, out=str(tmp_path), quiet=True))
