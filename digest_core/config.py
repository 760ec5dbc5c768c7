"""Settings: the committed TOML defaults, overridden by the contract's environment variables.

Loaded once at start into frozen objects; each component gets its slice. A missing or
malformed value raises ConfigError with one line naming the key. Secrets are wrapped in
`Secret`, whose repr and str never show the value.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


class ConfigError(ValueError):
    """A setting is missing or malformed. The message names the key, never a secret value."""


class Secret:
    """A credential. Printing it shows only that it is set."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class Profile:
    name: str
    focus: str
    topics: tuple[str, ...]


@dataclass(frozen=True)
class LLMSettings:
    api_key: Secret | None
    base_url: str
    model: str
    timeout_seconds: float = 120.0
    max_retries: int = 2
    max_concurrency: int = 4
    structured_output: str = "auto"  # auto | json_schema | json_object | prompt
    score_batch_size: int = 15
    fulltext_token_budget: int = 12000
    answer_token_budget: int = 24000  # a question gets the whole paper when it fits this

    @property
    def enabled(self) -> bool:
        return self.api_key is not None


@dataclass(frozen=True)
class SourceSettings:
    hf_endpoint: str
    arxiv_api_url: str
    arxiv_url: str
    user_agent: str = "digestbot/0.1 (+https://github.com/digestbot)"
    timeout_seconds: float = 30.0
    arxiv_min_interval_seconds: float = 3.0
    retries: int = 2


@dataclass(frozen=True)
class DigestSettings:
    top_n: int = 15
    pick: int = 2
    threshold: int = 60
    language: str = "zh"
    timezone: str = "Asia/Shanghai"
    time: str | None = "16:30"  # None when DIGEST_TIME=off
    catch_up_hours: float = 6.0
    wait_until: str = "20:00"  # local cut-off for waiting on HF's list to fill
    poll_minutes: float = 20.0
    empty_day_notice: bool = False

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


@dataclass(frozen=True)
class SlackSettings:
    bot_token: Secret | None
    signing_secret: Secret | None
    app_token: Secret | None
    api_url: str
    channels: tuple[str, ...]

    @property
    def enabled(self) -> bool:
        return self.bot_token is not None


@dataclass(frozen=True)
class TelegramSettings:
    bot_token: Secret | None
    api_url: str
    chats: tuple[str, ...]
    webhook_url: str | None
    webhook_secret: Secret | None

    @property
    def enabled(self) -> bool:
        return self.bot_token is not None


@dataclass(frozen=True)
class InteractiveSettings:
    user_requests_per_hour: int = 20
    daily_token_budget: int = 2_000_000
    allowed_slack_teams: tuple[str, ...] = ()
    allowed_telegram_chats: tuple[str, ...] = ()
    thread_memory_turns: int = 6


@dataclass(frozen=True)
class Settings:
    profile: Profile
    llm: LLMSettings
    sources: SourceSettings
    digest: DigestSettings
    slack: SlackSettings
    telegram: TelegramSettings
    interactive: InteractiveSettings
    db_path: Path
    port: int = 3000
    config_path: Path = field(default=Path("config/digestbot.toml"))

    def secrets(self) -> list[str]:
        """Every secret value, for the log redactor."""
        values = [
            self.llm.api_key,
            self.slack.bot_token,
            self.slack.signing_secret,
            self.slack.app_token,
            self.telegram.bot_token,
            self.telegram.webhook_secret,
        ]
        return [s.get() for s in values if s is not None and s.get()]


_TIME = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$")


def _get(table: Mapping[str, Any], key: str, kind: type, default: Any, where: str) -> Any:
    value = table.get(key, default)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{where}.{key}: expected {kind.__name__}, got {value!r}")
    return value


def _secret(env: Mapping[str, str], name: str) -> Secret | None:
    value = env.get(name, "").strip()
    return Secret(value) if value else None


def _url(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name, "").strip() or default
    if not re.match(r"^https?://[^\s/]+", value):
        raise ConfigError(f"{name}: expected an http(s) URL, got {value!r}")
    return value


def _list(env: Mapping[str, str], name: str, pattern: str) -> tuple[str, ...]:
    raw = env.get(name, "").strip()
    if not raw:
        return ()
    items = tuple(part.strip() for part in raw.split(",") if part.strip())
    for item in items:
        if not re.fullmatch(pattern, item):
            raise ConfigError(f"{name}: {item!r} is not a valid entry")
    return items


def _time(value: str, name: str) -> str:
    if not _TIME.match(value):
        raise ConfigError(f"{name}: expected HH:MM (24-hour), got {value!r}")
    return value


