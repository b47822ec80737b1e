"""The agent's configuration file (TOML): read, validated, with errors that name the key.

    config = load_config(Path("/var/lib/pausewatch-agent/config.toml"))
    config.sampling.window_ns, config.verifier.address, config.spool.max_unacked_envelopes

Unknown keys are errors (a typo in a security setting must not silently fall back to a default).
Relative paths are relative to the directory of the config file. ``docs/agent.example.toml``
documents every key. :meth:`AgentConfig.canonical_json` is the effective configuration that goes
into the agent digest (docs/wire-format.md section 3): integers, strings and booleans only.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from agent.clock import NS_PER_MS, NS_PER_S
from agent.sampler.base import Backend
from attest.attestation import MAX_SAMPLE_INTERVAL_MS, MIN_SAMPLE_INTERVAL_MS
from attest.errors import ConfigError
from attest.ids import is_valid_lab_id

MIN_WINDOW_MS = 100
MAX_WINDOW_MS = 300_000
"""Windows up to 5 min: a partial first window can reach twice that, the verifier's 10 min limit."""
DEFAULT_STATE_DIR = Path("/var/lib/pausewatch-agent")
CONFIG_FILE_NAME = "config.toml"
DEFAULT_IMA_LOG = Path("/sys/kernel/security/ima/ascii_runtime_measurements")

_MISSING: Any = object()


class TomlTable:
    """One table of a TOML document, read with type and range checks.

    Every error names the dotted key and the file. Call :meth:`finish` after reading to reject
    keys nobody asked for.
    """

    def __init__(self, data: Mapping[str, Any], prefix: str, source: str) -> None:
        self._data = data
        self._prefix = prefix
        self._source = source
        self._seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self._prefix}{name}"

    def error(self, name: str, problem: str) -> ConfigError:
        return ConfigError(f"{self._source}: {self.key(name)}: {problem}")

    def has(self, name: str) -> bool:
        return name in self._data

    def _get(self, name: str, default: Any) -> Any:
        self._seen.add(name)
        if name in self._data:
            return self._data[name]
        if default is _MISSING:
            raise self.error(name, "is required")
        return default

    def string(self, name: str, default: Any = _MISSING, *, max_len: int = 256) -> Any:
        value = self._get(name, default)
        if value is default and default is not _MISSING:
            return value
        if not isinstance(value, str):
            raise self.error(name, f"must be a string, not {type(value).__name__}")
        if len(value) > max_len:
            raise self.error(name, f"is longer than {max_len} characters")
        return value

    def integer(
        self,
        name: str,
        default: Any = _MISSING,
        *,
        minimum: int | None = None,
        maximum: int | None = None,
    ) -> Any:
        value = self._get(name, default)
        if value is default and default is not _MISSING:
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(name, f"must be an integer, not {type(value).__name__}")
        return self._range(name, value, minimum, maximum)

    def decimal(
        self,
        name: str,
        default: Any = _MISSING,
        *,
        minimum: Decimal | int | None = None,
        maximum: Decimal | int | None = None,
    ) -> Any:
        """A number (integer or float in the file) as an exact Decimal of its written value."""
        value = self._get(name, default)
        if value is default and default is not _MISSING:
            return value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(name, f"must be a number, not {type(value).__name__}")
        try:
            number = Decimal(str(value))
        except InvalidOperation:
            raise self.error(name, "is not a finite number") from None
        if not number.is_finite():
            raise self.error(name, "is not a finite number")
        return self._range(name, number, minimum, maximum)

    def boolean(self, name: str, default: Any = _MISSING) -> Any:
        value = self._get(name, default)
        if not isinstance(value, bool):
            raise self.error(name, f"must be true or false, not {type(value).__name__}")
        return value

    def path(self, name: str, base: Path, default: Any = _MISSING) -> Any:
        value = self.string(name, default, max_len=4096)
        if value is default and default is not _MISSING:
            return value
        if not value:
            raise self.error(name, "is empty")
        path = Path(value).expanduser()
        return path if path.is_absolute() else base / path

    def strings(self, name: str, default: Any = _MISSING) -> Any:
        value = self._get(name, default)
        if value is default and default is not _MISSING:
            return value
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(name, "must be a list of strings")
        return tuple(value)

    def table(self, name: str) -> TomlTable:
        value = self._get(name, {})
        if not isinstance(value, dict):
            raise self.error(name, "must be a table")
        return TomlTable(value, f"{self.key(name)}.", self._source)

    def tables(self, name: str) -> list[TomlTable]:
        value = self._get(name, [])
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self.error(name, "must be an array of tables ([[...]])")
        return [
            TomlTable(item, f"{self.key(name)}[{i}].", self._source) for i, item in enumerate(value)
        ]

    def choice(self, name: str, options: tuple[str, ...], default: Any = _MISSING) -> Any:
        value = self.string(name, default)
        if value not in options:
            raise self.error(name, f"must be one of {', '.join(options)}; got {value!r}")
        return value

    def _range(self, name: str, value: Any, minimum: Any, maximum: Any) -> Any:
        if minimum is not None and value < minimum:
            raise self.error(name, f"must be at least {minimum}; got {value}")
        if maximum is not None and value > maximum:
            raise self.error(name, f"must be at most {maximum}; got {value}")
        return value

    def finish(self) -> None:
        unknown = sorted(set(self._data) - self._seen)
        if unknown:
            raise self.error(unknown[0], "is not a known setting")


