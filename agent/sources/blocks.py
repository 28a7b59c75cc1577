"""Hand-over of frames from the bus reader threads to the pipeline thread, a block at a time.

A reader thread gathers frames into a list and hands the whole list over (``put``) when it holds its bus's
``BlockLimits.frames`` frames or ``BlockLimits.age_s`` after the list's first frame, whichever comes first;
the pipeline thread takes every block waiting (``take``) in one go.  One lock round trip per block instead of
a ``queue.Queue`` put and get (two lock round trips and a condition each) per frame: at 10k frames/s the
per-frame hand-over was a large share of the agent's CPU (benchmarks/handover.py measures both).

The queue is bounded in frames, not blocks: a live bus cannot be paused, so when the pipeline falls
behind the frames that do not fit are dropped, and ``put`` says how many so the caller counts them.
Blocks keep their order, so each bus's frames stay in order.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import can

Frame = TypeVar("Frame")


@dataclass(frozen=True)
class BlockLimits:
    """A block goes to the pipeline when it holds ``frames`` frames or ``age_s`` after its first frame arrived
    (the latency a slow trickle of frames sees at most).  While a block gathers, the bus's frames wait in its
    socket, so how long is safe depends on how many frames that socket holds."""

    frames: int
    age_s: float


# A bus read a frame per call (SocketCAN, the virtual bus, python-can's stock socketcand client): 256 frames
# or 5 ms.  Its frames wait in the kernel's socket buffer, and a SocketCAN socket's default one
# (net.core.rmem_default, ~208 KiB at ~0.5-1 KiB per queued frame) holds only a few hundred: gathering
# longer on a saturated bus would let the kernel drop frames where no counter of ours sees them.
FRAME_BUS_LIMITS = BlockLimits(frames=256, age_s=0.005)
# A bus read a block at a time (``recv_block``: the lean socketcand client): 1024 frames or 40 ms.  Its
# frames wait as ~40 bytes of text each in a TCP buffer that holds thousands, and at 10k frames/s every
# wake-up of the reader and of the pipeline costs more than the frames it brings (benchmarks/soak.py, whole
# agent: 10.4 % of a core at 5 ms, 9.0 % at 10 ms, 7.6 % at 20 ms, 6.4 % at 40 ms).
BLOCK_BUS_LIMITS = BlockLimits(frames=1024, age_s=0.04)
# The pipeline takes about this many frames per wake-up, then looks at its clock (housekeeping, stop).
TAKE_FRAMES = 4096


class BlockQueue(Generic[Frame]):
    """Blocks ``(bus, [frame, ...])`` from several producer threads to one consumer, bounded in frames.

    A deque of blocks under one lock; the consumer waits on a condition that producers notify only
    while it waits.  (Measured against swapping a list of blocks under the lock: the same within noise,
    and the deque lets ``take`` stop at about ``max_frames``.)
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"the queue needs room for at least one frame, got {capacity}")
        self.capacity = capacity
        self._blocks: deque[tuple[str, list[Frame]]] = deque()
        self._frames = 0
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._consumer_waits = False

    def __len__(self) -> int:
        """Frames waiting."""
        return self._frames

    def put(self, bus: str, frames: list[Frame]) -> int:
        """Queue ``frames`` (the list itself, not a copy) or as many of the first of them as fit; returns how
        many did not fit (dropped: the newest, as a full ``queue.Queue`` would have refused them)."""
        with self._lock:
            room = self.capacity - self._frames
            if room <= 0:
                return len(frames)
            dropped = len(frames) - room
            if dropped > 0:
                frames = frames[:room]
            else:
                dropped = 0
            self._blocks.append((bus, frames))
            self._frames += len(frames)
            if self._consumer_waits:
                self._ready.notify()
        return dropped

    def take(self, timeout: float, max_frames: int = TAKE_FRAMES) -> list[tuple[str, list[Frame]]]:
        """The oldest blocks, about ``max_frames`` frames (whole blocks: at least one), waiting up to
        ``timeout`` for one; ``[]`` when none came."""
        with self._lock:
            blocks = self._blocks
            if not blocks:
                self._consumer_waits = True
                try:
                    self._ready.wait(timeout)
                finally:
                    self._consumer_waits = False
                if not blocks:
                    return []
            taken = [blocks.popleft()]
            count = len(taken[0][1])
            while blocks and count < max_frames:
                block = blocks.popleft()
                taken.append(block)
                count += len(block[1])
            self._frames -= count
        return taken


def block_reader(bus: can.BusABC) -> tuple[Callable[[list[can.Message], float], None], BlockLimits]:
    """``(fill, limits)``: ``fill(block, timeout)`` waits up to ``timeout`` for frames and appends what came, at
    most the block's room; ``limits`` are the bus's (``BLOCK_BUS_LIMITS`` or ``FRAME_BUS_LIMITS``).

    A bus that reads several frames per call (``recv_block(timeout, max_frames)``, duck-typed) is asked for
    the room left.  Any other python-can bus gets one blocking ``recv`` and then ``recv(0)`` while frames
    come, bounded by the room (python-can's SocketCAN ``recv(0)`` does not block).  Once such a loop finds
    nothing, the rest of the block is read with the blocking ``recv`` alone: at 10k frames/s frames come
    one at a time, and an empty ``recv(0)`` after each (a syscall and python-can's bookkeeping) cost more
    than the hand-over itself (benchmarks/handover.py); each new block looks for a backlog again, and so does
    a call with ``timeout`` 0 (the reader, having let the block's frames gather, takes what is waiting)."""
    recv_block = getattr(bus, "recv_block", None)
    if callable(recv_block):
        room = BLOCK_BUS_LIMITS.frames

        def fill_blocks(block: list[can.Message], timeout: float) -> None:
            block.extend(recv_block(timeout, room - len(block)) or ())
        return fill_blocks, BLOCK_BUS_LIMITS
    frames = FRAME_BUS_LIMITS.frames
    recv = bus.recv
    looking = True  # for frames already waiting behind the one the blocking recv returned

    def fill_frames(block: list[can.Message], timeout: float) -> None:
        nonlocal looking
        msg = recv(timeout)
        if msg is None:
            return
        if not block or not timeout:  # a new block, or the reader taking what gathered while it slept
            looking = True
        block.append(msg)
        if not looking:
            return
        append = block.append
        for _ in range(frames - len(block)):
            msg = recv(0)
            if msg is None:
                looking = False
                return
            append(msg)
    return fill_frames, FRAME_BUS_LIMITS