def load_settings(env: Mapping[str, str] | None = None, path: str | Path | None = None) -> Settings:
    """Read the config file and the environment. Raises ConfigError with one line."""
    env = os.environ if env is None else env
    config_path = Path(path or env.get("DIGEST_CONFIG") or "config/digestbot.toml")
    data: dict[str, Any] = {}
    if config_path.exists():
        try:
            data = tomllib.loads(config_path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"DIGEST_CONFIG: {config_path} is not valid TOML ({exc})") from None
    elif env.get("DIGEST_CONFIG"):
        raise ConfigError(f"DIGEST_CONFIG: file {config_path} does not exist")
    else:
        data = _packaged_defaults()

    prof = data.get("profile", {})
    topics = prof.get("topics", [])
    if not isinstance(topics, list) or not all(isinstance(t, str) for t in topics) or not topics:
        raise ConfigError("profile.topics: expected a non-empty list of strings")
    profile = Profile(
        name=_get(prof, "name", str, "", "profile") or _missing("profile.name"),
        focus=_get(prof, "focus", str, "", "profile"),
        topics=tuple(topics),
    )

    d = data.get("digest", {})
    language = _get(d, "language", str, "zh", "digest")
    if language not in ("zh", "en"):
        raise ConfigError(f"digest.language: expected 'zh' or 'en', got {language!r}")
    timezone = env.get("DIGEST_TIMEZONE", "").strip() or _get(d, "timezone", str, "UTC", "digest")
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"DIGEST_TIMEZONE: unknown time zone {timezone!r}") from None
    time_raw = env.get("DIGEST_TIME", "").strip() or _get(d, "time", str, "16:30", "digest")
    digest_time = None if time_raw.lower() == "off" else _time(time_raw, "DIGEST_TIME")
    digest = DigestSettings(
        top_n=_positive(_get(d, "top_n", int, 15, "digest"), "digest.top_n", 100),
        pick=_positive(_get(d, "pick", int, 2, "digest"), "digest.pick", 15),
        threshold=_range(_get(d, "threshold", int, 60, "digest"), "digest.threshold", 0, 100),
        language=language,
        timezone=timezone,
        time=digest_time,
        catch_up_hours=_frange(
            _get(d, "catch_up_hours", float, 6.0, "digest"), "digest.catch_up_hours", 0, 48
        ),
        wait_until=_time(_get(d, "wait_until", str, "20:00", "digest"), "digest.wait_until"),
        poll_minutes=_frange(
            _get(d, "poll_minutes", float, 20.0, "digest"), "digest.poll_minutes", 1, 240
        ),
        empty_day_notice=_get(d, "empty_day_notice", bool, False, "digest"),
    )

    llm_t = data.get("llm", {})
    mode = _get(llm_t, "structured_output", str, "auto", "llm")
    if mode not in ("auto", "json_schema", "json_object", "prompt"):
        raise ConfigError(f"llm.structured_output: unknown mode {mode!r}")
    model = env.get("DIGEST_LLM_MODEL", "").strip() or _get(llm_t, "model", str, "", "llm")
    if not model:
        raise ConfigError("DIGEST_LLM_MODEL: no model set (nor llm.model in the config file)")
    llm = LLMSettings(
        api_key=_secret(env, "OPENAI_API_KEY"),
        base_url=_url(env, "OPENAI_BASE_URL", "https://api.openai.com/v1"),
        model=model,
        timeout_seconds=_frange(
            _get(llm_t, "timeout_seconds", float, 120.0, "llm"), "llm.timeout_seconds", 1, 600
        ),
        max_retries=_range(_get(llm_t, "max_retries", int, 2, "llm"), "llm.max_retries", 0, 10),
        max_concurrency=_positive(
            _get(llm_t, "max_concurrency", int, 4, "llm"), "llm.max_concurrency", 64
        ),
        structured_output=mode,
        score_batch_size=_positive(
            _get(llm_t, "score_batch_size", int, 15, "llm"), "llm.score_batch_size", 100
        ),
        fulltext_token_budget=_positive(
            _get(llm_t, "fulltext_token_budget", int, 12000, "llm"),
            "llm.fulltext_token_budget",
            10**6,
        ),
        answer_token_budget=_positive(
            _get(llm_t, "answer_token_budget", int, 24000, "llm"),
            "llm.answer_token_budget",
            10**6,
        ),
    )

    s = data.get("sources", {})
    sources = SourceSettings(
        hf_endpoint=_url(env, "HF_ENDPOINT", "https://huggingface.co").rstrip("/"),
        arxiv_api_url=_url(env, "ARXIV_API_URL", "https://export.arxiv.org/api/query"),
        arxiv_url=_url(env, "ARXIV_URL", "https://arxiv.org").rstrip("/"),
        user_agent=_get(s, "user_agent", str, SourceSettings.user_agent, "sources"),
        timeout_seconds=_frange(
            _get(s, "timeout_seconds", float, 30.0, "sources"), "sources.timeout_seconds", 1, 300
        ),
        arxiv_min_interval_seconds=_frange(
            _get(s, "arxiv_min_interval_seconds", float, 3.0, "sources"),
            "sources.arxiv_min_interval_seconds",
            0,
            60,
        ),
        retries=_range(_get(s, "retries", int, 2, "sources"), "sources.retries", 0, 10),
    )

    slack = SlackSettings(
        bot_token=_secret(env, "SLACK_BOT_TOKEN"),
        signing_secret=_secret(env, "SLACK_SIGNING_SECRET"),
        app_token=_secret(env, "SLACK_APP_TOKEN"),
        api_url=_url(env, "SLACK_API_URL", "https://slack.com/api/"),
        channels=_list(env, "SLACK_CHANNELS", r"[A-Z0-9]{2,}"),
    )
    if slack.bot_token and not slack.bot_token.get().startswith("xoxb-"):
        raise ConfigError("SLACK_BOT_TOKEN: expected a bot token starting with xoxb-")
    if slack.app_token and not slack.app_token.get().startswith("xapp-"):
        raise ConfigError("SLACK_APP_TOKEN: expected an app-level token starting with xapp-")
    if slack.channels and not slack.bot_token:
        raise ConfigError("SLACK_BOT_TOKEN: required when SLACK_CHANNELS is set")

    webhook_secret = _secret(env, "TELEGRAM_WEBHOOK_SECRET")
    if webhook_secret and not re.fullmatch(r"[A-Za-z0-9_-]{1,256}", webhook_secret.get()):
        raise ConfigError("TELEGRAM_WEBHOOK_SECRET: 1-256 characters of A-Z a-z 0-9 _ - only")
    webhook_url = env.get("TELEGRAM_WEBHOOK_URL", "").strip() or None
    if webhook_url and not webhook_secret:
        raise ConfigError(
            "TELEGRAM_WEBHOOK_SECRET: required with TELEGRAM_WEBHOOK_URL (or unset both for polling)"
        )
    if webhook_secret and not webhook_url:
        raise ConfigError(
            "TELEGRAM_WEBHOOK_URL: required with TELEGRAM_WEBHOOK_SECRET (or unset both for polling)"
        )
    if (
        webhook_url
        and not webhook_url.startswith("https://")
        and not webhook_url.startswith("http://")
    ):
        raise ConfigError("TELEGRAM_WEBHOOK_URL: expected an http(s) URL")
    telegram = TelegramSettings(
        bot_token=_secret(env, "TELEGRAM_BOT_TOKEN"),
        api_url=_url(env, "TELEGRAM_API_URL", "https://api.telegram.org/bot"),
        chats=_list(env, "TELEGRAM_CHATS", r"-?[0-9]+(:[0-9]+)?"),
        webhook_url=webhook_url,
        webhook_secret=webhook_secret,
    )
    if telegram.bot_token and not re.fullmatch(r"[0-9]+:[A-Za-z0-9_-]+", telegram.bot_token.get()):
        raise ConfigError("TELEGRAM_BOT_TOKEN: expected the form <digits>:<letters> from BotFather")
    if telegram.chats and not telegram.bot_token:
        raise ConfigError("TELEGRAM_BOT_TOKEN: required when TELEGRAM_CHATS is set")

    i = data.get("interactive", {})
    interactive = InteractiveSettings(
        user_requests_per_hour=_positive(
            _get(i, "user_requests_per_hour", int, 20, "interactive"),
            "interactive.user_requests_per_hour",
            10**6,
        ),
        daily_token_budget=_range(
            _get(i, "daily_token_budget", int, 2_000_000, "interactive"),
            "interactive.daily_token_budget",
            0,
            10**12,
        ),
        allowed_slack_teams=tuple(_get(i, "allowed_slack_teams", list, [], "interactive")),
        allowed_telegram_chats=tuple(
            str(c) for c in _get(i, "allowed_telegram_chats", list, [], "interactive")
        ),
        thread_memory_turns=_range(
            _get(i, "thread_memory_turns", int, 6, "interactive"),
            "interactive.thread_memory_turns",
            0,
            100,
        ),
    )

    port_raw = env.get("PORT", "").strip() or "3000"
    if not port_raw.isdigit() or not 0 < int(port_raw) < 65536:
        raise ConfigError(f"PORT: expected a port number 1-65535, got {port_raw!r}")

    return Settings(
        profile=profile,
        llm=llm,
        sources=sources,
        digest=digest,
        slack=slack,
        telegram=telegram,
        interactive=interactive,
        db_path=Path(env.get("DIGEST_DB", "").strip() or "data/digestbot.db"),
        port=int(port_raw),
        config_path=config_path,
    )


def _missing(key: str) -> str:
    raise ConfigError(f"{key}: missing")


def _frange(value: float, key: str, low: float, high: float) -> float:
    if not low <= value <= high:
        raise ConfigError(f"{key}: expected {low:g}..{high:g}, got {value:g}")
    return value


def _positive(value: int, key: str, upper: int) -> int:
    return _range(value, key, 1, upper)


def _range(value: int, key: str, low: int, high: int) -> int:
    if not low <= value <= high:
        raise ConfigError(f"{key}: expected {low}..{high}, got {value}")
    return value


def _packaged_defaults() -> dict[str, Any]:
    """The defaults shipped inside the package, for `digestbot` run outside the repository."""
    from importlib import resources

    text = (
        resources.files("digest_core").joinpath("data/digestbot.toml").read_text(encoding="utf-8")
    )
    return tomllib.loads(text)
