"""Settings: every INTERLACE_* variable is parsed, validated once, and documented in the README."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from app.config import ConfigError, Settings, load_settings, normalize_database_url

README = Path(__file__).resolve().parents[1] / "README.md"


def test_empty_environment_gives_the_documented_defaults() -> None:
    settings = load_settings({})
    assert settings == Settings()
    assert settings.auth is True
    assert settings.effective_database_url == f"sqlite:///{Path('var', 'interlace.db').resolve()}"


@pytest.mark.parametrize(
    ("raw", "expected"), [("off", False), ("0", False), ("No", False), ("on", True), ("TRUE", True)]
)
def test_auth_accepts_the_usual_boolean_spellings(raw: str, expected: bool) -> None:
    assert load_settings({"INTERLACE_AUTH": raw}).auth is expected


def test_bad_boolean_names_the_variable_and_the_valid_values() -> None:
    with pytest.raises(ConfigError, match=r"INTERLACE_AUTH='maybe': expected one of on/off"):
        load_settings({"INTERLACE_AUTH": "maybe"})


def test_numbers_are_parsed_and_a_non_number_names_the_variable() -> None:
    settings = load_settings({"INTERLACE_PORT": "9000", "INTERLACE_WORKERS": "3", "INTERLACE_THREADS": "8"})
    assert (settings.port, settings.workers, settings.threads) == (9000, 3, 8)
    with pytest.raises(ConfigError, match=r"INTERLACE_WORKERS='two': expected a whole number"):
        load_settings({"INTERLACE_WORKERS": "two"})


def test_port_zero_is_allowed_but_zero_workers_is_not() -> None:
    assert load_settings({"INTERLACE_PORT": "0"}).port == 0
    with pytest.raises(ConfigError, match=r"INTERLACE_WORKERS=0: must be at least 1"):
        load_settings({"INTERLACE_WORKERS": "0"})


def test_data_dir_moves_the_default_sqlite_file(tmp_path: Path) -> None:
    settings = load_settings({"INTERLACE_DATA_DIR": str(tmp_path)})
    assert settings.data_dir == tmp_path
    assert settings.effective_database_url == f"sqlite:///{tmp_path / 'interlace.db'}"


@pytest.mark.parametrize(
    "url",
    ["postgres://u:p@db.example/x", "postgresql://u:p@db.example/x", "postgresql+psycopg://u:p@db.example/x"],
)
def test_postgres_urls_are_normalised_to_the_psycopg3_driver(url: str) -> None:
    settings = load_settings({"DATABASE_URL": url})
    assert settings.effective_database_url == "postgresql+psycopg://u:p@db.example/x"


def test_unsupported_database_is_refused_at_load_without_echoing_credentials() -> None:
    with pytest.raises(ConfigError, match="only sqlite:///path and postgresql://") as excinfo:
        load_settings({"DATABASE_URL": "mysql://root:hunter2@db/x"})
    assert "hunter2" not in str(excinfo.value)


def test_prefixed_variables_win_over_the_platform_ones() -> None:
    env = {
        "DATABASE_URL": "postgres://platform/db",
        "INTERLACE_DATABASE_URL": "sqlite:////srv/interlace.db",
        "REDIS_URL": "redis://platform:6379/0",
        "INTERLACE_REDIS_URL": "redis://mine:6379/1",
    }
    settings = load_settings(env)
    assert settings.effective_database_url == "sqlite:////srv/interlace.db"
    assert settings.redis_url == "redis://mine:6379/1"


def test_platform_redis_url_is_used_when_no_prefixed_one_is_set() -> None:
    assert load_settings({"REDIS_URL": "redis://platform:6379/0"}).redis_url == "redis://platform:6379/0"


def test_log_level_is_case_insensitive_and_checked() -> None:
    assert load_settings({"INTERLACE_LOG_LEVEL": "debug"}).log_level == "DEBUG"
    with pytest.raises(ConfigError, match="INTERLACE_LOG_LEVEL='loud'"):
        load_settings({"INTERLACE_LOG_LEVEL": "loud"})


def test_max_count_below_default_count_is_refused() -> None:
    with pytest.raises(ConfigError, match="INTERLACE_MAX_COUNT must be >= INTERLACE_DEFAULT_COUNT"):
        load_settings({"INTERLACE_DEFAULT_COUNT": "50", "INTERLACE_MAX_COUNT": "10"})


def test_unknown_prefixed_variables_are_kept_aside_not_applied() -> None:
    settings = load_settings({"INTERLACE_PROT": "9000", "PATH": "/bin"})
    assert settings.port == 8080
    assert dict(settings.extra) == {"INTERLACE_PROT": "9000"}


def test_normalize_database_url_leaves_sqlite_alone() -> None:
    assert normalize_database_url("sqlite:///x.db") == "sqlite:///x.db"


def test_readme_documents_every_setting() -> None:
    text = README.read_text()
    missing = [f"INTERLACE_{f.name.upper()}" for f in fields(Settings) if f.name != "extra"]
    missing = [name for name in missing if f"`{name}`" not in text]
    assert missing == [], f"add these to the configuration table in README.md: {missing}"
