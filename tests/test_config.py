"""Settings: committed defaults, environment overrides, one clear line per bad value."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from bot.settings import AppSettings, load_settings
from digest_core.config import ConfigError, Secret

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


def test_defaults_load_with_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # As an installed `digestbot` run outside the checkout: no config/ folder, no DIGEST_CONFIG.
    monkeypatch.chdir(tmp_path)
    s = load_settings(env={})
    assert s == load_settings(env={}, path=CONFIG).model_copy(
        update={"config_path": Path("config/digestbot.toml")}
    )
    assert s.profile.name == "Image Restoration researcher"
    assert s.llm.answer_token_budget == 24000


def _documented(text: str) -> dict[str, object]:
    """`# key = value` lines of the committed file, by table: the documented defaults."""
    values: dict[str, object] = {}
    table = ""
    for line in text.splitlines():
        if line.startswith("[") and line.endswith("]"):
            table = line.strip("[]")
        elif m := re.match(r"^# ([a-z_]+) = (.+?)(\s{2,}#.*)?$", line):
            values[f"{table}.{m[1]}"] = tomllib.loads(f"v = {m[2]}")["v"]
    return values


def test_committed_file_documents_every_key_with_its_default() -> None:
    """The file shows each key commented out with the model's default: one source of truth."""
    documented = _documented(CONFIG.read_text(encoding="utf-8"))
    defaults = AppSettings()
    expected: dict[str, object] = {}
    tables = (
        "profile",
        "digest",
        "llm",
        "sources",
        "retry",
        "interactive",
        "serve",
        "team",
        "roundup",
    )
    for table in tables:
        section = getattr(defaults, table)
        for name in type(section).model_fields:
            key = f"{table}.{name}"
            if name == "retry":
                continue  # the [retry] table, handed down
            if key in AppSettings.ENV_VARS.values() and key not in AppSettings.FILE_KEYS:
                continue  # only from the environment
            value = getattr(section, name)
            expected[key] = list(value) if isinstance(value, tuple) else value
    assert documented == expected


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
        ("poll_minutes = 20.0", "poll_minutes = 0", "digest.poll_minutes"),
        (
            "daily_token_budget = 2000000",
            "daily_token_budget = -5",
            "interactive.daily_token_budget",
        ),
        ("timeout_seconds = 120.0", "timeout_seconds = 0", "llm.timeout_seconds"),
    ],
)
def test_bad_toml_value_names_the_key(tmp_path: Path, old: str, new: str, key: str) -> None:
    bad = tmp_path / "c.toml"
    text = CONFIG.read_text(encoding="utf-8")
    # The committed file shows each key commented out with its default: set it.
    assert "# " + old in text
    bad.write_text(text.replace("# " + old, new))
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


def test_typo_is_refused_with_the_nearest_key(tmp_path: Path) -> None:
    bad = tmp_path / "c.toml"
    bad.write_text("[digest]\ntreshold = 70\n")
    with pytest.raises(ConfigError) as info:
        load_settings(env={}, path=bad)
    assert str(info.value) == f"{bad}: unknown key digest.treshold (did you mean digest.threshold?)"


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("[digets]\n", "unknown key digets (did you mean digest?)"),
        ("[interactive]\nthread_memory = 3\n", "unknown key interactive.thread_memory "),
        ("[llm]\nmodle = 'x'\n", "unknown key llm.modle (did you mean llm.model?)"),
        ("[sources]\nzzz = 1\n", "unknown key sources.zzz"),
    ],
)
def test_unknown_keys_anywhere_are_refused(tmp_path: Path, text: str, line: str) -> None:
    bad = tmp_path / "c.toml"
    bad.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(env={}, path=bad)
    message = str(info.value)
    assert message.startswith(f"{bad}: ") and "\n" not in message
    assert (message + " ").startswith(f"{bad}: {line}")


def test_secret_in_the_file_is_refused_without_echoing_it(tmp_path: Path) -> None:
    bad = tmp_path / "c.toml"
    bad.write_text('[llm]\napi_key = "sk-from-the-file-123"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(env={}, path=bad)
    assert "OPENAI_API_KEY" in str(info.value) and "sk-from" not in str(info.value)


def test_environment_wins_over_the_file(tmp_path: Path) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text('[digest]\ntime = "09:00"\ntimezone = "UTC"\n[llm]\nmodel = "file-model"\n')
    from_file = load_settings(env={}, path=conf)
    assert (from_file.digest.time, from_file.digest.timezone) == ("09:00", "UTC")
    assert from_file.llm.model == "file-model"
    env = {"DIGEST_TIME": "10:15", "DIGEST_TIMEZONE": "Europe/Paris", "DIGEST_LLM_MODEL": "env"}
    s = load_settings(env=env, path=conf)
    assert (s.digest.time, s.digest.timezone, s.llm.model) == ("10:15", "Europe/Paris", "env")
    # An empty variable counts as unset, as before.
    assert load_settings(env={"DIGEST_TIME": " "}, path=conf).digest.time == "09:00"


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"PORT": "99999"}, "PORT"),
        ({"DIGEST_TIME": "7pm"}, "DIGEST_TIME"),
        ({"ARXIV_API_URL": "ftp://arxiv"}, "ARXIV_API_URL"),
        ({"TELEGRAM_WEBHOOK_URL": "x", "TELEGRAM_WEBHOOK_SECRET": "ok"}, "TELEGRAM_WEBHOOK_URL"),
        ({"SLACK_APP_TOKEN": "xoxb-not-an-app-token"}, "SLACK_APP_TOKEN"),
    ],
)
def test_malformed_env_var_is_one_line_naming_it(env: dict[str, str], name: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env=env, path=CONFIG)
    message = str(info.value)
    assert message.startswith(name + ": ") and "\n" not in message
    assert "validation error" not in message and "pydantic" not in message
    if "TOKEN" in name or "SECRET" in name:
        assert all(v not in message for v in env.values())


def test_settings_are_frozen() -> None:
    s = load_settings(env={}, path=CONFIG)
    with pytest.raises(ValueError):
        s.digest.threshold = 10  # type: ignore[misc]


def test_retry_table_reaches_every_slice_that_calls_out(tmp_path: Path) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text("[retry]\njitter = 0.5\nbackoff_max_seconds = 4\n")
    s = load_settings(env={}, path=conf)
    assert s.retry.jitter == s.llm.retry.jitter == s.sources.retry.jitter == 0.5
    assert s.sources.retry.backoff_max_seconds == 4.0
    conf.write_text("[retry]\njitter = 2\n")
    with pytest.raises(ConfigError, match=r"^retry\.jitter: "):
        load_settings(env={}, path=conf)


async def test_a_typo_stops_start_up_with_one_line_and_exit_code_2(tmp_path: Path) -> None:
    from fakes.world import run_cli

    conf = tmp_path / "digestbot.toml"
    conf.write_text("[digest]\ntreshold = 70\n")
    env = {"DIGEST_CONFIG": str(conf), "DIGEST_DB": str(tmp_path / "x.db")}
    code, out, err = await run_cli(["digest", "--dry-run"], env)
    assert code == 2 and out == ""
    assert err == (
        f"digestbot: {conf}: unknown key digest.treshold (did you mean digest.threshold?)\n"
    )
