"""Local training: step counts, determinism, FedProx term, evaluation."""

import copy

import pytest
import torch
import torch.nn.functional as F

from flnorm.config import ExperimentConfig
from flnorm.task import ClientTask, new_model, round_seed
from flnorm.training import batch_indices, train_local


def test_batch_indices_full_batches_and_epochs():
    idx = batch_indices(10, 4, 5, torch.Generator().manual_seed(0))
    assert idx.shape == (5, 4)
    flat = idx.flatten()
    assert sorted(flat[:10].tolist()) == list(range(10))  # first pass is a permutation
    assert batch_indices(3, 32, 2, torch.Generator().manual_seed(0)).shape == (2, 3)


def _fit(cfg, client=0, rnd=1, state=None):
    task = ClientTask(cfg, client)
    task.load(state if state is not None else new_model(cfg).state_dict())
    metrics = task.fit(rnd, proximal_mu=cfg.proximal_mu if cfg.strategy == "fedprox" else 0.0)
    return task.state(), metrics


def test_same_seed_same_weights_and_different_round_differs():
    cfg = ExperimentConfig(norm="bn", local_steps=3)
    a, ma = _fit(cfg)
    b, mb = _fit(cfg)
    c, _ = _fit(cfg, rnd=2)
    assert ma["train_loss"] == mb["train_loss"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert not torch.equal(a["head.weight"], c["head.weight"])
    assert round_seed(0, 1, 2) != round_seed(0, 2, 1)


def test_training_moves_weights_and_counts_bn_steps():
    cfg = ExperimentConfig(norm="bn", local_steps=4)
    start = new_model(cfg).state_dict()
    state, metrics = _fit(cfg, state=start)
    assert int(state["body.0.2.num_batches_tracked"]) == 4
    assert not torch.equal(state["head.weight"], start["head.weight"])
    assert metrics["num-examples"] > 0 and metrics["train_loss"] > 0


def test_proximal_term_pulls_towards_start():
    base = ExperimentConfig(local_steps=10, lr=0.05)
    start = new_model(base).state_dict()
    plain, _ = _fit(base, state=start)
    prox, _ = _fit(base.replace(strategy="fedprox", proximal_mu=10.0), state=start)

    def dist(s):
        return sum((s[k] - start[k]).pow(2).sum() for k in start if s[k].is_floating_point())

    assert dist(prox) < dist(plain)


def test_client_eval_reports_accuracy_on_its_split():
    cfg = ExperimentConfig(partition="classes-1")
    task = ClientTask(cfg, 3)
    task.load(new_model(cfg).state_dict())
    result = task.test()
    assert result.n == len(task.data.test_y) > 0
    assert 0.0 <= result.accuracy <= 1.0
    assert len(torch.unique(task.data.test_y)) == 1


def test_feature_diagnostics_match_definition():
    from flnorm.diagnostics import feature_diagnostics

    cfg = ExperimentConfig(norm="fn", diagnostics=True, local_steps=2)
    state, metrics = _fit(cfg)
    assert metrics["feature_norm"] > 0 and metrics["sv1"] >= metrics["sv2"] >= metrics["sv5"] >= 0
    _, quiet = _fit(cfg.replace(eval_every=5, rounds=20))  # round 1 does not evaluate
    assert "feature_norm" not in quiet and "sv1" not in quiet
    model = new_model(cfg)
    x = torch.randn(40, 1, 28, 28)
    z = model.eval().features(x).double()
    diag = feature_diagnostics(model, x)
    assert diag["feature_norm"] == pytest.approx(float(z.norm(dim=1).mean()))
    s = torch.linalg.svdvals(z) / 40 ** 0.5
    assert [diag[f"sv{i}"] for i in range(1, 6)] == pytest.approx(s[:5].tolist())
    # sum of squared singular values of Z / sqrt(n) = mean squared feature norm
    full = feature_diagnostics(model, x, k=192)
    assert sum(full[f"sv{i}"] ** 2 for i in range(1, 193)) == pytest.approx(float(z.pow(2).sum(1).mean()))


# BN on client 0's one-class batches is ill-conditioned in float32: after 4 steps both
# layouts are ~2% away from a float64 run (equally), so BN is compared after one step.
@pytest.mark.parametrize(("norm", "steps"), [("bn", 1), ("gn", 4), ("ln", 4), ("fn", 4), ("none", 4)])
def test_channels_last_is_the_same_computation(norm, steps):
    """The memory layout changes speed only: same weights to float tolerance."""
    fast, _ = _fit(ExperimentConfig(norm=norm, local_steps=steps, channels_last=True))
    plain, _ = _fit(ExperimentConfig(norm=norm, local_steps=steps, channels_last=False))
    for k in plain:
        if not plain[k].is_floating_point():
            assert torch.equal(fast[k], plain[k]), k
            continue
        # Norm-wise: the layouts' kernels sum in different orders and training on one-class
        # batches amplifies float32 rounding (seen: 4e-4 relative after 4 steps; single
        # near-zero weights off by 3 %), while a layout bug (permuted weights) is off by O(1).
        error = (fast[k].contiguous() - plain[k]).norm() / plain[k].norm().clamp_min(1e-12)
        assert error < 5e-3, f"{k}: relative error {error:.2e}"


def test_channels_last_layout_is_used():
    task = ClientTask(ExperimentConfig(channels_last=True), 0)
    assert task.model.body[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    x = task.transform(task.data.train_x[:4])
    assert x.is_contiguous(memory_format=torch.channels_last)
    plain = ClientTask(ExperimentConfig(channels_last=False), 0)
    torch.testing.assert_close(x, plain.transform(plain.data.train_x[:4]), rtol=0, atol=0)


def test_site_data_file_replaces_the_partition(tmp_path):
    from flnorm.data.site import save_site_data

    cfg = ExperimentConfig(norm="bn", local_steps=3)
    part = ClientTask(cfg, 3)
    d = part.data
    save_site_data(tmp_path / "site.npz", d.train_x[:, 0].numpy(), d.train_y.numpy(), d.test_x.numpy(), d.test_y.numpy())
    site = ClientTask(cfg, 3, data_path=str(tmp_path / "site.npz"))
    for k in ("train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(getattr(site.data, k), getattr(d, k)), k
    a, _ = _fit(cfg, client=3)
    site.load(new_model(cfg).state_dict())
    site.fit(1)
    assert all(torch.equal(a[k], v) for k, v in site.state().items())  # same data, same training


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"train_x": "u8"}, "lacks train_y, test_x, test_y"),
        ({"train_x": "f32", "train_y": "y", "test_x": "u8", "test_y": "y"}, "must be uint8"),
        ({"train_x": "small", "train_y": "y", "test_x": "u8", "test_y": "y"}, r"\(1, 8, 8\), the run's model expects \(1, 28, 28\)"),
        ({"train_x": "u8", "train_y": "big", "test_x": "u8", "test_y": "y"}, r"labels outside \[0, 10\)"),
    ],
)
def test_bad_site_data_names_the_problem(tmp_path, arrays, match):
    import numpy as np

    from flnorm.data.site import load_site_data

    values = {"u8": np.zeros((4, 28, 28), np.uint8), "f32": np.zeros((4, 28, 28), np.float32),
              "small": np.zeros((4, 8, 8), np.uint8), "y": np.zeros(4, np.int64), "big": np.full(4, 10)}
    np.savez(tmp_path / "bad.npz", **{k: values[v] for k, v in arrays.items()})
    with pytest.raises(ValueError, match=match):
        load_site_data(str(tmp_path / "bad.npz"), (1, 28, 28), 10)
    with pytest.raises(ValueError, match="is not a file"):
        load_site_data(str(tmp_path / "missing.npz"), (1, 28, 28), 10)


