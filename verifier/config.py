"""The verifier's configuration file (TOML): listening, TLS, the log key, storage, ingest settings,
and the labs the regulator has registered.

    config = load_config(Path("verifier.toml"))
    config.server.listen, config.ingest.max_clock_skew_ns, config.labs[0].policy_path

Every error raises :class:`~attest.errors.ConfigError` naming the file and the key. Relative paths
are resolved against the config file's directory. See docs/verifier.md for every key.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attest.checkpoint import parse_cosigner_key
from attest.errors import ConfigError, KeyFileError
from attest.ids import is_valid_lab_id
from attest.keys import parse_public_key
from verifier.access import AccessConfig, IdentityRule, Role, make_rule
from verifier.accounting.accounts import EnergyCheck

S = 1_000_000_000


@dataclass(frozen=True, slots=True)
class ServerConfig:
    listen: str = "127.0.0.1:7443"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    client_ca: Path | None = None
    require_client_cert: bool = False
    insecure_no_tls: bool = False
    reflection: bool = False
    max_message_bytes: int = 8 * 1024 * 1024
    max_envelope_bytes: int = 256 * 1024
    max_batch_envelopes: int = 1024
    workers: int = 16
    """Threads for blocking work (verification, storage, audits). Streams do not hold one: an
    open stream costs memory only, so this is sized to the machine, not to the fleet."""
    shutdown_grace_s: int = 10
    tls_max_frame_bytes: int = 4_096
    """The largest TLS record gRPC's TLS layer makes, and the buffer it keeps for each
    connection: 4 KiB holds a fleet's batch; gRPC's default, 16 KiB, cost 6 KiB more per agent."""
    reuse_port: bool = False
    """Let several verifier processes on one host listen on the same address (SO_REUSEPORT): the
    kernel spreads new connections between them. Only over a shared store (PostgreSQL); each
    process is a whole verifier with the same config and log key (docs/verifier.md, "Fleets")."""
    http2_bdp_probe: bool = False
    """gRPC's HTTP/2 bandwidth-delay probe: a ping for each message a connection receives, to
    grow flow-control windows for large transfers over long links. Off: a fleet's streams carry
    a small message a minute, and the probe was a third of gRPC's own CPU (ADR 0012)."""


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """What one client may hold (docs/verifier.md, "Limits"). Identity limits apply to clients
    with a mapped certificate; peer-address limits to every connection from one address."""

    max_streams_per_identity: int = 8
    max_streams_per_peer: int = 4_096
    max_inflight_per_identity: int = 4
    """Messages (batches, unary calls) of one identity being processed at once; more wait."""
    max_inflight_per_peer: int = 64
    max_inflight_bytes_per_identity: int = 16 * 1024 * 1024
    max_inflight_bytes_per_peer: int = 64 * 1024 * 1024
    stream_idle_timeout_s: int = 600
    """A SubmitAttestations stream that sends nothing for this long is closed (UNAVAILABLE)."""
    keepalive_time_s: int = 600
    keepalive_timeout_s: int = 20
    min_client_ping_interval_s: int = 20
    max_connection_idle_s: int = 900
    max_streams_per_connection: int = 1_024
    max_pending_calls: int = 16_384
    """Calls received and not yet handed to a handler that gRPC holds; beyond it, new calls are
    cancelled. A restarted verifier sees its whole fleet reconnect at once."""


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """Prometheus /metrics on its own address; empty: no metrics endpoint."""

    listen: str = ""


@dataclass(frozen=True, slots=True)
class WitnessConfig:
    """A witness the verifier asks to cosign each new checkpoint (c2sp.org/tlog-witness)."""

    url: str
    """The witness's submission prefix: POST <url>/add-checkpoint."""
    verifier_key: str
    """Its cosignature/v1 verifier key, ``<name>+<hash>+<base64(0x04 || key)>``."""


@dataclass(frozen=True, slots=True)
class LogConfig:
    origin: str = "pausewatch.example/verifier"
    signing_key: Path = Path("log.key")
    checkpoint_interval_s: int = 10
    witnesses: tuple[WitnessConfig, ...] = ()
    witness_timeout_ms: int = 5_000


@dataclass(frozen=True, slots=True)
class StoreConfig:
    engine: str = "sqlite"
    path: Path = Path("verifier.db")
    dsn: str = ""


