"""Tag maps: the shipped maps, every rejection case, and the SCADA export."""

from __future__ import annotations

import csv
import json
import textwrap
from pathlib import Path

import pytest

from plc_bridge.codec import DataType, Table
from plc_bridge.tagmap import TagMapError, load_tagmap
from potline.cli import main as potline

ROOT = Path(__file__).resolve().parents[2]
RECTIFIER = ROOT / "config" / "tagmaps" / "rectifier.toml"
POTROOM = ROOT / "config" / "tagmaps" / "potroom.toml"

HEADER = """
[device]
name = "testdev"
instance = "Dev1"
"""


def write_map(tmp_path: Path, body: str, name: str = "bad.toml") -> Path:
    p = tmp_path / name
    p.write_text(HEADER + textwrap.dedent(body), encoding="utf-8")
    return p


def problems_of(path: Path) -> list[str]:
    with pytest.raises(TagMapError) as ei:
        load_tagmap(path)
    assert ei.value.problems, "a rejected map must say why"
    return ei.value.problems


# ---------------------------------------------------------------- shipped maps


def test_rectifier_map_has_what_the_controller_needs():
    m = load_tagmap(RECTIFIER)
    for name in ("line_current_sp", "ramp_rate_sp", "line_current", "line_voltage", "tap_position",
                 "status_word", "tripped", "overcurrent", "earth_fault", "oltc_fault", "remote",
                 "heartbeat_out", "heartbeat_in", "voltage_limit_sp"):  # fmt: skip
        assert name in m
    sp = m["line_current_sp"]
    assert sp.writable and sp.unit == "kA" and sp.table is Table.HOLDING
    assert sp.browse_path == "Objects/Rectifier1/LineCurrentSetpoint"
    # the alarm bits live in the status word, which is readable as a whole
    assert {m[n].address for n in ("tripped", "overcurrent", "earth_fault", "oltc_fault")} == {m["status_word"].address}
    assert m["ramp_rate_sp"].unit == "kA/min"
    # measurements are read-only: the input table cannot be written over Modbus
    assert all(not t.writable for t in m if t.table in (Table.INPUT, Table.DISCRETE))


def test_potroom_map_expands_132_cells_with_floor_numbering():
    m = load_tagmap(POTROOM)
    assert m.cells is not None and m.cells.count == 132
    volts = m.cell_tags("voltage")
    assert len(volts) == 132 and volts[0] == "cell001.voltage" and volts[-1] == "cell132.voltage"
    # cell k's block starts at base + (k - 1) * stride: cell 17 voltage at input base + 16 * stride
    base, stride = m.cells.base_address, m.cells.stride
    t = m["cell017.voltage"]
    assert (t.table, t.address, t.type) == (Table.INPUT, base + 16 * stride, DataType.FLOAT32)
    assert m["cell017.feed_shots"].address == base + 16 * stride and m["cell017.feed_shots"].table is Table.HOLDING
    # every other field at its offset inside the cell's block
    assert m["cell017.beam_cmd_ack"].address - m["cell001.beam_cmd_ack"].address == 16 * stride
    assert t.browse_path == "Objects/Potroom1/Cell017/Voltage"
    assert m["cell017.ae"].bit == 0 and m["cell017.ae"].address == m["cell017.status"].address
    # the instance name is a load-time choice (5 potrooms share one map)
    m2 = load_tagmap(POTROOM, instance="Potroom4")
    assert m2["cell132.voltage"].browse_path == "Objects/Potroom4/Cell132/Voltage"


def test_node_id_template(tmp_path):
    p = write_map(
        tmp_path,
        """
        [cells]
        count = 3
        stride = 2
        base_address = 10
        [[cells.tags]]
        name = "v"
        type = "float32"
        modbus = { table = "input", offset = 0 }
        opcua = { node_id = "ns=2;s={instance}.Cell{cell:03d}.V" }
    """,
    )
    m = load_tagmap(p)
    assert m["cell003.v"].node_id == "ns=2;s=Dev1.Cell003.V"
    assert m["cell003.v"].address == 14


