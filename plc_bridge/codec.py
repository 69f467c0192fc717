"""Pure encode/decode between engineering values and 16-bit Modbus registers.

No I/O here. Conventions:

* A register is an unsigned 16-bit word sent big-endian on the wire (Modbus).
* Byte and word order in the integrators' notation: the value's bytes, most
  significant first, are A B C D (E F G H for 64 bits); the notation lists them in
  register order. ``ABCD`` (also ``big``): most significant word first, the Modbus
  default; ``CDAB`` (also ``little``): words swapped (least significant word first,
  all four words reversed for 64 bits); ``BADC``: bytes swapped inside each word;
  ``DCBA``: both (fully little-endian). 16-bit values follow the byte half of the
  notation: ``AB`` for ABCD/CDAB, ``BA`` (byte-swapped) for BADC/DCBA.
* ``engineering = raw * scale + offset``; raw is the integer or IEEE value in the
  registers. Integer tags round to the nearest raw step when encoding.
* ``bool`` is a coil/discrete bit, or one bit of a holding/input register: bit 0 is
  the least significant bit of the register's 16-bit value (after the byte order;
  the Modicon reference ``300008.0`` is bit 0 of input register 8), bit 15 the most
  significant. ``invert`` reads (and writes) the bit negated.
* ``judge`` turns an engineering value into a ``Sample``: non-finite and implausible
  values (outside the tag's plausibility range, or a subnormal float, the mark of a
  wrong word order: 120.0 with its words swapped reads 2.4e-41) are BAD, values
  outside ``[min, max]`` UNCERTAIN, an integer outside its enumeration BAD;
  ``true_when`` turns an enumerated state into a bool.

Scalar helpers serve single writes; the ``*_array`` helpers decode or encode
thousands of values at once with NumPy (a ``'>u2'`` buffer viewed as ``'>f4'``
etc.), about 40x faster than pymodbus ``convert_from_registers`` per value.

``plan_blocks`` groups tags into contiguous read requests (<= 125 registers or
<= 2000 bits, merging gaps up to ``max_gap``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

import numpy as np

from plc_bridge.quality import Sample

__all__ = [
    "MAX_READ_BITS",
    "MAX_READ_REGISTERS",
    "RAW_RANGE",
    "REGISTER_COUNT",
    "CodecError",
    "DataType",
    "ReadBlock",
    "Table",
    "WordOrder",
    "decode",
    "decode_array",
    "encode",
    "encode_array",
    "eng_to_raw",
    "enum_text",
    "is_subnormal",
    "judge",
    "plan_blocks",
    "quantize",
    "quantize_within",
    "raw_array_to_words",
    "raw_to_eng",
    "raw_to_registers",
    "register_value",
    "registers_to_raw",
    "set_bit",
    "set_register_bit",
    "words_to_raw_array",
]


class CodecError(ValueError):
    """A value cannot be represented in the tag's registers."""


class DataType(str, Enum):
    """Data types a tag can hold in Modbus registers/bits."""

    BOOL = "bool"
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    FLOAT32 = "float32"
    FLOAT64 = "float64"

    @property
    def is_float(self) -> bool:
        return self in (DataType.FLOAT32, DataType.FLOAT64)

    @property
    def is_int(self) -> bool:
        return self in (DataType.INT16, DataType.UINT16, DataType.INT32, DataType.UINT32)


