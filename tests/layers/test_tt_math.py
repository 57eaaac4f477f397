import math

import pytest
import torch

from kompakt.errors import ConfigError, KompaktError
from kompakt.layers import tt


def random_tt(shape, ranks, seed=0):
    g = torch.Generator().manual_seed(seed)
    full_ranks = (1, *ranks, 1)
    cores = [
        torch.randn(full_ranks[k], n, full_ranks[k + 1], generator=g, dtype=torch.float64)
        for k, n in enumerate(shape)
    ]
    return tt.tt_to_full(cores)


@pytest.mark.parametrize("n, d", [(25088, 6), (4096, 6), (8192, 4), (10, 2), (7, 3), (1, 1)])
def test_factorize_multiplies_out_and_is_balanced(n, d):
    factors = tt.factorize(n, d)
    assert len(factors) == d and math.prod(factors) == n
    assert list(factors) == sorted(factors, reverse=True)


def test_factorize_is_balanced_on_powers_of_two():
    assert tt.factorize(4096, 6) == (4,) * 6
    assert tt.factorize(8192, 4) == (16, 8, 8, 8)


@pytest.mark.parametrize("bad", [0, -3, 2.5])
def test_factorize_rejects_bad_numbers(bad):
    with pytest.raises(ConfigError, match="positive integer"):
        tt.factorize(bad, 2)


def test_factorize_rejects_more_than_seven_modes():
    with pytest.raises(ConfigError, match=r"between 1 and 7.*got 9"):
        tt.factorize(2**9, 9)


def test_check_modes_names_the_product_and_a_fix():
    with pytest.raises(ConfigError, match=r"\(4, 4\) multiply to 16, expected 15"):
        tt.check_modes((4, 4), 15, "in_modes")


def test_resolve_ranks_caps_scalars_and_checks_lists():
    assert tt.resolve_ranks(8, [4, 4, 4, 4]) == (1, 4, 8, 4, 1)
    assert tt.resolve_ranks(None, [2, 3]) == (1, 2, 1)
    assert tt.resolve_ranks([2, 3], [4, 4, 4]) == (1, 2, 3, 1)
    with pytest.raises(ConfigError, match=r"rank 2 is 17, above its maximum useful rank 16"):
        tt.resolve_ranks([2, 17, 2], [4, 4, 4, 4])
    with pytest.raises(ConfigError, match="ranks must be >= 1, got 0"):
        tt.resolve_ranks(0, [4, 4])
    with pytest.raises(ConfigError, match="expected 2 ranks"):
        tt.resolve_ranks([2], [4, 4, 4])


