"""Counter-based random numbers, one independent stream per user.

A simulation of many users must give each user the same random history
whatever else is simulated alongside it: the one-service environment then
reproduces exactly service ``n`` of a large fleet, and a fleet can grow or be
split across workers without changing anyone's trajectory. A sequential
generator cannot promise this, because a user's draws depend on how many were
taken before it. Here every number is a pure function of
``(key, user, slot, j)`` instead, computed with the SplitMix64 finaliser in
NumPy ``uint64`` arithmetic, so a whole fleet is drawn in a few array
operations.

Streams are separated by construction: ``key`` names an experiment (derive it
from a seeded generator with :func:`derive_key`), ``slot`` is the time step and
``j`` the index of a draw within the slot. :func:`uniforms` and
:func:`normals` hash into different domains, so using both with the same
arguments gives independent numbers.

Both functions check their arguments and hash a single slot, a fixed cost of
about 20 µs that dominates the arithmetic for a handful of users.
:class:`SlotDraws` serves callers that draw for the same users slot after
slot, such as the mobility sources: it checks once, hashes many slots of a
small population in one call, and returns the very same numbers.
"""

from __future__ import annotations

import math
import operator
from typing import Any

import numpy as np
import numpy.typing as npt

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_MUL1 = 0xBF58476D1CE4E5B9
_MUL2 = 0x94D049BB133111EB

_GOLDEN_U64 = np.uint64(_GOLDEN)
_MUL1_U64 = np.uint64(_MUL1)
_MUL2_U64 = np.uint64(_MUL2)
_SHIFT30 = np.uint64(30)
_SHIFT27 = np.uint64(27)
_SHIFT31 = np.uint64(31)
_SHIFT11 = np.uint64(11)
_TWO_TO_MINUS_53 = 2.0**-53

_UNIFORM_DOMAIN = 0
_NORMAL_DOMAIN = 1

# SlotDraws hashes this many slots at once, or fewer when a block would hold
# more than _BLOCK_WORDS words. At 128 KiB an array still comes from the heap;
# larger ones are mapped afresh page by page, and 10,000 users drew 1.6 times
# slower with blocks of 65,536 words.
_BLOCK_SLOTS = 256
_BLOCK_WORDS = 16_384

# Up to this many offsets are hashed in Python integers, which is faster than
# the dozens of array operations it takes to hash them as arrays.
_SCALAR_OFFSETS = 16


def uniforms(
    key: int, users: npt.ArrayLike, slot: int, count: int
) -> npt.NDArray[np.float64]:
    """Return ``count`` uniform draws in [0, 1) for each user at one slot.

    Entry ``[i, j]`` depends only on ``(key, users[i], slot, j)``: the same
    user gets the same numbers whether it is drawn alone or among thousands,
    and draw ``j`` does not change when ``count`` grows.

    Args:
        key: Experiment key, an integer in [0, 2**64).
        users: One-dimensional array of non-negative integer user ids.
        slot: Non-negative time slot.
        count: Number of draws per user, at least 1.

    Returns:
        Array of shape ``(len(users), count)`` with 53-bit uniform floats.

    Raises:
        ValueError: If an argument is out of range or ``users`` is not a
            one-dimensional integer array.
    """
    bits = _hashed_bits(key, users, slot, count, _UNIFORM_DOMAIN)
    return _to_unit_interval(bits).T


def normals(
    key: int, users: npt.ArrayLike, slot: int, count: int
) -> npt.NDArray[np.float64]:
    """Return ``count`` standard normal draws for each user at one slot.

    Draws come in Box-Muller pairs (draws ``2k`` and ``2k + 1`` share two
    uniforms), and like :func:`uniforms` each entry depends only on
    ``(key, users[i], slot, j)``. They are independent of the uniforms drawn
    with the same arguments.

    Args:
        key: Experiment key, an integer in [0, 2**64).
        users: One-dimensional array of non-negative integer user ids.
        slot: Non-negative time slot.
        count: Number of draws per user, at least 1.

    Returns:
        Array of shape ``(len(users), count)``.

    Raises:
        ValueError: If an argument is out of range or ``users`` is not a
            one-dimensional integer array.
    """
    _check_count(count)
    bits = _hashed_bits(key, users, slot, _normal_words(count), _NORMAL_DOMAIN)
    return _box_muller(_to_unit_interval(bits))[:count].T


