"""The record-of-readings tests of test_records.py, run against a real PostgreSQL server that this
test module starts: ``initdb`` + ``pg_ctl`` (Debian's ``postgresql`` package,
/usr/lib/postgresql/*/bin) in a temporary folder, as a non-root user (``postgres`` via ``runuser``
when the tests run as root), on a free loopback port; one fresh database per test.

Skipped, with the reason, where the PostgreSQL server binaries are absent — and failed instead
under ``FRACDET_REQUIRE_OPTIONAL=1`` (CI step 2, which installs them)."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

pytest.importorskip("sqlalchemy")
pytest.importorskip("psycopg")

from optional import missing_optional  # noqa: E402
from test_records import (  # noqa: E402,F401  the same tests, with the db_url fixture below
    predictor,
    sample_predictions,
    test_agreement_stats,
    test_api_records_name_only_export,
    test_feedback_export_is_a_manifest_evaluate_reads,
    test_migrations_create_the_schema_once,
    test_record_predictions_from_files,
    test_records_cli,
)

PG_USER = "fracdet"


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: [int(x) for x in Path(p).parts[-3].split(".") if x.isdigit()])
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="fracdet-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.prefix: list[str] = []
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            import pwd

            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                pw = pwd.getpwnam("nobody")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
            self.prefix = ["runuser", "-u", pw.pw_name, "--"]

    def run(self, *args: str, timeout: int = 60) -> None:
        out = subprocess.run(self.prefix + list(args), capture_output=True, text=True, timeout=timeout)
        if out.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(args[:2])} failed ({out.returncode}): {out.stderr[-2000:]} {tail}")

    def start(self) -> None:
        self.run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", PG_USER, "-A", "trust", "-E", "UTF8",
                 "--no-sync", "--no-instructions")
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
        self.run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-o", opts, "-l", str(self.root / "server.log"),
                 "-w", "-t", "60", "start", timeout=90)

    def stop(self) -> None:
        try:
            self.run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str) -> str:
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/{database}"


@pytest.fixture(scope="module")
def postgres_server():
    bindir = _bin_dir()
    if bindir is None or not (bindir / "pg_ctl").exists():
        missing_optional("PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql")
    server = _Server(bindir)
    try:
        server.start()
    except Exception:
        server.stop()
        raise
    yield server
    from fracdet.serve import records

    for url in [u for u in records._STORES if f":{server.port}/" in u]:  # close pooled connections first
        records._STORES.pop(url).close()
    server.stop()


@pytest.fixture()
def db_url(postgres_server):
    import psycopg

    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(f"host=127.0.0.1 port={postgres_server.port} user={PG_USER} dbname=postgres",
                         autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return postgres_server.url(name)


def test_the_server_is_postgresql(db_url):
    from sqlalchemy import text

    from fracdet.serve.records import open_store

    store = open_store(db_url)
    assert store.engine.dialect.name == "postgresql" and store.engine.driver == "psycopg"
    with store.engine.connect() as conn:
        assert "PostgreSQL" in conn.execute(text("select version()")).scalar()
