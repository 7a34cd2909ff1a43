"""The server-client contract, checked on real messages and against plain PyTorch.

- The README's tables are the code's (``flnorm.docs``).
- The real ClientApp, called with real Messages, trains exactly like a plain PyTorch loop
  written here: without a proximal term unless the instructions carry ``proximal-mu``,
  and it refuses instruction keys its message type does not define.
- In real Ray simulations: ``fedavg`` ignores ``--proximal-mu`` bit for bit, ``fedprox``
  applies it; ``fedavg`` equals an independent plain-PyTorch FedAvg to 1e-6; every
  strategy's messages, recorded on the Grid, match its row of ``flnorm.protocol.CONTRACTS``;
  ``model.pt`` and ``checkpoint.pt`` hold exactly the model's state_dict.
"""

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from flnorm import ExperimentConfig, run_experiment
from flnorm import docs
from flnorm.config import STRATEGIES
from flnorm.data import load_dataset, load_partition
from flnorm.protocol import (
    BN_FROZEN, BN_LAYERS, BN_MOMENTS, CONTRACTS, EVALUATE, EXPERIMENT, INSTRUCTIONS, MODEL, PROXIMAL_MU, SERVER_ROUND,
    TRAIN,
)
from flnorm.runner.monitor import ReplyLog
from flnorm.runner.simulation import prepare
from flnorm.task import bn_layout, new_model

STRATEGY_PARAMETERS = {f.name.replace("_", "-") for f in dataclasses.fields(ExperimentConfig)
                       if f.metadata["group"] == "strategy"}


# ---------------------------------------------------------------- plain PyTorch reference

def batch_stream(n: int, batch_size: int, steps: int, seed: int, server_round: int, client: int) -> torch.Tensor:
    """The documented batch stream: chained ``torch.randperm`` permutations of the client's
    n samples, from a generator seeded with ``SeedSequence([seed, round, client])``."""
    generator = torch.Generator().manual_seed(
        int(np.random.SeedSequence([seed, server_round, client]).generate_state(1)[0]))
    b = min(batch_size, n)
    perms = [torch.randperm(n, generator=generator) for _ in range(math.ceil(steps * b / n))]
    return torch.cat(perms)[: steps * b].view(steps, b)


def client_inputs(cfg: ExperimentConfig, client: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Client ``client``'s standardized training images and labels."""
    data = load_dataset(cfg.dataset)
    index = torch.from_numpy(load_partition(cfg.dataset, cfg.data_dir, cfg.download, cfg.partition,
                                            cfg.clients, cfg.seed).train[client])
    mean = torch.tensor(data.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.std).view(1, -1, 1, 1)
    return (data.train_x[index].float() / 255 - mean) / std, data.train_y[index]


def plain_local_training(
    model: torch.nn.Module, cfg: ExperimentConfig, client: int, server_round: int, mu: float = 0.0
) -> torch.nn.Module:
    """``cfg.local_steps`` steps of ``torch.optim.SGD`` (plus ``mu/2 ||w - w0||^2``)."""
    x, y = client_inputs(cfg, client)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    anchor = [p.detach().clone() for p in model.parameters()]
    for index in batch_stream(len(y), cfg.batch_size, cfg.local_steps, cfg.seed, server_round, client):
        loss = F.cross_entropy(model(x[index]), y[index])
        if mu:
            loss = loss + mu / 2 * sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


def plain_fedavg(cfg: ExperimentConfig) -> dict[str, torch.Tensor]:
    """FedAvg in plain PyTorch: every client trains from the global model, the new global
    model is the mean of theirs weighted by their training-set sizes (float64 sums)."""
    global_state = new_model(cfg).state_dict()
    for server_round in range(1, cfg.rounds + 1):
        states, sizes = [], []
        for client in range(cfg.clients):
            model = new_model(cfg)
            model.load_state_dict(global_state)
            states.append(plain_local_training(model, cfg, client, server_round).state_dict())
            sizes.append(len(client_inputs(cfg, client)[1]))
        global_state = {
            k: (sum(n * s[k].double() for s, n in zip(states, sizes)) / sum(sizes)).to(v.dtype)
            for k, v in global_state.items()
        }
    return global_state


# ---------------------------------------------------------------- fast: docs and the ClientApp

@pytest.mark.parametrize("name", list(docs.TABLES))
def test_readme_tables_are_rendered_from_the_code(name):
    readme = docs.README.read_text()
    assert docs.section(readme, name) == docs.TABLES[name](), f"run: python -m flnorm.docs --write ({name})"


def test_experiment_record_holds_no_strategy_parameter():
    cfg = ExperimentConfig(strategy="fedprox", proximal_mu=0.5)
    assert STRATEGY_PARAMETERS == {"proximal-mu", "server-lr", "fixbn-rounds", "precise-passes"}
    assert not set(cfg.client_record()) & STRATEGY_PARAMETERS
    assert ExperimentConfig.from_flat(cfg.client_record()).strategy == "fedprox"


@pytest.fixture
def task_identity(monkeypatch):
    """Messages built outside a Flower process need an identity, as run_simulation sets."""
    from flwr.supercore.task_identity import TaskIdentity

    for attr, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 1)):
        monkeypatch.setattr(TaskIdentity, attr, value)


