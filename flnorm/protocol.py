"""The contract between flnorm's server and its clients, defined once for both sides.

A message's ``RecordDict`` holds separate records:

- ``EXPERIMENT``: the experiment (``ExperimentConfig.client_record()``), the same in every
  message of a run. It holds no strategy parameter (``proximal-mu``, ``server-lr``, ...):
  a client learns what its strategy wants only from the instructions.
- ``INSTRUCTIONS``: the strategy's instructions for this message (Flower's FedAvg names
  this record ``config`` and puts ``server-round`` in it). A client refuses any key not in
  ``INSTRUCTION_KEYS`` for the message's type, so no setting of one strategy can reach
  another's clients unnoticed.
- ``MODEL``: the global model, less the keys that stay on the client (``bn_local``).

``CONTRACTS`` says, for every strategy, what its messages carry; the README's table is
rendered from it (``flnorm.docs``). No Flower import: the numerical core reads it too.
"""

from __future__ import annotations

from dataclasses import dataclass

from flnorm.errors import unknown_choice

# Message types (Flower's ``MessageType.TRAIN``, ``EVALUATE`` and a ``QUERY`` action).
TRAIN = "train"
EVALUATE = "evaluate"
BN_MOMENTS = "query.bn_moments"

# Records of a message's RecordDict.
EXPERIMENT = "experiment"
INSTRUCTIONS = "config"
MODEL = "arrays"
METRICS = "metrics"
MOMENTS = "moments"
PLACEMENT = "placement"  # train replies: where the client ran (RAY_NODE, CUDA_DEVICES)

# Instruction keys.
SERVER_ROUND = "server-round"
PROXIMAL_MU = "proximal-mu"
BN_FROZEN = "bn-frozen"
BN_LAYERS = "bn-layers"

# Metric keys every reply carries: the Flower weight and the client's partition id.
NUM_EXAMPLES = "num-examples"
CLIENT = "client"

# Evaluate-reply keys of a multi-domain dataset: per domain (lists in the dataset's domain
# order), the client's test samples and the correct predictions of the global and of the
# personalized model.
DOMAIN_N = "domain-n"
DOMAIN_CORRECT = "domain-correct"
DOMAIN_PERSONAL_CORRECT = "domain-personal-correct"

# Placement keys: the Ray node id of the client's actor ("" outside Ray) and the
# CUDA_VISIBLE_DEVICES its process saw ("" when unset).
RAY_NODE = "ray-node"
CUDA_DEVICES = "cuda-visible-devices"

#: What a client does with each instruction key.
INSTRUCTION_KEYS: dict[str, str] = {
    SERVER_ROUND: "seeds the round's batches (with the seed and the client id); echoed in the reply",
    PROXIMAL_MU: "adds mu/2 * ||w - w_global||^2 over the trainable parameters to the local loss",
    BN_FROZEN: "trains with every BN layer normalizing by the received running statistics, "
               "left unchanged",
    BN_LAYERS: "measures only these BN layers (qualified module names); absent: every BN layer",
}

#: Instruction keys a client accepts, per message type.
ACCEPTED: dict[str, frozenset[str]] = {
    TRAIN: frozenset({SERVER_ROUND, PROXIMAL_MU, BN_FROZEN}),
    EVALUATE: frozenset({SERVER_ROUND}),
    BN_MOMENTS: frozenset({SERVER_ROUND, BN_LAYERS}),
}

#: What each message type asks a client to do.
MESSAGE_TYPES: dict[str, str] = {
    TRAIN: "loads the model (and its own BN state where that stays local), trains local-steps "
           "SGD steps, replies with the model less its local keys",
    EVALUATE: "replies with the global and the personalized loss and accuracy on its test split "
              "(a multi-domain dataset: also per domain, DOMAIN_N / DOMAIN_CORRECT / DOMAIN_PERSONAL_CORRECT)",
    BN_MOMENTS: "loads the model, replies with per-BN-layer (n, mean, var) of the layer's input over "
                "its training data (weights frozen, eval mode)",
}

