"""The processes of one run (design §8): one process, a ``torchrun`` group, or a ``--shard``.

Under any torch.distributed launcher (``torchrun``, or RANK / WORLD_SIZE / MASTER_ADDR /
MASTER_PORT set by hand) the run joins a process group: gloo on the CPU, and on a machine
with CUDA ``cpu:gloo,cuda:nccl`` with one device per process (``cuda:LOCAL_RANK``); results
travel as objects over the CPU backend. Collectives are entered only once every process has
arrived (counted in the rendezvous store), so a process that failed never leaves the others
waiting in one: a failure is written to the store, a watcher thread in every process sees it
within a fraction of a second, and the run ends (rank 0 says why, exit code 3). The watcher
stops the main thread with a real SIGINT, so that a check blocked in one long call (a sleep,
a read) ends then too, not when the call returns.

Each process posts its share of a check to the store as soon as that share is done
(:meth:`World.post`), so that rank 0 has every finished check whenever the run ends. A
launcher that stops the whole group when one process dies (torchrun's agent SIGTERMs the others
a tenth of a second later) would make rank 0 say "terminated": on a termination signal rank 0
first looks for a process that failed or whose heart stopped (:meth:`World.blame`).
"""

from __future__ import annotations

import _thread
import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from robaudit.errors import UsageError

#: how often the watcher and a waiting process look for a failure (seconds)
POLL_S = 0.05
#: how long a failed process waits for rank 0 to have said so before it exits (seconds)
ACK_S = 10.0
#: how long it lingers after that, so that rank 0 (which exits once it has said so) ends first
#: and its exit code is the one a launcher observes first (seconds)
LINGER_S = 2.0
#: how long a process waits at a rendezvous before giving up on the others (seconds)
RENDEZVOUS_S = 24 * 3600.0
#: how long rank 0 waits for a sign of life from a process before it counts it as gone (s)
SILENCE_S = 10.0
#: after a termination signal, how long rank 0 watches the others' hearts for one that stopped
#: (torchrun signals the group within a monitor interval, 0.1 s, of a process's death)
GONE_S = 2.0


class PeerFailure(Exception):
    """Another process of the run failed; the message says which and why."""