def _call_client(cfg: ExperimentConfig, message_type: str, instructions: dict, client: int = 1) -> Message:
    """The real ClientApp, called in this process with a real Message."""
    from clients.client_app import app

    content = RecordDict({
        MODEL: ArrayRecord(new_model(cfg).state_dict()),
        EXPERIMENT: ConfigRecord(cfg.client_record()),
        INSTRUCTIONS: ConfigRecord(instructions),
    })
    context = Context(run_id=1, node_id=10 + client, state=RecordDict(), run_config={},
                      node_config={"partition-id": client, "num-partitions": cfg.clients})
    return app(Message(content, dst_node_id=10 + client, message_type=message_type), context)


@pytest.mark.parametrize("mu", [0.0, 0.5])
def test_client_app_trains_like_plain_sgd_with_the_proximal_term_only_when_told(task_identity, mu):
    cfg = ExperimentConfig(norm="none", partition="classes-2", clients=3, local_steps=4, lr=0.05,
                           channels_last=False)
    instructions = {SERVER_ROUND: 2, **({PROXIMAL_MU: mu} if mu else {})}
    reply = _call_client(cfg, TRAIN, instructions)
    got = reply.content[MODEL].to_torch_state_dict()
    want = plain_local_training(new_model(cfg), cfg, client=1, server_round=2, mu=mu).state_dict()
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=1e-6)
    if mu:  # and the term made a difference
        plain = plain_local_training(new_model(cfg), cfg, client=1, server_round=2).state_dict()
        assert max((got[k] - plain[k]).abs().max().item() for k in plain) > 1e-5


def test_client_app_refuses_instruction_keys_its_message_type_does_not_define(task_identity):
    cfg = ExperimentConfig(norm="none", clients=3, local_steps=1)
    with pytest.raises(ValueError, match=r"evaluate message carries instruction keys \['proximal-mu'\]"):
        _call_client(cfg, EVALUATE, {SERVER_ROUND: 1, PROXIMAL_MU: 0.5})
    with pytest.raises(ValueError, match=r"\['lr'\]"):
        _call_client(cfg, TRAIN, {SERVER_ROUND: 1, "lr": 0.5})


# ---------------------------------------------------------------- slow: real simulations

class GridSpy:
    """Wraps the ServerApp's real Grid; records every message sent and every reply."""

    def __init__(self, grid, log):
        self._grid, self.log = grid, log

    def __getattr__(self, name):
        return getattr(self._grid, name)

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        self.log.append((messages, replies))
        return replies


@pytest.fixture
def wire(monkeypatch):
    """Every (messages, replies) exchange of the next run, as the Grid saw them."""
    log = []
    original = ReplyLog.__init__

    def spying(self, grid, *args, **kwargs):
        original(self, GridSpy(grid, log), *args, **kwargs)

    monkeypatch.setattr(ReplyLog, "__init__", spying)
    return log


def _model(path):
    return torch.load(path, weights_only=True)


@pytest.mark.slow
def test_fedavg_ignores_proximal_mu_and_fedprox_applies_it(tmp_path, shared_ray):
    base = ExperimentConfig(norm="none", partition="classes-2", clients=3, rounds=2, local_steps=5, seed=0)
    runs = {}
    for strategy, mu in (("fedavg", 0.0), ("fedavg", 0.5), ("fedprox", 0.5)):
        run_experiment(base.replace(strategy=strategy, proximal_mu=mu, out=str(tmp_path / f"{strategy}-{mu}")))
        runs[strategy, mu] = _model(tmp_path / f"{strategy}-{mu}" / "model.pt")
    a, b, prox = runs["fedavg", 0.0], runs["fedavg", 0.5], runs["fedprox", 0.5]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], prox[k]) for k in a)


