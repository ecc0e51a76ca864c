"""One collection's vectors in a FAISS index, keyed by chunk id.

Vectors are L2-normalised and compared by inner product, so that `1 - score` is the cosine
distance pgvector computes. The index type follows the collection's size (`choose_kind`):

- `flat`: exact search, for collections up to `HYBRID_FAISS_EXACT_BELOW` vectors.
- `hnsw`: `IndexHNSWFlat` (M, efConstruction, efSearch from the settings), for larger ones.
  HNSW cannot delete: deleted ids become tombstones that searches skip (an `IDSelector`), and
  the cache rebuilds the index once they pass a share of it.
- `ivf`: `IndexIVFFlat` with about 4·√n lists (trained on a sample, `nprobe` from the
  settings), which can delete. Chosen only when asked for (`HYBRID_FAISS_INDEX=ivf`).

An index is not thread-safe by itself: `VectorIndex` guards it with a readers-writer lock
(many searches, or one change).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import faiss as faiss_module
import numpy as np
import numpy.typing as npt

# The FAISS bindings' type stubs miss much of the API (search parameters, selectors).
faiss: Any = faiss_module

Kind = Literal["flat", "hnsw", "ivf"]
KINDS: tuple[Kind, ...] = ("flat", "hnsw", "ivf")
Vectors = npt.NDArray[np.float32]
Ids = npt.NDArray[np.int64]

# Vectors added per FAISS call while building, so that progress can be reported.
ADD_BATCH = 20_000
IVF_TRAIN_SAMPLE = 64


@dataclass(frozen=True)
class IndexParams:
    """How large collections are indexed; see `HYBRID_FAISS_*` in the README."""

    kind: Literal["auto", "flat", "hnsw", "ivf"] = "auto"
    exact_below: int = 20_000
    hnsw_m: int = 32
    hnsw_ef_construction: int = 80
    hnsw_ef_search: int = 512
    ivf_nprobe: int = 32


def choose_kind(params: IndexParams, vectors: int) -> Kind:
    if vectors == 0:  # nothing to train an IVF index on, nothing for a graph to connect
        return "flat"
    if params.kind != "auto":
        return params.kind
    return "flat" if vectors < params.exact_below else "hnsw"


class RWLock:
    """Many readers or one writer; a waiting writer holds back new readers."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting_writers = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._waiting_writers:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._waiting_writers += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._waiting_writers -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class VectorIndex:
    """A FAISS index over one collection's chunk vectors, with tombstones where it cannot
    delete."""

    def __init__(self, kind: Kind, index: Any, params: IndexParams, tombstones: Ids | None = None):
        self.kind = kind
        self.params = params
        self._index = index
        self._tombstones: set[int] = set() if tombstones is None else set(tombstones.tolist())
        self._selector: Any = None
        self._selected: Any = None
        self._lock = RWLock()

    @classmethod
    def build(
        cls,
        dim: int,
        ids: Ids,
        vectors: Vectors,
        params: IndexParams,
        progress: Callable[[int], None] | None = None,
    ) -> VectorIndex:
        """A new index of `vectors` (normalised in place) under `ids`."""
        kind = choose_kind(params, len(ids))
        index = _new_index(kind, dim, len(ids), params)
        faiss.normalize_L2(vectors)
        if kind == "ivf":
            index.train(_training_sample(vectors, index.nlist))
        for start in range(0, len(ids), ADD_BATCH):
            end = min(start + ADD_BATCH, len(ids))
            index.add_with_ids(vectors[start:end], ids[start:end])
            if progress:
                progress(end - start)
        return cls(kind, index, params)

    @property
    def faiss_index(self) -> Any:
        return self._index

    @property
    def tombstones(self) -> Ids:
        with self._lock.read():
            return np.fromiter(self._tombstones, dtype=np.int64, count=len(self._tombstones))

    @property
    def size(self) -> int:
        """Vectors in the index, tombstones included."""
        return int(self._index.ntotal)

    @property
    def live(self) -> int:
        return self.size - len(self._tombstones)

    @property
    def tombstone_share(self) -> float:
        return len(self._tombstones) / max(self.size, 1)

    def ids(self) -> Ids:
        """Every live id in the index, sorted (for checks against the table)."""
        with self._lock.read():
            if self.kind == "ivf":
                lists = self._index.invlists
                parts = [
                    faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
                    for i in range(lists.nlist)
                ]
                found = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
            else:
                found = faiss.vector_to_array(self._index.id_map)
            dead = np.fromiter(self._tombstones, dtype=np.int64, count=len(self._tombstones))
        return np.sort(np.setdiff1d(found.astype(np.int64), dead))

    def write(self, path: str) -> None:
        """Write the FAISS index to a file (tombstones are the caller's to keep)."""
        with self._lock.read():
            faiss.write_index(self._index, path)

    def apply(self, inserted_ids: Ids, inserted: Vectors, deleted_ids: Ids) -> None:
        """Add `inserted` (normalised in place) and delete `deleted_ids`, in that order."""
        if len(inserted_ids):
            faiss.normalize_L2(inserted)
        with self._lock.write():
            if len(inserted_ids):
                self._index.add_with_ids(inserted, inserted_ids)
            if len(deleted_ids):
                self._delete(deleted_ids)

    def _delete(self, ids: Ids) -> None:
        if self.kind == "hnsw":
            self._tombstones.update(ids.tolist())
            self._selector = None
        else:
            self._index.remove_ids(faiss.IDSelectorBatch(ids))

    def search(self, vector: Vectors, k: int, ef_search: int | None = None) -> Ids:
        """The ids of the `k` nearest live vectors, nearest first (an HNSW index searches with
        `ef_search` when given, else with its own setting)."""
        # One query gains nothing from OpenMP threads, and on a busy machine their hand-offs
        # cost milliseconds. The setting is per calling thread: builds keep every core.
        faiss.omp_set_num_threads(1)
        query = np.ascontiguousarray(vector, dtype=np.float32).reshape(1, -1)
        faiss.normalize_L2(query)
        with self._lock.read():
            k = min(k, self.live)
            if k <= 0:
                return np.empty(0, dtype=np.int64)
            _, found = self._index.search(query, k, params=self._search_params(k, ef_search))
        ids: Ids = found[0]
        return ids[ids >= 0]

    def _search_params(self, k: int, ef_search: int | None) -> Any:
        if self.kind == "hnsw":
            ef = self.params.hnsw_ef_search if ef_search is None else ef_search
            return faiss.SearchParametersHNSW(efSearch=max(ef, k), sel=self._tombstone_selector())
        if self.kind == "ivf":
            return faiss.SearchParametersIVF(nprobe=self.params.ivf_nprobe)
        return None

    def _tombstone_selector(self) -> Any:
        if not self._tombstones:
            return None
        if self._selector is None:
            dead = np.fromiter(self._tombstones, dtype=np.int64, count=len(self._tombstones))
            # The negation does not own the batch it wraps: both are kept here.
            self._selected = faiss.IDSelectorBatch(dead)
            self._selector = faiss.IDSelectorNot(self._selected)
        return self._selector


def _new_index(kind: Kind, dim: int, size: int, params: IndexParams) -> Any:
    if kind == "flat":
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    if kind == "hnsw":
        graph = faiss.IndexHNSWFlat(dim, params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        graph.hnsw.efConstruction = params.hnsw_ef_construction
        graph.hnsw.efSearch = params.hnsw_ef_search
        return faiss.IndexIDMap2(graph)
    lists = max(1, min(65_536, int(4 * math.sqrt(max(size, 1)))))
    quantizer = faiss.IndexFlatIP(dim)
    # The bindings keep the quantizer alive as long as the index (a reference in the wrapper).
    index = faiss.IndexIVFFlat(quantizer, dim, lists, faiss.METRIC_INNER_PRODUCT)
    index.nprobe = params.ivf_nprobe
    return index


def _training_sample(vectors: Vectors, lists: int) -> Vectors:
    """At most `IVF_TRAIN_SAMPLE` vectors a list, spread over the collection."""
    wanted = min(len(vectors), lists * IVF_TRAIN_SAMPLE)
    if wanted == len(vectors):
        return vectors
    rows = np.linspace(0, len(vectors) - 1, wanted).astype(np.int64)
    return np.ascontiguousarray(vectors[rows])
