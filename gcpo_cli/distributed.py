"""Data-parallel training over torch.distributed, as `torchrun` and `accelerate launch` start it.

    torchrun --nproc-per-node N -m gcpo_cli train --recipe R ...
    accelerate launch --multi_gpu --num_processes N -m gcpo_cli train --recipe R ...

Both launchers start N copies of `gcpo train` with RANK, WORLD_SIZE, LOCAL_RANK and
MASTER_ADDR/MASTER_PORT set; `from_env` joins them (NCCL for CUDA tensors and gloo for CPU ones
on a GPU machine, gloo alone on CPU). Multi-node is the launcher's business (`torchrun
--nnodes`). How the work is shared (train.py has the loop):

  1. One writer. Rank 0 alone opens the database and the run's folder: it reads the run, the
     recipe and the problems and hands them to the others (`together`, `broadcast`), picks
     each step's problems (the curriculum reads the database) and broadcasts the pick, gathers
     every rank's rollouts and metrics (`gather`) and writes the step in one transaction, and
     alone writes checkpoints and runs the held-out evaluation. SQLite in WAL mode needs every
     process that opens the database on one host (more writers than that would need one
     writer process), so the database and the run's folder live on rank 0's host; the other
     nodes need the model, the code and a custom reward's file, nothing else.
  2. A group is never split: rank r takes a contiguous share of the step's groups (`share`),
     so going gold and group-relative advantages need no communication.
  3. No DDP wrapper. Ranks run different numbers of micro-batches (zero-advantage sequences get
     no forward at all, and a rank may have none), and DDP's per-backward bucket all-reduce
     would wait forever for a backward that never comes. Instead, after its local
     micro-batches, each rank all-reduces the LoRA gradients as one flat buffer (`sum_grads`);
     the loss denominator of every mini-batch is global (computed from every rank's layout
     before the update), so the sum is exactly the one-process gradient. Every rank then
     clips and steps on bit-identical gradients, so the parameters stay identical without
     ever being sent again.
  4. Failure: a rank that dies closes its sockets, and the others' next collective raises
     (`PeerLost`, one line); the launcher stops the rest. Collectives inside a step wait at
     most `timeout_s` for a straggler. Rank 0's solo work between steps (the database, a
     checkpoint, the held-out evaluation, loading the model at the start) is waited for on a
     separate gloo group with a long timeout, so a long evaluation is not mistaken for a
     hang. Nothing of a step is recorded until rank 0 holds every rank's part of it.
  5. Seeds. A sample's tokens come from its own stream (seed, step, problem, sample index;
     rollout.generate), not from torch's global generator, whose draws in a batched
     torch.multinomial depend on every row of the batch: so a problem gets the same samples
     whichever rank, and whichever batch, rolls it out, and N ranks train what one process
     trains. torch's generator (LoRA dropout) is seeded from (seed, step, rank): `rank_seed`.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from dataclasses import dataclass, field
from datetime import timedelta

from .errors import GcpoError

DEFAULT_TIMEOUT_S = 1800  # torch's own default for gloo; NCCL's (10 min) is short for a slow rank's rollouts
SOLO_TIMEOUT = timedelta(hours=24)  # rank 0's held-out evaluation of a big set can take hours


class PeerLost(GcpoError):
    """Another rank stopped answering (it died, or timed out): the whole job fails."""


class Relayed(GcpoError):
    """An error rank 0 met and already reported; the other ranks exit with it, quietly."""


def rank_seed(seed: int, step: int, rank: int) -> int:
    """The torch seed of `rank` at `step`: rank 0's is the one-process seed (seed, step), so a
    one-process run samples as it always did; other ranks get their own stream."""
    return seed * 1_000_003 + step + (rank << 52)


def bounds(n: int, world: int, rank: int) -> tuple[int, int]:
    """The contiguous share [lo, hi) of n items that `rank` takes; shares differ by at most one."""
    return n * rank // world, n * (rank + 1) // world


@dataclass
class Dist:
    """This process's place in the job. The default is one process: every method is then a
    local no-op (or returns its input), so the training loop has one code path."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    device: str | None = None  # "cuda:K" under a CUDA launch; None: load_base's default placement
    group: object = None  # the step's collectives, with the step timeout
    solo: object = None  # gloo, long timeout: waiting for rank 0's solo work
    comm_s: float = 0.0  # seconds spent in collectives (a straggler's lead included)
    comm_bytes: int = 0  # gradient bytes all-reduced
    _torch: object = field(default=None, repr=False)

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def writer(self) -> bool:
        return self.rank == 0

    def share(self, items: list) -> tuple[int, list]:
        """(offset, this rank's contiguous share of `items`)."""
        lo, hi = bounds(len(items), self.world, self.rank)
        return lo, items[lo:hi]

    # ------------------------------------------------------------------ collectives
    def _call(self, fn, *args, **kwargs):
        """A collective, timed; a peer's death or a timeout becomes PeerLost (one line)."""
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        except RuntimeError as e:  # torch's DistError family: closed connection, timeout
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            first = re.sub(r"^\[[^\]]*\]\s*", "", first).split(". ")[0][:160]  # gloo's "[file.cc:537] " prefix off
            raise PeerLost(f"rank {self.rank} lost contact with the other ranks ({first}); "
                           "a rank died or timed out: the job stops with only whole steps recorded; "
                           "resume with gcpo train --resume RUN") from None
        finally:
            self.comm_s += time.perf_counter() - t0

    @contextlib.contextmanager
    def together(self):
        """Every rank leaves the block together: when one raises, all do, so no rank waits
        forever for one that failed. Rank 0 reports the error (its own, or "rank K: ..."); the
        others raise Relayed, which the CLI turns into a quiet exit (a non-GcpoError, a bug,
        keeps its traceback on the rank that met it)."""
        if not self.active:
            yield
            return
        error = None
        try:
            yield
        except Exception as e:  # noqa: BLE001 - reported below, then raised again
            error = e
        text = None if error is None else (str(error) if isinstance(error, GcpoError)
                                           else f"{type(error).__name__}: {str(error).strip()[:300]}")
        failed = [(rank, t) for rank, t in enumerate(self._gather_solo(text)) if t]
        if not failed:
            return
        if error is not None and (self.writer or not isinstance(error, GcpoError)):
            raise error
        rank, text = failed[0]
        raise GcpoError(f"rank {rank}: {text}") if self.writer else Relayed(text)

    def broadcast(self, obj):
        """Rank 0's `obj` on every rank (over the solo group: the others may wait on rank 0's
        database writes, checkpoint or evaluation)."""
        return self._broadcast(obj) if self.active else obj

    def _broadcast(self, obj):
        box = [obj]
        self._call(self._torch.distributed.broadcast_object_list, box, src=0, group=self.solo)
        return box[0]

    def gather(self, obj) -> list:
        """Every rank's `obj`, in rank order, on every rank ([obj] alone)."""
        if not self.active:
            return [obj]
        out = [None] * self.world
        # the pickles are CPU tensors: on CUDA the default group sends them over its gloo half
        self._call(self._torch.distributed.all_gather_object, out, obj, group=self.group)
        return out

    def any(self, flag: bool) -> bool:
        """Whether any rank says yes (a stop request), over the solo group: rank 0 may still be
        writing the step when the others ask."""
        if not self.active:
            return flag
        return any(self._gather_solo(bool(flag)))

    def _gather_solo(self, obj) -> list:
        out = [None] * self.world
        self._call(self._torch.distributed.all_gather_object, out, obj, group=self.solo)
        return out

    def sum_grads(self, params: list) -> None:
        """Sum every rank's gradients of `params` in place: one flat buffer per dtype (the LoRA
        weights are one dtype, so one all-reduce), a rank without a backward sending zeros."""
        if not self.active:
            return
        torch = self._torch
        by_dtype: dict = {}
        for p in params:
            by_dtype.setdefault(p.dtype, []).append(p)
        for group in by_dtype.values():
            flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in group])
            self._call(torch.distributed.all_reduce, flat, group=self.group)
            self.comm_bytes += flat.numel() * flat.element_size()
            at = 0
            for p in group:
                p.grad = flat[at:at + p.numel()].view_as(p)
                at += p.numel()

    def broadcast_params(self, params: list) -> None:
        """Rank 0's values of `params` on every rank (once, at the start: a resumed run's
        adapter is read by rank 0 alone)."""
        if not self.active:
            return
        torch = self._torch
        with torch.no_grad():
            flat = torch.cat([p.detach().reshape(-1) for p in params])
            self._call(torch.distributed.broadcast, flat, src=0, group=self.group)
            at = 0
            for p in params:
                p.copy_(flat[at:at + p.numel()].view_as(p))
                at += p.numel()

    def close(self) -> None:
        if self.active and self._torch.distributed.is_initialized():
            self._torch.distributed.destroy_process_group()