def read_toml(path: Path, what: str) -> dict[str, Any]:
    """Parse a TOML file, turning every failure into a ConfigError that names the file."""
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


@dataclass(frozen=True, slots=True)
class NodeConfig:
    lab_id: str
    name: str
    state_dir: Path
    key_file: Path


@dataclass(frozen=True, slots=True)
class SamplingConfig:
    backend: Backend
    sample_interval_ms: int
    window_ns: int


@dataclass(frozen=True, slots=True)
class VerifierConfig:
    address: str
    ca_cert: Path | None
    client_cert: Path | None
    client_key: Path | None
    server_name_override: str
    insecure_no_tls: bool
    rpc_timeout_ms: int
    nonce_refresh_ms: int
    batch_max_envelopes: int
    batch_max_bytes: int
    backoff_initial_ms: int
    backoff_max_ms: int


@dataclass(frozen=True, slots=True)
class SpoolConfig:
    max_unacked_envelopes: int
    max_unacked_bytes: int
    samples_retention_days: int
    acked_retention_days: int


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    port: int
    """0: no metrics endpoint."""
    address: str


@dataclass(frozen=True, slots=True)
class SimConfig:
    scenario: Path | None


@dataclass(frozen=True, slots=True)
class ReplayConfig:
    file: Path | None
    realtime: bool
    columns: tuple[str, ...]
    gpus: int | None = None
    """GPUs per poll of a recording without index or uuid column (None: read from the rows)."""
    gpu_model: str = ""
    """The GPU model of a recording without a name column."""


@dataclass(frozen=True, slots=True)
class NvmlConfig:
    init_retry_initial_ms: int
    init_retry_max_ms: int


