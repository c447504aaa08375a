"""Shuffled mini-batches from a chunked image store, each chunk read once per epoch.

Fully random access would decompress a whole chunk for every few items; instead the
epoch order shuffles chunk order, then shuffles items within windows of a few chunks.
The order is a pure function of (items, seed, epoch), so a resumed run can skip the
batches it already saw without reading them.
"""

from __future__ import annotations

import queue
import threading
from collections import OrderedDict
from collections.abc import Iterator

import numpy as np
import torch

from imambig.stores.image_store import ImageStore


def epoch_order(
    indices: np.ndarray, chunk_items: int, seed: int, epoch: int, window_chunks: int = 4
) -> np.ndarray:
    """Permutation of ``indices`` for ``epoch``: chunks shuffled, items shuffled within
    windows of ``window_chunks`` consecutive (shuffled) chunks."""
    rng = np.random.default_rng([seed, epoch])
    indices = np.sort(np.asarray(indices, dtype=np.int64))
    chunk_ids = indices // chunk_items
    uniq, starts = np.unique(chunk_ids, return_index=True)
    groups = np.split(indices, starts[1:])
    order = rng.permutation(len(uniq))
    out = []
    for w in range(0, len(order), window_chunks):
        window = np.concatenate([groups[i] for i in order[w : w + window_chunks]])
        out.append(rng.permutation(window))
    return np.concatenate(out) if out else indices


class ChunkCache:
    """Keeps the last few decompressed chunks of the image store."""

    def __init__(self, store: ImageStore, capacity: int) -> None:
        self.store = store
        self.capacity = capacity
        self.chunks: OrderedDict[int, np.ndarray] = OrderedDict()

    def read(self, idx: np.ndarray) -> np.ndarray:
        ci = self.store.chunk_items
        out = np.empty((len(idx), self.store.height, self.store.width, 3), np.uint8)
        for c in np.unique(idx // ci):
            if c not in self.chunks:
                start = int(c) * ci
                self.chunks[c] = self.store.read(slice(start, min(start + ci, self.store.n_items)))
                if len(self.chunks) > self.capacity:
                    self.chunks.popitem(last=False)
            else:
                self.chunks.move_to_end(c)
            sel = idx // ci == c
            out[sel] = self.chunks[c][idx[sel] - int(c) * ci]
        return out


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> contiguous float (B, 3, H, W) in [0, 1].

    Always the same memory layout: CPU convolutions pick their kernel by layout, and
    kernels round differently, so a layout that depended on the batch would make an
    item's code depend on its neighbours.
    """
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0).contiguous()


def iter_batches(
    store: ImageStore,
    order: np.ndarray,
    batch_size: int,
    skip_batches: int = 0,
    window_chunks: int = 4,
    prefetch: int = 2,
) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """Yield (item indices, images) batches in ``order``; a background thread reads and
    decompresses ahead so the model never waits on storage."""
    cache = ChunkCache(store, capacity=window_chunks + 1)
    starts = range(skip_batches * batch_size, len(order), batch_size)
    q: queue.Queue = queue.Queue(maxsize=prefetch)
    stop = threading.Event()

    def produce() -> None:
        try:
            for s in starts:
                if stop.is_set():
                    return
                idx = order[s : s + batch_size]
                q.put((idx, to_tensor(cache.read(idx))))
            q.put(None)
        except BaseException as exc:  # surfaced in the consumer
            q.put(exc)

    thread = threading.Thread(target=produce, daemon=True, name="imambig-loader")
    thread.start()
    try:
        while (item := q.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)