class WordOrder(str, Enum):
    """Byte and word order in the ABCD notation (see the module docstring).

    ``big`` and ``little`` (the older spelling) are ABCD and CDAB; every spelling is
    accepted case-insensitively (``WordOrder("cdab") is WordOrder.CDAB``).
    """

    BIG = "big"
    LITTLE = "little"
    BADC = "BADC"
    DCBA = "DCBA"
    ABCD = "big"  # alias of BIG
    CDAB = "little"  # alias of LITTLE

    @classmethod
    def _missing_(cls, value: object) -> WordOrder | None:
        if isinstance(value, str):
            return _WORD_ORDER_NAMES.get(value.strip().upper())
        return None

    @property
    def notation(self) -> str:
        """``ABCD``, ``CDAB``, ``BADC`` or ``DCBA``."""
        return {"big": "ABCD", "little": "CDAB"}.get(self.value, self.value)

    @property
    def word_swap(self) -> bool:
        """Least significant word first (CDAB, DCBA)."""
        return self in (WordOrder.LITTLE, WordOrder.DCBA)

    @property
    def byte_swap(self) -> bool:
        """Bytes swapped inside each register (BADC, DCBA)."""
        return self in (WordOrder.BADC, WordOrder.DCBA)


_WORD_ORDER_NAMES = {
    "ABCD": WordOrder.BIG, "BIG": WordOrder.BIG, "CDAB": WordOrder.LITTLE, "LITTLE": WordOrder.LITTLE,
    "BADC": WordOrder.BADC, "DCBA": WordOrder.DCBA,
}  # fmt: skip


class Table(str, Enum):
    """The four Modbus data tables."""

    HOLDING = "holding"
    INPUT = "input"
    COIL = "coil"
    DISCRETE = "discrete"

    @property
    def is_bits(self) -> bool:
        return self in (Table.COIL, Table.DISCRETE)


#: registers occupied by one value of each type (bool: 1 bit or 1 bit of a register)
REGISTER_COUNT: dict[DataType, int] = {
    DataType.BOOL: 1,
    DataType.INT16: 1,
    DataType.UINT16: 1,
    DataType.INT32: 2,
    DataType.UINT32: 2,
    DataType.FLOAT32: 2,
    DataType.FLOAT64: 4,
}

#: inclusive raw range of the integer types
RAW_RANGE: dict[DataType, tuple[int, int]] = {
    DataType.BOOL: (0, 1),
    DataType.INT16: (-(2**15), 2**15 - 1),
    DataType.UINT16: (0, 2**16 - 1),
    DataType.INT32: (-(2**31), 2**31 - 1),
    DataType.UINT32: (0, 2**32 - 1),
}

_NP_BIG: dict[DataType, str] = {
    DataType.INT16: ">i2",
    DataType.UINT16: ">u2",
    DataType.INT32: ">i4",
    DataType.UINT32: ">u4",
    DataType.FLOAT32: ">f4",
    DataType.FLOAT64: ">f8",
}

#: Modbus protocol limits per read request
MAX_READ_REGISTERS = 125
MAX_READ_BITS = 2000


class TagLike(Protocol):
    """What the codec needs of a tag (``plc_bridge.tagmap.Tag`` satisfies it).

    Read-only members, so a frozen dataclass (``Tag``) satisfies it.
    """

    @property
    def name(self) -> str: ...
    @property
    def type(self) -> DataType: ...
    @property
    def word_order(self) -> WordOrder: ...
    @property
    def scale(self) -> float: ...
    @property
    def offset(self) -> float: ...
    @property
    def min(self) -> float | None: ...
    @property
    def max(self) -> float | None: ...
    @property
    def bit(self) -> int | None: ...
    @property
    def invert(self) -> bool: ...
    @property
    def enum_map(self) -> Mapping[int, str]: ...
    @property
    def true_when(self) -> frozenset[int] | None: ...
    @property
    def plausible_min(self) -> float | None: ...
    @property
    def plausible_max(self) -> float | None: ...


# ---------------------------------------------------------------- scalar raw <-> words


def registers_to_raw(words: Sequence[int], dtype: DataType, word_order: WordOrder = WordOrder.BIG) -> int | float:
    """Raw value held in ``words`` (len = REGISTER_COUNT[dtype]).

    Floats may come back non-finite; the caller decides what that means.
    """
    n = REGISTER_COUNT[dtype]
    if dtype is DataType.BOOL:
        return bool(words[0])
    if len(words) != n:
        raise CodecError(f"{dtype.value} needs {n} registers, got {len(words)}")
    ws = _to_big([int(w) & 0xFFFF for w in words], word_order)
    buf = b"".join(w.to_bytes(2, "big") for w in ws)
    return np.frombuffer(buf, dtype=_NP_BIG[dtype])[0].item()


