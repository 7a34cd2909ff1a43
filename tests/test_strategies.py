"""Flower strategies on real messages carrying a BatchNorm CNN's state_dict."""

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from flnorm.config import STRATEGIES, ExperimentConfig
from flnorm.errors import ConfigError
from flnorm.models import build_model
from flnorm.norms import NormSpec
from strategies import STRATEGY_BUILDERS, FedAvg, FedProx, build_strategy


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    """Messages built outside a Flower process need an identity, as run_simulation sets."""
    from flwr.supercore.task_identity import TaskIdentity

    for attr, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 1)):
        monkeypatch.setattr(TaskIdentity, attr, value)


def _reply(client: int, state: dict, n: int) -> Message:
    ask = Message(RecordDict({"config": ConfigRecord()}), dst_node_id=100 + client, message_type=MessageType.TRAIN)
    metrics = MetricRecord({"num-examples": n, "client": client, "train_loss": float(client), "server-round": 1})
    return Message(RecordDict({"arrays": ArrayRecord(state), "metrics": metrics}), reply_to=ask)


def _states():
    out = []
    for k in range(3):
        torch.manual_seed(k)
        model = build_model("cnn", NormSpec.parse("bn"), 10, (1, 28, 28)).train()
        for _ in range(5):
            model(torch.randn(4, 1, 28, 28) + k)
        out.append(model.state_dict())
    return out


@pytest.mark.parametrize("name", ["fedavg", "fedprox"])
def test_bn_safe_average_of_real_state_dicts(name):
    strategy = build_strategy(ExperimentConfig(strategy=name))
    states, sizes = _states(), [300, 100, 600]
    replies = [_reply(k, s, n) for k, (s, n) in enumerate(zip(states, sizes))]
    arrays, metrics = strategy.aggregate_train(1, replies)
    out = arrays.to_torch_state_dict()
    assert list(out) == list(states[0])
    for key, value in out.items():
        assert value.dtype == states[0][key].dtype, key
        if value.is_floating_point():
            ref = sum(n * s[key].double() for s, n in zip(states, sizes)) / sum(sizes)
            torch.testing.assert_close(value, ref.float(), rtol=1e-6, atol=1e-7)
    assert out["body.0.2.num_batches_tracked"].dtype == torch.int64
    assert int(out["body.0.2.num_batches_tracked"]) == 5
    assert metrics["train_loss"] == pytest.approx((0 * 300 + 1 * 100 + 2 * 600) / 1000)
    assert "client" not in metrics and "server-round" not in metrics

    # reply order does not change a single bit
    shuffled, _ = strategy.aggregate_train(1, [replies[2], replies[0], replies[1]])
    for key, value in shuffled.to_torch_state_dict().items():
        assert torch.equal(value, out[key]), key


def test_flower_default_turns_counter_into_float():
    """Why flnorm overrides aggregate_train: Flower's helper makes the counter float64."""
    replies = [_reply(k, s, 10) for k, s in enumerate(_states())]
    flower = aggregate_arrayrecords([r.content for r in replies], "num-examples")
    assert flower["body.0.2.num_batches_tracked"].numpy().dtype == np.float64


def test_registry_matches_config_and_builds_each():
    assert set(STRATEGY_BUILDERS) == set(STRATEGIES)
    assert isinstance(build_strategy(ExperimentConfig(strategy="fedavg")), FedAvg)
    prox = build_strategy(ExperimentConfig(strategy="fedprox", proximal_mu=0.3))
    assert isinstance(prox, FedProx) and prox.proximal_mu == 0.3
    with pytest.raises(ConfigError, match="valid choices: fedavg, fedavg-pooled, fedbn"):
        ExperimentConfig(strategy="scaffold")


def _current(state):
    return {k: v.numpy().copy() for k, v in state.items()}


def test_fedavg_pooled_pools_statistics_and_averages_the_rest():
    from flnorm.bn import pool_running_stats
    from flnorm.task import bn_layout

    cfg = ExperimentConfig(norm="bn", strategy="fedavg-pooled", batch_size=4)
    states, sizes = _states(), [300, 100, 600]
    strategy = build_strategy(cfg)
    start = _current(states[0])
    start["body.0.2.num_batches_tracked"] = np.array(2, dtype=np.int64)
    strategy.sent = start  # what configure_train stores
    arrays, _ = strategy.aggregate_train(1, [_reply(k, s, n) for k, (s, n) in enumerate(zip(states, sizes))])
    out = arrays.to_torch_state_dict()
    layout = bn_layout(cfg)
    expected = pool_running_stats([_current(s) for s in states], sizes, layout, 4)
    for key, value in expected.items():
        np.testing.assert_array_equal(out[key].numpy(), value)
    naive = sum(n * s["body.0.2.running_var"].double() for s, n in zip(states, sizes)) / 1000
    assert (out["body.0.2.running_var"].double() > naive).double().mean() > 0.9  # + spread of client means
    assert out["body.0.2.num_batches_tracked"].dtype == torch.int64
    assert int(out["body.0.2.num_batches_tracked"]) == 2 + 3 * (5 - 2)  # previous + increments
    ref = sum(n * s["head.weight"].double() for s, n in zip(states, sizes)) / 1000
    torch.testing.assert_close(out["head.weight"], ref.float())


