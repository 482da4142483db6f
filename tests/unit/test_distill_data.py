"""Distillation examples with serving-time inputs: the scorer's user state, candidates and pair vectors come
from the history before the label's window start (what the nearline state and the precomputed rows hold
online), the teacher from every event before the label (the full FM at the request)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from models.hstu import HSTU, HSTUConfig
from specrec.online.distill_data import build_examples

N_ITEMS, WINDOW = 12, pd.Timedelta("5min")
T0 = pd.Timestamp("2018-01-01 10:00", tz="UTC")


def _events() -> pd.DataFrame:
    """User 1: three events an hour before, then two inside the 10:05 window (the last is the label).
    User 2: every event inside one window (no state before it online: a cold start, no example).
    User 3: the label is the first event of its window."""
    rows = [
        (1, 3, T0 - pd.Timedelta("60min")),
        (1, 5, T0 - pd.Timedelta("59min")),
        (1, 7, T0 - pd.Timedelta("58min")),
        (1, 2, T0 + pd.Timedelta("5min 10s")),
        (1, 9, T0 + pd.Timedelta("5min 40s")),
        (2, 4, T0 + pd.Timedelta("1min")),
        (2, 6, T0 + pd.Timedelta("1min 20s")),
        (3, 8, T0 - pd.Timedelta("30min")),
        (3, 10, T0 - pd.Timedelta("29min")),
        (3, 11, T0 + pd.Timedelta("2min")),
        (1, 12, T0 + pd.Timedelta("2h")),  # after as_of: never read
    ]
    frame = pd.DataFrame(rows, columns=["user_idx", "item_idx", "timestamp"])
    return frame.assign(
        event_id=np.arange(len(frame)), user_id=frame["user_idx"], item_id=frame["item_idx"], rating=4.0
    )


@pytest.fixture(scope="module")
def fm() -> HSTU:
    torch.manual_seed(0)
    return HSTU(HSTUConfig(n_items=N_ITEMS, max_len=8, dim=8, n_layers=1, dropout=0.0)).eval()


def _build(fm: HSTU, window: pd.Timedelta | None) -> object:
    items = pd.DataFrame({"item_id": np.arange(1, N_ITEMS + 1), "item_idx": np.arange(1, N_ITEMS + 1)})
    as_of = T0 + pd.Timedelta("1h")
    return build_examples(fm, _events(), items, as_of, pd.Timedelta("7D"), 6, 10, window=window)


def _seq(pairs: list[tuple[int, pd.Timestamp]]) -> tuple[torch.Tensor, torch.Tensor]:
    items = torch.tensor([[i for i, _ in pairs]])
    secs = torch.tensor([[int(t.timestamp()) for _, t in pairs]])
    return items, secs


def _history(user: int) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """(events before the label's window start, every event before the label) of a user, as tensors."""
    ev = _events()
    mine = ev[(ev["user_idx"] == user) & (ev["timestamp"] < T0 + pd.Timedelta("1h"))]
    before = list(zip(mine["item_idx"], mine["timestamp"], strict=True))[:-1]
    start = mine["timestamp"].iloc[-1].floor("5min")
    return _seq([(i, t) for i, t in before if t < start]), _seq(before)


@torch.no_grad()
def test_serving_inputs_come_from_the_window_start_and_the_teacher_from_the_request(fm: HSTU) -> None:
    data = _build(fm, WINDOW)
    table = fm.item_embeddings()
    assert len(data.label) == 2  # user 2 has nothing before its window start: no example
    for row, user in ((0, 1), (1, 3)):  # newest label first: user 1 (10:05:40), then user 3 (10:02)
        served, whole = _history(user)
        u = fm.user_state(*served)[0]
        scores = u @ table.T
        scores[0] = float("-inf")
        cand = scores.topk(6).indices  # retrieval with the window start's state
        p, stale = fm.pair_repr(*served, cand[None])
        _, teacher = fm.pair_repr(*whole, cand[None])
        assert torch.allclose(data.u[row], u, atol=1e-6)
        assert torch.allclose(data.e[row], table[cand], atol=1e-6)
        assert torch.allclose(data.p[row], p[0], atol=1e-5)
        assert torch.allclose(data.teacher[row], teacher[0], atol=1e-5)
        # user 1's two events inside the window make the request's FM differ from the window start's
        assert torch.allclose(teacher, stale, atol=1e-5) == (user == 3)


@torch.no_grad()
def test_without_a_window_every_input_is_the_request_time_history(fm: HSTU) -> None:
    data = _build(fm, None)
    assert len(data.label) == 3  # every user with two known events has an example
    _, whole = _history(1)
    assert torch.allclose(data.u[0], fm.user_state(*whole)[0], atol=1e-6)
    served = _build(fm, WINDOW)
    assert not torch.allclose(served.u[0], data.u[0], atol=1e-4)  # the window start hides two events