@pytest.mark.slow
def test_fedavg_equals_plain_pytorch_fedavg(tmp_path, shared_ray):
    cfg = ExperimentConfig(norm="none", strategy="fedavg", partition="classes-2", clients=3, rounds=2,
                           local_steps=5, seed=0, out=str(tmp_path / "fedavg"))
    run_experiment(cfg)
    got = _model(tmp_path / "fedavg" / "model.pt")
    want = plain_fedavg(cfg)
    assert list(got) == list(want)
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=1e-6)
    moved = max((value - new_model(cfg).state_dict()[key]).abs().max().item() for key, value in want.items())
    assert moved > 1e-3  # the comparison is not between two untrained models


@pytest.mark.slow
def test_local_only_equals_each_client_training_alone(tmp_path, shared_ray, wire):
    """``local``: every client's model is plain SGD on its own data alone, round after round
    (its per-round training loss and its personalized accuracy match the reference), and no
    tensor crosses the wire."""
    cfg = ExperimentConfig(norm="none", strategy="local", partition="classes-2", clients=3, rounds=3,
                           local_steps=10, lr=0.03, seed=0, out=str(tmp_path / "local"))
    run_experiment(cfg)
    clients = pd.read_csv(tmp_path / "local" / "clients.csv")
    data = load_dataset(cfg.dataset)
    parts = load_partition(cfg.dataset, cfg.data_dir, cfg.download, cfg.partition, cfg.clients, cfg.seed)
    mean, std = torch.tensor(data.mean).view(1, -1, 1, 1), torch.tensor(data.std).view(1, -1, 1, 1)
    for client in range(cfg.clients):
        model = new_model(cfg).to(memory_format=torch.channels_last)  # as the clients' (same numbers, rounding aside)
        x, y = client_inputs(cfg, client)
        x = x.contiguous(memory_format=torch.channels_last)
        for server_round in range(1, cfg.rounds + 1):
            model.train()
            optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr)
            losses = []
            for index in batch_stream(len(y), cfg.batch_size, cfg.local_steps, cfg.seed, server_round, client):
                loss = F.cross_entropy(model(x[index]), y[index])
                losses.append(loss.item())
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            row = clients[(clients["round"] == server_round) & (clients["client"] == client)].iloc[0]
            assert row["train_loss"] == pytest.approx(np.mean(losses), rel=1e-5), (client, server_round)
        test_index = torch.from_numpy(parts.test[client])
        with torch.no_grad():
            logits = model.eval()((data.test_x[test_index].float() / 255 - mean) / std)
        accuracy = float((logits.argmax(1) == data.test_y[test_index]).double().mean())
        assert row["personal_accuracy"] == pytest.approx(accuracy, abs=1.01 / len(test_index)), client
        assert accuracy > 0.6, accuracy  # each client learned its own two classes (chance: 0.5)
    assert all(len(m.content[MODEL]) == 0 for messages, _ in wire for m in messages)
    assert all(len(r.content[MODEL]) == 0 for _, replies in wire for r in replies if r.metadata.message_type == TRAIN)


def _keys(record_dict) -> set[str]:
    return {k for rec in record_dict.array_records.values() for k in rec}


WIRE = dict(norm="bn", partition="classes-2", clients=2, rounds=3, local_steps=2, eval_every=2,
            fixbn_rounds=1, proximal_mu=0.5)
# num_batches_tracked after 3 rounds x 2 steps on 2 clients: averaged (c + K per round),
# summed (pooled statistics summarize every client's batches), pooled once then frozen
# (fixbn), never updated on the server where BN statistics stay local.
COUNTS = {"fedavg": 6, "fedprox": 6, "precisebn": 6, "fedavg-pooled": 12, "fedadam": 12, "fedyogi": 12,
          "fixbn": 4, "fedbn": 0, "silobn": 0, "local": 0}