def parse_shard(text: str) -> tuple[int, int]:
    """``I/N`` → (I, N), 0 ≤ I < N."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise UsageError(f"--shard {text!r}: expected I/N, e.g. 0/4") from None
    if not (count >= 1 and 0 <= index < count):
        raise UsageError(f"--shard {text!r}: expected 0 <= I < N")
    return index, count


@dataclass
class World:
    """Where this process stands among the run's processes.

    rank, size  this process and the number of processes (0 and 1 alone; the group's rank
                and size under a launcher; the shard's I and N under ``--shard I/N``).
    sharded     ``--shard``: no process group; the share goes into this process's report.
    local_rank  the launcher's LOCAL_RANK (the CUDA device of this process).
    backend     the process group's backend.
    """

    rank: int = 0
    size: int = 1
    sharded: bool = False
    local_rank: int = 0
    backend: str = ""
    _store: Any = None
    _sequence: int = 0
    failure: str | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    @property
    def grouped(self) -> bool:
        """Whether this process is one of a torch.distributed process group."""
        return self._store is not None

    @property
    def reports(self) -> bool:
        """Whether this process prints and writes reports (rank 0, or any shard)."""
        return self.rank == 0 or self.sharded

    def describe(self) -> str:
        """How this run shares the work, for the console header ("" alone)."""
        if self.sharded:
            return f"shard {self.rank}/{self.size}"
        return f"{self.size} processes ({self.backend})" if self.size > 1 else ""

    def environment(self) -> dict[str, Any]:
        """The JSON ``environment`` entries of design §8."""
        entries: dict[str, Any] = {"world_size": 1 if self.sharded else self.size}
        if self.sharded:
            entries["shard"] = f"{self.rank}/{self.size}"
        return entries

    # -- failures -----------------------------------------------------------------------------
    def fail(self, message: str) -> None:
        """Tell the other processes that this one failed, and (rank ≠ 0) wait until rank 0
        has said so (and :data:`LINGER_S` more), so that a launcher that stops the group on
        the first exit does not cut rank 0's message short. Rank 0 says its own failure
        itself."""
        if not self.grouped:
            return
        try:
            self._store.set(f"robaudit/failed/{self.rank}", message)
            self._store.add("robaudit/failures", 1)
            if self.rank == 0:
                self._store.set("robaudit/said", "1")
            else:
                self._store.wait(["robaudit/said"], timedelta(seconds=ACK_S))
                time.sleep(LINGER_S)
        except Exception:  # the store may be gone with the process that hosted it
            pass

    def said(self) -> None:
        """Rank 0 has reported a failure: the failed process may exit."""
        if self.grouped:
            with contextlib.suppress(Exception):
                self._store.set("robaudit/said", "1")

    def check(self) -> None:
        """Raise :class:`PeerFailure` if another process has failed."""
        if self.failure is None and self.grouped:
            self.failure = self._read_failure(self._store)
        if self.failure is not None:
            raise PeerFailure(self.failure)

    def blame(self) -> str | None:
        """After this process got a termination signal (SIGTERM, SIGHUP): the failure of
        another process that made the launcher stop the group, else None (the signal was for
        the whole run, e.g. a cancelled job). A process that said it failed, or whose heart
        does not beat for :data:`GONE_S` without having finished, is the cause; it is kept in
        :attr:`failure`."""
        if self.failure is not None or not self.grouped:
            return self.failure
        failure = None
        try:
            before = self._beats(self._store)
            end = time.monotonic() + GONE_S
            while failure is None and time.monotonic() < end:
                failure = self._read_failure(self._store)
                time.sleep(POLL_S)
            if failure is None:
                after = self._beats(self._store)
                dead = [rank for rank, beats in after.items() if beats == before[rank]
                        and not self._store.check([f"robaudit/done/{rank}"])]
                if dead:
                    failure = (f"rank {dead[0]} stopped without a word (no sign of life when "
                               "the launcher stopped the run: killed, out of memory, or "
                               "crashed)")
        except Exception:  # the store is gone: nothing tells who failed
            return None
        self.failure = failure
        return failure

    def _beats(self, store: Any) -> dict[int, int]:
        """Every other process's heartbeat count."""
        return {rank: int(store.add(f"robaudit/alive/{rank}", 0))
                for rank in range(self.size) if rank != self.rank}

    def _read_failure(self, store: Any) -> str | None:
        if int(store.add("robaudit/failures", 0)) == 0:
            return None
        for rank in range(self.size):
            key = f"robaudit/failed/{rank}"
            if rank != self.rank and store.check([key]):
                return f"rank {rank} failed: {store.get(key).decode(errors='replace')}"
        return None

    def _watch(self, store: Any) -> None:
        """The watcher thread: beats this process's heart in the store; on another process's
        failure, or (rank 0) a process whose heart stopped for :data:`SILENCE_S` (killed, out
        of memory), it interrupts the main thread (unless :meth:`blame` found the cause
        first)."""
        seen = [-1] * self.size
        changed = [time.monotonic()] * self.size
        while not self._stop.wait(POLL_S):
            try:
                store.add(f"robaudit/alive/{self.rank}", 1)
                failure = self._read_failure(store)
                if failure is None and self.rank == 0:
                    failure = self._silent(store, seen, changed)
            except Exception:
                failure = "the run's rendezvous store is gone (a process ended)"
            if failure is not None:
                if self.failure is None:
                    self.failure = failure
                    interrupt_main()
                return

    def _silent(self, store: Any, seen: list[int], changed: list[float]) -> str | None:
        now = time.monotonic()
        for rank in range(1, self.size):
            beats = int(store.add(f"robaudit/alive/{rank}", 0))
            if beats != seen[rank] or store.check([f"robaudit/done/{rank}"]):
                seen[rank], changed[rank] = beats, now
            elif now - changed[rank] > SILENCE_S:
                return (f"rank {rank} stopped without a word (no sign of life for "
                        f"{SILENCE_S:.0f} s: killed, out of memory, or crashed)")
        return None

    # -- results as they finish ----------------------------------------------------------------
    def post(self, topic: str, value: str) -> None:
        """Leave this process's ``value`` under ``topic`` in the store, for rank 0."""
        self._store.set(f"robaudit/post/{topic}/{self.rank}", value)

    def posted(self, topic: str, rank: int) -> str | None:
        """What process ``rank`` posted under ``topic``, or None (not yet)."""
        key = f"robaudit/post/{topic}/{rank}"
        if not self._store.check([key]):
            return None
        return bytes(self._store.get(key)).decode()

    # -- collectives ----------------------------------------------------------------------------
    def _arrive(self) -> None:
        """Wait until every process has reached this collective, or raise PeerFailure."""
        self._sequence += 1
        key = f"robaudit/arrive/{self._sequence}"
        self._store.add(key, 1)
        waited = 0.0
        while int(self._store.add(key, 0)) < self.size:
            self.check()
            time.sleep(POLL_S)
            waited += POLL_S
            if waited > RENDEZVOUS_S:
                raise PeerFailure("the other processes did not arrive within a day")

    def claim(self, count: int) -> Iterator[int]:
        """Tasks 0..count−1 shared out as the processes become free: each index is yielded
        on exactly one process (a ticket counter in the store; every process must call it at
        the same point of the run, as a collective)."""
        self._sequence += 1
        key = f"robaudit/tasks/{self._sequence}"
        while True:
            self.check()
            index = int(self._store.add(key, 1)) - 1
            if index >= count:
                return
            yield index

    def all_gather(self, value: Any) -> list[Any]:
        """Every process's ``value`` in rank order, on every process."""
        if not self.grouped:
            return [value]
        import torch.distributed as dist

        self._arrive()
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, value)
        return out

    def close(self) -> None:
        """Stop the watcher (telling rank 0 that this process is done, not gone) and leave
        the process group."""
        self._stop.set()
        if self.grouped:
            with contextlib.suppress(Exception):
                self._store.set(f"robaudit/done/{self.rank}", "1")
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def interrupt_main() -> None:
    """Raise KeyboardInterrupt in the main thread as SIGINT does: a real signal, so that a
    blocking call there (a sleep, a read) returns at once (``_thread.interrupt_main`` only
    takes effect once the call has returned)."""
    if hasattr(signal, "pthread_kill"):
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)
    else:  # Windows
        _thread.interrupt_main()