#: What of each BN module stays on the client (never sent either way).
BN_LOCAL: dict[str, str] = {
    "": "nothing: every tensor travels",
    "module": "every tensor of every BN module (affine and statistics)",
    "stats": "BN running statistics (mean, variance, counter); BN affine travels",
    "model": "the whole model: nothing travels either way, each client keeps its own",
}


@dataclass(frozen=True)
class StrategyContract:
    """One strategy's row of the contract.

    Parameters
    ----------
    name
        The strategy's public name (``--strategy``).
    summary
        What the strategy is, in one line.
    statistics
        What the server does with the BN running statistics.
    bn_local
        A key of ``BN_LOCAL``: what of each BN module stays on the client.
    train
        Instruction keys beyond ``server-round`` in train messages, with when they appear.
    queries
        Message types sent besides train and evaluate, with when.
    """

    name: str
    summary: str
    statistics: str
    bn_local: str = ""
    train: tuple[tuple[str, str], ...] = ()
    queries: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.bn_local not in BN_LOCAL:
            raise ValueError(f"{self.name}: bn_local must be one of {list(BN_LOCAL)}")
        for key, _ in self.train:
            if key not in ACCEPTED[TRAIN]:
                raise ValueError(f"{self.name}: {key} is not a train instruction key")

    @property
    def train_keys(self) -> frozenset[str]:
        """Instruction keys its train messages may carry (``server-round`` always)."""
        return frozenset({SERVER_ROUND, *(key for key, _ in self.train)})


_POOLED = "pooled with the law of total variance; counters summed"
CONTRACTS: dict[str, StrategyContract] = {c.name: c for c in (
    StrategyContract("fedavg", "FedAvg: average everything (the naive baseline)",
                     "averaged like the weights; counters stay int64"),
    StrategyContract("fedavg-pooled", "FedAvg with exact BN statistics", _POOLED),
    StrategyContract("fedbn", "FedBN (Li et al., 2021): BN modules stay local",
                     "none on the server", bn_local="module"),
    StrategyContract("silobn", "SiloBN (Andreux et al., 2020): BN statistics stay local, "
                     "BN affine shared", "none on the server", bn_local="stats"),
    StrategyContract("fixbn", "FixBN (Zhong et al., 2023): pooled, then frozen",
                     f"{_POOLED}; kept fixed from the freeze round on",
                     train=((BN_FROZEN, "true, from round fixbn-rounds + 1 on"),)),
    StrategyContract("precisebn", "FedAvg plus federated PreciseBN (Wu & Johnson, 2021)",
                     "replaced by the pooled population statistics of every client's data "
                     "under the averaged model, before each evaluation",
                     queries=((BN_MOMENTS, "after aggregation in rounds that evaluate, once per pass: "
                               "one pass per BN layer in forward order, each with that layer in "
                               "bn-layers (precise-passes 0); else precise-passes passes of every "
                               "layer"),)),
    StrategyContract("local", "Local only (FedBN's SingleSet baseline): every client trains its own "
                     "model alone, no federation; its figure is the personalized accuracy",
                     "none on the server (the global model stays the initial one)", bn_local="model"),
    StrategyContract("fedprox", "FedProx (Li et al., 2020): proximal term on the clients",
                     "averaged like the weights", train=((PROXIMAL_MU, "every round"),)),
    StrategyContract("fedadam", "FedAdam (Reddi et al., 2021): Adam on the server, "
                     "trainable parameters only", _POOLED),
    StrategyContract("fedyogi", "FedYogi (Reddi et al., 2021): Yogi on the server, "
                     "trainable parameters only", _POOLED),
)}


def contract(strategy: str) -> StrategyContract:
    """The contract row of ``strategy``; unknown names list the valid ones."""
    try:
        return CONTRACTS[strategy]
    except KeyError:
        raise unknown_choice("strategy", strategy, tuple(CONTRACTS)) from None