def _swap16(w: int) -> int:
    return ((w >> 8) | (w << 8)) & 0xFFFF


def _to_big(words: list[int], word_order: WordOrder) -> list[int]:
    """Registers in ``word_order`` as big-endian (ABCD) words; the inverse of ``_from_big``."""
    wo = WordOrder(word_order)
    if wo.byte_swap:
        words = [_swap16(w) for w in words]
    return words[::-1] if wo.word_swap else words


def _from_big(words: list[int], word_order: WordOrder) -> list[int]:
    wo = WordOrder(word_order)
    if wo.word_swap:
        words = words[::-1]
    return [_swap16(w) for w in words] if wo.byte_swap else words


def register_value(word: int, word_order: WordOrder = WordOrder.BIG) -> int:
    """The 16-bit value of one register as the PLC means it (byte-swapped for BADC/DCBA);
    bit ``k`` of a register is ``(register_value(w, order) >> k) & 1``."""
    return _swap16(int(word)) if WordOrder(word_order).byte_swap else int(word) & 0xFFFF


def set_register_bit(word: int, bit: int, value: bool, word_order: WordOrder = WordOrder.BIG) -> int:
    """Register ``word`` (as on the wire) with bit ``bit`` of its value set to ``value``."""
    v = set_bit(register_value(word, word_order), bit, value)
    return _swap16(v) if WordOrder(word_order).byte_swap else v


def raw_to_registers(raw: int | float, dtype: DataType, word_order: WordOrder = WordOrder.BIG) -> list[int]:
    """Registers holding raw value ``raw``.

    Raises:
        CodecError: integer out of the type's range or not an integer; float64
            value that overflows float32.
    """
    if dtype is DataType.BOOL:
        return [1 if raw else 0]
    if dtype.is_int:
        if isinstance(raw, float) and (not math.isfinite(raw) or raw != int(raw)):
            raise CodecError(f"{dtype.value} raw value must be an integer, got {raw!r}")
        lo, hi = RAW_RANGE[dtype]
        r = int(raw)
        if not lo <= r <= hi:
            raise CodecError(f"raw value {r} outside {dtype.value} range [{lo}, {hi}]")
        buf = np.array([r], dtype=_NP_BIG[dtype]).tobytes()
    else:
        x = float(raw)
        if dtype is DataType.FLOAT32 and math.isfinite(x) and abs(x) > float(np.finfo(np.float32).max):
            raise CodecError(f"raw value {x!r} overflows float32")
        buf = np.array([x], dtype=_NP_BIG[dtype]).tobytes()
    words = [int.from_bytes(buf[i : i + 2], "big") for i in range(0, len(buf), 2)]
    return _from_big(words, word_order)


# ---------------------------------------------------------------- engineering <-> raw


def eng_to_raw(eng: float, dtype: DataType, scale: float = 1.0, offset: float = 0.0) -> int | float:
    """Raw value for engineering value ``eng`` (``raw = (eng - offset) / scale``).

    Integer types round to the nearest step. Raises CodecError for non-finite
    input or a raw value the type cannot hold.
    """
    if dtype is DataType.BOOL:
        return 1 if eng else 0
    x = float(eng)
    if not math.isfinite(x):
        raise CodecError(f"non-finite value {eng!r}")
    raw = (x - offset) / scale
    if dtype.is_int:
        r = int(round(raw))
        lo, hi = RAW_RANGE[dtype]
        if not lo <= r <= hi:
            raise CodecError(
                f"value {eng!r} -> raw {r} outside {dtype.value} range [{lo}, {hi}] (scale {scale}, offset {offset})"
            )
        return r
    if dtype is DataType.FLOAT32 and abs(raw) > float(np.finfo(np.float32).max):
        raise CodecError(f"value {eng!r} overflows float32")
    return raw