def launched() -> bool:
    """Whether a torch.distributed launcher started this process with other processes."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 and "RANK" in os.environ


def join(shard: str | None) -> World:
    """This process's :class:`World`: ``--shard I/N``, a launcher's process group, or alone."""
    if shard is not None:
        if launched():
            raise UsageError("--shard runs one share without a process group; "
                             "do not start it with torchrun")
        index, count = parse_shard(shard)
        return World(rank=index, size=count, sharded=True)
    if not launched():
        return World()
    return _init_group()


def _init_group() -> World:
    import torch
    import torch.distributed as dist

    try:
        rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", "0"))
        host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    except (KeyError, ValueError) as exc:
        raise UsageError(f"torch.distributed launch: environment variable {exc} missing or "
                         "not a number (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT)") from None
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"
    store = dist.TCPStore(host, port, size, is_master=rank == 0 and not agent,
                          timeout=timedelta(seconds=300))
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local % torch.cuda.device_count())
    backend = "cpu:gloo,cuda:nccl" if cuda else "gloo"
    dist.init_process_group(backend, store=store, rank=rank, world_size=size,
                            timeout=timedelta(seconds=RENDEZVOUS_S))
    world = World(rank=rank, size=size, local_rank=local, backend=backend, _store=store)
    watcher_store = dist.TCPStore(host, port, size, is_master=False,
                                  timeout=timedelta(seconds=300))
    threading.Thread(target=world._watch, args=(watcher_store,), daemon=True,
                     name="robaudit-watcher").start()
    return world