# ---------------------------------------------------------------- rejection cases


def test_overlapping_registers_rejected(tmp_path):
    p = write_map(
        tmp_path,
        """
        [[tags]]
        name = "current"
        type = "float32"
        modbus = { table = "holding", address = 10 }
        [[tags]]
        name = "voltage"
        type = "uint16"
        modbus = { table = "holding", address = 11 }
    """,
    )
    (msg,) = problems_of(p)
    assert str(p) in msg and "'voltage'" in msg and "'current'" in msg and "overlaps" in msg
    assert ">= 12" in msg  # says where it could start


def test_same_address_in_other_table_or_device_is_not_an_overlap(tmp_path):
    p = write_map(
        tmp_path,
        """
        [[tags]]
        name = "a"
        type = "float32"
        modbus = { table = "holding", address = 10 }
        [[tags]]
        name = "b"
        type = "float32"
        modbus = { table = "input", address = 10 }
        [[tags]]
        name = "c"
        type = "float32"
        modbus = { table = "holding", address = 10, device_id = 2 }
    """,
    )
    assert len(load_tagmap(p)) == 3


def test_unknown_type_rejected(tmp_path):
    p = write_map(
        tmp_path,
        """
        [[tags]]
        name = "voltage"
        type = "float16"
        modbus = { address = 0 }
    """,
    )
    (msg,) = problems_of(p)
    assert msg == (
        f"{p}: tags[0:voltage].type: expected 'bool', 'int16', 'uint16', 'int32', 'uint32', 'float32' or 'float64',"
        " got 'float16'"
    )


def test_address_out_of_range_rejected(tmp_path):
    p = write_map(
        tmp_path,
        """
        [[tags]]
        name = "far"
        type = "uint16"
        modbus = { address = 70000 }
    """,
    )
    (msg,) = problems_of(p)
    assert msg == f"{p}: tags[0:far].modbus.address: expected an integer in [0, 65536], got 70000"


def test_32_bit_tag_at_last_address_rejected(tmp_path):
    p = write_map(
        tmp_path,
        """
        [[tags]]
        name = "edge"
        type = "float32"
        modbus = { address = 65535 }
        [[tags]]
        name = "ok_edge"
        type = "uint16"
        modbus = { address = 65534 }
    """,
    )
    (msg,) = problems_of(p)
    assert str(p) in msg and "'edge'" in msg and "65536" in msg and "address <= 65534" in msg


def test_min_greater_than_max_rejected(tmp_path):
    p = write_map(
        tmp_path,
        """
        [[tags]]
        name = "sp"
        type = "float32"
        access = "read-write"
        min = 10.0
        max = 5.0
        modbus = { address = 0 }
    """,
    )
    (msg,) = problems_of(p)
    assert str(p) in msg and "'sp'" in msg and "min <= max" in msg


def test_duplicate_names_rejected(tmp_path):
    p = write_map(
        tmp_path,
        """
        [[tags]]
        name = "x"
        type = "uint16"
        modbus = { address = 0 }
        [[tags]]
        name = "x"
        type = "uint16"
        modbus = { address = 1 }
    """,
    )
    (msg,) = problems_of(p)
    assert str(p) in msg and "'x'" in msg and "duplicate" in msg


def test_duplicate_cell_tag_names_rejected(tmp_path):
    p = write_map(
        tmp_path,
        """
        [cells]
        count = 2
        stride = 1
        base_address = 10
        name = "cell{cell:03d}_"
        [[cells.tags]]
        name = "v"
        type = "uint16"
        modbus = { offset = 0 }
        [[cells.tags]]
        name = "v"
        type = "int16"
        modbus = { offset = 0 }
    """,
    )
    msgs = problems_of(p)
    assert any("cell tag 'v'" in m and "duplicate" in m and str(p) in m for m in msgs)


