"""The sender's wire encoding, against a fake server that parses bodies as the real one does
(JSON with the NaN / Infinity tokens; a point with a non-finite value is refused), in the
sender thread and in a real encoder process."""

import json
import math
import os
import signal

import pytest
from simsched_agent._encoder import EncoderProcess
from simsched_agent._points import Counters, Sender

STAMP = 1_700_000_000.0


class FakeApi:
    def __init__(self):
        self.stored: dict[tuple[int, str], float] = {}
        self.bodies: list[bytes] = []

    def request(self, method, path, *, raw, timeout):
        self.bodies.append(raw)
        try:
            points = json.loads(raw)["points"]
        except ValueError:
            return 400, {"detail": "not JSON"}
        rows = []
        for point in points:
            values = point.get("values") or {"loss": point["loss_value"]}
            if not all(math.isfinite(v) for v in values.values()):
                return 400, {"detail": "not finite"}
            rows += [((point["step"], name), value) for name, value in values.items()]
        self.stored.update(rows)
        return 200, {"stored": len(rows), "duplicates": 0}


def test_a_bad_loss_after_a_good_series_costs_nothing_and_does_not_raise():
    """Regression: {"lr": 0.1, "loss": nan} used to go out as {"loss_value": nan} (the lr value
    gone, the body not JSON) and the refusal path then raised, which ended the sender thread."""
    api, counters = FakeApi(), Counters()
    items = [
        (5, {"lr": 0.1, "loss": float("nan")}, STAMP),
        (6, {"loss": 1.0, "lr": "not a number"}, STAMP),
        (7, {"grad_norm": 2.5, "loss": float("inf")}, STAMP),
        (8, {"loss": 0.5}, STAMP),
        (9, {"loss": 0.25, "lr": 0.01}, STAMP),
    ]
    assert Sender(api, 1, counters).send(items)
    assert api.stored == {
        (5, "lr"): 0.1,
        (6, "loss"): 1.0,
        (7, "grad_norm"): 2.5,
        (8, "loss"): 0.5,
        (9, "loss"): 0.25,
        (9, "lr"): 0.01,
    }
    assert counters.stored == 6 and counters.rejected == 3  # nan, inf, "not a number"


class Scalar:  # what numpy.float32 is to marshal and JSON: not a float
    def __init__(self, value):
        self.value = value

    def __float__(self):
        return self.value


MIXED = [
    *((step, {"loss": 1.0 / (step + 1), "lr": 3e-4}, STAMP + step / 1000) for step in range(3000)),
    (3000, {"loss": float("nan"), "lr": 3e-4}, STAMP + 3),
    (3001, {"loss": Scalar(0.5), "val/loss": float("-inf")}, STAMP + 3),
    (3002, {"loss": None, "lr": "0.25"}, STAMP + 3),
]


@pytest.fixture
def encoder():
    process = EncoderProcess(timeout=30)
    yield process
    process.close()


@pytest.mark.parametrize(
    ("items", "stored"), [(MIXED[:3000], 6000), (MIXED, 6003)], ids=["floats", "mixed"]
)
def test_the_encoder_process_writes_what_the_sender_thread_writes(encoder, items, stored):
    here, there = FakeApi(), FakeApi()
    here_counters, there_counters = Counters(), Counters()
    assert Sender(here, 1, here_counters).send(items)
    assert Sender(there, 1, there_counters, encoder=encoder).send(items)
    assert encoder.process is not None and not encoder.failed  # the child did the writing
    assert there.bodies == here.bodies
    assert there.stored == here.stored and len(there.stored) == stored
    assert there_counters.as_dict() == here_counters.as_dict()


def test_a_dead_encoder_process_costs_nothing_the_sender_encodes_in_its_thread(encoder):
    api, counters = FakeApi(), Counters()
    sender = Sender(api, 1, counters, encoder=encoder)
    assert sender.send(MIXED[:1000])
    os.kill(encoder.process.pid, signal.SIGKILL)
    encoder.process.wait()
    assert sender.send(MIXED[1000:])
    assert encoder.failed and encoder.process is None
    assert len(api.stored) == 6003 and counters.rejected == 3  # nan, -inf, None
