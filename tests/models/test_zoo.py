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
