"""The regulator's site file: one TOML file per site of a lab, named in the verifier's config.

    declaration = load_site_file(Path("sites/dc1.toml"), lab_id="lab-a")
    params = site_parameters(declaration, lab_node_ids=frozenset(...))

A site file (docs/site-power.md)::

    format_version = 1
    site_id = "dc1"
    name = "Frankfurt DC 1"
    version = 1                 # bump when anything below changes
    pue = "1.25"                # declared power usage effectiveness (>= 1), exact decimal
    non_gpu_load_kw = "40"      # declared average IT load that is not GPUs
    tolerance_percent = "10"    # unexplained IT energy up to this share of it is slack
    nodes = "all"               # or ["<node id hex>", ...]

    [[meter]]
    id = "main-1"
    source = "gateway"          # or "regulator_import"
    public_key = "base64..."    # the key that signs its readings (PEM, hex or base64)

Every figure is exact: decimals are strings (or integers) and must denote a whole number of the
stored unit (ppm, mW); errors name the file and the key.
"""

from __future__ import annotations

import tomllib
from fractions import Fraction
from pathlib import Path
from typing import Any

from pausewatch.v1 import site_pb2 as pb

from attest.errors import ConfigError
from attest.ids import parse_hex_id
from attest.keys import parse_public_key, raw_public_key
from attest.meter import is_meter_id, is_site_id
from verifier.accounting.site import PPM, SiteParameters

FORMAT_VERSION = 1
_SOURCES = {
    "gateway": pb.METER_SOURCE_GATEWAY,
    "regulator_import": pb.METER_SOURCE_REGULATOR_IMPORT,
}
_TOP_KEYS = frozenset(
    {
        "format_version",
        "site_id",
        "name",
        "version",
        "pue",
        "non_gpu_load_kw",
        "tolerance_percent",
        "nodes",
        "meter",
    }
)
_METER_KEYS = frozenset({"id", "source", "public_key"})
MAX_PUE_PPM = 3 * PPM
"""A declared PUE above 3 is refused: no data centre runs that badly, and a large declared overhead
would hide GPU energy."""


