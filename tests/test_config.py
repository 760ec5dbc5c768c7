"""Settings: committed defaults, environment overrides, one clear line per bad value."""

from __future__ import annotations

from pathlib import Path

import pytest

from digest_core.config import ConfigError, Secret, load_settings

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "config" / "digestbot.toml"


def test_defaults_from_committed_file() -> None:
    s = load_settings(env={}, path=CONFIG)
    assert s.profile.name == "Image Restoration researcher"
    assert "flow matching" in s.profile.topics
    assert (s.digest.top_n, s.digest.pick, s.digest.threshold) == (15, 2, 60)
    assert s.digest.language == "zh"
    assert s.llm.base_url == "https://api.openai.com/v1"
    assert s.sources.hf_endpoint == "https://huggingface.co"
    assert not s.llm.enabled and not s.slack.enabled and not s.telegram.enabled
    assert s.port == 3000
    assert str(s.db_path) == "data/digestbot.db"


def test_packaged_copy_matches_committed_config() -> None:
    packaged = ROOT / "digest_core" / "data" / "digestbot.toml"
    assert packaged.read_text(encoding="utf-8") == CONFIG.read_text(encoding="utf-8")


def test_environment_overrides_file() -> None:
    env = {
        "OPENAI_API_KEY": "sk-test-abcdefghijklmnop",
        "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
        "DIGEST_LLM_MODEL": "qwen2.5",
        "HF_ENDPOINT": "http://127.0.0.1:9/",
        "DIGEST_TIMEZONE": "Europe/Berlin",
        "DIGEST_TIME": "07:30",
        "SLACK_BOT_TOKEN": "xoxb-test-1",
        "SLACK_CHANNELS": "C123, C456",
        "TELEGRAM_BOT_TOKEN": "123456:ABCdef_-",
        "TELEGRAM_CHATS": "-100123:7,42",
        "PORT": "8080",
        "DIGEST_DB": "/tmp/x.db",
    }
    s = load_settings(env=env, path=CONFIG)
    assert s.llm.enabled and s.llm.model == "qwen2.5"
    assert s.sources.hf_endpoint == "http://127.0.0.1:9"
    assert s.digest.timezone == "Europe/Berlin" and s.digest.time == "07:30"
    assert s.slack.channels == ("C123", "C456")
    assert s.telegram.chats == ("-100123:7", "42")
    assert s.port == 8080


def test_digest_time_off() -> None:
    assert load_settings(env={"DIGEST_TIME": "off"}, path=CONFIG).digest.time is None


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"DIGEST_TIME": "25:00"}, "DIGEST_TIME"),
        ({"DIGEST_TIMEZONE": "Mars/Olympus"}, "DIGEST_TIMEZONE"),
        ({"PORT": "http"}, "PORT"),
        ({"OPENAI_BASE_URL": "not a url"}, "OPENAI_BASE_URL"),
        ({"SLACK_CHANNELS": "C1"}, "SLACK_BOT_TOKEN"),
        ({"SLACK_BOT_TOKEN": "xoxp-user-token"}, "SLACK_BOT_TOKEN"),
        ({"TELEGRAM_BOT_TOKEN": "nonsense"}, "TELEGRAM_BOT_TOKEN"),
        ({"TELEGRAM_BOT_TOKEN": "1:a", "TELEGRAM_CHATS": "general"}, "TELEGRAM_CHATS"),
        ({"TELEGRAM_WEBHOOK_SECRET": "has space"}, "TELEGRAM_WEBHOOK_SECRET"),
        ({"TELEGRAM_WEBHOOK_URL": "https://bot.example/telegram"}, "TELEGRAM_WEBHOOK_SECRET"),
        ({"TELEGRAM_WEBHOOK_SECRET": "s3cret_value"}, "TELEGRAM_WEBHOOK_URL"),
        ({"DIGEST_CONFIG": "/nonexistent/digestbot.toml"}, "DIGEST_CONFIG"),
    ],
)
def test_bad_values_name_the_key(env: dict[str, str], key: str) -> None:
    path = None if "DIGEST_CONFIG" in env else CONFIG
    with pytest.raises(ConfigError) as info:
        load_settings(env=env, path=path)
    message = str(info.value)
    assert message.startswith(key) and "\n" not in message


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ("threshold = 60", "threshold = 160", "digest.threshold"),
        (
            "user_requests_per_hour = 20",
            "user_requests_per_hour = 0",
            "interactive.user_requests_per_hour",
        ),
        ("poll_minutes = 20", "poll_minutes = 0", "digest.poll_minutes"),
        (
            "daily_token_budget = 2000000",
            "daily_token_budget = -5",
            "interactive.daily_token_budget",
        ),
        ("timeout_seconds = 120", "timeout_seconds = 0", "llm.timeout_seconds"),
    ],
)
def test_bad_toml_value_names_the_key(tmp_path: Path, old: str, new: str, key: str) -> None:
    bad = tmp_path / "c.toml"
    text = CONFIG.read_text(encoding="utf-8")
    assert old in text
    bad.write_text(text.replace(old, new))
    with pytest.raises(ConfigError) as info:
        load_settings(env={}, path=bad)
    assert str(info.value).startswith(key + ":")


def test_secret_values_never_print() -> None:
    s = load_settings(env={"OPENAI_API_KEY": "sk-very-secret-value-123"}, path=CONFIG)
    assert "sk-very" not in repr(s) and "sk-very" not in str(s.llm)
    assert repr(Secret("x")) == "Secret('***')"
    with pytest.raises(ConfigError) as info:
        load_settings(env={"SLACK_BOT_TOKEN": "xoxp-secret-user-token"}, path=CONFIG)
    assert "secret" not in str(info.value)