@pytest.mark.parametrize("momentum, weight_decay, mu", [(0.0, 0.0, 0.0), (0.9, 5e-4, 0.0), (0.5, 0.0, 0.1)])
def test_local_sgd_equals_torch_optim_sgd(momentum, weight_decay, mu, mnist200):
    """train_local's functional SGD step is torch.optim.SGD's arithmetic, bit for bit."""
    cfg = ExperimentConfig(norm="bn", partition="iid", clients=2)
    x, y, transform = mnist200
    ours = new_model(cfg)
    reference = copy.deepcopy(ours)
    train_local(ours, x, y, transform, steps=4, batch_size=32, lr=0.05, momentum=momentum,
                weight_decay=weight_decay, proximal_mu=mu, generator=torch.Generator().manual_seed(3))

    reference.train()
    params = [p for p in reference.parameters() if p.requires_grad]
    anchor = [p.detach().clone() for p in params]
    optimizer = torch.optim.SGD(params, lr=0.05, momentum=momentum, weight_decay=weight_decay)
    for batch in batch_indices(len(y), 32, 4, torch.Generator().manual_seed(3)):
        loss = F.cross_entropy(reference(transform(x[batch])), y[batch])
        if mu > 0:
            loss = loss + 0.5 * mu * sum((p - a).pow(2).sum() for p, a in zip(params, anchor))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    for key, value in reference.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key