def _exact(value: Any, scale: int, where: str) -> int:
    """``value`` (an int, or a decimal string) x ``scale``, which must be a whole number."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ConfigError(f"{where}: must be an integer or a decimal string, got {value!r}")
    try:
        amount = Fraction(str(value).strip().replace("_", ""))
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"{where}: {value!r} is not a decimal number") from None
    scaled = amount * scale
    if scaled.denominator != 1:
        raise ConfigError(f"{where}: {value!r} has more decimal places than can be stored exactly")
    if scaled < 0:
        raise ConfigError(f"{where}: must not be negative")
    return int(scaled)


def parse_site_file(data: bytes, *, source: str, lab_id: str) -> pb.SiteDeclaration:
    """Parse and validate a site file's bytes; ``source`` names it in errors."""
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    unknown = sorted(set(doc) - _TOP_KEYS)
    if unknown:
        raise ConfigError(f"{source}: {unknown[0]}: is not a known key")
    if doc.get("format_version") != FORMAT_VERSION:
        raise ConfigError(f"{source}: format_version: must be {FORMAT_VERSION}")
    site_id = doc.get("site_id")
    if not isinstance(site_id, str) or not is_site_id(site_id):
        raise ConfigError(f"{source}: site_id: must be 1-64 characters of a-z, 0-9, '.', '_', '-'")
    name = doc.get("name", site_id)
    if not isinstance(name, str) or len(name) > 200:
        raise ConfigError(f"{source}: name: must be a string of at most 200 characters")
    version = doc.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version < 2**32:
        raise ConfigError(f"{source}: version: must be a whole number from 1")
    if "pue" not in doc:
        raise ConfigError(f'{source}: pue: is required (the site\'s declared PUE, e.g. "1.3")')
    pue_ppm = _exact(doc["pue"], PPM, f"{source}: pue")
    if not PPM <= pue_ppm <= MAX_PUE_PPM:
        raise ConfigError(f"{source}: pue: must be from 1 to 3")
    non_gpu_load_mw = _exact(doc.get("non_gpu_load_kw", 0), 1_000_000, f"{source}: non_gpu_load_kw")
    tolerance_ppm = _exact(doc.get("tolerance_percent", 10), 10_000, f"{source}: tolerance_percent")
    if tolerance_ppm > PPM:
        raise ConfigError(f"{source}: tolerance_percent: must be at most 100")
    declaration = pb.SiteDeclaration(
        format_version=FORMAT_VERSION,
        lab_id=lab_id,
        site_id=site_id,
        name=name,
        version=version,
        pue_ppm=pue_ppm,
        non_gpu_load_mw=non_gpu_load_mw,
        tolerance_ppm=tolerance_ppm,
    )
    nodes = doc.get("nodes")
    if nodes == "all":
        declaration.all_nodes = True
    elif isinstance(nodes, list) and nodes:
        seen: set[bytes] = set()
        for i, text in enumerate(nodes):
            if not isinstance(text, str):
                raise ConfigError(f"{source}: nodes[{i}]: must be a node id (64 hex characters)")
            try:
                node_id = parse_hex_id(text, "a node id")
            except ValueError as exc:
                raise ConfigError(f"{source}: nodes[{i}]: {exc}") from None
            if node_id in seen:
                raise ConfigError(f"{source}: nodes[{i}]: appears twice")
            seen.add(node_id)
            declaration.node_ids.append(node_id)
    else:
        raise ConfigError(f'{source}: nodes: must be "all" or a list of node ids')
    meters = doc.get("meter")
    if not isinstance(meters, list) or not meters:
        raise ConfigError(f"{source}: meter: a site needs at least one [[meter]]")
    meter_ids: set[str] = set()
    for i, raw in enumerate(meters):
        where = f"{source}: meter[{i}]"
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: must be a table")
        extra = sorted(set(raw) - _METER_KEYS)
        if extra:
            raise ConfigError(f"{where}.{extra[0]}: is not a known key")
        meter_id = raw.get("id")
        if not isinstance(meter_id, str) or not is_meter_id(meter_id):
            raise ConfigError(
                f"{where}.id: must be 1-64 characters of A-Z, a-z, 0-9, '.', '_', '-'"
            )
        if meter_id in meter_ids:
            raise ConfigError(f"{where}.id: meter {meter_id!r} appears twice")
        meter_ids.add(meter_id)
        source_name = raw.get("source")
        if source_name not in _SOURCES:
            raise ConfigError(f'{where}.source: must be "gateway" or "regulator_import"')
        key_text = raw.get("public_key")
        if not isinstance(key_text, str):
            raise ConfigError(f"{where}.public_key: the key that signs this meter's readings")
        try:
            key = parse_public_key(key_text)
        except (ValueError, ConfigError) as exc:
            raise ConfigError(f"{where}.public_key: {exc}") from None
        declaration.meters.append(
            pb.MeterDeclaration(
                meter_id=meter_id, source=_SOURCES[source_name], public_key=raw_public_key(key)
            )
        )
    return declaration


def load_site_file(path: Path, *, lab_id: str) -> pb.SiteDeclaration:
    """Read and validate a site file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read site file {path}: {exc.strerror}") from None
    return parse_site_file(data, source=str(path), lab_id=lab_id)


def same_declaration(a: pb.SiteDeclaration, b: pb.SiteDeclaration) -> bool:
    """Whether two declarations say the same, apart from when they took effect."""
    a2, b2 = pb.SiteDeclaration(), pb.SiteDeclaration()
    a2.CopyFrom(a)
    b2.CopyFrom(b)
    a2.effective_from_ns = b2.effective_from_ns = 0
    return a2.SerializeToString(deterministic=True) == b2.SerializeToString(deterministic=True)


def site_parameters(
    declaration: pb.SiteDeclaration, *, lab_node_ids: frozenset[bytes], log_index: int = -1
) -> SiteParameters:
    """The accounting parameters of a declaration in force (``lab_node_ids`` for ``all_nodes``)."""
    nodes = lab_node_ids if declaration.all_nodes else frozenset(declaration.node_ids)
    return SiteParameters(
        site_id=declaration.site_id,
        lab_id=declaration.lab_id,
        name=declaration.name,
        pue_ppm=declaration.pue_ppm,
        non_gpu_load_mw=declaration.non_gpu_load_mw,
        tolerance_ppm=declaration.tolerance_ppm,
        node_ids=nodes,
        meter_ids=tuple(m.meter_id for m in declaration.meters),
        effective_from_ns=declaration.effective_from_ns,
        log_index=log_index,
    )