def test_cell_tag_larger_than_stride_rejected(tmp_path):
    p = write_map(
        tmp_path,
        """
        [cells]
        count = 4
        stride = 2
        base_address = 0
        [[cells.tags]]
        name = "energy"
        type = "float64"
        modbus = { offset = 0 }
    """,
    )
    msgs = problems_of(p)
    assert any(str(p) in m and "'energy'" in m and "stride 2" in m for m in msgs)


def test_cells_past_end_of_address_space_rejected(tmp_path):
    p = write_map(
        tmp_path,
        """
        [cells]
        count = 132
        stride = 8
        base_address = 65000
        [[cells.tags]]
        name = "v"
        type = "uint16"
        modbus = { offset = 0 }
    """,
    )
    msgs = problems_of(p)
    assert any(m.startswith(f"{p}: cells: ") and "65535" in m for m in msgs)


def test_unknown_key_rejected(tmp_path):
    p = write_map(
        tmp_path,
        """
        [[tags]]
        name = "sp"
        type = "float32"
        units = "kA"
        modbus = { address = 0 }
    """,
    )
    (msg,) = problems_of(p)
    assert msg.startswith(f"{p}: tags[0:sp].units: unknown key (expected one of: access, alias_of, description, ")
    assert ", unit, " in msg


def test_writable_tag_without_bounds_rejected(tmp_path):
    p = write_map(
        tmp_path,
        """
        [[tags]]
        name = "sp"
        type = "float32"
        access = "read-write"
        modbus = { address = 0 }
    """,
    )
    (msg,) = problems_of(p)
    assert "'sp'" in msg and "min and max" in msg


def test_bits_rules(tmp_path):
    p = write_map(
        tmp_path,
        """
        [[tags]]
        name = "flag_in_coil"
        type = "uint16"
        modbus = { table = "coil", address = 0 }
        [[tags]]
        name = "word"
        type = "float32"
        modbus = { table = "input", address = 4 }
        [[tags]]
        name = "bit_in_float"
        type = "bool"
        modbus = { table = "input", address = 5, bit = 3 }
        [[tags]]
        name = "writable_input"
        type = "uint16"
        access = "read-write"
        min = 0
        max = 5
        modbus = { table = "input", address = 9 }
    """,
    )
    msgs = "\n".join(problems_of(p))
    assert "'flag_in_coil'" in msgs and "expected type 'bool'" in msgs
    assert "'bit_in_float'" in msgs
    assert "'writable_input'" in msgs and "read-only" in msgs


def test_bounds_beyond_type_rejected(tmp_path):
    p = write_map(
        tmp_path,
        """
        [[tags]]
        name = "shots"
        type = "uint16"
        access = "read-write"
        min = -1
        max = 10
        modbus = { address = 0 }
    """,
    )
    (msg,) = problems_of(p)
    assert "'shots'" in msg and "uint16" in msg


def test_bad_toml_names_file(tmp_path):
    p = tmp_path / "broken.toml"
    p.write_text("[device\nname = 1\n")
    (msg,) = problems_of(p)
    assert str(p) in msg and "TOML" in msg


def test_all_problems_reported_at_once(tmp_path):
    p = write_map(
        tmp_path,
        """
        [[tags]]
        name = "a"
        type = "uint16"
        modbus = { address = 0 }
        [[tags]]
        name = "a"
        type = "uint16"
        modbus = { address = 0 }
        [[tags]]
        name = "c"
        type = "float32"
        access = "read-write"
        min = 3
        max = 1
        modbus = { address = 65535 }
    """,
    )
    msgs = problems_of(p)
    assert len(msgs) >= 3


# ---------------------------------------------------------------- CLI: check and export


