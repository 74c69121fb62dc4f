"""The `interlace` command: settings errors are one line with exit status 2, secrets never printed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from app.cli import cli, redact_url


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """A clean environment (none of the developer's INTERLACE_* settings) with the data dir in tmp_path."""
    for name in list(os.environ):
        if name.startswith("INTERLACE_") or name in {"DATABASE_URL", "REDIS_URL"}:
            monkeypatch.delenv(name)
    monkeypatch.setenv("INTERLACE_DATA_DIR", str(tmp_path / "data"))
    return {"INTERLACE_DATA_DIR": str(tmp_path / "data")}


def run_interlace(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """The real console entry point in a child process: what a user sees, tracebacks included."""
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith("INTERLACE_") and k not in {"DATABASE_URL", "REDIS_URL"}
    }
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        env={**clean, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_config_prints_every_setting_under_its_variable_name(env: dict[str, str]) -> None:
    result = CliRunner().invoke(cli, ["config"], env={"INTERLACE_PORT": "9001", "INTERLACE_AUTH": "off"})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "INTERLACE_PORT=9001" in lines
    assert "INTERLACE_AUTH=off" in lines
    assert f"INTERLACE_DATA_DIR={env['INTERLACE_DATA_DIR']}" in lines
    assert f"# database: sqlite:///{Path(env['INTERLACE_DATA_DIR']).resolve() / 'interlace.db'}" in lines


def test_config_redacts_passwords_in_urls(env: dict[str, str]) -> None:
    result = CliRunner().invoke(
        cli,
        ["config"],
        env={
            "DATABASE_URL": "postgres://app:s3cret-db@db.example:5432/fhir",
            "REDIS_URL": "redis://:s3cret-r@cache/0",
            "INTERLACE_KEY_SECRET": "s3cret-k",
            "INTERLACE_ODOO_API_KEY": "s3cret-o",
        },
    )
    assert result.exit_code == 0, result.output
    assert "s3cret" not in result.output
    assert "INTERLACE_DATABASE_URL=postgres://app:***@db.example:5432/fhir" in result.stdout.splitlines()
    assert "# redis: redis://:***@cache/0" in result.stdout.splitlines()
    assert "INTERLACE_KEY_SECRET=***" in result.stdout.splitlines()
    assert "INTERLACE_ODOO_API_KEY=***" in result.stdout.splitlines()


def test_config_warns_about_unknown_interlace_variables(env: dict[str, str]) -> None:
    result = CliRunner().invoke(cli, ["config"], env={"INTERLACE_PROT": "9000"})
    assert result.exit_code == 0
    assert "warning: INTERLACE_PROT is not a known setting and is ignored" in result.stderr


@pytest.mark.parametrize("command", [["config"], ["serve"], ["db", "upgrade"]])
def test_bad_setting_exits_2_with_one_actionable_line(command: list[str], tmp_path: Path) -> None:
    result = run_interlace(command, {"INTERLACE_THREADS": "many"}, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["Error: INTERLACE_THREADS='many': expected a whole number"]
    assert not (tmp_path / "var").exists(), "nothing may be created before the settings are valid"


def test_serve_rejects_an_out_of_range_port_flag(env: dict[str, str]) -> None:
    result = CliRunner().invoke(cli, ["serve", "--port", "70000"])
    assert result.exit_code == 2
    assert "70000 is not in the range 0<=x<=65535" in result.output


def test_db_upgrade_reports_the_migration_then_that_nothing_is_left(env: dict[str, str]) -> None:
    first = CliRunner().invoke(cli, ["db", "upgrade"])
    assert first.exit_code == 0, first.output
    assert "upgraded from revision (empty) to" in first.stdout
    second = CliRunner().invoke(cli, ["db", "upgrade"])
    assert second.exit_code == 0, second.output
    assert "already at revision" in second.stdout
    assert (Path(env["INTERLACE_DATA_DIR"]) / "interlace.db").is_file()


def test_unreachable_database_is_one_line_without_the_password(tmp_path: Path) -> None:
    # Port 1 on loopback refuses at once: no waiting on a timeout.
    result = run_interlace(
        ["db", "upgrade"], {"DATABASE_URL": "postgresql://postgres:pw-not-shown@127.0.0.1:1/nope"}, cwd=tmp_path
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: database postgresql+psycopg://postgres:***@127.0.0.1:1/nope")
    assert "pw-not-shown" not in result.stderr + result.stdout


def test_version_comes_from_the_installed_distribution() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert result.output.startswith("interlace, version ")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:pw@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("redis://:pw@cache/0", "redis://:***@cache/0"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("sqlite:////var/x.db", "sqlite:////var/x.db"),
    ],
)
def test_redact_url_hides_only_the_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@pytest.mark.slow
def test_mllp_command_listens_then_stops_cleanly_on_sigterm(env: dict[str, str], tmp_path: Path) -> None:
    log_path = tmp_path / "mllp.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "mllp", "--port", "0"],
            cwd=tmp_path,
            env={**os.environ, "INTERLACE_LOG_LEVEL": "INFO"},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 90  # hang guard only
        while "Interlace MLLP listener on 127.0.0.1:" not in log_path.read_text():
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, log_path.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert "Traceback" not in log_path.read_text()


def test_events_replay_needs_exactly_one_target(env: dict[str, str]) -> None:
    result = CliRunner().invoke(cli, ["events", "replay", "some-id", "--all"])
    assert result.exit_code == 2
    assert "give exactly one of LETTER_ID, --all or --since" in result.output


def test_events_commands_on_an_unmigrated_database_say_to_upgrade(tmp_path: Path) -> None:
    result = run_interlace(["events", "replay", "--since", "2026-01-01"], {}, cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "interlace db upgrade" in lines[0], result.stderr


def test_events_dead_lists_nothing_on_a_fresh_install(tmp_path: Path) -> None:
    assert run_interlace(["db", "upgrade"], {}, cwd=tmp_path).returncode == 0
    result = run_interlace(["events", "dead"], {}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


REDIS_URL = os.environ.get("INTERLACE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def test_clients_add_list_then_tokens_mint_narrows_to_the_registration(env: dict[str, str], tmp_path: Path) -> None:
    run = CliRunner()
    cli_env = {"INTERLACE_REDIS_URL": REDIS_URL}
    assert run.invoke(cli, ["db", "upgrade"], env=cli_env).exit_code == 0
    added = run.invoke(
        cli, ["clients", "add", "lab-feed", "--scope", "system/Observation.cruds", "--secret"], env=cli_env
    )
    assert added.exit_code == 0, added.output
    assert "registered lab-feed" in added.stdout
    secret_line = [line for line in added.stdout.splitlines() if line.startswith("client secret")]
    assert secret_line and len(secret_line[0].split(": ", 1)[1]) >= 20

    listed = run.invoke(cli, ["clients", "list"], env=cli_env)
    assert listed.exit_code == 0, listed.output
    assert '"client_id": "lab-feed"' in listed.stdout
    assert "secret_hash" not in listed.stdout and "scrypt" not in listed.stdout

    minted = run.invoke(
        cli,
        ["tokens", "mint", "--client", "lab-feed", "--scope", "system/Observation.rs system/Patient.rs"],
        env=cli_env,
    )
    assert minted.exit_code == 0, minted.output
    assert '"access_token"' in minted.stdout
    assert '"scope": "system/Observation.rs"' in minted.stdout  # Patient is beyond the registration

    refused = run.invoke(cli, ["tokens", "mint", "--client", "nobody", "--scope", "system/*.rs"], env=cli_env)
    assert refused.exit_code == 1
    assert "not registered" in refused.output


def test_clients_disable_stops_minting(env: dict[str, str]) -> None:
    run = CliRunner()
    cli_env = {"INTERLACE_REDIS_URL": REDIS_URL}
    assert run.invoke(cli, ["db", "upgrade"], env=cli_env).exit_code == 0
    assert (
        run.invoke(cli, ["clients", "add", "old-app", "--scope", "system/*.rs", "--secret"], env=cli_env).exit_code == 0
    )
    assert run.invoke(cli, ["clients", "disable", "old-app"], env=cli_env).exit_code == 0
    minted = run.invoke(cli, ["tokens", "mint", "--client", "old-app", "--scope", "system/*.rs"], env=cli_env)
    assert minted.exit_code == 1
    assert "disabled" in minted.output


def test_hl7v2_reprocess_needs_exactly_one_target(env: dict[str, str]) -> None:
    result = CliRunner().invoke(cli, ["hl7v2", "reprocess"])
    assert result.exit_code == 2
    assert "exactly one of MESSAGE_ID or --status" in result.output


def test_hl7v2_reprocess_of_an_unknown_message_says_so(env: dict[str, str]) -> None:
    run = CliRunner()
    assert run.invoke(cli, ["db", "upgrade"]).exit_code == 0
    result = run.invoke(cli, ["hl7v2", "reprocess", "no-such-message"])
    assert result.exit_code == 1
    assert "no-such-message" in result.output
