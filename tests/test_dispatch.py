"""flnorm's event-driven simulation flow: same messages as Flower's polling, woken by stores."""

import threading
from queue import Queue
from uuid import uuid4

import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.proto.task_pb2 import Task  # pylint: disable=E0611
from flwr.server.superlink.fleet import vce
from flwr.server.superlink.fleet.vce import vce_api
from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend
from flwr.server.superlink.linkstate import LinkStateFactory
from flwr.server.superlink.linkstate.in_memory_linkstate import RunRecord
from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME, NOOP_FEDERATION_ID
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity
from flwr.superlink.federation import NoOpFederationManager
from flwr.superlink.grid import InMemoryGrid

from flnorm.runner import dispatch, engine, ray_backend
from flnorm.runner.engine import engine_changes


@pytest.fixture(autouse=True)
def _server_identity(monkeypatch):
    """Messages are stamped with the sender's identity: the SuperLink's, as in a simulation."""
    for name, value in (("_task_id", 11), ("_run_id", 7), ("_node_id", SUPERLINK_NODE_ID)):
        monkeypatch.setattr(TaskIdentity, name, value)


def _link(num_nodes: int):
    """A simulation's LinkState, grid and registered nodes, built as run_simulation does."""
    factory = LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory())
    state = factory.state()
    run = Run.create_empty(run_id=7)
    run.primary_task_id = 11
    run.federation_id = NOOP_FEDERATION_ID
    state.run_ids[run.run_id] = RunRecord(run=run)
    state.task_store[11] = Task(task_id=11, run_id=run.run_id)
    nodes = vce_api._register_nodes(num_nodes, factory)
    grid = InMemoryGrid(state_factory=factory)
    grid.set_run(run)
    return state, grid, list(nodes)


def _push(grid, node_ids, tag: str, ttl: float | None = None):
    msgs = [Message(RecordDict({"c": ConfigRecord({"tag": tag})}), dst_node_id=n, message_type="train", ttl=ttl)
            for n in node_ids]
    return list(grid.push_messages(msgs))


def test_one_message_per_node_per_poll_oldest_first_marked_delivered():
    state, grid, nodes = _link(4)
    _push(grid, nodes, "first")
    _push(grid, nodes[:2], "second")
    taken = dispatch.pending_messages(state, nodes)
    assert sorted(m.metadata.dst_node_id for m in taken) == sorted(nodes)
    assert {m.content["c"]["tag"] for m in taken} == {"first"}
    assert all(m.metadata.delivered_at for m in taken)
    again = dispatch.pending_messages(state, nodes)
    assert sorted(m.metadata.dst_node_id for m in again) == sorted(nodes[:2])
    assert {m.content["c"]["tag"] for m in again} == {"second"}
    assert dispatch.pending_messages(state, nodes) == []


def test_same_messages_as_flowers_get_message_ins():
    ours, grid, nodes = _link(3)
    _push(grid, nodes, "a")
    _push(grid, nodes[1:], "b")
    theirs, grid2, nodes2 = _link(3)
    _push(grid2, nodes2, "a")
    _push(grid2, nodes2[1:], "b")
    for _ in range(3):
        mine = sorted((nodes.index(m.metadata.dst_node_id), m.content["c"]["tag"])
                      for m in dispatch.pending_messages(ours, nodes))
        flower = sorted((nodes2.index(m.metadata.dst_node_id), m.content["c"]["tag"])
                        for n in nodes2 for m in theirs.get_message_ins(node_id=n, limit=1))
        assert mine == flower


def test_only_the_given_nodes_and_expired_messages_dropped(monkeypatch):
    state, grid, nodes = _link(3)
    _push(grid, nodes, "x")
    assert [m.metadata.dst_node_id for m in dispatch.pending_messages(state, nodes[:1])] == nodes[:1]
    for msg in state.message_ins_store.values():  # every remaining message is past its TTL
        msg.metadata.__dict__["_created_at"] = msg.metadata.created_at - 10 * msg.metadata.ttl
    assert dispatch.pending_messages(state, nodes) == []


@pytest.fixture
def installed(monkeypatch):
    """flnorm's engine for the test; no fallback wake-up within the test."""
    monkeypatch.setattr(dispatch, "FALLBACK_WAIT", 600.0)  # only a stored message can wake a wait
    with engine_changes() as applied:
        assert applied
        yield


def _reply(state, msg: Message) -> None:
    reply = Message(RecordDict({"c": ConfigRecord({"from": msg.metadata.dst_node_id})}), reply_to=msg)
    reply.metadata.__dict__["_message_id"] = str(uuid4())
    assert state.store_message_res(reply)