@dataclass(frozen=True, slots=True)
class IngestConfig:
    max_clock_skew_ns: int = 300 * S
    max_age_ns: int = 30 * 86_400 * S
    nonce_lifetime_ns: int = 900 * S
    """A window whose nonce was issued longer than this before its end is late evidence."""
    late_after_ns: int = 120 * S
    """A window that reaches the verifier longer than this after its end is late evidence."""
    require_nonce: bool = True
    accept_backends: tuple[str, ...] = ("nvml",)
    bucket_ns: int = 60 * S
    gap_tolerance_ns: int = 5 * S
    open_gap_grace_ns: int = 150 * S
    energy_mismatch_factor_ppm: int = 1_250_000
    idle_power_fraction_ppm: int = 300_000
    verify_threads: int = 1
    commit_linger_ns: int = 0
    """How long the server holds a small batch for others to share its transaction (docs:
    "Fleets"); 0 commits as soon as the write path is free."""

    @property
    def energy_check(self) -> EnergyCheck:
        """The settings of the energy cross-check, as the accounts take them."""
        return EnergyCheck(
            factor_ppm=self.energy_mismatch_factor_ppm,
            idle_power_fraction_ppm=self.idle_power_fraction_ppm,
            gap_tolerance_ns=self.gap_tolerance_ns,
        )


@dataclass(frozen=True, slots=True)
class MonitorConfig:
    """The policy monitor (verifier/server/monitor.py): how often it looks, and how far back."""

    interval_ns: int = 60 * S
    """0: no monitor (breaches then show only in reports)."""
    late_ns: int = 3_600 * S
    """How late evidence may arrive and still be looked at: the monitor evaluates each lab's
    recent stretch, its longest rule window plus this."""


@dataclass(frozen=True, slots=True)
class TpmConfig:
    """TPM-rooted nodes (verifier/tpm.py): whose EK certificates to trust, how fresh quotes are."""

    manufacturer_cas: tuple[Path, ...] = ()
    """PEM files of the TPM manufacturers' CAs whose EK certificates are accepted; none: no TPM
    enrolment is possible."""
    quote_nonce_max_age_ns: int = 600 * S
    """A window's quote must bind a nonce issued at most this long before the window ended."""
    max_windows_without_quote: int = 1
    """A TPM node's window without a quote of its own, this many windows or more after its last
    good quote (or with none yet), is a missing quote (1: every window must carry one)."""


@dataclass(frozen=True, slots=True)
class LabConfig:
    lab_id: str
    name: str
    operator_public_key: bytes
    policy_path: Path | None = None
    inventory_declarations: tuple[Path, ...] = ()
    site_files: tuple[Path, ...] = ()
    """The lab's sites and their meters (docs/site-power.md), one TOML file a site."""
    policy_acceptance: Path | None = None
    """The lab operator's signed PolicyAcceptance of the policy (``pausewatch policy accept``)."""
    ima_allowlist: Path | None = None
    """sha256sum-format list of the files the lab's TPM nodes may measure (IMA); None: no check."""