def raw_to_eng(raw: int | float, scale: float = 1.0, offset: float = 0.0) -> float:
    """Engineering value for raw value ``raw``."""
    return float(raw) * scale + offset


def _is_plain(tag: TagLike) -> bool:
    return tag.scale == 1.0 and tag.offset == 0.0


def encode(tag: TagLike, eng: float | int | bool) -> list[int]:
    """Registers (or ``[0/1]`` for a bit) that carry engineering value ``eng`` for ``tag``.

    Raises CodecError when the value cannot be represented. Bounds are not
    checked here (that is the safety layer's job); bits inside registers need a
    read-modify-write and are encoded with ``set_bit``. An inverted bool is sent negated.
    """
    if tag.type is DataType.BOOL:
        return [1 if bool(eng) != bool(tag.invert) else 0]
    raw = eng_to_raw(eng, tag.type, tag.scale, tag.offset)
    return raw_to_registers(raw, tag.type, tag.word_order)


def set_bit(word: int, bit: int, value: bool) -> int:
    """``word`` with ``bit`` (0 = LSB) set to ``value``."""
    return (word | (1 << bit)) if value else (word & ~(1 << bit) & 0xFFFF)


#: smallest normal magnitude per float type: a non-zero value below it is subnormal
TINY = {DataType.FLOAT32: float(np.finfo(np.float32).tiny), DataType.FLOAT64: float(np.finfo(np.float64).tiny)}


def is_subnormal(raw: float, dtype: DataType) -> bool:
    """True for a non-zero float smaller than the type's smallest normal number.

    No transmitter produces one; a float read with the wrong word order often does
    (120.0 as ABCD read as CDAB is 2.4e-41)."""
    tiny = TINY.get(dtype)
    return tiny is not None and raw != 0.0 and abs(raw) < tiny


def enum_text(tag: TagLike) -> str:
    """``0 LOCAL, 1 REMOTE`` for messages."""
    return ", ".join(f"{k} {v}" for k, v in sorted(tag.enum_map.items()))


def judge(tag: TagLike, value: float | int | bool, t: float, *, raw: float | None = None) -> Sample:
    """The ``Sample`` of an engineering ``value`` of ``tag`` read at ``t``.

    ``raw`` (the register value before scaling, for floats) lets a subnormal float be
    recognised. Order of the checks: non-finite (BAD), subnormal float (BAD
    ``implausible``), not in the enumeration (BAD), outside the plausibility range (BAD
    ``implausible``), ``true_when`` (a bool), outside ``[min, max]`` (UNCERTAIN
    ``engineering range exceeded``). Bools are negated for ``invert``.
    """
    if tag.type is DataType.BOOL:
        return Sample.good_value(bool(value) != bool(tag.invert), t)
    try:
        x = float(value)
    except (TypeError, ValueError):
        return Sample.bad(f"not a number: {value!r}", t)
    if not math.isfinite(x):
        return Sample.bad("non-finite", t)
    if tag.type.is_float and is_subnormal(x if raw is None else float(raw), tag.type):
        return Sample.bad(f"implausible: {x:g} is a subnormal float (wrong word order?)", t)
    if tag.enum_map and int(x) not in tag.enum_map:
        return Sample.bad(f"implausible: {int(x)} is not in the enumeration ({enum_text(tag)})", t)
    lo, hi = tag.plausible_min, tag.plausible_max
    if (lo is not None and x < lo) or (hi is not None and x > hi):
        return Sample.bad(f"implausible: {x:g} outside the plausible range [{_g(lo, '-inf')}, {_g(hi, 'inf')}]", t)
    if tag.true_when is not None:
        return Sample.good_value((int(x) in tag.true_when) != bool(tag.invert), t)
    typed: float | int = int(x) if (tag.type.is_int and _is_plain(tag)) else x
    if tag.min is not None and x < tag.min:
        return Sample.uncertain(typed, f"engineering range exceeded: {x:g} < min {tag.min:g}", t)
    if tag.max is not None and x > tag.max:
        return Sample.uncertain(typed, f"engineering range exceeded: {x:g} > max {tag.max:g}", t)
    return Sample.good_value(typed, t)


