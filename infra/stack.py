"""Local stack launcher: real Kafka (KRaft), Postgres and Redis processes on 127.0.0.1.

Standard library only, so it runs before the project's virtualenv exists.

    python3 infra/stack.py jars        resolve the Kafka broker jars with Maven (once)
    python3 infra/stack.py up          start whatever is not running and wait until it answers
    python3 infra/stack.py down        stop the processes that `up` started
    python3 infra/stack.py status      running/stopped per service; exit 1 unless all run
    python3 infra/stack.py pids        pids of the running services, one per line
    python3 infra/stack.py clean       stop the stack and delete its data
    python3 infra/stack.py with-stack -- CMD ARGS...
                                       bring the stack up, run CMD, stop what this started

Settings come from MESH_DATA_DIR, MESH_KAFKA_PORT, MESH_KAFKA_CONTROLLER_PORT, MESH_PG_PORT,
MESH_REDIS_PORT and MESH_KAFKA_HEAP (see StackConfig.from_env).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import fcntl
import hashlib
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

KAFKA_VERSION = "4.1.1"  # keep in step with infra/kafka/pom.xml
REPO_ROOT = Path(__file__).resolve().parent.parent
KAFKA_PROJECT = REPO_ROOT / "infra" / "kafka"
KAFKA_POM = KAFKA_PROJECT / "pom.xml"
KAFKA_LIB = KAFKA_PROJECT / "target" / "lib"
KAFKA_LOG_CONFIG = KAFKA_PROJECT / "log4j2.xml"
# Records which pom.xml the jars in KAFKA_LIB were resolved from, so editing the pom re-resolves.
JARS_STAMP = ".pom-sha256"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
# Where root keeps Postgres's data for a stack whose folder the postgres account cannot reach.
PG_FALLBACK_ROOT = Path("/var/lib/agent-mesh")
HOST = "127.0.0.1"
DB_NAME = "mesh"  # both the role and the database the agents use
PG_SUPERUSER = "postgres"
POLL_SECONDS = 0.25
STOP_SECONDS = 30.0
KILL_SECONDS = 10.0
MAX_BROKERS = 5

# Processes started by this Python process. A server we start and later stop ourselves (as
# `with-stack` does) stays our child, so it must be reaped or it lingers as a zombie; keeping the
# Popen object also stops Python warning that a still-running subprocess was dropped.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


class StackError(Exception):
    """A failure the user can act on; the message says what to read or change."""


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class StackConfig:
    """Where the stack keeps its data and which ports it listens on."""

    data_dir: Path
    kafka_port: int
    kafka_controller_port: int
    pg_port: int
    redis_port: int
    kafka_heap: str
    kafka_brokers: int = 1  # a KRaft cluster of this many brokers (each its own controller too)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> StackConfig:
        env = os.environ if env is None else env
        heap = env.get("MESH_KAFKA_HEAP", "").strip() or "512m"
        if not _HEAP.fullmatch(heap):
            raise StackError(f"MESH_KAFKA_HEAP={heap!r} should look like 512m or 1g")
        cfg = cls(
            data_dir=Path(env.get("MESH_DATA_DIR") or REPO_ROOT / ".mesh").absolute(),
            kafka_port=_port(env, "MESH_KAFKA_PORT", 19092),
            kafka_controller_port=_port(env, "MESH_KAFKA_CONTROLLER_PORT", 19093),
            pg_port=_port(env, "MESH_PG_PORT", 15432),
            redis_port=_port(env, "MESH_REDIS_PORT", 16379),
            kafka_heap=heap,
            kafka_brokers=_brokers(env),
        )
        ports = [cfg.pg_port, cfg.redis_port]
        for node in kafka_nodes(cfg):
            ports += [node.port, node.controller_port]
        if len(set(ports)) != len(ports) or max(ports) > 65535:
            raise StackError(
                "MESH_KAFKA_PORT, MESH_KAFKA_CONTROLLER_PORT, MESH_PG_PORT and "
                "MESH_REDIS_PORT must all differ (a cluster's broker N listens on "
                "MESH_KAFKA_PORT + 2(N-1), its controller on MESH_KAFKA_CONTROLLER_PORT + 2(N-1))"
            )
        return cfg

    def service_dir(self, name: str) -> Path:
        return self.data_dir / name

    def log_file(self, name: str) -> Path:
        return self.service_dir(name) / f"{name}.log"

    def pid_file(self, name: str) -> Path:
        return self.service_dir(name) / f"{name}.pid"


_HEAP = re.compile(r"(\d+)([kmg])", re.IGNORECASE)


def _brokers(env: Mapping[str, str]) -> int:
    raw = env.get("MESH_KAFKA_BROKERS", "").strip() or "1"
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_BROKERS:
        raise StackError(
            f"MESH_KAFKA_BROKERS={raw!r} should be a number of brokers, 1 to {MAX_BROKERS}"
        )
    return int(raw)


@dataclass(frozen=True)
class KafkaNode:
    """One Kafka process: a broker and a controller of the KRaft quorum."""

    name: str  # "kafka" when it is the only one, else "kafka-<id>"
    node_id: int
    port: int
    controller_port: int


def kafka_nodes(cfg: StackConfig) -> list[KafkaNode]:
    """The stack's Kafka processes: node N of a cluster listens two ports above node N-1."""
    if cfg.kafka_brokers == 1:
        return [KafkaNode("kafka", 1, cfg.kafka_port, cfg.kafka_controller_port)]
    return [
        KafkaNode(
            f"kafka-{n}", n, cfg.kafka_port + 2 * (n - 1), cfg.kafka_controller_port + 2 * (n - 1)
        )
        for n in range(1, cfg.kafka_brokers + 1)
    ]


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise StackError(f"{name}={raw!r} is not a TCP port number")
    return int(raw)