@pytest.mark.parametrize("eps", [0.3, 0.1, 0.01])
def test_tt_svd_obeys_the_error_bound_on_random_tensors(eps):
    a = torch.randn(4, 5, 6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    cores = tt.tt_svd(a, eps=eps)
    err = torch.linalg.norm(a - tt.tt_to_full(cores)) / torch.linalg.norm(a)
    assert err <= eps
    assert [c.shape[1] for c in cores] == [4, 5, 6, 3]


def test_tt_svd_recovers_low_rank_tensors_exactly_at_their_ranks():
    a = random_tt((4, 5, 6, 3), (2, 3, 2))
    cores = tt.tt_svd(a, eps=1e-12)
    assert [c.shape[-1] for c in cores[:-1]] == [2, 3, 2]
    assert torch.allclose(tt.tt_to_full(cores), a, atol=1e-10 * a.abs().max())


def test_tt_svd_max_rank_truncates_and_full_rank_is_exact():
    a = torch.randn(3, 4, 5, dtype=torch.float64)
    capped = tt.tt_svd(a, max_rank=2)
    assert max(c.shape[-1] for c in capped) == 2
    full = tt.tt_svd(a)
    assert torch.allclose(tt.tt_to_full(full), a, atol=1e-12)


def test_tt_svd_with_both_limits_applies_both():
    a = random_tt((4, 5, 6), (3, 3))
    cores = tt.tt_svd(a, max_rank=2, eps=1e-12)
    assert [c.shape[-1] for c in cores[:-1]] == [2, 2]


def test_tt_svd_rejects_negative_eps():
    with pytest.raises(KompaktError, match="eps must be"):
        tt.tt_svd(torch.ones(2, 2), eps=-1.0)


def test_tt_matrix_round_trip_and_interleaving():
    w = torch.randn(12, 20, dtype=torch.float64)
    cores = tt.tt_matrix_from_dense(w, (4, 5), (3, 4))
    assert [tuple(c.shape) for c in cores] == [(1, 4, 3, 12), (12, 5, 4, 1)]
    assert torch.allclose(tt.tt_matrix_to_dense(cores), w, atol=1e-12)


@pytest.mark.parametrize("direction", ["ltr", "rtl"])
def test_tt_matvec_equals_dense_product(direction):
    w = torch.randn(24, 30, dtype=torch.float64)
    cores = tt.tt_matrix_from_dense(w, (2, 3, 5), (2, 3, 4), max_rank=3)
    x = torch.randn(7, 30, dtype=torch.float64)
    dense = x @ tt.tt_matrix_to_dense(cores).T
    assert torch.allclose(tt.tt_matvec(x, cores, direction), dense, atol=1e-10)
    x3 = torch.randn(2, 5, 30, dtype=torch.float64)  # extra leading axes are kept
    assert tt.tt_matvec(x3, cores, direction).shape == (2, 5, 24)


def test_macs_model_counts_the_novikov_layer():
    in_modes, out_modes = (2, 7, 8, 8, 7, 4), (4,) * 6
    ranks = (1, 4, 4, 4, 4, 4, 1)
    assert tt.tt_matrix_params(in_modes, out_modes, ranks) == 2016
    ltr = tt.tt_matvec_macs(in_modes, out_modes, ranks, 1, "ltr")
    rtl = tt.tt_matvec_macs(in_modes, out_modes, ranks, 1, "rtl")
    assert tt.plan_direction(in_modes, out_modes, ranks) == ("ltr" if ltr <= rtl else "rtl")
    assert 25088 * 4096 / min(ltr, rtl) > 25  # the multiply-add ratio vs the dense layer
    # first ltr step: batch * prod(n_2..n_6) * r0 n1 m1 r1
    assert tt.tt_matvec_macs(in_modes[:1], out_modes[:1], (1, 4), 3) == 3 * 2 * 4 * 4


def test_scaled_tt_svd_matches_the_exact_one():
    """The randomized range finder (capped ranks on big unfoldings) and the Gram path (eps)
    against a full SVD of every unfolding: errors within 2 % of exact, eps bound kept."""
    import math

    gen = torch.Generator().manual_seed(0)
    left, right = torch.randn(1024, 64, generator=gen), torch.randn(64, 2048, generator=gen)
    decay = torch.tensor([math.exp(-i / 8) for i in range(64)])
    weight = ((left * decay) @ right).double() + 1e-4 * torch.randn(1024, 2048, generator=gen)
    modes_in, modes_out = (8, 16, 16), (8, 8, 16)
    w = weight.reshape(*modes_out, *modes_in).permute(3, 0, 4, 1, 5, 2).reshape(64, 128, 256)

    def exact(tensor, caps):
        cores, rest, r = [], tensor, 1
        for k, n in enumerate(tensor.shape[:-1]):
            rest = rest.reshape(r * n, -1)
            u, s, vh = torch.linalg.svd(rest, full_matrices=False)
            rank = min(caps[k], len(s))
            cores.append(u[:, :rank].reshape(r, n, rank))
            rest, r = s[:rank, None] * vh[:rank], rank
        cores.append(rest.reshape(r, tensor.shape[-1], 1))
        return cores

    def error(cores):
        return float(torch.linalg.norm(tt.tt_to_full(cores).reshape(w.shape) - w) / w.norm())

    for cap in (4, 8, 16):
        fast = tt.tt_svd(w, max_rank=cap)  # first unfolding 64 x 32768: randomized at cap*4<=64
        reference = exact(w, [cap, cap])
        assert [c.shape[-1] for c in fast[:-1]] == [c.shape[-1] for c in reference[:-1]]
        assert error(fast) <= 1.02 * error(reference) + 1e-9, (cap, error(fast), error(reference))
    for eps in (0.3, 0.05):
        cores = tt.tt_svd(w, eps=eps)
        assert error(cores) <= eps + 1e-9
        if eps == 0.3:  # truncated, not kept at full rank
            assert cores[1].shape[-1] < min(cores[1].shape[0] * 128, 256)
