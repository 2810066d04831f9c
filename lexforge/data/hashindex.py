"""A compact set of 64-bit hashes with a 32-bit value each (the first line number), for de-duplication.

A dict of Python ints costs ~100-150 bytes per entry; this open-addressing table (linear probing) keeps keys
and values in two flat arrays: 12 bytes per slot at load factor 0.35-0.7, i.e. 17-34 bytes per distinct row.
"""

from __future__ import annotations

from array import array

_MAX_LOAD = 0.7


class HashIndex:
    def __init__(self, capacity: int = 1 << 12):
        cap = 1
        while cap < capacity:
            cap <<= 1
        self._alloc(cap)
        self._n = 0

    def _alloc(self, cap: int) -> None:
        self._keys = array("Q", bytes(8 * cap))
        self._vals = array("I", bytes(4 * cap))
        self._mask = cap - 1
        self._limit = int(cap * _MAX_LOAD)

    def __len__(self) -> int:
        return self._n

    def get(self, key: int) -> int | None:
        key = key or 1  # 0 marks an empty slot
        keys, mask = self._keys, self._mask
        i = key & mask
        while True:
            k = keys[i]
            if k == 0:
                return None
            if k == key:
                return self._vals[i]
            i = (i + 1) & mask

    def setdefault(self, key: int, value: int) -> int | None:
        """Insert ``key -> value`` unless present; returns the existing value, or None if it was inserted."""
        key = key or 1
        keys, mask = self._keys, self._mask
        i = key & mask
        while True:
            k = keys[i]
            if k == 0:
                keys[i] = key
                self._vals[i] = value
                self._n += 1
                if self._n > self._limit:
                    self._grow()
                return None
            if k == key:
                return self._vals[i]
            i = (i + 1) & mask

    def _grow(self) -> None:
        old_keys, old_vals = self._keys, self._vals
        self._alloc(2 * len(old_keys))
        keys, vals, mask = self._keys, self._vals, self._mask
        for k, v in zip(old_keys, old_vals):
            if k:
                i = k & mask
                while keys[i]:
                    i = (i + 1) & mask
                keys[i] = k
                vals[i] = v

    @property
    def nbytes(self) -> int:
        return self._keys.itemsize * len(self._keys) + self._vals.itemsize * len(self._vals)
