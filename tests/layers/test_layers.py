"""Every registered layer against its dense twin; new layers must add an EXAMPLES entry."""

import math

import pytest
import torch
from torch import nn

from kompakt.errors import KompaktError
from kompakt.layers import (
    LAYERS,
    ChannelConv3d,
    GroupedLinear,
    Meta,
    MetaHead,
    TTConv2d,
    TTLinear,
)

# name -> (factory(dtype), input shape); small enough for gradcheck
EXAMPLES = {
    "tt-linear": (lambda dt: TTLinear(12, 10, (3, 4), (5, 2), ranks=3, dtype=dt), (3, 12)),
    "tt-conv2d": (
        lambda dt: TTConv2d(
            4, 6, 3, padding=1, in_modes=(2, 2), out_modes=(3, 2), ranks=3, dtype=dt
        ),
        (2, 4, 5, 5),
    ),
    "meta": (lambda dt: Meta(3, 2, dtype=dt), (2, 4, 3)),
    "grouped-linear": (lambda dt: GroupedLinear(8, 6, 2, dtype=dt), (3, 8)),
    "meta-head": (lambda dt: MetaHead(8, 6, 2, meta_out=3, dtype=dt), (3, 8)),
    "channel-conv3d": (
        lambda dt: ChannelConv3d(4, 6, 3, depth=2, padding=1, dtype=dt),
        (2, 4, 5, 5),
    ),
}


def test_every_registered_layer_has_an_example():
    assert sorted(EXAMPLES) == LAYERS.names()


def dense_twin(layer):
    return layer.to_dense()


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_every_layer_keeps_the_compressed_layer_contract(name):
    """init_args rebuilds the same layer (weights load strictly, outputs equal), the dense twin
    is the declared type, and sizes and costs are positive whole numbers."""
    from kompakt.layers import CompressedLayer

    factory, shape = EXAMPLES[name]
    torch.manual_seed(0)
    layer = factory(torch.float64).eval()
    assert isinstance(layer, CompressedLayer) and LAYERS.get(name) is type(layer)
    rebuilt = type(layer)(**layer.init_args()).double().eval()
    rebuilt.load_state_dict(layer.state_dict())  # strict: the same parameters and shapes
    x = torch.randn(shape, dtype=torch.float64)
    torch.testing.assert_close(rebuilt(x), layer(x), rtol=0, atol=0)
    assert type(layer.to_dense()) is layer.dense_type
    macs, dense = layer.macs(tuple(shape)), layer.dense_params()
    assert isinstance(macs, int) and macs > 0 and isinstance(dense, int) and dense > 0
    assert layer.compression_ratio() > 0
    forms = layer.export_forms()
    assert forms and set(layer.export_costs(tuple(shape))) <= set(forms)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_forward_equals_dense_twin_in_float64(name):
    factory, shape = EXAMPLES[name]
    torch.manual_seed(0)
    layer = factory(torch.float64).eval()
    x = torch.randn(shape, dtype=torch.float64)
    assert (layer(x) - dense_twin(layer)(x)).abs().max().item() < 1e-9


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_gradients_match_finite_differences(name):
    factory, shape = EXAMPLES[name]
    torch.manual_seed(0)
    layer = factory(torch.float64)
    x = torch.randn(shape, dtype=torch.float64)
    names = [n for n, _ in layer.named_parameters()]
    inputs = tuple(p.detach().clone().requires_grad_(True) for p in layer.parameters())

    def run(*params):
        return torch.func.functional_call(layer, dict(zip(names, params, strict=True)), (x,))

    assert torch.autograd.gradcheck(run, inputs)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_runs_under_autocast_and_reports_compression(name):
    factory, shape = EXAMPLES[name]
    layer = factory(None)
    x = torch.randn(shape)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    ref = layer(x)
    assert y.shape == ref.shape and torch.isfinite(y).all()
    assert torch.allclose(y.float(), ref, atol=0.1 * ref.abs().max().item() + 1e-2)
    if name != "meta":
        assert "compression=" in repr(layer)


# -- TTLinear ---------------------------------------------------------------------------------


def test_novikov_layer_counts():
    layer = TTLinear(25088, 4096, (2, 7, 8, 8, 7, 4), (4,) * 6, ranks=4)
    assert layer.core_params() == 2016
    assert sum(p.numel() for p in layer.cores) == 2016
    assert round(layer.compression_ratio()) == 50972
    assert "50972.4x" in repr(layer)
    assert layer.forward_macs(2) == 2 * (layer.forward_macs(1) - 4096) + 2 * 4096