def derive_key(generator: np.random.Generator) -> int:
    """Draw a 63-bit key for :func:`uniforms` and :func:`normals`.

    Args:
        generator: The seeded generator that owns an experiment's randomness.

    Returns:
        An integer in [0, 2**63).
    """
    return int(generator.integers(0, 2**63, dtype=np.int64))


class SlotDraws:
    """The draws of a fixed set of users at consecutive slots.

    ``at(slot)`` returns exactly ``uniforms(key, users, slot, count)`` (or
    :func:`normals`), but the arguments are checked once, here, and for a
    small population the slots are hashed ahead in blocks of up to 256 slots
    and 16,384 words in one vectorised call, so that reading a slot costs
    little more than an array index. A population too large for two slots in
    a block is hashed one slot at a time, just as :func:`uniforms` does.

    Args:
        key: Experiment key, an integer in [0, 2**64).
        users: One-dimensional array of non-negative integer user ids.
        count: Number of draws per user and slot, at least 1.
        normal: Draw standard normals as :func:`normals` does, instead of
            uniforms.

    Raises:
        ValueError: If an argument is out of range or ``users`` is not a
            one-dimensional integer array.
    """

    def __init__(
        self, key: int, users: npt.ArrayLike, count: int, *, normal: bool = False
    ) -> None:
        _check_count(count)
        self._key = _check_word(key, "key")
        self._ids = _user_ids(users)
        self._count = count
        self._normal = normal
        words = _normal_words(count) if normal else count
        per_slot = words * max(len(self._ids), 1)
        self._block_slots = max(1, min(_BLOCK_SLOTS, _BLOCK_WORDS // per_slot))
        self._first = 0
        self._block: npt.NDArray[np.float64] = np.empty((count, 0, len(self._ids)))

    def at(self, slot: int) -> npt.NDArray[np.float64]:
        """Return the draws at ``slot``, a read-only ``(len(users), count)`` view.

        Raises:
            ValueError: If ``slot`` is outside [0, 2**64).
        """
        index = slot - self._first
        if not 0 <= index < self._block.shape[1]:
            self._fill(slot)
            index = 0
        return self._block[:, index].T

    def _fill(self, slot: int) -> None:
        """Hash the block of slots that starts at ``slot``."""
        first = _check_word(slot, "slot")
        n_slots = min(self._block_slots, _MASK64 + 1 - first)
        n_users = len(self._ids)
        if self._normal:
            words = _normal_words(self._count)
            offsets = _slot_offsets(self._key, _NORMAL_DOMAIN, first, n_slots, words)
            bits = _user_bits(self._ids, offsets).reshape(words, n_slots * n_users)
            drawn = _box_muller(_to_unit_interval(bits))[: self._count]
        else:
            offsets = _slot_offsets(
                self._key, _UNIFORM_DOMAIN, first, n_slots, self._count
            )
            bits = _user_bits(self._ids, offsets)
            drawn = _to_unit_interval(bits)
        self._block = drawn.reshape(self._count, n_slots, n_users)
        self._block.flags.writeable = False
        self._first = first


def _hashed_bits(
    key: int, users: npt.ArrayLike, slot: int, count: int, domain: int
) -> npt.NDArray[np.uint64]:
    """Return 64 hashed bits for every draw (rows) and user (columns)."""
    _check_count(count)
    ids = _user_ids(users)
    offsets = _slot_offsets(
        _check_word(key, "key"), domain, _check_word(slot, "slot"), 1, count
    )
    return _user_bits(ids, offsets)


def _slot_offsets(
    key: int, domain: int, first: int, n_slots: int, count: int
) -> npt.NDArray[np.uint64]:
    """Return the offsets of ``count`` draws at ``n_slots`` slots from ``first``.

    Entry ``j * n_slots + s`` is ``_hash_words(prefix, j)`` with ``prefix =
    _hash_words(key, domain, first + s)``.
    """
    if n_slots * count <= _SCALAR_OFFSETS:
        prefixes = [_hash_words(key, domain, first + s) for s in range(n_slots)]
        words = [_hash_words(prefix, j) for j in range(count) for prefix in prefixes]
        return np.array(words, dtype=np.uint64)

    # The same words as array operations, which cost more to start.
    head = np.uint64(_hash_words(key, domain))
    slots = np.arange(n_slots, dtype=np.uint64)
    draws = np.arange(count, dtype=np.uint64)[:, None]
    with np.errstate(over="ignore"):
        slots += np.uint64(first)
        prefix = _mix_array((slots ^ head) + _GOLDEN_U64)
        start = _mix_array(prefix + _GOLDEN_U64)
        return _mix_array((start ^ draws) + _GOLDEN_U64).ravel()


def _user_bits(
    ids: npt.NDArray[np.integer[Any]], offsets: npt.NDArray[np.uint64]
) -> npt.NDArray[np.uint64]:
    """Return the hashed bits of every offset (rows) and user (columns).

    Offsets are rows so that every array operation runs along the long user
    axis; broadcasting along a short trailing axis is several times slower.
    """
    # Each offset starts a SplitMix64 sequence indexed by user id, so users
    # of one draw never share an input word.
    state = np.empty((len(offsets), len(ids)), dtype=np.uint64)
    with np.errstate(over="ignore"):
        np.multiply(ids, _GOLDEN_U64, out=state[0], dtype=np.uint64, casting="unsafe")
        state[1:] = state[0]
        state += offsets[:, None]
        return _mix_array(state)


def _mix_array(state: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """Apply the SplitMix64 finaliser in place (``uint64`` wraps by design)."""
    # Fresh large arrays cost page faults that can outweigh the arithmetic,
    # so every step works in place or in one scratch array.
    scratch = np.empty_like(state)
    for shift, multiplier in ((_SHIFT30, _MUL1_U64), (_SHIFT27, _MUL2_U64)):
        np.right_shift(state, shift, out=scratch)
        state ^= scratch
        state *= multiplier
    np.right_shift(state, _SHIFT31, out=scratch)
    state ^= scratch
    return state


def _normal_words(count: int) -> int:
    """Uniform words behind ``count`` normals: Box-Muller uses them in pairs."""
    return 2 * ((count + 1) // 2)


def _box_muller(unit: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Turn rows ``2k`` and ``2k + 1`` of uniforms into two rows of normals."""
    # 1 - u lies in (0, 1], so the logarithm stays finite.
    radius = np.sqrt(-2.0 * np.log1p(-unit[0::2]))
    angle = (2.0 * math.pi) * unit[1::2]
    drawn = np.empty_like(unit)
    drawn[0::2] = radius * np.cos(angle)
    drawn[1::2] = radius * np.sin(angle)
    return drawn


def _to_unit_interval(bits: npt.NDArray[np.uint64]) -> npt.NDArray[np.float64]:
    """Map 64-bit words, in place, to floats in [0, 1) from their top 53 bits."""
    bits >>= _SHIFT11
    # The shifted words fit in int64, whose conversion to float64 is faster.
    unit = bits.view(np.float64)
    np.multiply(bits.view(np.int64), _TWO_TO_MINUS_53, out=unit)
    return unit


def _mix_int(value: int) -> int:
    """SplitMix64 finaliser on a Python integer."""
    value &= _MASK64
    value = ((value ^ (value >> 30)) * _MUL1) & _MASK64
    value = ((value ^ (value >> 27)) * _MUL2) & _MASK64
    return value ^ (value >> 31)


def _hash_words(*words: int) -> int:
    """Hash a sequence of 64-bit words into one; each step is a bijection."""
    state = 0
    for word in words:
        state = _mix_int((state ^ word) + _GOLDEN)
    return state


def _user_ids(users: npt.ArrayLike) -> npt.NDArray[np.integer[Any]]:
    ids = np.asarray(users)
    if ids.ndim != 1 or ids.dtype.kind not in "iu":
        raise ValueError(
            f"users must be a one-dimensional integer array, got dtype "
            f"{ids.dtype} with shape {ids.shape}"
        )
    if ids.dtype.kind == "i" and ids.size and ids.min() < 0:
        raise ValueError("users must be non-negative ids")
    return ids


def _check_word(value: int, name: str) -> int:
    try:
        number = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if not 0 <= number <= _MASK64:
        raise ValueError(f"{name} must be in [0, 2**64), got {number}")
    return number


def _check_count(count: int) -> None:
    if isinstance(count, bool) or not isinstance(count, int | np.integer):
        raise ValueError(f"count must be an integer, got {count!r}")
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
