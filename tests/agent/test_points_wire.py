"""The sender's wire encoding, against a fake server that parses bodies as the real one does
(JSON with the NaN / Infinity tokens; a point with a non-finite value is refused)."""

import json
import math

from simsched_agent._points import Counters, Sender

STAMP = 1_700_000_000.0


class FakeApi:
    def __init__(self):
        self.stored: dict[tuple[int, str], float] = {}

    def request(self, method, path, *, raw, timeout):
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