@dataclass(frozen=True, slots=True)
class VerifierConfig:
    server: ServerConfig = field(default_factory=ServerConfig)
    log: LogConfig = field(default_factory=LogConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    tpm: TpmConfig = field(default_factory=TpmConfig)
    access: AccessConfig = field(default_factory=AccessConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    labs: tuple[LabConfig, ...] = ()
    source: str = "<config>"


_BACKENDS = ("nvml", "sim", "replay")
_SERVER = ServerConfig()
_LOG = LogConfig()
_STORE = StoreConfig()
_LIMITS = LimitsConfig()


class _Section:
    """Typed access to one table of the file, remembering which keys were read."""

    def __init__(self, data: Mapping[str, Any], where: str, source: str) -> None:
        self.data = data
        self.where = where
        self.source = source
        self.used: set[str] = set()

    def _err(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.source}: {self.where}{key}: {message}")

    def get(self, key: str, kind: type, default: Any) -> Any:
        self.used.add(key)
        if key not in self.data:
            return default
        value = self.data[key]
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise self._err(key, f"must be an integer, got {value!r}")
        if kind is not int and not isinstance(value, kind):
            raise self._err(key, f"must be a {kind.__name__}, got {value!r}")
        return value

    def positive(self, key: str, default: int) -> int:
        value: int = self.get(key, int, default)
        if value <= 0:
            raise self._err(key, f"must be positive, got {value}")
        return value

    def path(self, key: str, base: Path, default: Path | None) -> Path | None:
        value = self.get(key, str, None)
        if value is None:
            return default if default is None else base / default
        if not value:
            raise self._err(key, "must not be empty")
        return base / Path(value)

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise self._err(unknown[0], "is not a known key")


def load_config(path: Path) -> VerifierConfig:
    """Read and validate a verifier config file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    return parse_config(data, source=str(path), base=path.parent)


def parse_config(data: bytes, *, source: str = "<config>", base: Path = Path()) -> VerifierConfig:
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{source}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    top = _Section(doc, "", source)
    sections = {}
    for name in (
        "server",
        "log",
        "store",
        "ingest",
        "monitor",
        "tpm",
        "access",
        "limits",
        "metrics",
    ):
        table = top.get(name, dict, {})
        sections[name] = _Section(table, f"{name}.", source)
    labs_raw = top.get("labs", list, [])
    top.finish()

    s = sections["server"]
    server = ServerConfig(
        listen=s.get("listen", str, _SERVER.listen),
        tls_cert=s.path("tls_cert", base, None),
        tls_key=s.path("tls_key", base, None),
        client_ca=s.path("client_ca", base, None),
        require_client_cert=s.get("require_client_cert", bool, False),
        insecure_no_tls=s.get("insecure_no_tls", bool, False),
        reflection=s.get("reflection", bool, False),
        max_message_bytes=s.positive("max_message_bytes", _SERVER.max_message_bytes),
        max_envelope_bytes=s.positive("max_envelope_bytes", _SERVER.max_envelope_bytes),
        max_batch_envelopes=s.positive("max_batch_envelopes", _SERVER.max_batch_envelopes),
        workers=s.positive("workers", _SERVER.workers),
        shutdown_grace_s=s.positive("shutdown_grace_s", _SERVER.shutdown_grace_s),
        reuse_port=s.get("reuse_port", bool, _SERVER.reuse_port),
        http2_bdp_probe=s.get("http2_bdp_probe", bool, _SERVER.http2_bdp_probe),
        tls_max_frame_bytes=s.positive("tls_max_frame_bytes", _SERVER.tls_max_frame_bytes),
    )
    if not 1_024 <= server.tls_max_frame_bytes <= 16_384:
        raise ConfigError(
            f"{source}: server.tls_max_frame_bytes: must be 1024 to 16384 (what gRPC's TLS "
            f"accepts), got {server.tls_max_frame_bytes}"
        )
    if not server.insecure_no_tls and (server.tls_cert is None or server.tls_key is None):
        raise ConfigError(
            f"{source}: server.tls_cert and server.tls_key are required "
            "(or set server.insecure_no_tls = true for a local test setup)"
        )
    if server.require_client_cert and server.client_ca is None:
        raise ConfigError(f"{source}: server.require_client_cert needs server.client_ca")
    s.finish()

    lg = sections["log"]
    origin = lg.get("origin", str, _LOG.origin)
    if not origin or any(c.isspace() or c == "+" for c in origin):
        raise ConfigError(f"{source}: log.origin: must be non-empty with no spaces or '+'")
    signing_key = lg.path("signing_key", base, _LOG.signing_key)
    assert signing_key is not None
    log = LogConfig(
        origin=origin,
        signing_key=signing_key,
        checkpoint_interval_s=lg.positive("checkpoint_interval_s", _LOG.checkpoint_interval_s),
        witnesses=_witnesses(lg.get("witnesses", list, []), source),
        witness_timeout_ms=lg.positive("witness_timeout_ms", _LOG.witness_timeout_ms),
    )
    lg.finish()

    st = sections["store"]
    engine = st.get("engine", str, "sqlite")
    if engine not in ("sqlite", "postgres"):
        raise ConfigError(f"{source}: store.engine: must be 'sqlite' or 'postgres', got {engine!r}")
    store_path = st.path("path", base, _STORE.path)
    assert store_path is not None
    dsn = st.get("dsn", str, "")
    if engine == "postgres" and not dsn:
        raise ConfigError(f"{source}: store.dsn: required when store.engine is 'postgres'")
    store = StoreConfig(engine=engine, path=store_path, dsn=dsn)
    st.finish()
    if server.reuse_port and engine != "postgres":
        raise ConfigError(
            f"{source}: server.reuse_port: needs store.engine = 'postgres' (the processes that "
            "share the address must share one store; a SQLite store is one process's)"
        )

    ig = sections["ingest"]
    backends = ig.get("accept_backends", list, ["nvml"])
    for backend in backends:
        if backend not in _BACKENDS:
            raise ConfigError(
                f"{source}: ingest.accept_backends: {backend!r} is not one of {_BACKENDS}"
            )
    if not backends:
        raise ConfigError(f"{source}: ingest.accept_backends: must name at least one backend")
    ingest = IngestConfig(
        max_clock_skew_ns=ig.positive("max_clock_skew_s", 300) * S,
        max_age_ns=ig.positive("max_age_s", 30 * 86_400) * S,
        nonce_lifetime_ns=ig.positive("nonce_lifetime_s", 900) * S,
        late_after_ns=ig.positive("late_after_s", 120) * S,
        require_nonce=ig.get("require_nonce", bool, True),
        accept_backends=tuple(backends),
        bucket_ns=ig.positive("bucket_ms", 60_000) * 1_000_000,
        gap_tolerance_ns=ig.positive("gap_tolerance_ms", 5_000) * 1_000_000,
        open_gap_grace_ns=ig.positive("open_gap_grace_ms", 150_000) * 1_000_000,
        energy_mismatch_factor_ppm=ig.positive("energy_mismatch_factor_ppm", 1_250_000),
        idle_power_fraction_ppm=ig.positive("idle_power_fraction_ppm", 300_000),
        verify_threads=ig.positive("verify_threads", 1),
        commit_linger_ns=_non_negative(ig, "commit_linger_ms", 0) * 1_000_000,
    )
    if not 1_000_000 <= ingest.energy_mismatch_factor_ppm <= 100_000_000:
        raise ConfigError(
            f"{source}: ingest.energy_mismatch_factor_ppm: must be 1000000 to 100000000 "
            "(1x to 100x; below 1x honest GPUs would be flagged)"
        )
    if ingest.idle_power_fraction_ppm > 1_000_000:
        raise ConfigError(
            f"{source}: ingest.idle_power_fraction_ppm: must be at most 1000000 (the whole "
            "board power)"
        )
    ig.finish()

    mo = sections["monitor"]
    interval_s = mo.get("interval_s", int, 60)
    if interval_s < 0:
        raise ConfigError(f"{source}: monitor.interval_s: must be 0 (off) or positive")
    monitor = MonitorConfig(interval_ns=interval_s * S, late_ns=mo.positive("late_s", 3_600) * S)
    mo.finish()

    tp = sections["tpm"]
    cas = tp.get("manufacturer_cas", list, [])
    if any(not isinstance(c, str) or not c for c in cas):
        raise ConfigError(f"{source}: tpm.manufacturer_cas: must be a list of PEM file paths")
    tpm = TpmConfig(
        manufacturer_cas=tuple(base / Path(c) for c in cas),
        quote_nonce_max_age_ns=tp.positive("quote_nonce_max_age_s", 600) * S,
        max_windows_without_quote=tp.positive("max_windows_without_quote", 1),
    )
    tp.finish()
    access = _access(sections["access"], source)
    li = sections["limits"]
    limits = LimitsConfig(
        **{name: li.positive(name, getattr(_LIMITS, name)) for name in _LIMIT_KEYS}
    )
    if limits.max_inflight_bytes_per_identity < server.max_message_bytes:
        raise ConfigError(
            f"{source}: limits.max_inflight_bytes_per_identity: must be at least "
            "server.max_message_bytes"
        )
    li.finish()
    me = sections["metrics"]
    metrics = MetricsConfig(listen=me.get("listen", str, ""))
    me.finish()

    labs: list[LabConfig] = []
    seen: set[str] = set()
    for i, raw in enumerate(labs_raw):
        where = f"labs[{i}]."
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: labs[{i}]: must be a table")
        lab = _Section(raw, where, source)
        lab_id = lab.get("id", str, "")
        if not is_valid_lab_id(lab_id):
            raise ConfigError(f"{source}: {where}id: {lab_id!r} is not a valid lab id")
        if lab_id in seen:
            raise ConfigError(f"{source}: {where}id: lab {lab_id!r} appears twice")
        seen.add(lab_id)
        key_text = lab.get("operator_public_key", str, "")
        try:
            key = parse_public_key(_read_key_text(key_text, base))
        except (ValueError, OSError):
            raise ConfigError(
                f"{source}: {where}operator_public_key: not an Ed25519 public key "
                "(PEM file path, or 32 bytes in base64 or hex)"
            ) from None
        declarations = lab.get("inventory_declarations", list, [])
        site_files = lab.get("sites", list, [])
        labs.append(
            LabConfig(
                lab_id=lab_id,
                name=lab.get("name", str, lab_id),
                operator_public_key=key.public_bytes_raw(),
                policy_path=lab.path("policy", base, None),
                policy_acceptance=lab.path("policy_acceptance", base, None),
                inventory_declarations=tuple(base / Path(str(p)) for p in declarations),
                site_files=tuple(base / Path(str(p)) for p in site_files),
                ima_allowlist=lab.path("ima_allowlist", base, None),
            )
        )
        lab.finish()
    return VerifierConfig(
        server=server,
        log=log,
        store=store,
        ingest=ingest,
        monitor=monitor,
        tpm=tpm,
        access=access,
        limits=limits,
        metrics=metrics,
        labs=tuple(labs),
        source=source,
    )


_LIMIT_KEYS = tuple(LimitsConfig.__dataclass_fields__)

UNAUTHENTICATED_ROLES = (Role.PUBLIC, Role.AUDITOR, Role.REGULATOR)
"""The roles ``access.unauthenticated_role`` may give (any client that can connect gets it; the
server warns at start for any but public). Every other role, and any role added later, is refused:
a lab operator, node agent or meter gateway role would let anyone submit that party's evidence."""


def _access(ac: _Section, source: str) -> AccessConfig:
    role_text = ac.get("unauthenticated_role", str, Role.PUBLIC.value)
    allowed = {role.value: role for role in UNAUTHENTICATED_ROLES}
    unauthenticated = allowed.get(role_text)
    if unauthenticated is None:
        names = [role.value for role in UNAUTHENTICATED_ROLES]
        raise ac._err(
            "unauthenticated_role",
            f"{role_text!r} is not one of the roles a client without a certificate may have: "
            f"must be {', '.join(names[:-1])} or {names[-1]}",
        )
    rules: list[IdentityRule] = []
    for i, raw in enumerate(ac.get("identities", list, [])):
        where = f"access.identities[{i}]."
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: access.identities[{i}]: must be a table")
        entry = _Section(raw, where, source)
        rules.append(
            make_rule(
                role=entry.get("role", str, ""),
                uri=entry.get("uri", str, ""),
                uri_prefix=entry.get("uri_prefix", str, ""),
                fingerprint_sha256=entry.get("fingerprint_sha256", str, ""),
                lab_id=entry.get("lab", str, ""),
                node_id=entry.get("node_id", str, ""),
                where=f"{source}: {where}",
            )
        )
        entry.finish()
    ac.finish()
    return AccessConfig(unauthenticated_role=unauthenticated, identities=tuple(rules))


def _witnesses(raw: list[Any], source: str) -> tuple[WitnessConfig, ...]:
    witnesses: list[WitnessConfig] = []
    names: set[str] = set()
    for i, item in enumerate(raw):
        where = f"log.witnesses[{i}]."
        if not isinstance(item, dict):
            raise ConfigError(f"{source}: log.witnesses[{i}]: must be a table")
        section = _Section(item, where, source)
        url = section.get("url", str, "")
        if not url.startswith(("http://", "https://")) or url.endswith("://"):
            raise ConfigError(f"{source}: {where}url: must be an http:// or https:// URL")
        key = section.get("key", str, "")
        try:
            name = parse_cosigner_key(key).name
        except KeyFileError as exc:
            raise ConfigError(f"{source}: {where}key: {exc.diagnostics()}") from None
        if name in names:
            raise ConfigError(f"{source}: {where}key: witness {name!r} appears twice")
        names.add(name)
        section.finish()
        witnesses.append(WitnessConfig(url=url.rstrip("/"), verifier_key=key))
    return tuple(witnesses)


def _non_negative(section: _Section, key: str, default: int) -> int:
    value: int = section.get(key, int, default)
    if value < 0:
        raise section._err(key, f"must be 0 or positive, got {value}")
    return value


def _read_key_text(text: str, base: Path) -> str:
    """A key given inline (PEM, base64 or hex), or the content of the file it names."""
    try:
        parse_public_key(text)
    except ValueError:
        candidate = base / text
        if text and candidate.is_file():
            return candidate.read_text(encoding="ascii")
    return text
