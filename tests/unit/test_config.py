import pytest
from pydantic import ValidationError

from backend.config import Settings


def test_settings_refuse_a_visibility_timeout_shorter_than_a_job(monkeypatch):
    monkeypatch.setenv("DYNASCOPE_VISIBILITY_TIMEOUT", "60")
    with pytest.raises(ValidationError, match="visibility_timeout"):
        Settings()


def test_heartbeat_timeout_must_allow_missed_beats(monkeypatch):
    monkeypatch.setenv("DYNASCOPE_HEARTBEAT_INTERVAL", "5")
    monkeypatch.setenv("DYNASCOPE_HEARTBEAT_TIMEOUT", "6")
    with pytest.raises(ValidationError, match="heartbeat_timeout"):
        Settings()


def test_defaults_are_the_embedded_mode(monkeypatch):
    for key in ("DATABASE_URL", "BROKER_URL", "PORT", "HOST"):
        monkeypatch.delenv(f"DYNASCOPE_{key}", raising=False)
    settings = Settings()
    assert settings.database_url.startswith("sqlite:///") and settings.broker_url == ""
    assert settings.host == "127.0.0.1" and settings.port == 8000


def test_cors_refuses_a_wildcard(monkeypatch):
    monkeypatch.setenv("DYNASCOPE_CORS_ORIGINS", '["*"]')
    with pytest.raises(ValidationError, match="not \\*"):
        Settings()
