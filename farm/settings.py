"""The farm's one settings object, read from ``FARM_*`` environment variables.

Every process (CLI, workers, emulators, tests) builds its settings with
:func:`Settings.from_env`; nothing else in the farm reads ``os.environ``.
"""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from farm.errors import ConfigError
from farm.keys import Keys

REPO_ROOT = Path(__file__).resolve().parent.parent

NODE_KINDS = ("comfyui", "wan2gp", "comfyv2")
#: FARM_BURST's values (farm.scheduler.Burst)
BURST_POLICIES = ("never", "overflow", "always")


@dataclass(frozen=True)
class NodeConfig:
    """A GPU node as configured: a name, a backend kind and a base URL."""

    name: str
    kind: str
    url: str


def parse_nodes(text: str) -> tuple[NodeConfig, ...]:
    """Parse ``FARM_NODES``: ``name=URL`` pairs or bare URLs, separated by commas.

    The URL may carry the backend kind as a scheme prefix (``comfyui+http://...``,
    ``wan2gp+http://...``, ``comfyv2+https://...`` for a Comfy API v2 service: Comfy Cloud
    or comfy-api-proxy); plain ``http(s)://`` means ComfyUI. A bare URL's node is
    named after its host and port (``http://10.0.0.5:8188`` → ``10-0-0-5-8188``).
    """
    nodes: list[NodeConfig] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, url = item.partition("=")
        if "://" in name:  # a bare URL (its query may hold an '=')
            name, sep, url = "", "=", item
        name, url = name.strip(), url.strip()
        if not sep or not url:
            raise ConfigError(
                f"FARM_NODES: {item!r} is not 'name=URL' or a URL (e.g. gpu0=http://10.0.0.5:8188)"
            )
        name = name or node_name_for(url)
        kind = "comfyui"
        scheme, plus, rest = url.partition("+")
        if plus and scheme in NODE_KINDS:
            kind, url = scheme, rest
        if kind == "wan2gp" and url.startswith("file://"):
            pass  # a WanGP checkout run in CLI batch mode on this machine
        elif not url.startswith(("http://", "https://")):
            raise ConfigError(
                f"FARM_NODES: node {name!r} URL {url!r} must start with http:// or https://"
                " (or, for a WanGP node in CLI mode, wan2gp+file:///path/to/Wan2GP)"
            )
        if kind == "comfyv2":
            check_v2_url(name, url)
        if any(n.name == name for n in nodes):
            raise ConfigError(f"FARM_NODES: node {name!r} is listed twice")
        nodes.append(NodeConfig(name=name, kind=kind, url=url.rstrip("/")))
    return tuple(nodes)


def check_v2_url(name: str, url: str) -> None:
    """A Comfy API v2 node's URL names a host and carries no key (that goes in
    FARM_CLOUD_TOKEN or FARM_CLOUD_TOKEN_FILE, never in FARM_NODES)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise ConfigError(f"FARM_NODES: node {name!r}: {exc}") from None
    if "@" in parts.netloc:
        raise ConfigError(
            f"FARM_NODES: node {name!r}: put the Comfy API key in FARM_CLOUD_TOKEN or "
            "FARM_CLOUD_TOKEN_FILE, not in the URL"
        )
    if not parts.hostname or parts.query or parts.fragment:
        raise ConfigError(
            f"FARM_NODES: node {name!r}: a Comfy API v2 node is comfyv2+https://HOST[:PORT] "
            "(Comfy Cloud) or comfyv2+http://HOST:PORT (comfy-api-proxy)"
        )


def node_name_for(url: str) -> str:
    """A node name made from a URL's host and port."""
    netloc = url.split("://", 1)[-1].split("/", 1)[0].rsplit("@", 1)[-1]
    return re.sub(r"[^A-Za-z0-9_-]+", "-", netloc).strip("-") or "node"


REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "sentinel://", "sentinels://")
SENTINEL_PORT = 26379
SENTINEL_FORM = "sentinel://[user:password@]host:26379,host:26379,.../db"