def test_ttlinear_init_std_is_that_of_the_reconstructed_weight():
    torch.manual_seed(0)
    layer = TTLinear(1024, 512, ranks=8)
    std = layer.weight_dense().std().item()
    assert abs(std - layer.init_std) / layer.init_std < 0.2


@pytest.mark.parametrize("modes", [((4, 8), (4, 6)), ((2, 4, 4), (2, 3, 4))])
def test_ttlinear_from_dense_full_rank_is_exact(modes):
    torch.manual_seed(0)
    dense = nn.Linear(32, 24, dtype=torch.float64)
    layer = TTLinear.from_dense(dense, in_modes=modes[0], out_modes=modes[1])
    x = torch.randn(5, 32, dtype=torch.float64)
    assert (layer(x) - dense(x)).abs().max().item() < 1e-6


@pytest.mark.parametrize("eps", [0.5, 0.2, 0.05])
def test_ttlinear_from_dense_truncated_obeys_the_bound(eps):
    torch.manual_seed(0)
    dense = nn.Linear(64, 48, dtype=torch.float64)
    layer = TTLinear.from_dense(dense, eps=eps, in_modes=(4, 4, 4), out_modes=(4, 3, 4))
    w = dense.weight
    err = torch.linalg.norm(layer.weight_dense() - w) / torch.linalg.norm(w)
    assert err <= eps


def test_ttlinear_from_dense_keeps_float32():
    dense = nn.Linear(16, 16)
    layer = TTLinear.from_dense(dense, ranks=2)
    assert all(c.dtype == torch.float32 for c in layer.cores)
    assert layer.ranks == (1, 2, 1)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"in_features": 12, "out_features": 10, "in_modes": (3, 3), "out_modes": (5, 2)},
            r"in_modes \(3, 3\) multiply to 9, expected 12",
        ),
        ({"in_features": 12, "out_features": 10, "ranks": 0}, "ranks must be >= 1, got 0"),
        ({"in_features": -12, "out_features": 10}, "in_features must be a positive integer"),
        (
            {"in_features": 512, "out_features": 512, "in_modes": (2,) * 9, "out_modes": (2,) * 9},
            "1 to 7 modes",
        ),
        (
            {
                "in_features": 12,
                "out_features": 10,
                "in_modes": (3, 4),
                "out_modes": (5, 2),
                "ranks": [9],
            },
            r"rank 1 is 9, above its maximum useful rank 8",
        ),
        (
            {"in_features": 12, "out_features": 10, "in_modes": (3, 4), "out_modes": (10,)},
            "same number of modes",
        ),
    ],
)
def test_ttlinear_bad_arguments(kwargs, message):
    with pytest.raises(KompaktError, match=message):
        TTLinear(**kwargs)


def test_ttlinear_wrong_input_width_is_a_clear_error():
    with pytest.raises(KompaktError, match=r"expected input \(\.\.\., 12\), got \(2, 13\)"):
        TTLinear(12, 10)(torch.randn(2, 13))


# -- TTConv2d ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["factored", "dense"])
@pytest.mark.parametrize(
    "geometry", [dict(stride=1, padding=1), dict(stride=2, padding=0, dilation=2)]
)
def test_ttconv_forward_modes_agree(mode, geometry):
    torch.manual_seed(0)
    layer = TTConv2d(
        8,
        12,
        3,
        in_modes=(2, 4),
        out_modes=(3, 4),
        ranks=4,
        forward_mode=mode,
        dtype=torch.float64,
        **geometry,
    )
    x = torch.randn(2, 8, 9, 9, dtype=torch.float64)
    assert (layer(x) - layer.to_dense()(x)).abs().max().item() < 1e-9


def test_ttconv_from_dense_full_rank_is_exact_for_both_variants():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 6, 3, padding=1, dtype=torch.float64)
    x = torch.randn(2, 8, 6, 6, dtype=torch.float64)
    for variant in ("tt", "naive"):
        layer = TTConv2d.from_dense(conv, variant=variant)
        assert (layer(x) - conv(x)).abs().max().item() < 1e-6, variant


@pytest.mark.parametrize("variant", ["tt", "naive"])
def test_ttconv_from_dense_truncated_obeys_the_bound(variant):
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 16, 3, dtype=torch.float64)
    layer = TTConv2d.from_dense(conv, eps=0.3, variant=variant)
    err = torch.linalg.norm(layer.kernel() - conv.weight) / torch.linalg.norm(conv.weight)
    assert err <= 0.3


