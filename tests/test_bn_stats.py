"""BatchNorm statistics against centralized computations on the same data."""

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models import resnet18

from flnorm.bn import (
    BNLayout, Moments, batch_statistics, bn_modules, collect_moments, frozen_statistics,
    pool_moments, pool_running_stats, population_to_unbiased, precise_statistics,
    unbiased_to_population,
)
from flnorm.bn.precise import moments_from_arrays, moments_to_arrays, pass_plan, set_running_stats
from bn_reference import layerwise_population_stats
from flnorm.models import build_model
from flnorm.norms import NormSpec

G = torch.Generator().manual_seed(0)


def _clients(sizes, c=5, shape=(3, 3)):
    """Client data with different means and scales (label shift-like)."""
    return [torch.randn(n, c, *shape, generator=G, dtype=torch.float64) * (k + 1) + 3 * k for k, n in enumerate(sizes)]


@pytest.mark.parametrize("sizes", [[7, 130, 41], [1, 1, 2, 300], [64]])
def test_pooling_equals_statistics_of_concatenated_data(sizes):
    clients = _clients(sizes)
    pooled = pool_moments([Moments.of(x) for x in clients])
    union = torch.cat(clients).transpose(0, 1).reshape(5, -1)
    assert pooled.n == union.shape[1]
    torch.testing.assert_close(pooled.mean, union.mean(1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(pooled.var, union.var(1, unbiased=False), rtol=1e-10, atol=1e-10)


def test_naive_variance_average_misses_the_spread_of_means():
    clients = _clients([50, 50])
    parts = [Moments.of(x) for x in clients]
    naive = sum(p.var for p in parts) / 2
    assert (pool_moments(parts).var > naive + 1.0).all()  # the means differ by 3


def test_bessel_conversions():
    x = torch.randn(17, dtype=torch.float64, generator=G)
    s2, v = x.var(unbiased=True), x.var(unbiased=False)
    torch.testing.assert_close(unbiased_to_population(s2, 17), v)
    torch.testing.assert_close(population_to_unbiased(v, 17), s2)


def _bn_net():
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 6), nn.BatchNorm1d(6))


def test_pool_running_stats_equals_union_statistics():
    """Clients whose running stats are their exact data statistics pool to the union's."""
    torch.manual_seed(0)
    base = _bn_net()
    data = [torch.randn(n, 2, 6, 6, generator=G) * (k + 1) + k for k, n in enumerate([9, 23, 14])]
    states = []
    for x in data:
        model = _bn_net()
        model.load_state_dict(base.state_dict())
        for m in bn_modules(model).values():
            m.momentum = 1.0  # running stats := this batch's (unbiased) statistics
        model.train()(x)  # one batch holding all of the client's data
        states.append({k: v.numpy() for k, v in model.state_dict().items()})
    layout = BNLayout.from_model(base, (2, 6, 6))
    pooled = pool_running_stats(states, [9, 23, 14], layout, batch_size=64)
    # first BN layer: its input does not depend on any BN, so the union is well defined
    union = base[0](torch.cat(data)).detach().double()
    flat = union.transpose(0, 1).reshape(4, -1)
    np.testing.assert_allclose(pooled["1.running_mean"], flat.mean(1).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pooled["1.running_var"], flat.var(1, unbiased=True).numpy(), rtol=1e-5)
    assert pooled["1.running_mean"].dtype == np.float32
    assert "1.num_batches_tracked" not in pooled


def test_layout_finds_bn_by_type_in_torchvision_resnet():
    model = resnet18(num_classes=10)
    layout = BNLayout.from_model(model, (3, 64, 64))
    names = [layer.name for layer in layout.layers]
    assert "layer2.0.downsample.1" in names and len(names) == 20
    assert {f"{n}.running_var" for n in names} <= layout.stat_keys
    assert "layer2.0.downsample.1.weight" in layout.module_keys
    assert not any("downsample.0" in k for k in layout.module_keys)


def test_layout_spatial_sizes_of_paper_cnn():
    model = build_model("cnn", NormSpec.parse("bn"), 10, (1, 28, 28))
    assert [layer.spatial for layer in BNLayout.from_model(model, (1, 28, 28)).layers] == [576, 64, 1, 1]
    assert not BNLayout.from_model(build_model("cnn", NormSpec.parse("gn"), 10, (1, 28, 28)), (1, 28, 28))