@dataclass(frozen=True, slots=True)
class TpmConfig:
    """The node's TPM (agent/tpm.py); an empty ``tcti`` means none: software-rooted evidence."""

    tcti: str = ""
    """tpm2-tools TCTI, for example "device:/dev/tpmrm0"; empty: no TPM."""
    quote_every_windows: int = 1
    """Quote every Nth window (by seq); the verifier's max_windows_without_quote must allow N."""
    ima_log: Path = DEFAULT_IMA_LOG
    """The IMA measurement list (ascii_runtime_measurements format)."""


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: str
    format: str


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """The whole, validated configuration."""

    source: Path
    node: NodeConfig
    sampling: SamplingConfig
    verifier: VerifierConfig
    spool: SpoolConfig
    metrics: MetricsConfig
    nvml: NvmlConfig
    sim: SimConfig
    replay: ReplayConfig
    logging: LoggingConfig
    tpm: TpmConfig = TpmConfig()

    def effective(self) -> dict[str, Any]:
        """The configuration as plain JSON values (no floats), for the agent digest and status."""

        def plain(value: object) -> object:
            if isinstance(value, Path):
                return str(value)
            if isinstance(value, tuple):
                return [plain(v) for v in value]
            return value

        sections: dict[str, Any] = {
            "node": self.node,
            "sampling": self.sampling,
            "verifier": self.verifier,
            "spool": self.spool,
            "metrics": self.metrics,
            "nvml": self.nvml,
            "sim": self.sim,
            "replay": self.replay,
            "logging": self.logging,
            "tpm": self.tpm,
        }
        return {
            name: {f.name: plain(getattr(section, f.name)) for f in fields(section)}
            for name, section in sections.items()
        }

    def canonical_json(self) -> bytes:
        """UTF-8 JSON with sorted keys and no insignificant whitespace."""
        return json.dumps(
            self.effective(), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode("utf-8")


def _optional_path(table: TomlTable, name: str, base: Path) -> Path | None:
    value: Path | None = table.path(name, base, None)
    return value


def parse_config(data: Mapping[str, Any], source: Path) -> AgentConfig:
    """Validate a parsed TOML document; raises ConfigError naming the first bad key."""
    base = source.parent
    root = TomlTable(data, "", str(source))

    node_t = root.table("node")
    lab_id = node_t.string("lab_id", max_len=64)
    if not is_valid_lab_id(lab_id):
        raise node_t.error("lab_id", "must be lowercase letters, digits, '-', '_', '.' (1-64)")
    state_dir = node_t.path("state_dir", base, base)
    node = NodeConfig(
        lab_id=lab_id,
        name=node_t.string("name", "", max_len=128),
        state_dir=state_dir,
        key_file=node_t.path("key_file", state_dir, state_dir / "node.key"),
    )
    node_t.finish()

    sampling_t = root.table("sampling")
    backend = sampling_t.choice("backend", tuple(b.value for b in Backend), "nvml")
    interval_ms = sampling_t.integer(
        "sample_interval_ms", 1000, minimum=MIN_SAMPLE_INTERVAL_MS, maximum=MAX_SAMPLE_INTERVAL_MS
    )
    window_s = sampling_t.decimal(
        "window_s",
        Decimal(60),
        minimum=Decimal(MIN_WINDOW_MS) / 1000,
        maximum=Decimal(MAX_WINDOW_MS) / 1000,
    )
    window_ms = window_s * 1000
    if window_ms != window_ms.to_integral_value():
        raise sampling_t.error("window_s", "must be a whole number of milliseconds")
    if int(window_ms) % interval_ms:
        raise sampling_t.error(
            "window_s", f"must be a multiple of sample_interval_ms ({interval_ms} ms)"
        )
    sampling = SamplingConfig(
        backend=Backend(backend),
        sample_interval_ms=interval_ms,
        window_ns=int(window_ms) * NS_PER_MS,
    )
    sampling_t.finish()

    verifier_t = root.table("verifier")
    address = verifier_t.string("address", max_len=512)
    if ":" not in address or address.rsplit(":", 1)[1] == "":
        raise verifier_t.error("address", "must be HOST:PORT")
    insecure = verifier_t.boolean("insecure_no_tls", False)
    ca_cert = _optional_path(verifier_t, "ca_cert", base)
    client_cert = _optional_path(verifier_t, "client_cert", base)
    client_key = _optional_path(verifier_t, "client_key", base)
    if (client_cert is None) != (client_key is None):
        raise verifier_t.error(
            "client_key" if client_key is None else "client_cert",
            "client_cert and client_key go together (mutual TLS)",
        )
    if insecure and (ca_cert or client_cert):
        raise verifier_t.error("insecure_no_tls", "cannot be combined with TLS certificates")
    backoff_initial_ms = verifier_t.integer("backoff_initial_ms", 500, minimum=1)
    verifier = VerifierConfig(
        address=address,
        ca_cert=ca_cert,
        client_cert=client_cert,
        client_key=client_key,
        server_name_override=verifier_t.string("server_name_override", ""),
        insecure_no_tls=insecure,
        rpc_timeout_ms=int(
            verifier_t.decimal("rpc_timeout_s", Decimal(10), minimum=Decimal("0.1"), maximum=3600)
            * 1000
        ),
        nonce_refresh_ms=int(
            verifier_t.decimal("nonce_refresh_s", Decimal(300), minimum=1, maximum=86_400) * 1000
        ),
        batch_max_envelopes=verifier_t.integer("batch_max_envelopes", 32, minimum=1, maximum=1000),
        batch_max_bytes=verifier_t.integer(
            "batch_max_bytes", 1 << 20, minimum=1 << 10, maximum=3 << 20
        ),
        backoff_initial_ms=backoff_initial_ms,
        backoff_max_ms=verifier_t.integer("backoff_max_ms", 60_000, minimum=backoff_initial_ms),
    )
    verifier_t.finish()

    spool_t = root.table("spool")
    spool = SpoolConfig(
        max_unacked_envelopes=spool_t.integer("max_unacked_envelopes", 100_000, minimum=1),
        max_unacked_bytes=spool_t.integer("max_unacked_bytes", 1 << 30, minimum=1 << 10),
        samples_retention_days=spool_t.integer("samples_retention_days", 14, minimum=0),
        acked_retention_days=spool_t.integer("acked_retention_days", 90, minimum=0),
    )
    spool_t.finish()

    metrics_t = root.table("metrics")
    metrics = MetricsConfig(
        port=metrics_t.integer("port", 0, minimum=0, maximum=65535),
        address=metrics_t.string("address", "127.0.0.1"),
    )
    metrics_t.finish()

    nvml_t = root.table("nvml")
    retry_initial = nvml_t.integer("init_retry_initial_ms", 1000, minimum=1)
    nvml = NvmlConfig(
        init_retry_initial_ms=retry_initial,
        init_retry_max_ms=nvml_t.integer("init_retry_max_ms", 60_000, minimum=retry_initial),
    )
    nvml_t.finish()

    sim_t = root.table("sim")
    sim = SimConfig(scenario=_optional_path(sim_t, "scenario", base))
    sim_t.finish()

    replay_t = root.table("replay")
    replay = ReplayConfig(
        file=_optional_path(replay_t, "file", base),
        realtime=replay_t.boolean("realtime", False),
        columns=replay_t.strings("columns", ()),
        gpus=replay_t.integer("gpus", None, minimum=1, maximum=4096),
        gpu_model=replay_t.string("gpu_model", "", max_len=96),
    )
    replay_t.finish()

    logging_t = root.table("logging")
    logging_c = LoggingConfig(
        level=logging_t.choice("level", ("debug", "info", "warning", "error"), "info"),
        format=logging_t.choice("format", ("kv", "json"), "kv"),
    )
    logging_t.finish()

    tpm_t = root.table("tpm")
    tpm = TpmConfig(
        tcti=tpm_t.string("tcti", "", max_len=256),
        quote_every_windows=tpm_t.integer("quote_every_windows", 1, minimum=1, maximum=1440),
        ima_log=tpm_t.path("ima_log", base, DEFAULT_IMA_LOG),
    )
    tpm_t.finish()
    root.finish()
    return AgentConfig(
        source=source,
        node=node,
        sampling=sampling,
        verifier=verifier,
        spool=spool,
        metrics=metrics,
        nvml=nvml,
        sim=sim,
        replay=replay,
        logging=logging_c,
        tpm=tpm,
    )


def load_config(path: Path) -> AgentConfig:
    """Read and validate the agent's config file."""
    path = path.resolve()
    return parse_config(read_toml(path, "config file"), path)


def render_config(
    *,
    lab_id: str,
    node_name: str,
    state_dir: Path,
    verifier_address: str,
    ca_cert: Path | None,
    insecure_no_tls: bool,
    backend: Backend,
    sim_scenario: str | None = None,
) -> str:
    """The config file ``pausewatch-agent init`` writes (every other key keeps its default)."""
    lines = [
        "# pausewatch-agent configuration. docs/agent.example.toml documents every key.",
        "",
        "[node]",
        f"lab_id = {_toml_str(lab_id)}",
        f"name = {_toml_str(node_name)}",
        f"state_dir = {_toml_str(str(state_dir))}",
        'key_file = "node.key"',
        "",
        "[sampling]",
        f"backend = {_toml_str(backend.value)}",
        "sample_interval_ms = 1000",
        "window_s = 60",
        "",
        "[verifier]",
        f"address = {_toml_str(verifier_address)}",
    ]
    if ca_cert is not None:
        lines.append(f"ca_cert = {_toml_str(str(ca_cert))}")
    if insecure_no_tls:
        lines.append("# Plaintext gRPC: only for tests on loopback. Never in production.")
        lines.append("insecure_no_tls = true")
    lines += ["", "[spool]", "max_unacked_envelopes = 100000", ""]
    if sim_scenario is not None:
        lines += [
            "[sim]",
            "# The example scenario shipped with the agent, copied here to edit.",
            f"scenario = {_toml_str(sim_scenario)}",
            "",
        ]
    return "\n".join(lines)


def _toml_str(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def window_ms(config: AgentConfig) -> int:
    """The window length in ms."""
    return config.sampling.window_ns // NS_PER_MS


def ns_from_s(seconds: Decimal) -> int:
    """Seconds (exact decimal) to whole nanoseconds."""
    return int(seconds * NS_PER_S)