def launched() -> bool:
    """Whether a launcher started this process as one of several (WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def from_env(timeout_s: float = DEFAULT_TIMEOUT_S) -> Dist:
    """Join the job a launcher started (env:// rendezvous: RANK, WORLD_SIZE, MASTER_ADDR,
    MASTER_PORT), or a one-process Dist when there is none."""
    if not launched():
        return Dist()
    import torch
    import torch.distributed as dist

    env = os.environ
    rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
    local_rank = int(env.get("LOCAL_RANK", "0"))
    local_world = int(env.get("LOCAL_WORLD_SIZE", str(world)))
    device = None
    backend = "gloo"
    if torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise GcpoError(f"rank {rank} is local rank {local_rank} but this node has "
                            f"{torch.cuda.device_count()} GPU(s): start at most one process per GPU")
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
        backend = "cpu:gloo,cuda:nccl"  # gradients over NCCL, object collectives over gloo
    try:
        dist.init_process_group(backend=backend, init_method="env://", timeout=timedelta(seconds=timeout_s))
        solo = dist.new_group(backend="gloo", timeout=SOLO_TIMEOUT)
    except (RuntimeError, ValueError, KeyError) as e:
        raise GcpoError(f"rank {rank} cannot join the other {world - 1} rank(s) "
                        f"({str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__})") from None
    return Dist(rank=rank, world=world, local_rank=local_rank, local_world=local_world, device=device,
                group=dist.group.WORLD, solo=solo, _torch=torch)
