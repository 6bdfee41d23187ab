"""A Queue's holders die: kill storms with a checker.

- consumers SIGKILLed at random points (receiving, holding, forwarding): no
  object is delivered twice, at most one object is missing per kill, and
  nothing wedges (fresh consumers drain the rest);
- producers SIGKILLed while putting: each producer's objects arrive as an
  unbroken prefix 0..m of what it put (a death loses at most the object it
  was putting, never an earlier one), no duplicates, nothing wedges;
- a consumer killed while blocked in get costs nothing.

Short storms always; long ones under ``-m slow``.
"""
import queue
import random
import signal

import pytest

import ember
from objhelp import join, kill, spawn

pytest_plugins = ["ember.testing"]

CONSUMER = """
q, results = ARGS
while True:
    item = q.get()
    if item is None:
        break
    results.put(item)
"""

PRODUCER = """
q, ident = ARGS
seq = 0
while True:
    q.put((ident, seq))
    seq += 1
"""


def _consumer_storm(kills, n_items):
    rng = random.Random(kills)
    q, results = ember.Queue(64), ember.Queue()
    consumers = [spawn(CONSUMER, q, results) for _ in range(3)]
    every = max(1, n_items // (kills + 1))
    done = 0
    got = []

    def drain():
        while True:
            try:
                got.append(results.get_nowait())
            except queue.Empty:
                return

    for i in range(n_items):
        q.put(i, timeout=120)        # wedged (no live consumer drains it): queue.Full, not a hang
        if i % 1000 == 999:
            drain()         # results is unbounded but holds 8192 at most: keep it moving
        if i % every == every - 1 and done < kills:
            victim = consumers.pop(rng.randrange(len(consumers)))
            kill(victim)
            assert join(victim) == -signal.SIGKILL
            consumers.append(spawn(CONSUMER, q, results))
            done += 1
    for _ in consumers:
        q.put(None)
    # q holds at most 64 more, so results (drained every 1000 puts) cannot fill up
    assert [join(c, timeout=120) for c in consumers] == [0] * len(consumers)
    drain()
    assert len(got) == len(set(got)), "an object was delivered twice"
    missing = set(range(n_items)) - set(got)
    assert len(missing) <= done, f"{len(missing)} objects lost by {done} kills: {sorted(missing)}"
    assert q.empty()
    q.put("alive")
    assert q.get(timeout=10) == "alive"


def _producer_storm(kills):
    rng = random.Random(kills)
    q = ember.Queue(64)
    ident = 0
    producers = {}
    for _ in range(3):
        producers[ident] = spawn(PRODUCER, q, ident)
        ident += 1
    seen = {}
    received = 0
    every = 300
    done = 0
    while done < kills:
        who, seq = q.get(timeout=120)
        assert seq == seen.get(who, -1) + 1, f"producer {who}: {seq} after {seen.get(who)}"
        seen[who] = seq
        received += 1
        if received % every == 0:
            victim = rng.choice(list(producers))
            kill(producers[victim])
            assert join(producers.pop(victim)) == -signal.SIGKILL
            producers[ident] = spawn(PRODUCER, q, ident)
            ident += 1
            done += 1
    for who, p in producers.items():
        kill(p)
        assert join(p) == -signal.SIGKILL
    while True:
        try:
            who, seq = q.get_nowait()
        except queue.Empty:
            break
        assert seq == seen.get(who, -1) + 1, f"producer {who}: {seq} after {seen.get(who)}"
        seen[who] = seq
    q.put("alive")
    assert q.get(timeout=10) == "alive"


@pytest.mark.timeout(240)
def test_consumer_kill_storm_short(ember_runtime):
    _consumer_storm(kills=6, n_items=3000)


@pytest.mark.timeout(240)
def test_producer_kill_storm_short(ember_runtime):
    _producer_storm(kills=6)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_consumer_kill_storm_long(ember_runtime):
    _consumer_storm(kills=1000, n_items=300_000)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_producer_kill_storm_long(ember_runtime):
    _producer_storm(kills=1000)


@pytest.mark.timeout(120)
def test_consumer_killed_while_blocked_in_get_costs_nothing(ember_runtime):
    q, started = ember.Queue(2), ember.Event()
    p = spawn("""
        q, started = ARGS
        started.set()
        q.get()
        """, q, started)
    assert started.wait(60)
    kill(p)
    assert join(p) == -signal.SIGKILL
    for i in range(2):
        q.put(i, timeout=10)
    assert [q.get(timeout=10), q.get(timeout=10)] == [0, 1]