def _g(x: float | None, none: str) -> str:
    return none if x is None else f"{x:g}"


def decode(tag: TagLike, words: Sequence[int], t: float) -> Sample:
    """Sample for ``tag`` from its registers (or ``[bit]`` for coils/discretes).

    Never raises on content (see ``judge``).
    """
    try:
        if tag.type is DataType.BOOL:
            w = int(words[0])
            v = bool((register_value(w, tag.word_order) >> tag.bit) & 1) if tag.bit is not None else bool(w)
            return judge(tag, v, t)
        raw = registers_to_raw(words, tag.type, tag.word_order)
    except (CodecError, IndexError, TypeError, ValueError) as exc:
        return Sample.bad(f"undecodable registers: {exc}", t)
    if tag.type.is_float and not math.isfinite(raw):
        return Sample.bad("non-finite", t)
    return judge(tag, raw_to_eng(raw, tag.scale, tag.offset), t, raw=float(raw))


# ---------------------------------------------------------------- bulk (NumPy)


def words_to_raw_array(words: np.ndarray, dtype: DataType, word_order: WordOrder = WordOrder.BIG) -> np.ndarray:
    """Raw values from an ``[n, REGISTER_COUNT]`` array of registers (native dtype out).

    A 1-D array of length ``n * REGISTER_COUNT`` is accepted too.
    """
    n_words = REGISTER_COUNT[dtype]
    wo = WordOrder(word_order)
    w = np.asarray(words).reshape(-1, n_words)
    if wo.word_swap and n_words > 1:
        w = w[:, ::-1]
    if wo.byte_swap:
        w = _swap16_array(w)
    big = np.ascontiguousarray(w, dtype=">u2")
    raw = big.view(_NP_BIG[dtype]).reshape(-1)
    return raw.astype(raw.dtype.newbyteorder("="))


def raw_array_to_words(raw: np.ndarray, dtype: DataType, word_order: WordOrder = WordOrder.BIG) -> np.ndarray:
    """``[n, REGISTER_COUNT]`` uint16 registers for raw values (must already fit the type)."""
    n_words = REGISTER_COUNT[dtype]
    big = np.ascontiguousarray(np.asarray(raw), dtype=_NP_BIG[dtype])
    w = big.view(">u2").reshape(-1, n_words).astype(np.uint16)
    wo = WordOrder(word_order)
    if wo.word_swap and n_words > 1:
        w = w[:, ::-1]
    if wo.byte_swap:
        w = _swap16_array(w)
    return np.ascontiguousarray(w, dtype=np.uint16)


def _swap16_array(w: np.ndarray) -> np.ndarray:
    u = np.asarray(w).astype(np.uint32) & 0xFFFF
    return (((u >> 8) | (u << 8)) & 0xFFFF).astype(np.uint16)


