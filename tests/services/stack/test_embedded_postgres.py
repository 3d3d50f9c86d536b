"""The embedded PostgreSQL as `gpuplane up` prepares it, with the real server.

Passwords (SCRAM) for everyone over TCP and the unix socket; services use a ``gpuplane`` role that
owns its database and nothing else; the postmaster keeps none of root's groups; a cluster an older
gpuplane made with trust auth is converted on its next start.
"""

from __future__ import annotations

import base64
import os
import pwd
import signal
import stat
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from psycopg import errors
from sqlalchemy import make_url

from services.stack import embedded
from services.stack.supervisor import popen_identity
from shared.database import redact
from shared.errors import ConfigError
from shared.secrets import write_secret
from tests.realdeps import Postgres

integration = pytest.mark.integration
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="PostgreSQL runs as its own user only when we are root")
OVER = pytest.mark.parametrize("over", ["tcp", "socket"])


@pytest.fixture(autouse=True)
def no_ambient_password(monkeypatch: pytest.MonkeyPatch) -> None:
    """libpq would otherwise try a password from the environment or ~/.pgpass."""
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", "/nonexistent")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postgres]:
    pg = Postgres(tmp_path_factory.mktemp("epg"))
    pg.start()
    yield pg
    pg.stop()


def layout_of(pg: Postgres) -> embedded.PostgresLayout:
    assert pg.layout is not None
    return pg.layout


def connect(pg: Postgres, user: str, password: str | None, dbname: str, over: str = "tcp") -> psycopg.Connection[Any]:
    host = "127.0.0.1" if over == "tcp" else str(layout_of(pg).socket_dir)
    extra: dict[str, Any] = {} if password is None else {"password": password}
    return psycopg.connect(
        host=host, port=pg.port, user=user, dbname=dbname, connect_timeout=5, autocommit=True, **extra
    )


def superuser(pg: Postgres, dbname: str = "postgres") -> psycopg.Connection[Any]:
    return psycopg.connect(layout_of(pg).admin_url(dbname), autocommit=True, connect_timeout=5)


def app(pg: Postgres) -> psycopg.Connection[Any]:
    return psycopg.connect(layout_of(pg).url(), autocommit=True, connect_timeout=5)