def client_env(cfg: StackConfig) -> dict[str, str]:
    """The variables that point the agents at this stack (on a cluster, topics are created with
    three replicas, or as many as there are brokers)."""
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": ",".join(f"{HOST}:{n.port}" for n in kafka_nodes(cfg)),
        "DATABASE_URL": f"postgresql://{DB_NAME}@{HOST}:{cfg.pg_port}/{DB_NAME}",
        "REDIS_URL": f"redis://{HOST}:{cfg.redis_port}/0",
    }
    if cfg.kafka_brokers > 1:
        env["MESH_REPLICATION_FACTOR"] = str(min(3, cfg.kafka_brokers))
    return env


# --------------------------------------------------------------------------- services


@dataclass(frozen=True)
class Launch:
    """How to start one server process."""

    argv: list[str]
    cwd: Path
    account: pwd.struct_passwd | None = None  # run as this user; None: as ourselves


@dataclass(frozen=True)
class Service:
    """One server of the stack and the hooks `up`/`down` drive it through."""

    name: str
    ports: Callable[[StackConfig], list[tuple[str, int]]]  # (env var, port); first is for clients
    prepare: Callable[[StackConfig], Launch]  # one-time set-up, then the command to run
    answers: Callable[[StackConfig], bool]
    finish: Callable[[StackConfig], None]  # idempotent set-up that needs the server running
    owns: Callable[[StackConfig, list[str]], bool]  # is this /proc cmdline our server?
    ready_seconds: float
    # Postgres treats SIGTERM as "wait until every client disconnects"; SIGINT closes them.
    stop_signal: signal.Signals = signal.SIGTERM


def _nothing(cfg: StackConfig) -> None:
    """A `finish` hook for services that need no set-up once running."""


# --------------------------------------------------------------------------- processes


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part for part in raw.decode(errors="replace").split("\0") if part]


def process_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie waiting to be reaped."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The command name in parentheses may contain spaces, so read the state after the last ')'.
    fields = stat_line.rpartition(")")[2].split()
    return bool(fields) and fields[0] not in ("Z", "X")


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _service_pid(service: Service, cfg: StackConfig) -> int | None:
    """The recorded pid, if it is alive and still the expected program (pids get reused)."""
    _reap_exited()
    pid = _read_pid(cfg.pid_file(service.name))
    if pid is None or not process_alive(pid):
        return None
    return pid if service.owns(cfg, _cmdline(pid)) else None


def running_pids(cfg: StackConfig) -> dict[str, int]:
    """Service name -> pid, for the services of this stack that are running."""
    pids = {service.name: _service_pid(service, cfg) for service in services(cfg)}
    return {name: pid for name, pid in pids.items() if pid is not None}


def _spawn(service: Service, cfg: StackConfig, launch: Launch) -> int:
    account = launch.account
    with cfg.log_file(service.name).open("ab") as log:
        proc = subprocess.Popen(
            launch.argv,
            cwd=launch.cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Its own session: a Ctrl-C meant for `with-stack`'s command must not reach it.
            start_new_session=True,
            user=account.pw_uid if account else None,
            group=account.pw_gid if account else None,
            extra_groups=_groups(account) if account else None,
        )
    _CHILDREN[proc.pid] = proc
    cfg.pid_file(service.name).write_text(f"{proc.pid}\n")
    return proc.pid


def _groups(account: pwd.struct_passwd) -> list[int]:
    return os.getgrouplist(account.pw_name, account.pw_gid)


def _reap_exited() -> None:
    for pid, proc in list(_CHILDREN.items()):
        if proc.poll() is not None:
            del _CHILDREN[pid]