@dataclass(frozen=True)
class SentinelURL:
    """A ``sentinel://`` URL taken apart: where the sentinels listen, the credentials and
    database of the Redis servers they watch, and whether all of them speak TLS
    (``sentinels://``)."""

    sentinels: tuple[tuple[str, int], ...]
    username: str | None
    password: str | None
    db: int
    tls: bool


def parse_sentinel_url(url: str) -> SentinelURL:
    """Parse ``sentinel://[user:password@]host[:port][,host[:port]...][/db]``
    (``sentinels://``: the same over TLS). A port defaults to 26379, the database to 0;
    the user and password (percent-encoded) are those of the Redis servers."""
    scheme, _, rest = url.partition("://")
    if scheme not in ("sentinel", "sentinels"):
        raise ConfigError(f"FARM_REDIS_URL: {scheme}:// is not a sentinel URL ({SENTINEL_FORM})")
    if "?" in rest or "#" in rest or ";" in rest:
        raise ConfigError(
            f"FARM_REDIS_URL: a sentinel URL takes no options and lists its sentinels "
            f"separated by commas: {SENTINEL_FORM} (the master's name goes in "
            "FARM_REDIS_SENTINEL_MASTER)"
        )
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username, password = unquote(user) or None, unquote(secret) if colon else None
    sentinels = tuple(_sentinel_address(item.strip()) for item in hosts.split(","))
    db = path.strip("/") or "0"
    if not db.isdigit():
        raise ConfigError(f"FARM_REDIS_URL: database {db!r} is not a number ({SENTINEL_FORM})")
    return SentinelURL(sentinels, username, password, int(db), scheme == "sentinels")


def _sentinel_address(item: str) -> tuple[str, int]:
    if item.startswith("["):  # [IPv6]:port
        host, _, port = item[1:].partition("]")
        port = port.removeprefix(":")
    else:
        host, _, port = item.partition(":")
    if not host or not (port or str(SENTINEL_PORT)).isdigit():
        raise ConfigError(f"FARM_REDIS_URL: sentinel {item!r} is not host[:port] ({SENTINEL_FORM})")
    return host, int(port or SENTINEL_PORT)


def _env(name: str, help: str, default: str) -> dict:
    return {"metadata": {"env": name, "help": help}, "default": default}