@pytest.mark.parametrize("name", ["fedadam", "fedyogi"])
def test_server_optimizer_steps_parameters_only(name):
    from flwr.serverapp.strategy import FedAdam as FlowerFedAdam
    from flwr.serverapp.strategy import FedYogi as FlowerFedYogi

    cfg = ExperimentConfig(norm="bn", strategy=name, batch_size=4, server_lr=0.05)
    states, sizes = _states(), [300, 100, 600]
    start = _states()[0]
    strategy = build_strategy(cfg)
    strategy.sent, strategy.server_round = _current(start), 1  # what configure_train stores
    arrays, _ = strategy.aggregate_train(1, [_reply(k, s, n) for k, (s, n) in enumerate(zip(states, sizes))])
    out = arrays.to_torch_state_dict()

    pooled = build_strategy(cfg.replace(strategy="fedavg-pooled"))
    pooled.sent = _current(start)
    expected, _ = pooled.aggregate_train(1, [_reply(k, s, n) for k, (s, n) in enumerate(zip(states, sizes))])
    trainable = {n for n, _ in build_model("cnn", NormSpec.parse("bn"), 10, (1, 28, 28)).named_parameters()}
    for key, value in expected.to_torch_state_dict().items():
        if key not in trainable:  # buffers: pooled, never stepped
            assert torch.equal(out[key], value), key
            assert out[key].dtype == value.dtype
    # parameters: exactly Flower's optimizer applied to the parameters alone
    flower_cls = FlowerFedAdam if name == "fedadam" else FlowerFedYogi
    flower = flower_cls(eta=0.05, eta_l=cfg.lr, train_metrics_aggr_fn=strategies_mean())
    flower.current_arrays = {k: v for k, v in _current(start).items() if k in trainable}
    only = [{k: v for k, v in s.items() if k in trainable} for s in states]
    ref, _ = flower.aggregate_train(1, [_reply(k, s, n) for k, (s, n) in enumerate(zip(only, sizes))])
    for key, value in ref.to_torch_state_dict().items():
        torch.testing.assert_close(out[key], value.to(out[key].dtype))
    assert not torch.equal(out["head.weight"], expected.to_torch_state_dict()["head.weight"])


def strategies_mean():
    from strategies.fedavg import mean_metrics

    return mean_metrics


def test_keep_local_rejects_leaked_bn_tensors():
    strategy = build_strategy(ExperimentConfig(norm="bn", strategy="fedbn"))
    strategy._held, strategy._order = {}, []
    with pytest.raises(ValueError, match="must stay local"):
        strategy.aggregate_train(1, [_reply(k, s, 10) for k, s in enumerate(_states())])


class _NodesOnly:
    """The part of a Grid that ``configure_*`` reads."""

    def get_node_ids(self):
        return [101, 102, 103]


@pytest.mark.parametrize("name", STRATEGIES)
def test_eval_every_sends_evaluations_only_on_scheduled_rounds(name):
    cfg = ExperimentConfig(norm="bn", strategy=name, rounds=7, eval_every=3, clients=3)
    assert [r for r in range(1, 8) if cfg.evaluates(r)] == [3, 6, 7]  # and always the last
    strategy = build_strategy(cfg)
    arrays = ArrayRecord(_states()[0])
    sent = {r: list(strategy.configure_evaluate(r, arrays, ConfigRecord(), _NodesOnly())) for r in (1, 3, 7)}
    assert sent[1] == [] and len(sent[3]) == len(sent[7]) == 3


def test_precisebn_skips_statistics_passes_on_rounds_without_evaluation():
    cfg = ExperimentConfig(norm="bn", strategy="precisebn", rounds=4, eval_every=2)
    strategy = build_strategy(cfg)  # never configured: a statistics pass would fail loudly
    replies = [_reply(k, s, 10) for k, s in enumerate(_states())]
    arrays, _ = strategy.aggregate_train(1, replies)
    expected = build_strategy(cfg.replace(strategy="fedavg")).aggregate_train(1, replies)[0]
    for k in expected:
        np.testing.assert_array_equal(arrays[k].numpy(), expected[k].numpy())
    with pytest.raises(AssertionError, match="configure_train must run first"):
        strategy.aggregate_train(2, replies)


def test_eval_every_must_be_positive():
    with pytest.raises(ConfigError, match="eval-every"):
        ExperimentConfig(eval_every=0)


@pytest.mark.parametrize("name", ["fedavg", "fedavg-pooled", "fedadam", "precisebn"])
def test_nan_update_is_rejected_not_averaged(name):
    states = _states()
    poisoned = {k: v.clone() for k, v in states[2].items()}
    poisoned["head.weight"][0, 0] = float("nan")
    cfg = ExperimentConfig(norm="bn", strategy=name, clients=3, rounds=4, eval_every=4)

    def configured():
        strategy = build_strategy(cfg)
        list(strategy.configure_train(1, ArrayRecord(states[0]), ConfigRecord(), _NodesOnly()))
        return strategy

    got, _ = configured().aggregate_train(1, [_reply(0, states[0], 10), _reply(1, states[1], 20),
                                              _reply(2, poisoned, 30)])
    want, _ = configured().aggregate_train(1, [_reply(0, states[0], 10), _reply(1, states[1], 20)])
    for k in want:
        np.testing.assert_array_equal(got[k].numpy(), want[k].numpy())
    assert np.isfinite(got["head.weight"].numpy()).all()


def test_fewer_sound_updates_than_the_minimum_keep_the_model():
    states = _states()
    poisoned = {k: v.clone() for k, v in states[2].items()}
    poisoned["head.bias" if "head.bias" in poisoned else "head.weight"].fill_(float("inf"))
    strategy = build_strategy(ExperimentConfig(norm="bn", clients=3, min_replies=3))
    arrays, metrics = strategy.aggregate_train(1, [_reply(0, states[0], 10), _reply(1, states[1], 20),
                                                   _reply(2, poisoned, 30)])
    assert arrays is None and metrics is None  # Flower's loop keeps the previous model
