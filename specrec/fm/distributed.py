"""FM training under torchrun (DistributedDataParallel, gloo on CPU) and the launcher behind
`specrec fm train --nproc N`.

`torchrun --standalone --nproc_per_node N -m specrec.fm.train [--params params.yaml]` starts N copies of
the ordinary train_fm stage. Each finds torchrun's RANK / WORLD_SIZE / LOCAL_RANK in its environment,
joins a gloo process group and trains its slice of every batch (models.ddp); fm.train.batch_size stays
the global batch, so N ranks follow one process's loss curve. Rank 0 alone does the rest of the stage
(MLflow run, progress bar, checkpoint, registration, gate, metrics files). Without torchrun's variables
the stage runs in one process exactly as before.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from models.ddp import Shard
from models.train import train
from specrec.config import Config
from specrec.errors import ConfigError, SpecrecError
from specrec.fm.data import load_loo
from specrec.fm.train import TrainOutcome, fm_model, train_config, train_fm

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
BACKEND = "gloo"  # CPU; NCCL would be the choice on GPUs


def torchrun_world(env: Mapping[str, str] = os.environ) -> tuple[int, int] | None:
    """(rank, world_size) when torchrun started this process, None when none of its variables is set."""
    present = [k for k in TORCHRUN_ENV if k in env]
    if not present:
        return None
    missing = [k for k in TORCHRUN_ENV if k not in env]
    if missing:
        raise SpecrecError(
            f"torchrun environment incomplete: {', '.join(present)} set but {', '.join(missing)} not; "
            "start training with torchrun (or `specrec fm train --nproc N`), or unset them for one process."
        )
    try:
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
    except ValueError:
        raise SpecrecError(
            f"torchrun environment: RANK={env['RANK']!r}, WORLD_SIZE={env['WORLD_SIZE']!r} must be integers"
        ) from None
    return rank, world


@contextmanager
def process_group(env: Mapping[str, str] = os.environ) -> Iterator[Shard | None]:
    """Under torchrun: this rank's Shard of a gloo process group, destroyed on exit; otherwise None."""
    if torchrun_world(env) is None:
        yield None
        return
    import torch.distributed as dist

    dist.init_process_group(BACKEND)  # env:// rendezvous: MASTER_ADDR / MASTER_PORT set by torchrun
    try:
        yield Shard.current()
    finally:
        dist.destroy_process_group()


def train_replica(cfg: Config, shard: Shard) -> None:
    """A rank other than 0: the same data, initial weights and loop as rank 0; no MLflow, no files."""
    data = load_loo(cfg.path(cfg.paths.split), cfg.path(cfg.paths.prepared))
    train(fm_model(cfg, data), data.train, data.valid, train_config(cfg, progress=False), shard=shard)


def train_stage(cfg: Config) -> TrainOutcome | None:
    """The train_fm stage in this process: alone, or as one torchrun rank (rank 0 returns the outcome)."""
    with process_group() as shard:
        if shard is None:
            return train_fm(cfg)
        batch = cfg.fm.train.batch_size
        if batch < shard.world_size:
            raise ConfigError("fm.train.batch_size", batch, f"at least the {shard.world_size} DDP ranks")
        if shard.is_main:
            return train_fm(cfg, shard=shard)
        train_replica(cfg, shard)
        return None


def torchrun_command(params: Path, nproc: int) -> list[str]:
    """The torchrun command line that trains the FM with `nproc` processes on this machine."""
    if nproc < 1:
        raise SpecrecError(f"--nproc {nproc}: the number of training processes must be >= 1")
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",  # = the `torchrun` script of this environment
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "specrec.fm.train",
        "--params",
        str(params),
    ]


def launch(params: Path, nproc: int) -> int:
    """Run torchrun with `nproc` ranks of the train_fm stage; return its exit code."""
    return subprocess.run(torchrun_command(params, nproc), check=False).returncode
