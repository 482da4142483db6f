"""The speculation predictor: which (user, item) pairs will be served in the next window (SOLARIS-style).

P(pair served in window [s, s+W)) = P(user active in the window) x P(item among the user's candidates):

- the user-activity model is a small MLP over features of the user's event times known at s (recency,
  frequency at several horizons, inter-arrival gaps, session state, time of day and week, the user's own
  hour-of-day habit), trained with binary cross-entropy on past windows;
- the item part is the retrieval stage run ahead on the user's newest state at s: its top ranks, with
  P(served | rank) measured on past windows (`rank_curve`).

Only users whose last event is within `horizon` of s are candidates (older ones get P = 0: a session
that starts out of the blue is a miss whatever the model). Two baselines live here too: the users active
in the last window (their top-N candidates), and random pairs at the same compute.
Torch and numpy only: no Prefect, Feast or MLflow.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

FEATURES = (
    "log_recency_min",
    "log_count_window",
    "log_count_1h",
    "log_count_1d",
    "log_count_7d",
    "log_count_all",
    "log_last_gap_min",
    "mean_log_gap_10",
    "in_session",
    "log_session_events",
    "log_session_minutes",
    "hour_sin",
    "hour_cos",
    "dow_sin",
    "dow_cos",
    "hour_share",
)
_KEY = np.int64(1) << 33  # user index * _KEY + unix seconds sorts by (user, time)
_NEVER = 10**10  # "no such event" recency, in seconds


@dataclass(frozen=True)
class ActivityTimes:
    """Every user's event times, sorted by (user, time): the only input of the activity features."""

    users: np.ndarray  # (U,) user ids, index = dense user index
    keys: np.ndarray  # (E,) dense user * _KEY + unix seconds, sorted
    seconds: np.ndarray  # (E,) unix seconds
    start: np.ndarray  # (U+1,) first event position of each dense user
    session_start: np.ndarray  # (E,) position of the first event of the event's session
    hour_cum: np.ndarray  # (E+1, 24) events per hour of day before each position (cumulative)
    session_gap_s: int  # a longer gap starts a new session

    @classmethod
    def build(cls, user_ids: np.ndarray, seconds: np.ndarray, session_gap_s: int) -> ActivityTimes:
        """Index the events (user_ids, unix seconds) of a log."""
        users, dense = np.unique(np.asarray(user_ids, dtype=np.int64), return_inverse=True)
        order = np.lexsort((seconds, dense))
        dense, secs = dense[order].astype(np.int64), np.asarray(seconds, dtype=np.int64)[order]
        start = np.searchsorted(dense, np.arange(len(users) + 1))
        first = np.r_[True, dense[1:] != dense[:-1]] if len(dense) else np.zeros(0, bool)
        new = first | (np.diff(secs, prepend=0) > session_gap_s)
        pos = np.arange(len(secs))
        session_start = np.maximum.accumulate(np.where(new, pos, 0)) if len(secs) else pos
        hours = (secs // 3600) % 24
        onehot = np.zeros((len(secs) + 1, 24), np.int32)
        onehot[pos + 1, hours] = 1
        return cls(
            users, dense * _KEY + secs, secs, start, session_start, np.cumsum(onehot, axis=0), session_gap_s
        )

    def dense(self, user_ids: np.ndarray) -> np.ndarray:
        """Dense index of each user id (-1 when the user has no event)."""
        at = np.searchsorted(self.users, user_ids)
        at = np.minimum(at, max(len(self.users) - 1, 0))
        return np.where((len(self.users) > 0) & (self.users[at] == user_ids), at, -1)

    def position(self, dense: np.ndarray, at: np.ndarray) -> np.ndarray:
        """Global position of each user's first event at or after `at` (= end of what is known at `at`)."""
        return np.searchsorted(self.keys, dense * _KEY + at, side="left")

    def count_before(self, dense: np.ndarray, at: np.ndarray) -> np.ndarray:
        """Events of each user strictly before `at`."""
        return self.position(dense, at) - self.start[dense]

    def count_between(self, dense: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Events of each user in [lo, hi)."""
        return self.position(dense, hi) - self.position(dense, lo)


def activity_features(times: ActivityTimes, dense: np.ndarray, at: np.ndarray, window_s: int) -> np.ndarray:
    """(n, F) features of users (dense indices) at instants `at` (unix s), from events before `at` only."""
    dense, at = np.asarray(dense, np.int64), np.asarray(at, np.int64)
    end = times.position(dense, at)
    n = end - times.start[dense]
    has = n > 0
    last = np.where(has, times.seconds[np.maximum(end - 1, 0)], at - _NEVER)
    recency = (at - last).astype(np.float64)
    prev = np.where(n > 1, times.seconds[np.maximum(end - 2, 0)], last - _NEVER)

    def count(d: int) -> np.ndarray:
        return times.count_between(dense, at - d, at).astype(np.float64)

    k = np.minimum(n, 10)  # mean log gap over the last 10 gaps
    lo = np.maximum(end - k, 0)
    span = np.where(k > 1, (last - times.seconds[lo]) / np.maximum(k - 1, 1), _NEVER)
    in_session = has & (recency <= times.session_gap_s)
    sess_pos = times.session_start[np.maximum(end - 1, 0)]
    sess_events = np.where(in_session, end - sess_pos, 0)
    sess_minutes = np.where(in_session, (last - times.seconds[sess_pos]) / 60.0, 0.0)
    hour = (at // 3600) % 24
    dow = (at // 86400 + 3) % 7  # 1970-01-01 was a Thursday: Monday = 0
    hour_count = times.hour_cum[end, hour] - times.hour_cum[times.start[dense], hour]
    x = np.stack(
        [
            np.log1p(recency / 60.0),
            np.log1p(count(window_s)),
            np.log1p(count(3600)),
            np.log1p(count(86400)),
            np.log1p(count(7 * 86400)),
            np.log1p(n.astype(np.float64)),
            np.log1p((last - prev).clip(0) / 60.0),
            np.log1p(np.asarray(span, np.float64).clip(0) / 60.0),
            in_session.astype(np.float64),
            np.log1p(sess_events.astype(np.float64)),
            np.log1p(sess_minutes),
            np.sin(2 * np.pi * hour / 24),
            np.cos(2 * np.pi * hour / 24),
            np.sin(2 * np.pi * dow / 7),
            np.cos(2 * np.pi * dow / 7),
            hour_count / np.maximum(n, 1),
        ],
        axis=1,
    )
    return x.astype(np.float32)


def candidate_windows(
    times: ActivityTimes, first_start: int, n_windows: int, window_s: int, horizon_s: int
) -> tuple[np.ndarray, np.ndarray]:
    """(dense user, window index) of every window start s_k = first_start + k*window_s (0 <= k < n_windows)
    that comes after one of the user's events by at most horizon_s: the users worth predicting at s_k."""
    users = np.searchsorted(times.start, np.arange(len(times.seconds)), side="right") - 1
    t = times.seconds
    k_lo = (np.floor_divide(t - first_start, window_s) + 1).clip(0)  # first start strictly after t
    k_hi = np.floor_divide(t + horizon_s - first_start, window_s).clip(max=n_windows - 1)
    keep = k_lo <= k_hi
    users, k_lo, k_hi = users[keep], k_lo[keep], k_hi[keep]
    if len(users) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    # sorted by (user, time): k_lo and k_hi never decrease within a user, so ranges merge in one pass
    new = np.r_[True, (users[1:] != users[:-1]) | (k_lo[1:] > k_hi[:-1] + 1)]
    first = np.flatnonzero(new)
    last = np.r_[first[1:] - 1, len(users) - 1]
    lo, lens = k_lo[first], k_hi[last] - k_lo[first] + 1
    offsets = np.arange(int(lens.sum())) - np.repeat(np.cumsum(lens) - lens, lens)
    return np.repeat(users[first], lens).astype(np.int64), (np.repeat(lo, lens) + offsets).astype(np.int64)


class ActivityModel(nn.Module):
    """P(user active in the next window) from standardised activity features: a small MLP."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, n_features: int = len(FEATURES), hidden: int = 32) -> None:
        super().__init__()
        self.hidden = hidden
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))
        self.net = nn.Sequential(nn.Linear(n_features, hidden), nn.SiLU(), nn.Linear(hidden, 1))
        self.prior_shift = nn.Parameter(torch.zeros(()), requires_grad=False)  # log of negative sampling rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (n,) for features (n, F)."""
        return self.net((x - self.mean) / self.std).squeeze(-1) + self.prior_shift

    @torch.no_grad()
    def predict(self, x: np.ndarray) -> np.ndarray:
        """P(active) (n,) for features (n, F)."""
        self.eval()
        return torch.sigmoid(self(torch.from_numpy(np.asarray(x, np.float32)))).numpy()


def train_activity(
    model: ActivityModel, x: np.ndarray, y: np.ndarray, epochs: int, lr: float, seed: int, batch: int = 4096
) -> list[float]:
    """Fit the activity model with binary cross-entropy; return the loss per epoch."""
    if len(y) == 0 or y.min() == y.max():
        raise ValueError(
            f"train_activity needs both active and inactive examples; got {len(y)} examples with "
            f"{int(np.sum(y))} active: widen the training span (speculation.train_days)."
        )
    xt, yt = torch.from_numpy(np.asarray(x, np.float32)), torch.from_numpy(np.asarray(y, np.float32))
    with torch.no_grad():
        model.mean.copy_(xt.mean(0))
        model.std.copy_(xt.std(0).clamp(min=1e-3))
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(epochs):
        model.train()
        order, total = torch.randperm(len(yt), generator=gen), 0.0
        for lo in range(0, len(order), batch):
            idx = order[lo : lo + batch]
            loss = F.binary_cross_entropy_with_logits(model(xt[idx]), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        losses.append(total / len(yt))
    model.eval()
    return losses


def rank_curve(served_ranks: list[np.ndarray], max_rank: int, n_examples: int) -> np.ndarray:
    """P(the item at retrieval rank r at the window start is served in the window), r < max_rank.

    `served_ranks` holds, per active (user, window) example, the ranks (at the window start) of the items
    its requests served; the curve is their frequency, made non-increasing (a better rank is never less
    likely) so the greedy budget fill takes each user's ranks in order.
    """
    counts = np.zeros(max_rank)
    for ranks in served_ranks:
        r = np.asarray(ranks, np.int64)
        np.add.at(counts, r[(r >= 0) & (r < max_rank)], 1.0)
    curve = counts / max(n_examples, 1)
    return np.minimum.accumulate(curve)


def select_pairs(
    p_active: np.ndarray, curve: np.ndarray, budget: int, min_p: float
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy fill of the budget by P(served) = p_active[u] * curve[r]: (user position, rank) pairs.

    Users below min_p are not precomputed; pairs of zero probability never are.
    """
    users = np.flatnonzero(p_active >= max(min_p, 1e-12))
    useful = np.flatnonzero(curve > 0)
    if len(users) == 0 or len(useful) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    score = p_active[users][:, None] * curve[useful][None, :]  # (U', R)
    flat = np.argsort(-score, axis=None, kind="stable")[:budget]
    u, r = np.unravel_index(flat, score.shape)
    return users[u].astype(np.int64), useful[r].astype(np.int64)


def recent_users(
    count_last_window: np.ndarray, n_per_user: int, budget: int
) -> tuple[np.ndarray, np.ndarray]:
    """Baseline: users active in the last window (most events first), each with its top-N ranks."""
    users = np.flatnonzero(count_last_window > 0)
    users = users[np.argsort(-count_last_window[users], kind="stable")]
    u = np.repeat(users, n_per_user)[:budget]
    r = np.tile(np.arange(n_per_user), len(users))[:budget]
    return u.astype(np.int64), r.astype(np.int64)


def random_pairs(
    n_users: int, n_items: int, budget: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Baseline: `budget` distinct random (user position, item position) pairs."""
    if n_users == 0 or n_items == 0 or budget <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    total = n_users * n_items
    flat = rng.choice(total, size=min(budget, total), replace=False)
    return (flat // n_items).astype(np.int64), (flat % n_items).astype(np.int64)
