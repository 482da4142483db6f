"""Next-event evaluation: histories end just before each target, and the metrics match a plain loop."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from models.evaluate import metrics_from_ranks
from specrec.clock import EventLog, ReplayClock
from specrec.config import ClockConfig
from specrec.fm.replay_eval import cycle_targets, next_event_metrics


class _Random:
    """A fixed random retriever: user vector from the last item, so histories matter."""

    def __init__(self, n_items: int) -> None:
        gen = torch.Generator().manual_seed(0)
        self.table = torch.randn(n_items + 1, 8, generator=gen)

    def user_state(self, items: torch.Tensor, timestamps: torch.Tensor) -> torch.Tensor:
        return self.table[items[:, -1]]

    def item_embeddings(self) -> torch.Tensor:
        return self.table


def _events() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    n = 600
    ts = pd.to_datetime(
        np.sort(rng.integers(1_500_000_000, 1_500_000_000 + 40 * 86400, n)), unit="s", utc=True
    )
    return pd.DataFrame(
        {
            "user_idx": rng.integers(0, 30, n),
            "item_idx": rng.integers(1, 51, n),
            "timestamp": ts,
            "event_id": np.arange(n),
        }
    )


def test_histories_stop_before_each_target() -> None:
    events = _events()
    cycle = ReplayClock.from_config(ClockConfig(start="2017-07-24", cadence="7D", cycles=3)).cycle(2)
    hist, targets, cold = cycle_targets(EventLog(events), cycle)
    in_cycle = events[(events["timestamp"] >= cycle.start) & (events["timestamp"] < cycle.as_of)]
    assert len(targets) + cold == len(in_cycle) > 0
    limit = int(cycle.as_of.timestamp())
    assert all(len(t) and t.max() < limit for t in hist.timestamps)


def test_metrics_match_a_plain_loop() -> None:
    events = _events()
    cycle = ReplayClock.from_config(ClockConfig(start="2017-07-24", cadence="7D", cycles=3)).cycle(3)
    model = _Random(50)
    got = next_event_metrics(model, events, cycle, max_len=10, batch_size=7)
    ranks = []
    for _, e in events[(events["timestamp"] >= cycle.start) & (events["timestamp"] < cycle.as_of)].iterrows():
        before = events[(events["user_idx"] == e["user_idx"]) & (events["event_id"] < e["event_id"])]
        if before.empty:
            continue
        scores = model.table @ model.table[int(before["item_idx"].iloc[-1])]
        seen = set(before["item_idx"]) - {int(e["item_idx"])}
        ok = [i for i in range(1, 51) if i not in seen]
        ranks.append(sum(1 for i in ok if scores[i] > scores[int(e["item_idx"])]))
    want = metrics_from_ranks(torch.tensor(ranks))
    assert got["events_scored"] == len(ranks)
    for key, value in want.items():
        assert abs(got[key] - value) < 1e-9, key