def proc_ids(pid: int, key: str) -> list[int]:
    """The ids on ``key``'s line of ``/proc/<pid>/status`` (``Uid``, ``Gid``: real, effective, saved, fs)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return [int(v) for v in line.split()[1:]]
    raise AssertionError(f"no {key} line in /proc/{pid}/status")


# --------------------------------------------------------------------------- without a server


def test_urls_quote_the_passwords_and_the_banner_hides_them() -> None:
    layout = embedded.PostgresLayout(
        Path("/data/postgres"), 5432, None, superuser_password="su:p@ss/w%rd", app_password="ap?p#pa ss@"
    )
    app_url, admin_url = make_url(layout.url()), make_url(layout.admin_url())
    assert (app_url.username, app_url.password, app_url.database) == ("gpuplane", "ap?p#pa ss@", "gpuplane")
    assert (admin_url.username, admin_url.password, admin_url.database) == ("postgres", "su:p@ss/w%rd", "postgres")
    assert redact(layout.url()) == f"postgresql://gpuplane:***@127.0.0.1:{layout.port}/gpuplane"
    assert redact(layout.admin_url()) == f"postgresql://postgres:***@127.0.0.1:{layout.port}/postgres"
    for password in (layout.superuser_password, layout.app_password):
        assert password not in repr(layout) and quote(password, safe="") not in repr(layout)


def test_a_password_file_that_is_not_printable_ascii_is_refused_before_anything_starts(tmp_path: Path) -> None:
    write_secret(embedded.postgres_secret_files(tmp_path)[1], "pässwort")
    with pytest.raises(ConfigError, match="postgres-gpuplane must be printable ASCII"):
        embedded.prepare_postgres(tmp_path, embedded.free_port())
    assert not (tmp_path / "postgres").exists()


# --------------------------------------------------------------------------- a fresh cluster


@integration
def test_secret_files_are_private_and_the_initdb_copy_is_gone(server: Postgres) -> None:
    layout = layout_of(server)
    assert stat.S_IMODE(layout.superuser_secret.parent.stat().st_mode) == 0o700
    for secret in (layout.superuser_secret, layout.app_secret):
        assert secret.parent == server.root / "secrets"
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        assert secret.stat().st_uid == os.geteuid()  # not PostgreSQL's user, when we are root
    assert layout.superuser_secret.read_text() == layout.superuser_password
    assert layout.app_secret.read_text() == layout.app_password
    assert layout.superuser_password != layout.app_password
    assert not list(layout.root.glob("*pwfile*"))
    log_text = layout.log.read_text(errors="replace")
    assert layout.superuser_password not in log_text and layout.app_password not in log_text


@integration
@OVER
@pytest.mark.parametrize("password", [None, "wrong"])
def test_the_superuser_without_its_password_is_refused(server: Postgres, over: str, password: str | None) -> None:
    reason = "no password supplied" if password is None else "password authentication failed"
    with pytest.raises(psycopg.OperationalError, match=reason):
        connect(server, "postgres", password, "postgres", over)


@integration
@OVER
def test_the_superuser_with_its_password_gets_in(server: Postgres, over: str) -> None:
    with connect(server, "postgres", layout_of(server).superuser_password, "postgres", over) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("postgres",)


@integration
def test_pg_hba_has_no_trust_line(server: Postgres) -> None:
    with superuser(server) as conn:
        rules = conn.execute("SELECT type, auth_method FROM pg_hba_file_rules").fetchall()
    assert rules and {method for _, method in rules} == {"scram-sha-256"}
    assert {kind for kind, _ in rules} == {"local", "host"}


@integration
def test_the_gpuplane_role_reaches_only_its_own_database(server: Postgres) -> None:
    with app(server) as conn:
        assert conn.execute("SELECT current_user, current_database()").fetchone() == ("gpuplane", "gpuplane")
    for other in ("postgres", "template1"):
        with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
            connect(server, "gpuplane", layout_of(server).app_password, other)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        connect(server, "gpuplane", "wrong", "gpuplane")


@integration
def test_the_gpuplane_role_has_no_rights_beyond_its_database(server: Postgres) -> None:
    with superuser(server) as conn:
        attributes = conn.execute(
            "SELECT rolcanlogin, rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls"
            " FROM pg_roles WHERE rolname = 'gpuplane'"
        ).fetchone()
        memberships = conn.execute(
            "SELECT count(*) FROM pg_auth_members WHERE member = 'gpuplane'::regrole"
        ).fetchone()
        owners = conn.execute(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'gpuplane'"
        ).fetchone()
    assert attributes == (True, False, False, False, False, False)
    assert memberships == (0,)
    assert owners == ("gpuplane",)
    with superuser(server, "gpuplane") as conn:
        schema_owner = conn.execute(
            "SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = 'public'"
        ).fetchone()
    assert schema_owner == ("gpuplane",)


@integration
def test_the_gpuplane_role_cannot_run_programs_or_read_server_files(server: Postgres) -> None:
    table = f"t_{uuid.uuid4().hex[:8]}"
    with app(server) as conn:
        conn.execute(f"CREATE TABLE {table} (line text)")  # it may create tables: migrations do
        try:
            for statement in (
                "COPY (SELECT 1) TO PROGRAM 'id'",
                f"COPY {table} FROM PROGRAM 'id'",
                f"COPY {table} FROM '/etc/passwd'",
                "SELECT pg_read_file('/etc/passwd')",
            ):
                with pytest.raises(errors.InsufficientPrivilege, match="permission denied"):
                    conn.execute(statement)
        finally:
            conn.execute(f"DROP TABLE {table}")


@integration
@as_root
def test_the_postmaster_holds_no_root_group(server: Postgres) -> None:
    assert server.process is not None
    entry = pwd.getpwnam(embedded.PG_SYSTEM_USER)
    pid = server.process.pid
    assert set(proc_ids(pid, "Uid")) == {entry.pw_uid}
    assert set(proc_ids(pid, "Gid")) == {entry.pw_gid} and 0 not in proc_ids(pid, "Gid")
    assert proc_ids(pid, "Groups") == []


@integration
@as_root
def test_a_program_the_server_runs_has_no_root_group(server: Postgres) -> None:
    """Today's attack, as the superuser with its password: `id` must not say gid=0(root)."""
    with superuser(server) as conn:
        conn.execute("CREATE TEMP TABLE id_out (line text)")
        conn.execute("COPY id_out FROM PROGRAM 'id'")
        row = conn.execute("SELECT line FROM id_out").fetchone()
    assert row is not None
    assert f"uid={pwd.getpwnam(embedded.PG_SYSTEM_USER).pw_uid}(" in row[0]
    assert "(root)" not in row[0] and "=0(" not in row[0] and ",0(" not in row[0]


@integration
def test_our_scram_verifier_is_the_one_the_server_computes(server: Postgres) -> None:
    role = f"t_{uuid.uuid4().hex[:8]}"
    with superuser(server) as conn:
        conn.execute(f"CREATE ROLE {role} PASSWORD 'Plain-Text_pass.1'")
        try:
            row = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (role,)).fetchone()
        finally:
            conn.execute(f"DROP ROLE {role}")
    assert row is not None
    stored: str = row[0]
    iterations, salt = stored.split("$")[1].split(":")
    assert embedded.scram_sha_256_verifier("Plain-Text_pass.1", base64.b64decode(salt), int(iterations)) == stored