@dataclass(frozen=True)
class Settings:
    """All tunables of the farm; each field documents its environment variable."""

    redis_url: str = field(
        **_env(
            "FARM_REDIS_URL",
            "Redis URL: broker, results and farm state",
            "redis://127.0.0.1:6379/0",
        )
    )
    redis_ca: str = field(
        **_env(
            "FARM_REDIS_CA",
            "CA certificate file (PEM) that signed the Redis servers' certificates, for "
            "rediss:// and sentinels:// URLs; empty: the system's trusted CAs (the server's "
            "certificate and host name are always verified)",
            "",
        )
    )
    redis_cert: str = field(
        **_env(
            "FARM_REDIS_CERT",
            "Client certificate file (PEM) for a TLS Redis that asks for one "
            "(tls-auth-clients yes); needs FARM_REDIS_KEY",
            "",
        )
    )
    redis_key: str = field(
        **_env("FARM_REDIS_KEY", "Private key file (PEM) of FARM_REDIS_CERT", "")
    )
    redis_sentinel_master: str = field(
        **_env(
            "FARM_REDIS_SENTINEL_MASTER",
            "With a sentinel:// URL: the name the sentinels monitor the farm's Redis under "
            "(`sentinel monitor NAME ...`)",
            "",
        )
    )
    redis_sentinel_password: str = field(
        **_env(
            "FARM_REDIS_SENTINEL_PASSWORD",
            "With a sentinel:// URL: the sentinels' own password (their requirepass), if "
            "they have one; the Redis servers' password goes in the URL",
            "",
        )
    )
    storage: Path = field(
        **_env(
            "FARM_STORAGE",
            "Folder where clips, scene videos and reports are written",
            str(REPO_ROOT / "var" / "storage"),
        )
    )
    workflows_dir: Path = field(
        **_env(
            "FARM_WORKFLOWS",
            "Folder of ComfyUI workflow files (API or editor format)",
            str(REPO_ROOT / "workflows"),
        )
    )
    catalog: str = field(
        **_env(
            "FARM_CATALOG",
            "A studio catalogue (TOML or JSON) of templates, workflows and models merged over "
            "the built-in one (docs/catalog.md); empty: the built-in catalogue alone",
            "",
        )
    )
    nodes: tuple[NodeConfig, ...] = field(
        **_env(
            "FARM_NODES",
            "GPU nodes: 'name=URL' or bare URLs, comma-separated (URL may start with comfyui+ or wan2gp+)",
            "",
        )
    )
    key_prefix: str = field(**_env("FARM_PREFIX", "Prefix of every farm key in Redis", "farm"))
    cpu_queue: str = field(
        **_env("FARM_CPU_QUEUE", "Queue of the CPU tasks (assembly, scoring)", "cpu")
    )
    http_timeout: float = field(
        **_env("FARM_HTTP_TIMEOUT", "Seconds allowed for one HTTP call to a node", "30")
    )
    node_idle_timeout: float = field(
        **_env(
            "FARM_NODE_IDLE_TIMEOUT",
            "Seconds a running job may go without any event before it times out",
            "300",
        )
    )
    render_time_limit: int = field(
        **_env("FARM_RENDER_TIME_LIMIT", "Hard time limit of one render task, seconds", "3600")
    )
    visibility_timeout: int = field(
        **_env(
            "FARM_VISIBILITY_TIMEOUT",
            "Redis broker visibility timeout, seconds (must exceed the render time limit)",
            "7200",
        )
    )
    heartbeat: float = field(**_env("FARM_HEARTBEAT", "Seconds between node heartbeats", "5"))
    discovery_interval: float = field(
        **_env(
            "FARM_DISCOVERY_INTERVAL",
            "Seconds between re-discoveries of a node's models and workflows",
            "300",
        )
    )
    node_ttl: float = field(
        **_env(
            "FARM_NODE_TTL", "Seconds without a heartbeat after which a node counts as down", "20"
        )
    )
    max_attempts: int = field(
        **_env("FARM_MAX_ATTEMPTS", "Render attempts per shot, fallbacks included", "3")
    )
    lease_ttl: float = field(
        **_env(
            "FARM_LEASE_TTL",
            "Seconds a shot attempt's lease lives unless its renderer renews it (a dead "
            "renderer's shot is taken over after this)",
            "15",
        )
    )
    clip_wait: float = field(
        **_env(
            "FARM_CLIP_WAIT",
            "Seconds a CPU worker waits for a shot's clip to show up in FARM_STORAGE before it "
            "counts as missing (a shared mount that shows new files late, e.g. NFS caching)",
            "30",
        )
    )
    wait_timeout: float = field(
        **_env(
            "FARM_WAIT_TIMEOUT",
            "Seconds a waiting shot may have no live capable node before it fails",
            "900",
        )
    )
    start_timeout: float = field(
        **_env(
            "FARM_START_TIMEOUT",
            "Seconds a published task (a bound render, a scoring or assembly task) may go "
            "unstarted while its queue is empty before the timeout checker takes its message "
            "as lost and publishes it again",
            "30",
        )
    )
    retention: float = field(
        **_env(
            "FARM_RETENTION",
            "Seconds a finished scene's records, shots and events stay in Redis after it "
            "ended (its files in FARM_STORAGE stay)",
            str(30 * 24 * 3600),
        )
    )
    blocklist_after: int = field(
        **_env(
            "FARM_BLOCKLIST_AFTER",
            "Failed shots of one scene after which a node is blocklisted for that scene",
            "3",
        )
    )
    placement: str = field(
        **_env(
            "FARM_PLACEMENT",
            "Placement policy: 'late' (model-aware late binding) or 'naive' (round-robin at "
            "enqueue, first in first out; a baseline for benchmarks)",
            "late",
        )
    )
    burst: str = field(
        **_env(
            "FARM_BURST",
            "Which shots cloud (comfyv2) nodes take: 'never'; 'overflow' (only a shot no local "
            "node would start within FARM_BURST_AFTER seconds); 'always' (as any capable node)",
            "never",
        )
    )
    burst_after: float = field(
        **_env(
            "FARM_BURST_AFTER",
            "With FARM_BURST=overflow: seconds a shot may wait for a local node before it goes "
            "to a cloud node",
            "600",
        )
    )
    burst_budget_day: float = field(
        **_env(
            "FARM_BURST_BUDGET_DAY",
            "Most the cloud nodes may cost per day (UTC), in the currency of their price per "
            "GPU-second; 0 or empty: no cap",
            "0",
        )
    )
    burst_budget_scene: float = field(
        **_env(
            "FARM_BURST_BUDGET_SCENE",
            "Most the cloud nodes may cost per scene, in the same currency; 0 or empty: no cap",
            "0",
        )
    )
    cache: int = field(
        **_env(
            "FARM_CACHE",
            "1: serve a shot whose request was rendered before from the render cache; 0: off",
            "1",
        )
    )
    gate_file: Path = field(
        **_env(
            "FARM_GATE_FILE",
            "Quality gate thresholds per template (JSON; see docs/quality.md)",
            str(REPO_ROOT / "farm" / "data" / "gate.json"),
        )
    )
    gate_takes: int = field(
        **_env(
            "FARM_GATE_TAKES",
            "Most takes the quality gate renders of a shot (1: score only, never re-render)",
            "3",
        )
    )
    max_download_mb: int = field(
        **_env("FARM_MAX_DOWNLOAD_MB", "Largest output file accepted from a node, MiB", "4096")
    )
    result_expires: int = field(
        **_env(
            "FARM_RESULT_EXPIRES",
            "Seconds task results and chord state are kept",
            str(7 * 24 * 3600),
        )
    )
    submission_max_bytes: int = field(
        **_env(
            "FARM_SUBMISSION_MAX_BYTES",
            "Largest submission body accepted by `farm ingest`, bytes (attachments included)",
            str(32 * 1024 * 1024),
        )
    )
    submission_max_file_bytes: int = field(
        **_env(
            "FARM_SUBMISSION_MAX_FILE_BYTES",
            "Largest attachment (decoded) in a submission, bytes",
            str(16 * 1024 * 1024),
        )
    )
    submission_ttl: int = field(
        **_env(
            "FARM_SUBMISSION_TTL",
            "Seconds a submission's status is kept after its last change",
            str(30 * 24 * 3600),
        )
    )
    submissions_maxlen: int = field(
        **_env(
            "FARM_SUBMISSIONS_MAXLEN",
            "Entries the submissions stream holds at most when nothing reads it: `farm submit` "
            "and `farm demo` add with XADD MAXLEN ~ this, deleting the oldest, read or not "
            "(a backstop; `farm ingest` deletes what it has acknowledged)",
            "10000",
        )
    )
    ingest_claim_idle: float = field(
        **_env(
            "FARM_INGEST_CLAIM_IDLE",
            "Seconds a submission may sit unacknowledged with a dead ingest before another "
            "ingest claims it",
            "60",
        )
    )
    ingest_max_deliveries: int = field(
        **_env(
            "FARM_INGEST_MAX_DELIVERIES",
            "Deliveries after which a submission that keeps failing ingest is rejected as poison",
            "5",
        )
    )

    flower_auth: str = field(
        **_env(
            "FARM_FLOWER_AUTH",
            "Flower's logins, 'user:password' pairs separated by commas; `farm flower` "
            "refuses to start without one unless given --no-auth",
            "",
        )
    )
    flower_db: Path = field(
        **_env(
            "FARM_FLOWER_DB",
            "File where Flower keeps its task history across restarts",
            str(REPO_ROOT / "var" / "flower" / "flower.db"),
        )
    )

    web_auth: str = field(
        **_env(
            "FARM_WEB_AUTH",
            "`farm web`'s logins, 'user:password' pairs separated by commas (the same form "
            "as FARM_FLOWER_AUTH); it refuses to start without one unless given --no-auth",
            "",
        )
    )
    web_port: int = field(
        **_env("FARM_WEB_PORT", "Port `farm web` listens on (loopback unless --host)", "8088")
    )
    web_session_ttl: int = field(
        **_env(
            "FARM_WEB_SESSION_TTL",
            "Seconds a `farm web` login lasts without use (sessions are kept in Redis, so "
            "they survive a restart of `farm web`)",
            "604800",
        )
    )

    # Comfy API v2 nodes (``comfyv2+https://…``: Comfy Cloud, or comfy-api-proxy); docs/cloud.md
    cloud_token: str = field(
        repr=False,
        **_env(
            "FARM_CLOUD_TOKEN",
            "API key of the Comfy API v2 nodes (comfyv2+…), sent as 'Authorization: Bearer'; "
            "needed for https:// nodes (Comfy Cloud), optional for a comfy-api-proxy started "
            "without --token. Prefer FARM_CLOUD_TOKEN_FILE; never logged or stored in Redis",
            "",
        ),
    )
    cloud_token_file: str = field(
        **_env(
            "FARM_CLOUD_TOKEN_FILE",
            "File holding FARM_CLOUD_TOKEN (one line; keep it 0600); set one of the two",
            "",
        )
    )
    cloud_concurrency: int = field(
        **_env(
            "FARM_CLOUD_CONCURRENCY",
            "Jobs a Comfy API v2 node runs at once (its plan's concurrent job limit): the "
            "worker processes of its node worker",
            "1",
        )
    )
    cloud_price: float = field(
        **_env(
            "FARM_CLOUD_PRICE",
            "Price of one GPU-second on the Comfy API v2 nodes, in the farm's currency "
            "(0: free, e.g. your own GPU behind comfy-api-proxy)",
            "0",
        )
    )
    cloud_models: str = field(
        **_env(
            "FARM_CLOUD_MODELS",
            "Model files the Comfy API v2 nodes hold, 'folder/file' separated by commas "
            "(e.g. diffusion_models/wan2.2_ti2v_5B_fp16.safetensors): the v2 API lists none, so "
            "the farm sends such a node only jobs whose files are listed here",
            "",
        )
    )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Build settings from ``env`` (default ``os.environ``); ``overrides`` win."""
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = env.get(f.metadata["env"], f.default)
            values[f.name] = _convert(f.name, f.metadata["env"], f.type, raw)
        values.update(overrides)
        settings = cls(**values)  # type: ignore[arg-type]
        settings.check()
        return settings

    def check(self) -> None:
        """Raise :class:`ConfigError` on settings that cannot work together."""
        if self.visibility_timeout <= self.render_time_limit:
            raise ConfigError(
                f"FARM_VISIBILITY_TIMEOUT ({self.visibility_timeout}) must exceed FARM_RENDER_TIME_LIMIT "
                f"({self.render_time_limit}), or Redis redelivers running renders to a second worker"
            )
        if self.clip_wait < 0:
            raise ConfigError(f"FARM_CLIP_WAIT ({self.clip_wait}) must be 0 or more")
        if self.gate_takes < 1:
            raise ConfigError(f"FARM_GATE_TAKES ({self.gate_takes}) must be 1 or more")
        if self.placement not in ("late", "naive"):
            raise ConfigError(f"FARM_PLACEMENT {self.placement!r} must be 'late' or 'naive'")
        if self.burst not in BURST_POLICIES:
            raise ConfigError(f"FARM_BURST {self.burst!r} must be 'never', 'overflow' or 'always'")
        for name, value in (
            ("FARM_BURST_AFTER", self.burst_after),
            ("FARM_BURST_BUDGET_DAY", self.burst_budget_day),
            ("FARM_BURST_BUDGET_SCENE", self.burst_budget_scene),
        ):
            if not value >= 0 or value == float("inf"):
                raise ConfigError(f"{name} ({value}) must be a number, 0 or more")
        for name, value in (
            ("FARM_SUBMISSION_MAX_BYTES", self.submission_max_bytes),
            ("FARM_SUBMISSION_MAX_FILE_BYTES", self.submission_max_file_bytes),
            ("FARM_SUBMISSION_TTL", self.submission_ttl),
            ("FARM_SUBMISSIONS_MAXLEN", self.submissions_maxlen),
            ("FARM_INGEST_CLAIM_IDLE", self.ingest_claim_idle),
            ("FARM_INGEST_MAX_DELIVERIES", self.ingest_max_deliveries),
            ("FARM_LEASE_TTL", self.lease_ttl),
            ("FARM_NODE_TTL", self.node_ttl),
            ("FARM_HEARTBEAT", self.heartbeat),
            ("FARM_START_TIMEOUT", self.start_timeout),
            ("FARM_RETENTION", self.retention),
            ("FARM_WEB_SESSION_TTL", self.web_session_ttl),
        ):
            if value <= 0:
                raise ConfigError(f"{name} ({value}) must be more than 0")
        if self.cloud_concurrency < 1:
            raise ConfigError(
                f"FARM_CLOUD_CONCURRENCY ({self.cloud_concurrency}) must be 1 or more"
            )
        if self.cloud_price < 0:
            raise ConfigError(f"FARM_CLOUD_PRICE ({self.cloud_price:g}) must be 0 or more")
        self.cloud_model_files()
        self.check_redis()

    def check_redis(self) -> None:
        """The Redis URL, its TLS files and its sentinel settings fit together."""
        if not self.redis_url.startswith(REDIS_SCHEMES):
            shown = self.redis_url.rpartition("@")[2]  # never a password
            raise ConfigError(
                f"FARM_REDIS_URL {shown!r} must start with redis://, rediss:// (TLS), unix://, "
                "sentinel:// or sentinels:// (Redis Sentinel, plain or TLS)"
            )
        scheme = self.redis_url.partition("://")[0]
        files = {
            "FARM_REDIS_CA": self.redis_ca,
            "FARM_REDIS_CERT": self.redis_cert,
            "FARM_REDIS_KEY": self.redis_key,
        }
        for name, path in files.items():
            if path and not self.redis_tls:
                raise ConfigError(
                    f"{name} is set but FARM_REDIS_URL is {scheme}://, which does not use TLS: "
                    "use rediss:// (or sentinels://), or unset it"
                )
            if path and not Path(path).expanduser().is_file():
                raise ConfigError(f"{name}: {path} is not a file")
        if bool(self.redis_cert) != bool(self.redis_key):
            raise ConfigError("FARM_REDIS_CERT and FARM_REDIS_KEY go together: set both or neither")
        if self.redis_sentinel is not None:
            if not self.redis_sentinel_master:
                raise ConfigError(
                    "FARM_REDIS_URL is a sentinel URL: set FARM_REDIS_SENTINEL_MASTER to the name "
                    "the sentinels monitor the farm's Redis under (`sentinel monitor NAME ...`)"
                )
        elif self.redis_sentinel_master or self.redis_sentinel_password:
            raise ConfigError(
                "FARM_REDIS_SENTINEL_MASTER / FARM_REDIS_SENTINEL_PASSWORD are set but "
                f"FARM_REDIS_URL is {scheme}://: use {SENTINEL_FORM}, or unset them"
            )

    @property
    def redis_tls(self) -> bool:
        """True when every connection to Redis (and to its sentinels) uses TLS."""
        return self.redis_url.startswith(("rediss://", "sentinels://"))

    @property
    def redis_sentinel(self) -> SentinelURL | None:
        """The sentinels and master credentials of a ``sentinel://`` URL; None otherwise."""
        if self.redis_url.startswith(("sentinel://", "sentinels://")):
            return parse_sentinel_url(self.redis_url)
        return None

    def redis_ssl(self) -> dict[str, Any]:
        """TLS options of a Redis connection, as redis-py's ``ssl_*`` arguments (also
        Celery's ``broker_use_ssl`` and ``redis_backend_use_ssl``); empty without TLS. The
        server's certificate and host name are always verified: against FARM_REDIS_CA, or
        the system's trusted CAs; FARM_REDIS_CERT/KEY are shown when the server asks."""
        if not self.redis_tls:
            return {}
        options: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_check_hostname": True}
        if self.redis_ca:
            options["ssl_ca_certs"] = str(Path(self.redis_ca).expanduser())
        if self.redis_cert:
            options["ssl_certfile"] = str(Path(self.redis_cert).expanduser())
            options["ssl_keyfile"] = str(Path(self.redis_key).expanduser())
        return options

    def redis_sentinel_kwargs(self) -> dict[str, Any]:
        """Options of the connections to the sentinels themselves (redis-py's and Celery's
        ``sentinel_kwargs``): timeouts, no retries (a sentinel that fails is passed over for
        the next one), their own password, TLS like the servers."""
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        options: dict[str, Any] = {
            "socket_timeout": 5.0,
            "socket_connect_timeout": 5.0,
            "retry": Retry(NoBackoff(), 0),
        }
        if self.redis_sentinel_password:
            options["password"] = self.redis_sentinel_password
        if self.redis_tls:
            options.update(ssl=True, **self.redis_ssl())
        return options

    def node(self, name: str) -> NodeConfig:
        """The configured node called ``name``."""
        for node in self.nodes:
            if node.name == name:
                return node
        known = ", ".join(n.name for n in self.nodes) or "none"
        raise ConfigError(f"node {name!r} is not in FARM_NODES (configured: {known})")

    @property
    def keys(self) -> Keys:
        """The farm's Redis key names (:mod:`farm.keys`)."""
        return Keys(self.key_prefix)

    def cloud_api_key(self) -> str:
        """The Comfy API v2 key, from FARM_CLOUD_TOKEN or the file FARM_CLOUD_TOKEN_FILE
        names (read now, so a rotated key is picked up); ``""`` when neither is set. The
        key itself is never part of an error message."""
        if self.cloud_token and self.cloud_token_file:
            raise ConfigError("FARM_CLOUD_TOKEN and FARM_CLOUD_TOKEN_FILE are both set: keep one")
        if not self.cloud_token_file:
            return self.cloud_token.strip()
        path = Path(self.cloud_token_file).expanduser()
        try:
            token = path.read_text().strip()
        except OSError as exc:
            raise ConfigError(
                f"FARM_CLOUD_TOKEN_FILE: cannot read {path} ({exc.strerror}); point it at the "
                "file holding the Comfy API key"
            ) from None
        if not token or len(token.splitlines()) != 1:
            raise ConfigError(
                f"FARM_CLOUD_TOKEN_FILE: {path} must hold the key on one line (it is "
                f"{'empty' if not token else 'several lines'})"
            )
        return token

    def cloud_model_files(self) -> dict[str, list[str]]:
        """FARM_CLOUD_MODELS as ``{folder: [files]}``."""
        models: dict[str, list[str]] = {}
        for item in filter(None, (p.strip() for p in self.cloud_models.split(","))):
            folder, sep, name = item.partition("/")
            if not sep or not folder or not name or "/" in name or name in (".", ".."):
                raise ConfigError(
                    f"FARM_CLOUD_MODELS: {item!r} is not 'folder/file' "
                    "(e.g. diffusion_models/wan2.2_ti2v_5B_fp16.safetensors)"
                )
            models.setdefault(folder, [])
            if name not in models[folder]:
                models[folder].append(name)
        return models

    @property
    def max_download_bytes(self) -> int:
        return self.max_download_mb * 1024 * 1024


def _convert(name: str, env_name: str, type_: object, raw: object) -> object:
    if not isinstance(raw, str):
        return raw
    try:
        if type_ in ("Path", Path):
            return Path(raw).expanduser().resolve()
        if type_ in ("int", int):
            return int(raw)
        if type_ in ("float", float):
            if not raw.strip() and name.startswith("burst_budget"):
                return 0.0  # empty: no cap
            return float(raw)
        if name == "nodes":
            return parse_nodes(raw)
        if name == "catalog" and raw:
            return str(Path(raw).expanduser().resolve())  # workers may run elsewhere
    except ValueError as exc:
        raise ConfigError(f"{env_name}={raw!r} is not a valid {type_}: {exc}") from None
    return raw


def documented_settings() -> list[tuple[str, str, str]]:
    """(variable, default, help) of every setting, for docs and ``env.example``."""
    return [(f.metadata["env"], str(f.default), f.metadata["help"]) for f in fields(Settings)]


_current: Settings | None = None


def get_settings() -> Settings:
    """The process-wide settings, read from the environment once."""
    global _current
    if _current is None:
        _current = Settings.from_env()
    return _current
