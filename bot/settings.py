"""The whole app's settings: the core's (digest_core.config) plus the chat platforms, the
interactive limits and the HTTP server. `load_settings()` here is what start-up calls.

The platform settings live here so that digest_core never knows Slack or Telegram. Token
formats and the rules across variables (a chat list needs a token, a webhook URL needs its
secret) are declared on the models; each failure is one line naming the variable.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from digest_core.config import (
    ConfigError,
    Hhmm,
    Secret,
    Section,
    Settings,
    Url,
)
from digest_core.config import load_settings as _load

__all__ = [
    "AppSettings",
    "ConfigError",
    "InteractiveSettings",
    "RoundupSettings",
    "ServeSettings",
    "SlackSettings",
    "TeamSettings",
    "TelegramSettings",
    "load_settings",
]


def _comma_list(value: object) -> object:
    """`SLACK_CHANNELS=C1, C2` -> ("C1", "C2"); lists from the file pass through."""
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


SlackChannels = Annotated[
    tuple[Annotated[str, Field(pattern=r"^[A-Z0-9]{2,}$")], ...], BeforeValidator(_comma_list)
]
TelegramChats = Annotated[
    tuple[Annotated[str, Field(pattern=r"^-?[0-9]+(:[0-9]+)?$")], ...],
    BeforeValidator(_comma_list),
]


class SlackSettings(Section):
    bot_token: Secret | None = None
    signing_secret: Secret | None = None
    app_token: Secret | None = None
    api_url: Url = "https://slack.com/api/"
    channels: SlackChannels = ()

    @field_validator("bot_token")
    @classmethod
    def _bot_token(cls, value: Secret | None) -> Secret | None:
        if value is not None and not value.get().startswith("xoxb-"):
            raise ValueError("SLACK_BOT_TOKEN: expected a bot token starting with xoxb-")
        return value

    @field_validator("app_token")
    @classmethod
    def _app_token(cls, value: Secret | None) -> Secret | None:
        if value is not None and not value.get().startswith("xapp-"):
            raise ValueError("SLACK_APP_TOKEN: expected an app-level token starting with xapp-")
        return value

    @model_validator(mode="after")
    def _token_for_channels(self) -> SlackSettings:
        if self.channels and not self.bot_token:
            raise ValueError("SLACK_BOT_TOKEN: required when SLACK_CHANNELS is set")
        return self

    @property
    def enabled(self) -> bool:
        return self.bot_token is not None


class TelegramSettings(Section):
    bot_token: Secret | None = None
    api_url: Url = "https://api.telegram.org/bot"
    chats: TelegramChats = ()
    webhook_url: Url | None = None
    webhook_secret: Secret | None = None

    @field_validator("bot_token")
    @classmethod
    def _bot_token(cls, value: Secret | None) -> Secret | None:
        if value is not None and not re.fullmatch(r"[0-9]+:[A-Za-z0-9_-]+", value.get()):
            raise ValueError(
                "TELEGRAM_BOT_TOKEN: expected the form <digits>:<letters> from BotFather"
            )
        return value

    @field_validator("webhook_secret")
    @classmethod
    def _webhook_secret(cls, value: Secret | None) -> Secret | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,256}", value.get()):
            raise ValueError("TELEGRAM_WEBHOOK_SECRET: 1-256 characters of A-Z a-z 0-9 _ - only")
        return value

    @model_validator(mode="after")
    def _pairs(self) -> TelegramSettings:
        if self.webhook_url and not self.webhook_secret:
            raise ValueError(
                "TELEGRAM_WEBHOOK_SECRET: required with TELEGRAM_WEBHOOK_URL "
                "(or unset both for polling)"
            )
        if self.webhook_secret and not self.webhook_url:
            raise ValueError(
                "TELEGRAM_WEBHOOK_URL: required with TELEGRAM_WEBHOOK_SECRET "
                "(or unset both for polling)"
            )
        if self.chats and not self.bot_token:
            raise ValueError("TELEGRAM_BOT_TOKEN: required when TELEGRAM_CHATS is set")
        return self

    @property
    def enabled(self) -> bool:
        return self.bot_token is not None


class InteractiveSettings(Section):
    user_requests_per_hour: int = Field(20, ge=1, le=1_000_000)
    # interactive LLM tokens a day; the daily digest is not counted against it
    daily_token_budget: int = Field(2_000_000, ge=0, le=10**12)
    allowed_slack_teams: tuple[str, ...] = ()  # empty: every workspace the app is installed in
    allowed_telegram_chats: tuple[str, ...] = ()  # empty: every chat
    thread_memory_turns: int = Field(6, ge=0, le=100)
    # one person's request, all its LLM attempts and waits together; then the labelled
    # fallback or the failure line
    request_deadline_seconds: float = Field(90.0, gt=0, le=3600)
    # a short "still working" line when a request takes longer than this; 0: never
    still_working_after_seconds: float = Field(20.0, ge=0, le=3600)
    # at start-up, requests cut off by a crash are finished if accepted within this many
    # minutes; older ones get a line saying they failed and how to ask again
    resume_within_minutes: float = Field(30.0, ge=0, le=10080)

    @field_validator("allowed_telegram_chats", mode="before")
    @classmethod
    def _ids_as_text(cls, value: object) -> object:
        # Chat IDs are numbers in TOML but compared as text with what Telegram sends.
        if isinstance(value, list | tuple):
            return tuple(str(v) for v in value)
        return value


class TeamSettings(Section):
    """Who may change a channel's digest from chat. Both lists empty: everyone."""

    slack_admins: tuple[Annotated[str, Field(pattern=r"^[A-Z0-9]{2,}$")], ...] = ()
    telegram_admins: tuple[Annotated[str, Field(pattern=r"^[0-9]+$")], ...] = ()

    @field_validator("telegram_admins", mode="before")
    @classmethod
    def _ids_as_text(cls, value: object) -> object:
        # User IDs are numbers in TOML but compared as text with what Telegram sends.
        if isinstance(value, list | tuple):
            return tuple(str(v) for v in value)
        return value

    def may_change(self, platform: str, user: str) -> bool:
        if not self.slack_admins and not self.telegram_admins:
            return True
        admins = self.slack_admins if platform == "slack" else self.telegram_admins
        return user in admins


WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class RoundupSettings(Section):
    """The weekly roundup (`/digest week` on a schedule): off unless a day is set."""

    # mon … sun, or "off": no scheduled roundup (`/digest week` still answers)
    day: Literal["off", "mon", "tue", "wed", "thu", "fri", "sat", "sun"] = "off"
    time: Hhmm = "09:00"  # local time, in [digest] timezone
    top: int = Field(5, ge=1, le=10)  # papers in each list (by score, by 👍)

    @field_validator("day", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @property
    def weekday(self) -> int | None:
        """The day as Python counts it (Monday 0), or None when off."""
        return None if self.day == "off" else WEEKDAYS.index(self.day)


class ServeSettings(Section):
    """How `serve` starts, guards its HTTP server and judges its own health."""

    # A platform outage at start-up (5xx, non-JSON, unreachable) is retried with the [retry]
    # backoff for at most this long, then serve stops with one line and exit code 2.
    startup_retry_seconds: float = Field(120.0, ge=0, le=3600)
    # A request's head (request line and headers), then its body, must arrive within these;
    # otherwise the connection is closed (a slow client cannot hold a descriptor forever).
    header_timeout_seconds: float = Field(10.0, gt=0, le=300)
    body_timeout_seconds: float = Field(10.0, gt=0, le=300)
    # Open HTTP connections at most (further lowered to fit the file-descriptor limit); at the
    # cap, the oldest connection still sending its request head is closed to make room.
    max_connections: int = Field(256, ge=8, le=100_000)
    # /healthz fails when Socket Mode has been disconnected this long. A 409 Conflict on
    # getUpdates within this long of starting to poll means another process already polls
    # the bot token: this one stops polling.
    unhealthy_after_seconds: float = Field(60.0, gt=0, le=3600)
    # Identical log lines (same logger, level and message template) are written once per this
    # interval; the next one after it says how many were held back.
    log_repeat_seconds: float = Field(60.0, ge=0, le=3600)


class AppSettings(Settings):
    """The core's settings plus everything only the bot uses."""

    slack: SlackSettings = SlackSettings()
    telegram: TelegramSettings = TelegramSettings()
    interactive: InteractiveSettings = InteractiveSettings()
    team: TeamSettings = TeamSettings()
    serve: ServeSettings = ServeSettings()
    roundup: RoundupSettings = RoundupSettings()
    port: int = Field(3000, ge=1, le=65535)
    host: str = Field("0.0.0.0", min_length=1, max_length=255, pattern=r"^[A-Za-z0-9.:_-]+$")

    ENV_VARS: ClassVar[dict[str, str]] = {
        **Settings.ENV_VARS,
        "SLACK_BOT_TOKEN": "slack.bot_token",
        "SLACK_SIGNING_SECRET": "slack.signing_secret",
        "SLACK_APP_TOKEN": "slack.app_token",
        "SLACK_API_URL": "slack.api_url",
        "SLACK_CHANNELS": "slack.channels",
        "TELEGRAM_BOT_TOKEN": "telegram.bot_token",
        "TELEGRAM_API_URL": "telegram.api_url",
        "TELEGRAM_CHATS": "telegram.chats",
        "TELEGRAM_WEBHOOK_URL": "telegram.webhook_url",
        "TELEGRAM_WEBHOOK_SECRET": "telegram.webhook_secret",
        "PORT": "port",
        "HOST": "host",
    }

    def _secret_values(self) -> list[Secret | None]:
        return [
            *super()._secret_values(),
            self.slack.bot_token,
            self.slack.signing_secret,
            self.slack.app_token,
            self.telegram.bot_token,
            self.telegram.webhook_secret,
        ]


def load_settings(
    env: Mapping[str, str] | None = None, path: str | Path | None = None
) -> AppSettings:
    """The app's settings from the config file and the environment; ConfigError: one line."""
    settings: Any = _load(env, path, model=AppSettings)
    return settings