def test_ttconv_params_match_the_formula():
    layer = TTConv2d(64, 128, 3, in_modes=(4, 4, 4), out_modes=(4, 8, 4), ranks=[9, 16, 8])
    r = layer.ranks
    pairs = zip((4, 4, 4), (4, 8, 4), strict=True)
    expected = 9 * r[1] + sum(r[k + 1] * c * s * r[k + 2] for k, (c, s) in enumerate(pairs))
    assert layer.core_params() == expected
    assert layer.compression_ratio() == pytest.approx(64 * 128 * 9 / expected)


def test_ttconv_auto_picks_the_cheaper_mode_by_the_cost_model():
    layer = TTConv2d(64, 64, 3, padding=1, ranks=4)
    costs = layer.costs(8, 16, 16)
    assert layer.choose_forward(8, 16, 16) == min(costs, key=costs.get)
    assert (
        layer.forward_macs(8, 16, 16) == costs[layer.choose_forward(8, 16, 16)] + 8 * 16 * 16 * 64
    )


def test_ttconv_init_std():
    torch.manual_seed(0)
    layer = TTConv2d(64, 64, 3, ranks=8)
    assert abs(layer.kernel().std().item() - layer.init_std) / layer.init_std < 0.2


def test_ttconv_bad_arguments():
    with pytest.raises(KompaktError, match="variant must be one of"):
        TTConv2d(4, 4, 3, variant="cp")
    with pytest.raises(KompaktError, match="naive variant has no channel modes"):
        TTConv2d(4, 4, 3, variant="naive", in_modes=(2, 2))
    with pytest.raises(KompaktError, match=r"expected input \(N, 4, H, W\)"):
        TTConv2d(4, 4, 3)(torch.randn(1, 3, 8, 8))


# -- Meta family and ChannelConv3d ------------------------------------------------------------


def test_meta_params_and_grouped_head_counts():
    assert sum(p.numel() for p in Meta(4, 3).parameters()) == 12
    head = MetaHead(512, 128, groups=4)
    # K * L + G * L + G * G with L = H / G
    assert sum(p.numel() for p in head.parameters()) == 512 * 32 + 4 * 32 + 16


def test_grouped_linear_is_one_batched_matmul_of_independent_groups():
    torch.manual_seed(0)
    layer = GroupedLinear(8, 6, 2, dtype=torch.float64)
    x = torch.randn(3, 8, dtype=torch.float64)
    y = layer(x)
    x2 = x.clone()
    x2[:, 4:] += 1.0  # change group 1's inputs only
    assert torch.equal(layer(x2)[:, :3], y[:, :3])
    assert not torch.allclose(layer(x2)[:, 3:], y[:, 3:])


def test_grouped_layers_reject_indivisible_sizes():
    with pytest.raises(KompaktError, match="in_features=10 is not divisible by groups=4"):
        GroupedLinear(10, 8, 4)
    with pytest.raises(KompaktError, match="out_features=10 is not divisible by meta_out=4"):
        MetaHead(16, 10, groups=2, meta_out=4)


def test_channel_conv3d_params_follow_the_seed_formula():
    layer = ChannelConv3d(16, 28, 3, depth=3)  # s = 28 / (16 - 3 + 1) = 2 filters
    assert layer.filters == 2
    assert (
        sum(p.numel() for p in layer.parameters()) == (3 * 3 * 3 + 1) * 2 == layer.params_formula()
    )
    assert layer.dense_params() == (3 * 3 * 16 + 1) * 28
    assert sum(p.numel() for p in layer.to_dense().parameters()) == layer.dense_params()
    assert layer.compression_ratio() == pytest.approx(layer.dense_params() / 56)


def test_channel_conv3d_rejects_impossible_depths():
    with pytest.raises(KompaktError, match=r"not a multiple of in_channels - depth \+ 1 = 14"):
        ChannelConv3d(16, 30, 3, depth=3)
    with pytest.raises(KompaktError, match=r"depth must be in 1\.\.in_channels=4"):
        ChannelConv3d(4, 4, 3, depth=5)


def test_output_shapes():
    assert ChannelConv3d(16, 28, 3, depth=3, padding=1)(torch.randn(2, 16, 7, 7)).shape == (
        2,
        28,
        7,
        7,
    )
    assert MetaHead(64, 20, groups=4, meta_out=2)(torch.randn(5, 64)).shape == (5, 20)
    assert math.isclose(
        MetaHead(64, 20, 4, 2).compression_ratio(),
        (64 * 20 + 20) / sum(p.numel() for p in MetaHead(64, 20, 4, 2).parameters()),
    )