def encode_array(
    values: np.ndarray,
    dtype: DataType,
    word_order: WordOrder = WordOrder.BIG,
    scale: float | np.ndarray = 1.0,
    offset: float | np.ndarray = 0.0,
    *,
    allow_nonfinite: bool = False,
) -> np.ndarray:
    """``[n, REGISTER_COUNT]`` uint16 registers for engineering values.

    Raises CodecError when a value does not fit (integer overflow, non-finite
    for integers, or for floats unless ``allow_nonfinite``).
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if dtype is DataType.BOOL:
        return (v != 0).astype(np.uint16).reshape(-1, 1)
    finite = np.isfinite(v)
    if not finite.all() and (dtype.is_int or not allow_nonfinite):
        bad = int(np.flatnonzero(~finite)[0])
        raise CodecError(f"non-finite value {v[bad]!r} at index {bad}")
    raw = (v - offset) / scale
    if dtype.is_int:
        r = np.rint(raw)
        lo, hi = RAW_RANGE[dtype]
        out = (r < lo) | (r > hi)
        if out.any():
            bad = int(np.flatnonzero(out)[0])
            raise CodecError(
                f"value {v[bad]!r} at index {bad} -> raw {r[bad]:.0f} outside {dtype.value} range [{lo}, {hi}]"
            )
        raw = r.astype(np.int64)
    elif dtype is DataType.FLOAT32:
        with np.errstate(invalid="ignore"):
            over = np.isfinite(raw) & (np.abs(raw) > float(np.finfo(np.float32).max))
        if over.any():
            bad = int(np.flatnonzero(over)[0])
            raise CodecError(f"value {v[bad]!r} at index {bad} overflows float32")
    return raw_array_to_words(raw, dtype, word_order)


def decode_array(
    words: np.ndarray,
    dtype: DataType,
    word_order: WordOrder = WordOrder.BIG,
    scale: float | np.ndarray = 1.0,
    offset: float | np.ndarray = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Engineering values (float64) and a finite mask from ``[n, REGISTER_COUNT]`` registers."""
    if dtype is DataType.BOOL:
        v = (np.asarray(words).reshape(-1) != 0).astype(np.float64)
        return v, np.ones(v.shape, dtype=bool)
    raw = words_to_raw_array(words, dtype, word_order).astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        eng = raw * scale + offset
    return eng, np.isfinite(eng)


# ---------------------------------------------------------------- quantisation


def quantize(tag: TagLike, eng: float) -> float:
    """The engineering value the registers will actually carry for ``eng``."""
    if tag.type is DataType.BOOL:
        return 1.0 if eng else 0.0
    raw = eng_to_raw(eng, tag.type, tag.scale, tag.offset)
    if tag.type is DataType.FLOAT32:
        raw = float(np.float32(raw))
    return raw_to_eng(raw, tag.scale, tag.offset)


def quantize_within(tag: TagLike, x: float, lo: float, hi: float) -> float | None:
    """Representable engineering value nearest to ``x`` with ``lo <= value <= hi`` exactly.

    The value is what a reader decodes (``raw * scale + offset`` in float64), so a
    safety check done on it holds on the wire too. Returns None when no
    representable value lies in [lo, hi].
    """
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi or not math.isfinite(x):
        return None
    x = min(max(x, lo), hi)
    if tag.type is DataType.BOOL:
        first = 1.0 if x >= 0.5 else 0.0
        candidates = [v for v in (first, 1.0 - first) if lo <= v <= hi]
        return candidates[0] if candidates else None
    s, o = tag.scale, tag.offset
    if tag.type.is_int:
        rlo, rhi = RAW_RANGE[tag.type]
        a, b = (lo - o) / s, (hi - o) / s
        if a > b:
            a, b = b, a
        r_min, r_max = math.ceil(a), math.floor(b)
        # (lo - o)/s rounds too: a raw value just outside [a, b] can still decode inside
        # [lo, hi] (4.3/0.1 = 42.99999999999999, but 43*0.1 = 4.3); take it in
        while lo <= (r_min - 1) * s + o <= hi:
            r_min -= 1
        while lo <= (r_max + 1) * s + o <= hi:
            r_max += 1
        r_min, r_max = max(rlo, r_min), min(rhi, r_max)
        if r_min > r_max:
            return None
        r = min(max(int(round((x - o) / s)), r_min), r_max)
        # float rounding of r*s+o can still step outside by an ulp: walk inward
        for _ in range(4):
            v = r * s + o
            if v > hi:
                r += -1 if s > 0 else 1
            elif v < lo:
                r += 1 if s > 0 else -1
            else:
                return float(v) if (rlo <= r <= rhi) else None
        return None
    raw = (x - o) / s
    if tag.type is DataType.FLOAT32:
        f32max = float(np.finfo(np.float32).max)
        raw = min(max(raw, -f32max), f32max)
        r32 = np.float32(raw)
        for _ in range(8):
            v = float(r32) * s + o
            if v > hi:
                r32 = np.nextafter(r32, np.float32(-np.inf) if s > 0 else np.float32(np.inf))
            elif v < lo:
                r32 = np.nextafter(r32, np.float32(np.inf) if s > 0 else np.float32(-np.inf))
            else:
                return _normal(tag, float(r32), v, x, lo, hi)
        return None
    v = raw * s + o
    for _ in range(8):
        if v > hi:
            raw = math.nextafter(raw, -math.inf if s > 0 else math.inf)
        elif v < lo:
            raw = math.nextafter(raw, math.inf if s > 0 else -math.inf)
        else:
            return _normal(tag, raw, v, x, lo, hi)
        v = raw * s + o
    return None