@pytest.mark.slow
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_messages_on_the_wire_match_the_contract(tmp_path, shared_ray, wire, strategy):
    cfg = prepare(ExperimentConfig(strategy=strategy, out=str(tmp_path / strategy), **WIRE))
    metrics = run_experiment(cfg)
    row = CONTRACTS[strategy]
    layout = bn_layout(cfg)
    everything = set(new_model(cfg).state_dict())
    stays = {"": set(), "module": set(layout.module_keys), "stats": set(layout.stat_keys),
             "model": everything}[row.bn_local]
    assert layout and stays <= everything

    sent = [(m, replies) for messages, replies in wire for m in messages]
    kinds = {m.metadata.message_type for m, _ in sent}
    assert kinds == {TRAIN, EVALUATE} | {kind for kind, _ in row.queries}
    for m, _ in sent:  # the experiment, apart, with no strategy parameter
        assert dict(m.content[EXPERIMENT]) == cfg.client_record()
        assert not set(m.content[EXPERIMENT]) & STRATEGY_PARAMETERS
        assert _keys(m.content) == everything - stays, m.metadata.message_type
    for _, replies in wire:
        for r in replies:
            assert not r.has_error(), r.error.reason
            if r.metadata.message_type == TRAIN:
                assert _keys(r.content) == everything - stays

    by_round = {}
    for m, _ in sent:
        rnd = int(m.content[INSTRUCTIONS][SERVER_ROUND])
        by_round.setdefault((m.metadata.message_type, rnd), []).append(dict(m.content[INSTRUCTIONS]))
    for rnd in (1, 2, 3):
        expected = {SERVER_ROUND: rnd}
        if strategy == "fedprox":
            expected[PROXIMAL_MU] = 0.5
        if strategy == "fixbn" and rnd > cfg.fixbn_rounds:
            expected[BN_FROZEN] = True
        assert by_round[TRAIN, rnd] == [expected] * cfg.clients
        assert set(expected) <= row.train_keys
        evaluates = cfg.evaluates(rnd)
        assert by_round.get((EVALUATE, rnd), []) == ([{SERVER_ROUND: rnd}] * cfg.clients if evaluates else [])
        if strategy == "precisebn":  # one statistics pass per BN layer, in forward order, only before evaluations
            expected_queries = [{SERVER_ROUND: rnd, BN_LAYERS: [name]} for name in layout.order
                                for _ in range(cfg.clients)] if evaluates else []
            assert by_round.get((BN_MOMENTS, rnd), []) == expected_queries

    assert list(metrics["round"]) == [1, 2, 3]
    evaluated = metrics[metrics["round"].map(cfg.evaluates)]
    assert evaluated[["test_accuracy", "personal_accuracy", "union_accuracy"]].notna().all().all()
    assert set(evaluated["bn_eval"]) == {cfg.bn_eval_mode}
    state = _model(tmp_path / strategy / "model.pt")
    for layer in layout.layers:
        assert state[layer.count_key].dtype == torch.int64
        assert int(state[layer.count_key]) == COUNTS[strategy]
        assert torch.isfinite(state[layer.var_key]).all() and (state[layer.var_key] >= 0).all()
    if strategy == "fixbn":  # the statistics sent from the freeze round on never move again
        frozen = [m.content[MODEL] for m, _ in sent
                  if m.metadata.message_type == TRAIN and int(m.content[INSTRUCTIONS][SERVER_ROUND]) > 1]
        for record in frozen:
            for key in layout.stat_keys:
                np.testing.assert_array_equal(record[key].numpy(), state[key].numpy())


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["bn", "gn", "fn"])
def test_model_and_checkpoint_hold_exactly_the_models_state_dict(tmp_path, shared_ray, norm):
    cfg = ExperimentConfig(norm=norm, strategy="fedavg-pooled", clients=2, rounds=2, local_steps=2,
                           out=str(tmp_path / norm))
    run_experiment(cfg)
    reference = new_model(cfg).state_dict()
    for saved in (_model(tmp_path / norm / "model.pt"),
                  _model(tmp_path / norm / "checkpoint.pt")["arrays"]):
        assert list(saved) == list(reference)
        for key, value in reference.items():
            assert saved[key].shape == value.shape and saved[key].dtype == value.dtype, key
    model = new_model(cfg)
    model.load_state_dict(_model(tmp_path / norm / "model.pt"), strict=True)