@integration
def test_setup_is_idempotent_and_takes_back_rights_given_to_the_role(server: Postgres) -> None:
    layout = layout_of(server)
    with superuser(server) as conn:
        conn.execute("ALTER ROLE gpuplane SUPERUSER CREATEDB CREATEROLE PASSWORD 'something else'")
        conn.execute("GRANT pg_execute_server_program, pg_read_server_files TO gpuplane")
        conn.execute("GRANT CONNECT ON DATABASE postgres TO PUBLIC")
    embedded.ensure_database(layout)
    embedded.ensure_database(layout)
    test_the_gpuplane_role_has_no_rights_beyond_its_database(server)
    test_the_gpuplane_role_reaches_only_its_own_database(server)
    test_the_gpuplane_role_cannot_run_programs_or_read_server_files(server)
    assert layout.app_password not in layout.log.read_text(errors="replace")


# --------------------------------------------------------------------------- an older cluster


def make_trust_cluster(root: Path, port: int) -> None:
    """What gpuplane made before passwords: trust auth, the gpuplane database owned by postgres."""
    layout_root = root / "postgres"
    sockets = layout_root / "run"
    sockets.mkdir(parents=True)
    user = embedded.PG_SYSTEM_USER if os.geteuid() == 0 else None
    bin_dir = embedded.postgres_bin_dir()
    if user:
        embedded._ensure_system_user(user)
        embedded._open_path_for(layout_root)
        embedded._chown_tree(layout_root, user)
    pgdata = layout_root / "data"
    subprocess.run(
        [str(bin_dir / "initdb"), "-D", str(pgdata), "-U", "postgres", "--auth=trust", "--no-instructions"],
        check=True,
        capture_output=True,
        **popen_identity(user),
    )
    server = subprocess.Popen(
        [str(bin_dir / "postgres"), "-D", str(pgdata), "-p", str(port), "-h", "127.0.0.1", "-k", str(sockets)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        **popen_identity(user),
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                conn = psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres", autocommit=True)
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        with conn:
            conn.execute("CREATE DATABASE gpuplane")
        with psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="gpuplane", autocommit=True) as conn:
            conn.execute("CREATE TABLE settings (id serial PRIMARY KEY, value text NOT NULL)")
            conn.execute("INSERT INTO settings (value) VALUES ('from the old version')")
            conn.execute("CREATE SEQUENCE standalone_seq")
            conn.execute("CREATE TYPE mood AS ENUM ('ok', 'bad')")
            conn.execute("CREATE VIEW setting_values AS SELECT value FROM settings")
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(20)


@integration
def test_an_old_trust_cluster_is_converted_on_its_next_start(tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp("old")
    port = embedded.free_port()
    make_trust_cluster(root, port)
    pg = Postgres(root, port)
    pg.start()
    try:
        for over in ("tcp", "socket"):
            with pytest.raises(psycopg.OperationalError, match="no password supplied"):
                connect(pg, "postgres", None, "gpuplane", over)
        with superuser(pg, "gpuplane") as conn:
            owners = dict(
                conn.execute(
                    "SELECT c.relname, pg_get_userbyid(c.relowner) FROM pg_class c"
                    " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public'"
                ).fetchall()
            )
            mood_owner = conn.execute("SELECT pg_get_userbyid(typowner) FROM pg_type WHERE typname = 'mood'").fetchone()
        assert set(owners) >= {"settings", "settings_id_seq", "settings_pkey", "standalone_seq", "setting_values"}
        assert set(owners.values()) == {"gpuplane"}
        assert mood_owner == ("gpuplane",)
        test_the_gpuplane_role_has_no_rights_beyond_its_database(pg)
        with app(pg) as conn:
            conn.execute("INSERT INTO settings (value) VALUES ('from gpuplane')")
            conn.execute("ALTER TABLE settings ADD COLUMN note text")  # what a migration does
            assert conn.execute("SELECT value FROM settings ORDER BY id").fetchall() == [
                ("from the old version",),
                ("from gpuplane",),
            ]
        # The next start (single-user step, setup) changes nothing and loses nothing.
        pg.stop()
        pg.start()
        with app(pg) as conn:
            assert conn.execute("SELECT count(*) FROM settings").fetchone() == (2,)
        layout = layout_of(pg)
        log_text = layout.log.read_text(errors="replace")
        assert layout.superuser_password not in log_text and layout.app_password not in log_text
    finally:
        pg.stop()


@integration
def test_new_passwords_in_the_secret_files_take_effect_on_the_next_start(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    pg = Postgres(tmp_path_factory.mktemp("rot"))
    pg.start()
    try:
        old = layout_of(pg)
        pg.stop()
        write_secret(old.superuser_secret, "new-superuser-password")
        write_secret(old.app_secret, "new-gpuplane-password")
        pg.start()
        for user, password in (("postgres", old.superuser_password), ("gpuplane", old.app_password)):
            with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
                connect(pg, user, password, "gpuplane")
        with connect(pg, "postgres", "new-superuser-password", "gpuplane"):
            pass
        with connect(pg, "gpuplane", "new-gpuplane-password", "gpuplane"):
            pass
    finally:
        pg.stop()
