"""The regulator's site file: exact figures, and errors that name the file and the key."""

from __future__ import annotations

import pytest
from pausewatch.v1 import site_pb2 as pb

from attest.errors import ConfigError
from attest.keys import Ed25519Signer, format_public_key
from tests.builders import fixed_private_key
from verifier.accounting.site_file import parse_site_file, same_declaration, site_parameters

KEY = format_public_key(Ed25519Signer.from_private_key(fixed_private_key(41)).public_key)
NODE_HEX = "ab" * 32

GOOD = f"""
format_version = 1
site_id = "dc1"
name = "Frankfurt DC 1"
version = 3
pue = "1.3"
non_gpu_load_kw = "40.5"
tolerance_percent = "7.5"
nodes = ["{NODE_HEX}"]

[[meter]]
id = "main-1"
source = "gateway"
public_key = "{KEY}"

[[meter]]
id = "utility-feed"
source = "regulator_import"
public_key = "{KEY}"
"""


def parse(text: str) -> pb.SiteDeclaration:
    return parse_site_file(text.encode(), source="dc1.toml", lab_id="lab-a")


def test_a_good_file_gives_exact_figures() -> None:
    d = parse(GOOD)
    assert (d.site_id, d.name, d.version, d.lab_id) == ("dc1", "Frankfurt DC 1", 3, "lab-a")
    assert d.pue_ppm == 1_300_000
    assert d.non_gpu_load_mw == 40_500_000
    assert d.tolerance_ppm == 75_000
    assert list(d.node_ids) == [bytes.fromhex(NODE_HEX)]
    assert [m.source for m in d.meters] == [
        pb.METER_SOURCE_GATEWAY,
        pb.METER_SOURCE_REGULATOR_IMPORT,
    ]
    params = site_parameters(d, lab_node_ids=frozenset({b"x" * 32}))
    assert params.node_ids == frozenset({bytes.fromhex(NODE_HEX)})
    assert params.meter_ids == ("main-1", "utility-feed")


def test_all_nodes_takes_the_labs_nodes() -> None:
    d = parse(GOOD.replace(f'nodes = ["{NODE_HEX}"]', 'nodes = "all"'))
    assert d.all_nodes
    assert site_parameters(d, lab_node_ids=frozenset({b"x" * 32})).node_ids == {b"x" * 32}


def test_same_declaration_ignores_only_the_effective_time() -> None:
    a, b = parse(GOOD), parse(GOOD)
    b.effective_from_ns = 123
    assert same_declaration(a, b)
    b.pue_ppm += 1
    assert not same_declaration(a, b)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('pue = "1.3"', 'pue = "0.9"', "pue: must be from 1 to 3"),
        ('pue = "1.3"', 'pue = "4"', "pue: must be from 1 to 3"),
        ('pue = "1.3"', 'pue = "1.0000001"', "pue: .* decimal places"),
        ('pue = "1.3"', "pue = 1.3", "pue: must be an integer or a decimal string"),
        ('pue = "1.3"', "", "pue: is required"),
        ('tolerance_percent = "7.5"', 'tolerance_percent = "150"', "at most 100"),
        ('non_gpu_load_kw = "40.5"', 'non_gpu_load_kw = "-1"', "must not be negative"),
        ("version = 3", "version = 0", "version: must be a whole number"),
        ('site_id = "dc1"', 'site_id = "DC 1"', "site_id"),
        (f'nodes = ["{NODE_HEX}"]', 'nodes = ["abc"]', r"nodes\[0\]"),
        (f'nodes = ["{NODE_HEX}"]', f'nodes = ["{NODE_HEX}", "{NODE_HEX}"]', "appears twice"),
        (f'nodes = ["{NODE_HEX}"]', "nodes = []", 'nodes: must be "all"'),
        ('id = "utility-feed"', 'id = "main-1"', "appears twice"),
        ('source = "gateway"', 'source = "smart"', "source"),
        (f'public_key = "{KEY}"\n\n[[meter]]', 'public_key = "nope"\n\n[[meter]]', "public_key"),
        ("format_version = 1", "format_version = 2", "format_version"),
        ('name = "Frankfurt DC 1"', 'colour = "red"', "colour: is not a known key"),
    ],
)
def test_bad_files_name_the_key(old: str, new: str, message: str) -> None:
    assert old in GOOD
    with pytest.raises(ConfigError, match=message) as caught:
        parse(GOOD.replace(old, new, 1))
    assert caught.value.diagnostics().startswith("dc1.toml")


def test_a_site_needs_a_meter_and_valid_toml() -> None:
    without = GOOD.split("[[meter]]", maxsplit=1)[0]
    with pytest.raises(ConfigError, match="at least one"):
        parse(without)
    with pytest.raises(ConfigError, match="not valid TOML"):
        parse("site_id = ")