def _wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while True:
        _reap_exited()
        if not process_alive(pid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_SECONDS)


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Like the servers themselves, so a port left in TIME_WAIT by our last run counts as free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _check_ports(service: Service, cfg: StackConfig) -> None:
    for env_name, port in service.ports(cfg):
        if not _port_free(port):
            raise StackError(
                f"{service.name}: {HOST}:{port} is already in use by another "
                f"program; set {env_name} to a free port"
            )


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _run(
    argv: Sequence[str],
    what: str,
    *,
    cwd: Path | None = None,
    account: pwd.struct_passwd | None = None,
    timeout: float = 300,
) -> str:
    """Run a set-up command to completion; its output becomes the error message on failure."""
    result = subprocess.run(
        argv,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        user=account.pw_uid if account else None,
        group=account.pw_gid if account else None,
        extra_groups=_groups(account) if account else None,
    )
    if result.returncode != 0:
        output = "\n".join((result.stdout + result.stderr).strip().splitlines()[-30:])
        raise StackError(f"{what} failed (exit {result.returncode}):\n{output}")
    return result.stdout


def _tool(path: str | Path, install_hint: str) -> str:
    found = shutil.which(path)
    if found is None:
        raise StackError(f"{path} not found; run: {install_hint}")
    return found


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` while the block runs.

    The servers do not inherit the lock's descriptor (Popen closes descriptors by default), so
    it is released when the block ends, not when a server exits.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


# --------------------------------------------------------------------------- kafka


def _pom_digest() -> str:
    return hashlib.sha256(KAFKA_POM.read_bytes()).hexdigest()


def jars_present() -> bool:
    """The pinned broker jar is there, resolved from the current pom.xml."""
    kafka_jar = KAFKA_LIB / f"kafka_2.13-{KAFKA_VERSION}.jar"
    stamp = KAFKA_LIB / JARS_STAMP
    return kafka_jar.is_file() and stamp.is_file() and stamp.read_text() == _pom_digest()


def ensure_jars() -> bool:
    """Resolve the broker jars from Maven Central unless present; True if it downloaded them."""
    if jars_present():
        return False
    # Stacks on other data folders share these jars; one download at a time.
    with _file_lock(KAFKA_LIB.with_name("jars.lock")):
        if jars_present():
            return False
        _resolve_jars()
    return True


def _resolve_jars() -> None:
    mvn = _tool("mvn", "apt-get install -y maven")
    # Resolve into a side folder and swap it in whole: an interrupted download must not leave a
    # folder that looks complete, nor may jars of an older version linger on the classpath.
    partial = KAFKA_LIB.with_name("lib.partial")
    shutil.rmtree(partial, ignore_errors=True)
    _say(f"resolving Kafka {KAFKA_VERSION} jars with Maven ...")
    argv = [mvn, "-B", "-q", "-f", str(KAFKA_POM), "dependency:copy-dependencies"]
    _run([*argv, f"-DoutputDirectory={partial}"], "mvn dependency:copy-dependencies", timeout=900)
    (partial / JARS_STAMP).write_text(_pom_digest())
    shutil.rmtree(KAFKA_LIB, ignore_errors=True)
    partial.rename(KAFKA_LIB)


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    return _tool("java", "apt-get install -y openjdk-17-jre-headless")


def _kafka_properties_file(cfg: StackConfig, node: KafkaNode) -> Path:
    return cfg.service_dir(node.name) / "server.properties"


def _kafka_log_dir(cfg: StackConfig, node: KafkaNode) -> Path:
    return cfg.service_dir(node.name) / "data"


def _kafka_properties(cfg: StackConfig, node: KafkaNode) -> dict[str, str]:
    plain, controller = f"{HOST}:{node.port}", f"{HOST}:{node.controller_port}"
    nodes = kafka_nodes(cfg)
    # Internal topics as replicated as the mesh's own (three copies, two in sync) when they can be.
    replicas, in_sync = str(min(3, len(nodes))), str(min(2, len(nodes)))
    return {
        "process.roles": "broker,controller",
        "node.id": str(node.node_id),
        "controller.quorum.voters": ",".join(
            f"{n.node_id}@{HOST}:{n.controller_port}" for n in nodes
        ),
        "listeners": f"PLAINTEXT://{plain},CONTROLLER://{controller}",
        "advertised.listeners": f"PLAINTEXT://{plain}",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": str(_kafka_log_dir(cfg, node)),
        "offsets.topic.replication.factor": replicas,
        "transaction.state.log.replication.factor": replicas,
        "transaction.state.log.min.isr": in_sync,
        "share.coordinator.state.topic.replication.factor": replicas,
        "share.coordinator.state.topic.min.isr": in_sync,
        # Tests start consumers and expect them to be assigned partitions at once.
        "group.initial.rebalance.delay.ms": "0",
        # Topics are created on purpose, with their intended settings, never by a typo.
        "auto.create.topics.enable": "false",
        "num.partitions": "3",
        # The dead-letter topic carries the original event plus error details.
        "message.max.bytes": "10485760",
        "replica.fetch.max.bytes": "10485760",
    }


def _write_kafka_properties(cfg: StackConfig, node: KafkaNode) -> Path:
    path = _kafka_properties_file(cfg, node)
    lines = [f"{key}={value}" for key, value in _kafka_properties(cfg, node).items()]
    path.write_text(
        "# Written by infra/stack.py on every start; edit the launcher, not this.\n"
        + "\n".join(lines)
        + "\n"
    )
    return path


def _new_cluster_id() -> str:
    """Kafka's cluster id format: base64url of 16 random bytes, unpadded (22 characters)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        # Kafka's own generator avoids a leading '-', which command-line parsers read as a flag.
        if not cluster_id.startswith("-"):
            return cluster_id


def _kafka_java_argv(heap: str, initial_heap: str) -> list[str]:
    return [
        _java(),
        f"-Xmx{heap}",
        f"-Xms{initial_heap}",
        "-XX:+UseG1GC",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={KAFKA_LOG_CONFIG}",
        "-cp",
        f"{KAFKA_LIB}/*",
    ]


def _half_heap(heap: str) -> str:
    match = _HEAP.fullmatch(heap)
    if match is None:
        raise StackError(f"MESH_KAFKA_HEAP={heap!r} should look like 512m or 1g")
    kib = int(match.group(1)) * {"k": 1, "m": 1024, "g": 1024 * 1024}[match.group(2).lower()]
    return f"{max(kib // 2, 1)}k"


def _format_kafka_storage(cfg: StackConfig, node: KafkaNode, properties: Path) -> None:
    """KRaft needs its log folder formatted once; meta.properties marks that it was. The nodes of
    a cluster share one cluster id, kept beside their folders."""
    if (_kafka_log_dir(cfg, node) / "meta.properties").is_file():
        return
    _say(f"formatting {node.name} storage ...")
    tool = ["kafka.tools.StorageTool", "format", "-t", _cluster_id(cfg), "-c", str(properties)]
    _run([*_kafka_java_argv("256m", "64m"), *tool], "kafka-storage format")


def _cluster_id(cfg: StackConfig) -> str:
    if cfg.kafka_brokers == 1:
        return _new_cluster_id()
    path = cfg.data_dir / f"kafka-cluster-{cfg.kafka_brokers}.id"
    if not path.is_file():
        path.write_text(_new_cluster_id() + "\n")
    return path.read_text().strip()


def _prepare_kafka(cfg: StackConfig, node: KafkaNode) -> Launch:
    ensure_jars()
    cfg.service_dir(node.name).mkdir(parents=True, exist_ok=True)
    properties = _write_kafka_properties(cfg, node)
    _format_kafka_storage(cfg, node, properties)
    argv = [
        *_kafka_java_argv(cfg.kafka_heap, _half_heap(cfg.kafka_heap)),
        "kafka.Kafka",
        str(properties),
    ]
    return Launch(argv=argv, cwd=cfg.service_dir(node.name))


def _owns_kafka(cfg: StackConfig, node: KafkaNode, argv: list[str]) -> bool:
    return (
        bool(argv)
        and Path(argv[0]).name == "java"
        and "kafka.Kafka" in argv
        and str(_kafka_properties_file(cfg, node)) in argv
    )


def _kafka_service(node: KafkaNode) -> Service:
    return Service(
        name=node.name,
        ports=lambda cfg: [
            ("MESH_KAFKA_PORT", node.port),
            ("MESH_KAFKA_CONTROLLER_PORT", node.controller_port),
        ],
        prepare=lambda cfg: _prepare_kafka(cfg, node),
        answers=lambda cfg: kafka_answers(node.port),
        finish=_nothing,
        owns=lambda cfg, argv: _owns_kafka(cfg, node, argv),
        ready_seconds=90,
    )


_API_VERSIONS, _METADATA = 18, 3
_METADATA_VERSION = 4  # the oldest Kafka 4 still accepts; needs no "flexible" encoding
_MAX_RESPONSE = 1 << 20


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("connection closed mid-response")
        data += chunk
    return bytes(data)


def kafka_call(port: int, api_key: int, version: int, body: bytes, timeout: float) -> bytes:
    """One request/response over the Kafka wire protocol; returns the response body."""
    client_id = b"mesh-stack"
    correlation_id = 0x6D657368  # any value: the broker echoes it, which proves it is Kafka
    header = struct.pack(">hhih", api_key, version, correlation_id, len(client_id)) + client_id
    request = header + body
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(struct.pack(">i", len(request)) + request)
        (size,) = struct.unpack(">i", _recv_exact(sock, 4))
        if not 4 <= size <= _MAX_RESPONSE:
            raise ValueError(f"implausible Kafka response size {size}")
        response = _recv_exact(sock, size)
    if struct.unpack_from(">i", response)[0] != correlation_id:
        raise ValueError("Kafka response carries another correlation id")
    return response[4:]


def _kafka_api_versions(port: int, timeout: float) -> dict[int, tuple[int, int]]:
    """ApiVersions v0: error_code, then [api_key, min_version, max_version] per API."""
    body = kafka_call(port, _API_VERSIONS, 0, b"", timeout)
    error_code, count = struct.unpack_from(">hi", body)
    if error_code != 0:
        raise ValueError(f"ApiVersions answered error code {error_code}")
    if count <= 0 or len(body) != 6 + 6 * count:
        raise ValueError("malformed ApiVersions response")
    return {key: (low, high) for key, low, high in struct.iter_unpack(">hhh", body[6:])}


def _read_string(buf: bytes, offset: int) -> tuple[str | None, int]:
    (length,) = struct.unpack_from(">h", buf, offset)
    offset += 2
    if length < 0:
        return None, offset
    return buf[offset : offset + length].decode(), offset + length


def _kafka_broker_ports(port: int, timeout: float) -> list[int]:
    """Metadata v4 asking about no topics; returns the port of each broker it lists."""
    body = kafka_call(port, _METADATA, _METADATA_VERSION, struct.pack(">ib", 0, 0), timeout)
    (count,) = struct.unpack_from(">i", body, 4)  # after throttle_time_ms
    offset, ports = 8, []
    for _ in range(count):
        _, offset = _read_string(body, offset + 4)  # node_id, host
        (broker_port,) = struct.unpack_from(">i", body, offset)
        _, offset = _read_string(body, offset + 4)  # rack
        ports.append(broker_port)
    return ports


def kafka_answers(port: int, timeout: float = 2.0) -> bool:
    """The broker answers ApiVersions without error and lists itself in Metadata.

    A broker accepts connections before it has registered with the controller; until it is
    unfenced it lists no brokers and creating a topic fails, so ApiVersions alone is too early.
    """
    try:
        low, high = _kafka_api_versions(port, timeout).get(_METADATA, (1, 0))
        if not low <= _METADATA_VERSION <= high:
            return False
        return port in _kafka_broker_ports(port, timeout)
    except (OSError, ValueError, struct.error, UnicodeDecodeError):
        return False


# --------------------------------------------------------------------------- postgres


def _postgres_account() -> pwd.struct_passwd | None:
    """Postgres refuses to run as root, so root runs it as the `postgres` system user."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise StackError(
            "running as root, and Postgres refuses root, but there is no "
            "'postgres' user to run it as; run: apt-get install -y postgresql-15"
        ) from None


def pg_data(cfg: StackConfig) -> Path:
    """Postgres's data folder: in the stack's folder, unless the account Postgres runs as cannot
    reach that (a clone in root's private home): then in a folder of the stack's own under
    ``PG_FALLBACK_ROOT``, named after the stack's folder."""
    home = cfg.service_dir("postgres")
    account = _postgres_account()
    if account is None or _reachable(home, account):
        return home / "data"
    digest = hashlib.sha256(str(cfg.data_dir).encode()).hexdigest()[:16]
    return PG_FALLBACK_ROOT / digest / "data"


def _searchable(folder: Path, uid: int, groups: Collection[int]) -> bool:
    info = folder.stat()
    if info.st_uid == uid:
        return bool(info.st_mode & stat.S_IXUSR)
    if info.st_gid in groups:
        return bool(info.st_mode & stat.S_IXGRP)
    return bool(info.st_mode & stat.S_IXOTH)


def _reachable(folder: Path, account: pwd.struct_passwd) -> bool:
    """Whether ``account`` can get to ``folder`` (every folder on the way searchable by it); a
    folder not made yet counts as its nearest existing parent."""
    groups = _groups(account)
    return all(
        _searchable(parent, account.pw_uid, groups)
        for parent in [folder, *folder.parents]
        if parent.exists()
    )


def _init_postgres(cfg: StackConfig, account: pwd.struct_passwd | None) -> None:
    data = pg_data(cfg)
    if (data / "PG_VERSION").is_file():
        return
    initdb = _tool(str(PG_BIN / "initdb"), "apt-get install -y postgresql-15")
    data.mkdir(mode=0o700, exist_ok=True)
    if account is not None:
        os.chown(data, account.pw_uid, account.pw_gid)
    data.chmod(0o700)  # initdb and postgres insist on a private folder
    _say("initialising Postgres data folder ...")
    # Trust needs no password to manage; the server listens on 127.0.0.1 only.
    _run(
        [initdb, "-D", str(data), "-U", PG_SUPERUSER, "--auth=trust", "-E", "UTF8", "--no-locale"],
        "initdb",
        cwd=data,
        account=account,
    )


_PG_SETTINGS = {
    "listen_addresses": HOST,
    # TCP only: no socket file whose path length or folder rights could get in the way.
    "unix_socket_directories": "",
    "max_connections": "200",
    "fsync": "on",
}


def _prepare_postgres(cfg: StackConfig) -> Launch:
    postgres = _tool(str(PG_BIN / "postgres"), "apt-get install -y postgresql-15")
    _tool("psql", "apt-get install -y postgresql-client-15")
    account = _postgres_account()
    cfg.service_dir("postgres").mkdir(parents=True, exist_ok=True)
    data = pg_data(cfg)
    data.parent.mkdir(parents=True, exist_ok=True)
    _init_postgres(cfg, account)
    argv = [postgres, "-D", str(data), "-p", str(cfg.pg_port)]
    for name, value in _PG_SETTINGS.items():
        argv += ["-c", f"{name}={value}"]
    return Launch(argv=argv, cwd=data, account=account)


def _psql(port: int, user: str, database: str, sql: str) -> str:
    psql = _tool("psql", "apt-get install -y postgresql-client-15")
    target = ["-h", HOST, "-p", str(port), "-U", user, "-d", database]
    argv = [psql, *target, "-v", "ON_ERROR_STOP=1", "-tAc", sql]
    result = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=15,
        check=False,
        env={**os.environ, "PGCONNECT_TIMEOUT": "3"},
    )
    if result.returncode != 0:
        raise StackError(f"psql {sql!r} failed: {result.stderr.strip()}")
    return result.stdout.strip()


def postgres_answers(port: int, user: str = DB_NAME, database: str = DB_NAME) -> bool:
    """`select 1` through psql returns 1."""
    try:
        return _psql(port, user, database, "select 1") == "1"
    except (StackError, subprocess.TimeoutExpired, OSError):
        return False


def _create_mesh_database(cfg: StackConfig) -> None:
    def query(sql: str) -> str:
        return _psql(cfg.pg_port, PG_SUPERUSER, "postgres", sql)

    if query(f"select 1 from pg_roles where rolname = '{DB_NAME}'") != "1":  # noqa: S608
        query(f"create role {DB_NAME} login createdb")
    if query(f"select 1 from pg_database where datname = '{DB_NAME}'") != "1":  # noqa: S608
        query(f"create database {DB_NAME} owner {DB_NAME}")


def _owns_postgres(cfg: StackConfig, argv: list[str]) -> bool:
    return bool(argv) and Path(argv[0]).name == "postgres" and str(pg_data(cfg)) in argv


# --------------------------------------------------------------------------- redis


_REDIS_OPTIONS = {
    "bind": HOST,
    # No persistence: Redis holds short-lived state only, and the mesh must survive losing it.
    "save": "",
    "appendonly": "no",
    # Every key the mesh writes has a TTL and each is an optimisation, so under pressure any may
    # go (docs/architecture.md, "Short-lived state").
    "maxmemory": "256mb",
    "maxmemory-policy": "allkeys-lru",
    "daemonize": "no",  # we track the pid of the process we start
}


def _prepare_redis(cfg: StackConfig) -> Launch:
    server = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(server).is_file():
        raise StackError("redis-server not found; run: apt-get install -y redis-server")
    folder = cfg.service_dir("redis")
    folder.mkdir(parents=True, exist_ok=True)
    argv = [server, "--port", str(cfg.redis_port), "--dir", str(folder)]
    for name, value in _REDIS_OPTIONS.items():
        argv += [f"--{name}", value]
    return Launch(argv=argv, cwd=folder)


def redis_answers(port: int, timeout: float = 2.0) -> bool:
    """PING is answered with +PONG."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return _recv_exact(sock, 7) == b"+PONG\r\n"
    except OSError:
        return False


def _owns_redis(cfg: StackConfig, argv: list[str]) -> bool:
    # Redis rewrites its process title to "redis-server 127.0.0.1:PORT", dropping the arguments.
    return bool(argv) and "redis-server" in argv[0]


# --------------------------------------------------------------------------- the stack


_DATA_SERVICES: tuple[Service, ...] = (
    Service(
        name="postgres",
        ports=lambda cfg: [("MESH_PG_PORT", cfg.pg_port)],
        prepare=_prepare_postgres,
        answers=lambda cfg: postgres_answers(cfg.pg_port, PG_SUPERUSER, "postgres"),
        finish=_create_mesh_database,
        owns=_owns_postgres,
        ready_seconds=30,
        stop_signal=signal.SIGINT,
    ),
    Service(
        name="redis",
        ports=lambda cfg: [("MESH_REDIS_PORT", cfg.redis_port)],
        prepare=_prepare_redis,
        answers=lambda cfg: redis_answers(cfg.redis_port),
        finish=_nothing,
        owns=_owns_redis,
        ready_seconds=30,
    ),
)


def services(cfg: StackConfig) -> tuple[Service, ...]:
    """Every server of the stack: its Kafka nodes, Postgres and Redis."""
    return (*(_kafka_service(node) for node in kafka_nodes(cfg)), *_DATA_SERVICES)


def _stack_lock(cfg: StackConfig) -> contextlib.AbstractContextManager[None]:
    """Serialise up/down on one data folder, so two `make test` runs don't both start Kafka."""
    return _file_lock(cfg.data_dir / "stack.lock")


def _wait_ready(service: Service, cfg: StackConfig) -> None:
    started = time.monotonic()
    deadline = started + service.ready_seconds
    log = cfg.log_file(service.name)
    address = f"{HOST}:{service.ports(cfg)[0][1]}"
    while not service.answers(cfg):
        if _service_pid(service, cfg) is None:
            raise StackError(f"{service.name} exited while starting; read {log}\n{_tail(log)}")
        if time.monotonic() >= deadline:
            raise StackError(
                f"{service.name} did not answer on {address} within "
                f"{service.ready_seconds:.0f} s; read {log}\n{_tail(log)}"
            )
        time.sleep(POLL_SECONDS)
    _say(f"{service.name} answers on {address} ({time.monotonic() - started:.1f} s)")


def _start(services: Sequence[Service], cfg: StackConfig, started: list[str]) -> None:
    # Check ports and prepare everything before starting anything: most failures then happen
    # before a process exists.
    for service in services:
        _check_ports(service, cfg)
    launches = [(service, service.prepare(cfg)) for service in services]
    for service, launch in launches:
        pid = _spawn(service, cfg, launch)
        started.append(service.name)
        _say(f"started {service.name} (pid {pid}); log: {cfg.log_file(service.name)}")


def up(cfg: StackConfig, only: Collection[str] | None = None) -> list[str]:
    """Start the services that are not running (all, or those named in ``only``) and wait until
    they answer.

    Returns the names of the services this call started. On failure it stops those again.
    """
    chosen = [s for s in services(cfg) if only is None or s.name in only]
    with _stack_lock(cfg):
        missing = [service for service in chosen if _service_pid(service, cfg) is None]
        started: list[str] = []
        try:
            _start(missing, cfg, started)
            for service in chosen:
                _wait_ready(service, cfg)
                service.finish(cfg)
        except BaseException:
            _stop(cfg, started)
            raise
    return started


def _signal_if_ours(service: Service, cfg: StackConfig, signum: signal.Signals) -> int | None:
    pid = _service_pid(service, cfg)
    if pid is None:
        return None
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)
    return pid


def _await_stop(service: Service, cfg: StackConfig, pid: int) -> None:
    if _wait_gone(pid, STOP_SECONDS):
        return
    _say(
        f"{service.name} (pid {pid}) ignored {service.stop_signal.name} for "
        f"{STOP_SECONDS:.0f} s; killing it"
    )
    _signal_if_ours(service, cfg, signal.SIGKILL)
    if not _wait_gone(pid, KILL_SECONDS):
        raise StackError(f"{service.name} (pid {pid}) survived SIGKILL")


def _stop(cfg: StackConfig, only: Collection[str] | None) -> list[str]:
    chosen = [s for s in _stoppable(cfg) if only is None or s.name in only]
    # Signal all first, then wait: they shut down in parallel.
    signalled = [(s, _signal_if_ours(s, cfg, s.stop_signal)) for s in chosen]
    stopped = []
    for service, pid in signalled:
        if pid is not None:
            _await_stop(service, cfg, pid)
            stopped.append(service.name)
            _say(f"stopped {service.name} (pid {pid})")
        cfg.pid_file(service.name).unlink(missing_ok=True)
    return stopped


def _stoppable(cfg: StackConfig) -> list[Service]:
    """The stack's services, and the nodes of any cluster started on its ports and data folder
    under another MESH_KAFKA_BROKERS, so `down` stops whatever `up` left running."""
    known = list(services(cfg))
    names = {s.name for s in known}
    for brokers in range(2, MAX_BROKERS + 1):
        for node in kafka_nodes(dataclasses.replace(cfg, kafka_brokers=brokers)):
            if node.name not in names:
                names.add(node.name)
                known.append(_kafka_service(node))
    return known


def down(cfg: StackConfig, only: Collection[str] | None = None) -> list[str]:
    """Stop the stack's running services (all, or those named in `only`); returns those stopped."""
    with _stack_lock(cfg):
        return _stop(cfg, only)


# --------------------------------------------------------------------------- commands


def _summary(cfg: StackConfig, started: Collection[str]) -> str:
    pids = running_pids(cfg)
    lines = []
    for service in services(cfg):
        address = f"{HOST}:{service.ports(cfg)[0][1]}"
        note = "started" if service.name in started else "already running"
        lines.append(f"{service.name:<10}{address:<17}(pid {pids.get(service.name)})  {note}")
    lines.append("")
    lines.extend(f"export {key}={value}" for key, value in client_env(cfg).items())
    return "\n".join(lines)


def _cmd_jars(cfg: StackConfig, command: list[str]) -> int:
    fetched = ensure_jars()
    print(f"Kafka {KAFKA_VERSION} jars {'resolved into' if fetched else 'present in'} {KAFKA_LIB}")
    return 0


def _cmd_up(cfg: StackConfig, command: list[str]) -> int:
    print(_summary(cfg, up(cfg)))
    return 0


def _cmd_clean(cfg: StackConfig, command: list[str]) -> int:
    """Stop the stack and delete its data, wherever Postgres kept its own."""
    down(cfg)
    data = pg_data(cfg)
    if data.parent.parent == PG_FALLBACK_ROOT:
        shutil.rmtree(data.parent, ignore_errors=True)
    shutil.rmtree(cfg.data_dir, ignore_errors=True)
    print(f"deleted {cfg.data_dir}")
    return 0


def _cmd_down(cfg: StackConfig, command: list[str]) -> int:
    if not down(cfg):
        print("nothing was running")
    return 0


def _cmd_status(cfg: StackConfig, command: list[str]) -> int:
    pids = running_pids(cfg)
    for service in services(cfg):
        pid = pids.get(service.name)
        address = f"{HOST}:{service.ports(cfg)[0][1]}"
        state = f"running  {address:<17}(pid {pid})" if pid else "stopped"
        print(f"{service.name:<10}{state}")
    return 0 if len(pids) == len(services(cfg)) else 1


def _cmd_pids(cfg: StackConfig, command: list[str]) -> int:
    for pid in running_pids(cfg).values():
        print(pid)
    return 0


@contextlib.contextmanager
def _forwarding_signals(proc: subprocess.Popen[bytes]) -> Iterator[None]:
    """While CMD runs: pass SIGTERM on to it, and let it alone handle Ctrl-C.

    The terminal already delivers Ctrl-C to CMD (same process group); if we died of it too, the
    services would be left running. SIGTERM (a CI timeout, say) reaches only us, so forward it.
    """

    def forward(signum: int, frame: FrameType | None) -> None:
        proc.send_signal(signum)

    previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    previous_term = signal.signal(signal.SIGTERM, forward)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous_int)
        signal.signal(signal.SIGTERM, previous_term)


def _run_command(cfg: StackConfig, command: list[str]) -> int:
    # Variables already set win: they point at services the user chose (see DESIGN.md).
    env = {**client_env(cfg), **os.environ}
    try:
        proc = subprocess.Popen(command, env=env)
    except OSError as exc:
        raise StackError(f"cannot run {command[0]}: {exc}") from exc
    with _forwarding_signals(proc):
        code = proc.wait()
    return code if code >= 0 else 128 - code


def _cmd_with_stack(cfg: StackConfig, command: list[str]) -> int:
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise StackError("usage: stack.py with-stack -- CMD ARGS...")
    started = up(cfg)
    _say(_summary(cfg, started))
    try:
        return _run_command(cfg, command)
    finally:
        down(cfg, only=started)


COMMANDS: dict[str, Callable[[StackConfig, list[str]], int]] = {
    "jars": _cmd_jars,
    "up": _cmd_up,
    "down": _cmd_down,
    "clean": _cmd_clean,
    "status": _cmd_status,
    "pids": _cmd_pids,
    "with-stack": _cmd_with_stack,
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stack.py",
        description="Run the local Kafka, Postgres and Redis stack.",
        epilog="Settings: MESH_DATA_DIR, MESH_KAFKA_PORT, MESH_KAFKA_CONTROLLER_PORT, "
        "MESH_PG_PORT, MESH_REDIS_PORT, MESH_KAFKA_HEAP.",
    )
    parser.add_argument("command", choices=COMMANDS)
    parser.add_argument("args", nargs=argparse.REMAINDER, help="with-stack only: -- CMD ARGS...")
    return parser


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Unwinding (rather than dying on the spot) lets `up` and `with-stack` stop what they started.
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.args and args.command != "with-stack":
        _parser().error(f"{args.command} takes no arguments")
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        return COMMANDS[args.command](StackConfig.from_env(), list(args.args))
    except (StackError, OSError) as exc:
        print(f"stack: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