def test_precise_bn_over_clients_equals_union_population_statistics():
    torch.manual_seed(1)
    model = build_model("cnn", NormSpec.parse("bn"), 10, (1, 28, 28))
    clients = [torch.randn(n, 1, 28, 28, generator=G) + k for k, n in enumerate([5, 31, 12, 60])]
    ref_model = build_model("cnn", NormSpec.parse("bn"), 10, (1, 28, 28))
    ref_model.load_state_dict(model.state_dict())
    reference = layerwise_population_stats(ref_model, torch.cat(clients))

    # the federated algorithm: per pass, each client's moments under the same model, pooled
    for _ in range(len(bn_modules(model))):
        per_client = [collect_moments(model, [x]) for x in clients]
        wire = [moments_from_arrays(moments_to_arrays(m)) for m in per_client]  # as sent
        set_running_stats(model, {name: pool_moments([c[name] for c in wire]) for name in wire[0]})
    for name, bn in bn_modules(model).items():
        mean, var = reference[name]
        torch.testing.assert_close(bn.running_mean.double(), mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(bn.running_var.double(), var, rtol=1e-5, atol=1e-6)


def test_precise_bn_does_not_depend_on_batching():
    x = torch.randn(90, 1, 28, 28, generator=G)
    results = []
    for batch in (7, 45, 90):
        torch.manual_seed(2)
        model = build_model("cnn", NormSpec.parse("bn"), 10, (1, 28, 28))
        results.append(precise_statistics(model, lambda b=batch: (x[i : i + b] for i in range(0, 90, b))))
    for other in results[1:]:
        for name, m in results[0].items():
            assert other[name].n == m.n
            torch.testing.assert_close(other[name].mean, m.mean, rtol=1e-6, atol=1e-7)
            torch.testing.assert_close(other[name].var, m.var, rtol=1e-6, atol=1e-7)


class BackwardsRegistered(nn.Module):
    """Three chained BN layers registered in the reverse of the order the forward pass reaches them."""

    def __init__(self):
        super().__init__()
        self.bn_c, self.bn_b, self.bn_a = nn.BatchNorm2d(4), nn.BatchNorm2d(4), nn.BatchNorm2d(3)
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3)

    def forward(self, x):
        return self.bn_c(torch.relu(self.bn_b(self.conv2(torch.relu(self.conv1(self.bn_a(x)))))) * 2 + 1)


def test_layout_orders_layers_as_the_forward_pass_reaches_them():
    layout = BNLayout.from_model(BackwardsRegistered(), (3, 9, 9))
    assert [layer.name for layer in layout.layers] == ["bn_c", "bn_b", "bn_a"]  # module order
    assert layout.order == ("bn_a", "bn_b", "bn_c")


def test_pass_plan_measures_one_layer_per_pass_only_when_exact():
    order = ("a", "b", "c")
    assert pass_plan(order) == pass_plan(order, 3) == pass_plan(order, 7) == [("a",), ("b",), ("c",)]
    assert pass_plan(order, 2) == [order, order]
    assert pass_plan((), 0) == []


@pytest.mark.parametrize(("make", "shape"), [
    (BackwardsRegistered, (3, 9, 9)), (lambda: build_model("cnn", NormSpec.parse("bn"), 10, (1, 28, 28)), (1, 28, 28)),
])
def test_one_layer_per_pass_equals_every_layer_in_every_pass(make, shape):
    """The pass plan gives, to the bit, the definition: as many passes as BN layers, each
    measuring and installing every layer."""
    torch.manual_seed(3)
    model = make()
    with torch.no_grad():  # running statistics far from the data's, so every pass matters
        for bn in bn_modules(model).values():
            bn.running_mean.uniform_(-2, 2)
            bn.running_var.uniform_(0.5, 4)
    reference = make()
    reference.load_state_dict(model.state_dict())
    x = torch.randn(40, *shape, generator=G) * 2 + 1
    batches = lambda: (x[i : i + 16] for i in range(0, 40, 16))  # noqa: E731

    planned = precise_statistics(model, batches)
    for _ in range(len(bn_modules(reference))):
        set_running_stats(reference, collect_moments(reference, batches()))
    expected = collect_moments(reference, batches())
    assert planned.keys() == expected.keys()
    for name, m in expected.items():
        assert planned[name].n == m.n
        assert torch.equal(planned[name].mean, m.mean) and torch.equal(planned[name].var, m.var), name
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_collect_moments_of_some_layers_equals_those_of_all():
    model = BackwardsRegistered().eval()
    x = torch.randn(20, 3, 9, 9, generator=G)
    every = collect_moments(model, [x[:8], x[8:]])
    some = collect_moments(model, [x[:8], x[8:]], layers=["bn_b"])
    assert list(some) == ["bn_b"]
    assert torch.equal(some["bn_b"].mean, every["bn_b"].mean) and torch.equal(some["bn_b"].var, every["bn_b"].var)
    with pytest.raises(ValueError, match=r"no BN layers \['bn_z'\].*'bn_c', 'bn_b', 'bn_a'"):
        collect_moments(model, [x], layers=["bn_z"])


def test_batch_statistics_mode_uses_batch_stats_and_leaves_running_stats():
    model = build_model("cnn", NormSpec.parse("bn"), 10, (1, 28, 28))
    x = torch.randn(16, 1, 28, 28, generator=G)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    with torch.no_grad(), batch_statistics(model):
        out = model(x)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not any(m.training for m in bn_modules(model).values())
    twin = build_model("cnn", NormSpec.parse("bn"), 10, (1, 28, 28))
    twin.load_state_dict(before)
    with torch.no_grad():
        torch.testing.assert_close(out, twin.train()(x))


def test_frozen_statistics_keep_running_stats_while_affine_learns():
    model = build_model("cnn", NormSpec.parse("bn"), 10, (1, 28, 28))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    frozen_statistics(model.train())
    loss = model(torch.randn(8, 1, 28, 28, generator=G)).square().mean()
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    state = model.state_dict()
    for key in BNLayout.from_model(model, (1, 28, 28)).stat_keys:
        assert torch.equal(state[key], before[key]), key
    assert not torch.equal(state["body.0.2.weight"], before["body.0.2.weight"])
