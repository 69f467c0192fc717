"""Register codec: published IEEE-754 vectors, agreement with pymodbus's own
converter and with ``struct``, garbage handling, quantisation, read planning."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pymodbus.client import AsyncModbusTcpClient

from plc_bridge import codec
from plc_bridge.codec import DataType, Table, WordOrder
from plc_bridge.quality import Quality
from plc_bridge.tagmap import Tag

PM = AsyncModbusTcpClient  # convert_* are classmethods; no connection needed
PM_TYPE = {
    DataType.INT16: PM.DATATYPE.INT16,
    DataType.UINT16: PM.DATATYPE.UINT16,
    DataType.INT32: PM.DATATYPE.INT32,
    DataType.UINT32: PM.DATATYPE.UINT32,
    DataType.FLOAT32: PM.DATATYPE.FLOAT32,
    DataType.FLOAT64: PM.DATATYPE.FLOAT64,
}
STRUCT = {DataType.INT16: "h", DataType.UINT16: "H", DataType.INT32: "i", DataType.UINT32: "I",
          DataType.FLOAT32: "f", DataType.FLOAT64: "d"}  # fmt: skip
NUMERIC = list(PM_TYPE)
ORDERS = [WordOrder.BIG, WordOrder.LITTLE]


def tag(dtype=DataType.FLOAT32, wo=WordOrder.BIG, scale=1.0, offset=0.0, lo=None, hi=None, bit=None,
        table=Table.HOLDING, address=0, name="t") -> Tag:  # fmt: skip
    return Tag(name=name, type=dtype, word_order=wo, unit="", access="read-write", scale=scale, offset=offset,
               min=lo, max=hi, description="", table=table, address=address, device_id=1, bit=bit)  # fmt: skip


def struct_words(x, dtype: DataType, wo: WordOrder) -> list[int]:
    """Independent reference encoding with the stdlib."""
    b = struct.pack(">" + STRUCT[dtype], x)
    w = [int.from_bytes(b[i : i + 2], "big") for i in range(0, len(b), 2)]
    return w if wo is WordOrder.BIG else w[::-1]


# ---------------------------------------------------------------- published vectors


@pytest.mark.parametrize(
    "dtype,value,big_words",
    [
        (DataType.FLOAT32, 1.0, [0x3F80, 0x0000]),  # IEEE 754 single 1.0 = 0x3F800000
        (DataType.FLOAT32, -2.5, [0xC020, 0x0000]),
        (DataType.FLOAT32, 123.456, [0x42F6, 0xE979]),
        (DataType.FLOAT64, 1.0, [0x3FF0, 0, 0, 0]),  # IEEE 754 double 1.0 = 0x3FF0000000000000
        (DataType.INT32, -2, [0xFFFF, 0xFFFE]),  # two's complement
        (DataType.UINT32, 0x12345678, [0x1234, 0x5678]),
        (DataType.INT16, -1, [0xFFFF]),
    ],
)
@pytest.mark.parametrize("wo", ORDERS)
def test_known_vectors(dtype, value, big_words, wo):
    expect = big_words if wo is WordOrder.BIG else big_words[::-1]
    assert codec.raw_to_registers(value, dtype, wo) == expect
    back = codec.registers_to_raw(expect, dtype, wo)
    assert back == pytest.approx(value, rel=1e-7)
    arr = codec.words_to_raw_array(np.array([expect], dtype=np.uint16), dtype, wo)
    assert arr[0] == pytest.approx(value, rel=1e-7)


# ---------------------------------------------------------------- agreement with independent converters


@pytest.mark.parametrize("dtype", NUMERIC)
@pytest.mark.parametrize("wo", ORDERS)
def test_bulk_and_scalar_agree_with_pymodbus_and_struct(dtype, wo):
    rng = np.random.default_rng(7)
    n = 200
    if dtype.is_float:
        raw = rng.normal(0, 1e3, n)
        if dtype is DataType.FLOAT32:
            raw = raw.astype(np.float32).astype(np.float64)
    else:
        lo, hi = codec.RAW_RANGE[dtype]
        raw = rng.integers(lo, hi, n, endpoint=True)
    words = codec.raw_array_to_words(raw, dtype, wo)
    for i in range(0, n, 17):
        x = raw[i].item()
        ref = struct_words(x, dtype, wo)
        assert words[i].tolist() == ref
        assert codec.raw_to_registers(x, dtype, wo) == ref
        assert PM.convert_to_registers(x, PM_TYPE[dtype], word_order=wo.value) == ref
        assert PM.convert_from_registers(ref, PM_TYPE[dtype], word_order=wo.value) == x
        assert codec.registers_to_raw(ref, dtype, wo) == x
    back = codec.words_to_raw_array(words, dtype, wo)
    np.testing.assert_array_equal(back, raw)


def test_scaled_integer_roundtrip_and_rounding():
    t = tag(DataType.INT16, scale=0.1, lo=-30, hi=30)
    assert codec.encode(t, -2.34) == struct_words(-23, DataType.INT16, WordOrder.BIG)
    s = codec.decode(t, codec.encode(t, 12.3), t=5.0)
    assert s.good and s.value == pytest.approx(12.3) and s.t == 5.0
    t2 = tag(DataType.UINT16, scale=0.01, offset=-100.0)  # e.g. a temperature with offset
    w = codec.encode(t2, 25.0)
    assert w == [12500]
    assert codec.decode(t2, w, 0).value == pytest.approx(25.0)


def test_encode_refuses_what_does_not_fit():
    with pytest.raises(codec.CodecError):
        codec.encode(tag(DataType.UINT16), -1)
    with pytest.raises(codec.CodecError):
        codec.encode(tag(DataType.INT16, scale=0.1), 4000.0)  # raw 40000 > 32767
    with pytest.raises(codec.CodecError):
        codec.encode(tag(DataType.FLOAT32), math.nan)
    with pytest.raises(codec.CodecError):
        codec.encode(tag(DataType.FLOAT32), 1e39)
    with pytest.raises(codec.CodecError):
        codec.encode_array(np.array([1.0, math.inf]), DataType.INT32)


# ---------------------------------------------------------------- garbage -> quality, never exceptions


@pytest.mark.parametrize("words", [[0x7FC0, 0x0000], [0x7F80, 0x0000], [0xFF80, 0x0000], [0x7FFF, 0xFFFF]])
def test_non_finite_float_decodes_bad(words):
    s = codec.decode(tag(DataType.FLOAT32, lo=0, hi=80), words, t=1.0)
    assert s.quality is Quality.BAD and s.reason == "non-finite" and s.value is None
    _eng, finite = codec.decode_array(np.array([words], dtype=np.uint16), DataType.FLOAT32)
    assert not finite[0]


def test_out_of_range_decodes_uncertain_and_short_reads_bad():
    t = tag(DataType.FLOAT32, lo=0.0, hi=80.0)
    s = codec.decode(t, struct_words(1e30, DataType.FLOAT32, WordOrder.BIG), t=0)
    assert s.quality is Quality.UNCERTAIN and "max 80" in s.reason
    s = codec.decode(t, [0x4000], t=0)  # one register for a float32
    assert s.quality is Quality.BAD


def test_bits_in_a_status_word():
    word = 0b10110
    got = [codec.decode(tag(DataType.BOOL, bit=b, table=Table.INPUT), [word], 0).value for b in range(5)]
    assert got == [False, True, True, False, True]
    assert codec.set_bit(word, 0, True) == 0b10111 and codec.set_bit(word, 1, False) == 0b10100


# ---------------------------------------------------------------- quantisation


@settings(max_examples=300, deadline=None)
@given(
    dtype=st.sampled_from([DataType.INT16, DataType.UINT16, DataType.INT32, DataType.FLOAT32, DataType.FLOAT64]),
    scale=st.sampled_from([1.0, 0.1, 0.01, 0.001, 2.5]),
    a=st.floats(-300, 300, allow_nan=False),
    b=st.floats(-300, 300, allow_nan=False),
    x=st.floats(allow_nan=False, allow_infinity=False, min_value=-1e6, max_value=1e6),
)
# 4.3 / 0.1 = 42.99999999999999 in float64, yet raw 43 decodes to 4.3 exactly (found by CI)
@example(dtype=DataType.INT16, scale=0.1, a=4.25, b=4.3, x=0.0)
# a range holding only a subnormal float: never written (readers take one for a wrong word order)
@example(dtype=DataType.FLOAT64, scale=1.0, a=5e-324, b=5e-324, x=0.0)
def test_quantize_within_stays_inside_and_is_what_the_wire_carries(dtype, scale, a, b, x):
    lo, hi = min(a, b), max(a, b)
    if dtype is DataType.UINT16:
        lo, hi = abs(lo), abs(lo) + abs(hi - lo)
    t = tag(dtype, scale=scale)
    v = codec.quantize_within(t, x, lo, hi)
    if v is None:
        # only when no raw value of the type lands in [lo, hi] (subnormal floats do not count)
        if dtype.is_float:
            ft = np.float32 if dtype is DataType.FLOAT32 else np.float64
            near = [ft(lo / scale)]
            for _ in range(3):
                near += [np.nextafter(near[-1], ft(np.inf))]
            near += [np.nextafter(near[0], ft(-np.inf)), np.nextafter(np.nextafter(near[0], ft(-np.inf)), ft(-np.inf))]
            assert not any(lo <= float(c) * scale <= hi for c in near if not codec.is_subnormal(float(c), dtype))
            return
        assert dtype.is_int
        rlo, rhi = codec.RAW_RANGE[dtype]
        ks = range(max(rlo, math.floor(lo / scale) - 1), min(rhi, math.ceil(hi / scale) + 1) + 1)
        assert not any(lo <= k * scale <= hi for k in ks)
        return
    assert lo <= v <= hi
    decoded = codec.decode(t, codec.encode(t, v), 0).value
    assert float(decoded) == v


# ---------------------------------------------------------------- read planning


@st.composite
def tag_sets(draw):
    n = draw(st.integers(1, 60))
    tags, addr = [], draw(st.integers(0, 100))
    for i in range(n):
        dtype = draw(st.sampled_from(NUMERIC))
        table = draw(st.sampled_from([Table.HOLDING, Table.INPUT]))
        tags.append(tag(dtype, table=table, address=addr, name=f"t{i}"))
        addr += codec.REGISTER_COUNT[dtype] + draw(st.integers(0, 20))
        if addr > 65000:
            break
    return tags


@settings(max_examples=200, deadline=None)
@given(tags=tag_sets(), max_gap=st.integers(0, 12))
def test_plan_blocks_covers_each_tag_once_within_protocol_limits(tags, max_gap):
    blocks = codec.plan_blocks(tags, max_gap=max_gap)
    seen = {}
    for b in blocks:
        assert 1 <= b.count <= 125
        for n in b.tag_names:
            assert n not in seen
            seen[n] = b
    by_name = {t.name: t for t in tags}
    assert set(seen) == set(by_name)
    for n, b in seen.items():
        t = by_name[n]
        assert b.table is t.table and b.start <= t.address and t.address + t.n_registers <= b.end
    # gaps inside a block never exceed max_gap
    for b in blocks:
        spans = sorted((by_name[n].address, by_name[n].address + by_name[n].n_registers) for n in b.tag_names)
        end = spans[0][1]
        for a, e in spans[1:]:
            assert a - end <= max_gap
            end = max(end, e)


def test_plan_for_a_potroom_uses_few_requests():
    from pathlib import Path

    from plc_bridge.tagmap import load_tagmap

    m = load_tagmap(Path(__file__).resolve().parents[2] / "config" / "tagmaps" / "potroom.toml")
    blocks = codec.plan_blocks(m.modbus_tags())
    regs = sum(b.count for b in blocks if not b.table.is_bits)
    assert m.cells is not None
    span = m.cells.count * m.cells.stride  # registers of the cell block in each table
    # 132 cells x stride registers in each of two tables: ceil(span/125) requests each
    # (one more where a block boundary splits a value), plus room-level tags
    assert len(blocks) <= 2 * (-(-span // 125) + 1) + 3
    assert regs >= 2 * 132 * 4


# ---------------------------------------------------------------- byte/word order notation, judge


def notation_words(x, dtype: DataType, order: str) -> list[int]:
    """Independent reference: the value's bytes A.. (most significant first) laid out in
    ``order`` (e.g. "BADC"; a 64-bit value repeats the 32-bit pattern over 8 bytes)."""
    b = struct.pack(">" + STRUCT[dtype], x)
    if len(b) == 2:
        out = b if order in ("ABCD", "CDAB") else b[::-1]
    else:
        words_ = [b[i : i + 2] for i in range(0, len(b), 2)]
        if order in ("CDAB", "DCBA"):
            words_ = words_[::-1]
        if order in ("BADC", "DCBA"):
            words_ = [w[::-1] for w in words_]
        out = b"".join(words_)
    return [int.from_bytes(out[i : i + 2], "big") for i in range(0, len(out), 2)]


@pytest.mark.parametrize("order", ["ABCD", "CDAB", "BADC", "DCBA"])
@pytest.mark.parametrize("dtype", NUMERIC)
def test_every_byte_and_word_order_against_an_independent_encoding(order, dtype):
    """The notation integrators use: A = most significant byte; 16-bit values swap their
    bytes for BADC/DCBA. ``big``/``little`` are ABCD/CDAB, any case is accepted."""
    wo = WordOrder(order.lower())
    assert wo.notation == order
    rng = np.random.default_rng(3)
    if dtype.is_float:
        raw = rng.normal(0, 1e3, 64)
        raw = raw.astype(np.float32).astype(np.float64) if dtype is DataType.FLOAT32 else raw
    else:
        lo, hi = codec.RAW_RANGE[dtype]
        raw = rng.integers(lo, hi, 64, endpoint=True)
    words = codec.raw_array_to_words(raw, dtype, wo)
    for i, x in enumerate(raw.tolist()):
        ref = notation_words(x, dtype, order)
        assert words[i].tolist() == ref
        assert codec.raw_to_registers(x, dtype, wo) == ref
        assert codec.registers_to_raw(ref, dtype, wo) == x
    np.testing.assert_array_equal(codec.words_to_raw_array(words, dtype, wo), raw)
    assert WordOrder("big") is WordOrder.ABCD and WordOrder("little") is WordOrder.CDAB


def test_bits_count_on_the_register_value_after_the_byte_order():
    """Bit 0 is the least significant bit of the register's value: on a byte-swapped
    device bit 8 is the low bit of the first byte on the wire."""
    wire = notation_words(1 << 8, DataType.UINT16, "BADC")  # the PLC's value 0x0100
    assert wire == [0x0001]
    t = tag(DataType.BOOL, wo=WordOrder.BADC, bit=8, table=Table.INPUT)
    assert codec.decode(t, wire, 0).value is True
    assert codec.decode(tag(DataType.BOOL, bit=0, table=Table.INPUT), wire, 0).value is True  # ABCD: bit 0


def test_judge_plausibility_enumerations_invert() -> None:
    """The word-swapped float of issue 14: 120.0 written ABCD, read CDAB, is 2.4e-41 --
    inside a map's [0, 135] but a subnormal: BAD, never a value near 0 kA."""
    sp = tag(DataType.FLOAT32, wo=WordOrder.CDAB, lo=0.0, hi=135.0)
    s = codec.decode(sp, struct_words(120.0, DataType.FLOAT32, WordOrder.BIG), 0)
    assert s.quality is Quality.BAD and "subnormal" in s.reason and "word order" in s.reason
    assert codec.decode(sp, [0, 0], 0).good  # 0.0 is not subnormal
    import dataclasses

    t = dataclasses.replace(tag(DataType.FLOAT32), plausible_min=-10.0, plausible_max=250.0, max=200.0)
    assert (
        codec.judge(t, 260.0, 0).quality is Quality.BAD
        and "plausible range [-10, 250]" in codec.judge(t, 260.0, 0).reason
    )
    assert codec.judge(t, 210.0, 0).quality is Quality.UNCERTAIN
    mode = dataclasses.replace(tag(DataType.UINT16), enum=((0, "LOCAL"), (1, "REMOTE"), (2, "MAINT")))
    assert codec.judge(mode, 2, 0).value == 2 and codec.judge(mode, 2, 0).good
    bad = codec.judge(mode, 7, 0)
    assert bad.quality is Quality.BAD and "(0 LOCAL, 1 REMOTE, 2 MAINT)" in bad.reason
    remote = dataclasses.replace(mode, true_when=frozenset({1}))
    assert codec.judge(remote, 1, 0).value is True and codec.judge(remote, 2, 0).value is False
    local_bit = dataclasses.replace(tag(DataType.BOOL, bit=3, table=Table.INPUT), invert=True)
    assert codec.decode(local_bit, [0b1000], 0).value is False and codec.decode(local_bit, [0], 0).value is True
    coil = dataclasses.replace(tag(DataType.BOOL, table=Table.COIL), invert=True)
    assert codec.encode(coil, True) == [0]