def _normal(tag: TagLike, raw: float, v: float, x: float, lo: float, hi: float) -> float | None:
    """``v`` unless its raw value is subnormal (readers take those for a wrong word order):
    then the nearest of raw 0 and the smallest normal numbers that stays in [lo, hi]."""
    if not is_subnormal(raw, tag.type):
        return v
    tiny = TINY[tag.type]
    vals = [c * tag.scale + tag.offset for c in (0.0, tiny, -tiny)]
    ok = [w for w in vals if lo <= w <= hi]
    return min(ok, key=lambda w: abs(w - x)) if ok else None


# ---------------------------------------------------------------- read planning


class Locatable(Protocol):
    """What read planning needs of a tag (read-only; ``Tag`` satisfies it)."""

    @property
    def name(self) -> str: ...
    @property
    def table(self) -> Table: ...
    @property
    def address(self) -> int: ...
    @property
    def device_id(self) -> int: ...
    @property
    def n_registers(self) -> int: ...


@dataclass(frozen=True, slots=True)
class ReadBlock:
    """One read request: ``count`` registers (or bits) from ``start`` in ``table`` of ``device_id``.

    ``tag_names`` are the tags decoded from it; ``has_gaps`` says whether it also
    reads addresses no tag occupies (a device may reject those).
    """

    device_id: int
    table: Table
    start: int
    count: int
    tag_names: tuple[str, ...]
    has_gaps: bool = False

    @property
    def end(self) -> int:
        """One past the last address read."""
        return self.start + self.count


def plan_blocks(
    tags: Iterable[Locatable],
    *,
    max_registers: int = MAX_READ_REGISTERS,
    max_bits: int = MAX_READ_BITS,
    max_gap: int = 8,
) -> list[ReadBlock]:
    """Group tags into contiguous read requests.

    Tags are grouped per (device id, table), sorted by address, and merged while
    the gap to the next tag is at most ``max_gap`` addresses and the request stays
    within ``max_registers`` (registers) or ``max_bits`` (coils/discretes).
    Overlapping tags (bits of one status word) share the request.
    """
    if max_gap < 0:
        raise ValueError("max_gap must be >= 0")
    groups: dict[tuple[int, Table], list[Locatable]] = {}
    for t in tags:
        groups.setdefault((t.device_id, t.table), []).append(t)
    blocks: list[ReadBlock] = []
    for (dev, table), items in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1].value)):
        limit = max_bits if table.is_bits else max_registers
        items.sort(key=lambda t: (t.address, t.name))
        start = end = -1
        names: list[str] = []
        gaps = False
        for t in items:
            a = t.address
            b = a + (1 if table.is_bits else t.n_registers)
            if names and a - end <= max_gap and max(b, end) - start <= limit:
                if a > end:
                    gaps = True
                end = max(end, b)
                names.append(t.name)
                continue
            if names:
                blocks.append(ReadBlock(dev, table, start, end - start, tuple(names), gaps))
            start, end, names, gaps = a, b, [t.name], False
        if names:
            blocks.append(ReadBlock(dev, table, start, end - start, tuple(names), gaps))
    return blocks