def test_engine_changes_replace_flowers_loops_and_put_them_back():
    flowers = vce_api.add_messages_to_queue, InMemoryGrid.send_and_receive, vce.start_vce
    with engine_changes():
        with engine_changes():  # nested: one application
            assert vce_api.add_messages_to_queue is dispatch.add_messages_to_queue
            assert InMemoryGrid.send_and_receive is dispatch.send_and_receive
        assert engine.active() and RayBackend.build is ray_backend._build
    assert (vce_api.add_messages_to_queue, InMemoryGrid.send_and_receive, vce.start_vce) == flowers
    assert not engine.active() and RayBackend.build is not ray_backend._build


def test_other_flower_release_left_untouched(monkeypatch, caplog):
    monkeypatch.setattr(engine, "FLOWER_VERSION", "0.0.1")
    monkeypatch.setattr(engine, "_warned", False)
    flowers = vce_api.add_messages_to_queue
    with caplog.at_level("WARNING", logger="flnorm"), engine_changes() as applied, engine_changes():
        assert not applied and not engine.active()
        assert vce_api.add_messages_to_queue is flowers
    lines = [r.getMessage() for r in caplog.records if "written for Flower 0.0.1" in r.getMessage()]
    assert len(lines) == 1 and "unchanged" in lines[0]


def test_adopted_only_in_flowers_simulation_process():
    engine.adopt_in_flower_simulation()  # pytest is not flwr-simulation
    assert not engine.active()


def test_dispatcher_wakes_when_an_instruction_is_stored(installed):
    state, grid, nodes = _link(2)
    queue: Queue[Message] = Queue()
    stop = threading.Event()
    loop = threading.Thread(target=vce_api.add_messages_to_queue,
                            args=(state, queue, dict.fromkeys(nodes, 0), stop))
    loop.start()
    try:
        for tag in ("first", "second"):  # the loop is asleep before each push
            _push(grid, nodes, tag)
            got = [queue.get(timeout=30) for _ in nodes]
            assert {m.content["c"]["tag"] for m in got} == {tag}
            assert sorted(m.metadata.dst_node_id for m in got) == sorted(nodes)
    finally:
        stop.set()
        dispatch.signals(state).instructions.set()
        loop.join(timeout=30)
    assert not loop.is_alive()


def test_send_and_receive_wakes_on_each_reply_and_keeps_the_timeout(installed):
    state, grid, nodes = _link(3)
    msgs = [Message(RecordDict(), dst_node_id=n, message_type="train") for n in nodes]

    def clients() -> None:  # reply one by one, as the actors finish
        for _ in nodes:
            for msg in dispatch.pending_messages(state, nodes):
                _reply(state, msg)

    threading.Timer(0.05, clients).start()
    replies = grid.send_and_receive(msgs, timeout=60)
    assert sorted(r.content["c"]["from"] for r in replies) == sorted(nodes)
    assert state.message_ins_store == {}  # pulled replies delete their instructions

    late = grid.send_and_receive([Message(RecordDict(), dst_node_id=nodes[0], message_type="train")],
                                 timeout=0.2)
    assert late == []  # nobody replies: back after the timeout, not after FALLBACK_WAIT


def test_reply_log_polling_itself_gets_every_reply_and_counts_the_missing():
    """``ReplyLog(poll=...)`` (a deployed SuperLink's grid) on a real Flower grid: replies stored
    by another thread while it polls are all collected; a node that never replies is missing."""
    from flnorm.runner.monitor import ReplyLog

    state, grid, nodes = _link(3)
    replies = ReplyLog(grid, poll=0.02)
    msgs = [Message(RecordDict({"c": ConfigRecord({"tag": "t"})}), dst_node_id=n, message_type="train")
            for n in nodes]

    def answer() -> None:  # the first two nodes reply, one after the other
        for node in nodes[:2]:
            taken = []
            while not taken:
                taken = state.get_message_ins(node_id=node, limit=1)
                threading.Event().wait(0.05)
            reply = Message(RecordDict({"m": MetricRecord({"client": nodes.index(node)})}), reply_to=taken[0])
            reply.metadata.__dict__["_message_id"] = str(uuid4())
            assert state.store_message_res(reply)

    thread = threading.Thread(target=answer)
    thread.start()
    got = replies.send_and_receive(msgs, timeout=2.0)
    thread.join(timeout=30)
    assert sorted(m.metadata.src_node_id for m in got) == sorted(nodes[:2])
    train, _ = replies.take()
    assert train.sent == 3 and sorted(m["client"] for m in train.metrics) == [0, 1] and train.missing == 1