def test_cli_export_csv_and_json(tmp_path, capsys):
    out = tmp_path / "export"
    assert potline(["tags", "export", "--map", str(POTROOM), "--out", str(out), "--instance", "Potroom3"]) == 0
    rows = list(csv.DictReader((out / "Potroom3.csv").open(encoding="utf-8")))
    m = load_tagmap(POTROOM)
    assert m.cells is not None
    assert len(rows) == 6 + 132 * len(m.cells.fields)
    by_name = {r["name"]: r for r in rows}
    v = by_name["cell132.voltage"]
    last = m.cells.base_address + 131 * m.cells.stride
    assert v["table"] == "input" and v["address_0based"] == str(last) and v["type"] == "float32"
    assert v["address_1based"] == str(last + 1) and v["address_base"] == "0"
    assert v["opcua_browse_path"] == "Objects/Potroom3/Cell132/Voltage" and v["unit"] == "V"
    # Modicon convention: holding register at protocol address 0 is 400001, input 0 is 300001
    assert by_name["heartbeat_out"]["modbus_ref"] == "400001"
    assert by_name["heartbeat_in"]["modbus_ref"] == "300001"
    doc = json.loads((out / "Potroom3.json").read_text(encoding="utf-8"))
    assert doc["device"] == "potroom" and len(doc["tags"]) == len(rows)
    beam = next(t for t in doc["tags"] if t["name"] == "cell001.beam_move")
    assert beam["scale"] == 0.1 and beam["min"] == -30.0 and beam["access"] == "read-write"


def test_cli_check(tmp_path, capsys):
    assert potline(["tags", "check", str(RECTIFIER), str(POTROOM)]) == 0
    bad = write_map(
        tmp_path,
        """
        [[tags]]
        name = "v"
        type = "float16"
        modbus = { address = 0 }
    """,
    )
    assert potline(["tags", "check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}: tags[0:v].type: expected 'bool', " in err


# ---------------------------------------------------------------- transforms integrators need


def test_one_based_addressing_and_the_export_says_so(tmp_path):
    p = tmp_path / "one.toml"
    p.write_text(
        textwrap.dedent("""
        [device]
        name = "dev"
        address_base = 1
        word_order = "cdab"
        namespace = "urn:acme:{instance}"
        [[tags]]
        name = "i"
        type = "float32"
        modbus = { table = "input", address = 1 }
        [[tags]]
        name = "st"
        type = "uint16"
        modbus = { table = "input", address = 8 }
        [[tags]]
        name = "flag"
        type = "bool"
        modbus = { table = "input", address = 8, bit = 1 }
        opcua = { browse_path = "Objects/{instance}/Flag" }
        [cells]
        count = 2
        stride = 4
        base_address = 101
        [[cells.tags]]
        name = "u"
        type = "float32"
        word_order = "BADC"
        modbus = { table = "input", offset = 0 }
    """)
    )
    m = load_tagmap(p, instance="X1")
    assert m["i"].address == 0 and m["i"].map_address == 1 and m["i"].modbus_ref == "300001"
    assert m["cell002.u"].address == 104 and m["cell002.u"].word_order.notation == "BADC"
    assert m.namespace == "urn:acme:X1"
    out = tmp_path / "x"
    assert potline(["tags", "export", "--map", str(p), "--out", str(out), "--instance", "X1"]) == 0
    rows = {r["name"]: r for r in csv.DictReader((out / "X1.csv").open(encoding="utf-8"))}
    i, flag = rows["i"], rows["flag"]
    assert (i["address_0based"], i["address_1based"], i["address_base"], i["address_in_map"]) == ("0", "1", "1", "1")
    assert i["word_order"] == "CDAB" and i["byte_order"] == "AB" and rows["cell001.u"]["word_order"] == "BADC"
    assert flag["modbus_ref"] == "300008.1" and flag["bit"] == "1" and flag["bit_numbering"].startswith("bit 0 = least")
    assert flag["opcua_namespace_uri"] == "urn:acme:X1" and flag["opcua_browse_path"] == "Objects/X1/Flag"
    doc = json.loads((out / "X1.json").read_text(encoding="utf-8"))
    assert doc["address_base"] == 1 and doc["namespace_uri"] == "urn:acme:X1" and doc["word_order"] == "CDAB"
    assert "300008.1 is bit 1" in doc["conventions"]["bit_numbering"]
    # address 0 does not exist in a 1-based map
    p.write_text(p.read_text().replace("address = 1 }", "address = 0 }"))
    (msg,) = problems_of(p)
    assert "tags[0:i].modbus.address" in msg and "expected an address in [1, 65536] (address_base = 1), got 0" in msg


def test_alias_enum_invert_and_plausibility_rules(tmp_path):
    p = write_map(
        tmp_path,
        """
        [[tags]]
        name = "sp"
        type = "int32"
        scale = 0.001
        unit = "kA"
        access = "read-write"
        min = 0
        max = 135
        modbus = { table = "holding", address = 0 }
        [[tags]]
        name = "sp_act"
        type = "int32"
        alias_of = "sp"
        [[tags]]
        name = "mode"
        type = "uint16"
        enum = { 0 = "LOCAL", 1 = "REMOTE" }
        true_when = ["REMOTE"]
        modbus = { table = "input", address = 0 }
        [[tags]]
        name = "local"
        type = "bool"
        invert = true
        modbus = { table = "discrete", address = 0 }
    """,
    )
    m = load_tagmap(p)
    a = m["sp_act"]
    assert (a.table, a.address, a.scale, a.unit, a.writable) == (Table.HOLDING, 0, 0.001, "kA", False)
    assert m["mode"].reads_bool and m["mode"].true_when == frozenset({1}) and m["local"].invert
    bad = write_map(
        tmp_path,
        """
        [[tags]]
        name = "sp"
        type = "float32"
        access = "read-write"
        min = 0
        max = 1
        modbus = { address = 0 }
        [[tags]]
        name = "a1"
        type = "int32"
        access = "read-write"
        min = 0
        max = 1
        alias_of = "sp"
        [[tags]]
        name = "a2"
        type = "float32"
        alias_of = "nothing"
        [[tags]]
        name = "e"
        type = "float32"
        enum = { 0 = "X" }
        modbus = { address = 4 }
        [[tags]]
        name = "t"
        type = "uint16"
        enum = { 0 = "OFF" }
        true_when = ["ON"]
        modbus = { address = 5 }
        [[tags]]
        name = "inv"
        type = "uint16"
        invert = true
        modbus = { address = 6 }
        [[tags]]
        name = "pl"
        type = "float32"
        plausible_min = 5
        plausible_max = 1
        modbus = { address = 8 }
    """,
        name="bad2.toml",
    )
    msgs = "\n".join(problems_of(bad))
    assert "'a1'" in msgs and "alias is read-only" in msgs and "must have its type float32" in msgs
    assert "alias_of 'nothing'" in msgs
    assert "enum needs an unscaled integer type" in msgs
    assert "true_when state 'ON' is not in the enumeration" in msgs
    assert "invert is for bool tags" in msgs
    assert "plausible_min 5 > plausible_max 1" in msgs
    bad_order = write_map(
        tmp_path,
        """
        [[tags]]
        name = "x"
        type = "float32"
        word_order = "ACBD"
        modbus = { address = 0 }
    """,
        name="bad3.toml",
    )
    (msg,) = problems_of(bad_order)
    assert (
        msg
        == f"{bad_order}: tags[0:x].word_order: expected ABCD, CDAB, BADC or DCBA (big = ABCD, little = CDAB), got 'ACBD'"
    )


def test_plant_limits_narrow_the_setpoint_bounds_never_widen():
    m = load_tagmap(RECTIFIER, instance="Line1")
    n = m.with_bounds("line_current_sp", 0.0, 132.0, "the plant's rectifier limits of Line1")
    assert (n["line_current_sp"].lo, n["line_current_sp"].hi) == (0.0, 132.0) and m["line_current_sp"].hi == 135.0
    assert n.with_bounds("line_current_sp", -10.0, 500.0)["line_current_sp"].hi == 132.0
    with pytest.raises(ValueError, match="do not overlap"):
        n.with_bounds("line_current_sp", 140.0, 150.0, "x")
