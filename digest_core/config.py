"""Core settings: one pydantic model per slice, loaded once into frozen objects.

Each default is written once, on its model field, with its range or format declared there.
`config/digestbot.toml` (or `DIGEST_CONFIG`) overrides the defaults; the contract's
environment variables override the file (an empty variable counts as unset). A missing
default file means the defaults. Every model forbids unknown keys, so a typo stops start-up
with one line naming it and the nearest valid key; every other bad value gives one line
naming the key or the variable, never the value of a secret.

This module holds what the core needs (profile, digest, llm, sources, retry, db path) and the
loader. It knows nothing of chat platforms: `bot/settings.py` extends `Settings` with them and
calls the same loader. Nothing here reads the environment until `load_settings` is called.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

DEFAULT_CONFIG = Path("config/digestbot.toml")
RETRY_USERS = ("llm", "sources")  # the slices that receive the [retry] table


class ConfigError(ValueError):
    """A setting is missing or malformed. The message names the key, never a secret value."""


class Secret(SecretStr):
    """A credential. Printing it shows only that it is set."""

    def get(self) -> str:
        return self.get_secret_value()

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


def _url(value: str) -> str:
    if not re.match(r"^https?://[^\s/]+", value):
        raise ValueError("expected an http(s) URL")
    return value


def _hhmm(value: str) -> str:
    if not re.fullmatch(r"([01][0-9]|2[0-3]):[0-5][0-9]", value):
        raise ValueError("expected HH:MM (24-hour)")
    return value


Url = Annotated[str, AfterValidator(_url)]
Hhmm = Annotated[str, AfterValidator(_hhmm)]


class Section(BaseModel):
    """A table of the config file: frozen, and an unknown key is an error."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Profile(Section):
    name: str = Field("Image Restoration researcher", min_length=1)
    focus: str = (
        "Image restoration (denoising, deblurring, super-resolution) and generative models "
        "for low-level vision"
    )
    topics: tuple[Annotated[str, Field(min_length=1)], ...] = Field(
        (
            "diffusion models",
            "flow matching",
            "masked autoregressive models",
            "super-resolution",
            "image generation",
            "image restoration",
        ),
        min_length=1,
    )


class DigestSettings(Section):
    top_n: int = Field(15, ge=1, le=100)
    pick: int = Field(2, ge=1, le=15)
    threshold: int = Field(60, ge=0, le=100)
    language: Literal["zh", "en"] = "zh"
    timezone: str = "Asia/Shanghai"
    time: Hhmm | None = "16:30"  # None when DIGEST_TIME=off
    catch_up_hours: float = Field(6.0, ge=0, le=48)
    wait_until: Hhmm = "20:00"  # local cut-off for waiting on HF's list to fill
    poll_minutes: float = Field(20.0, ge=1, le=240)
    empty_day_notice: bool = False
    # A paper deep-dived in a destination within this many days is not deep-dived there
    # again; the next paper takes its place (0: no such check).
    seen_days: int = Field(30, ge=0, le=365)
    # Rated papers (👍/👎) shown to the profile's scoring call as examples: the most recent,
    # at most this many, and at most about this many tokens of titles.
    rating_examples: int = Field(20, ge=0, le=200)
    rating_example_tokens: int = Field(800, ge=0, le=20000)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("unknown time zone") from None
        return value

    @field_validator("time", mode="before")
    @classmethod
    def _off(cls, value: object) -> object:
        return None if isinstance(value, str) and value.strip().lower() == "off" else value

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


class RetrySettings(Section):
    """The shape of the one retry policy (digest_core/retry.py); attempt counts are per caller."""

    backoff_base_seconds: float = Field(0.5, gt=0, le=60)
    backoff_max_seconds: float = Field(8.0, gt=0, le=600)
    jitter: float = Field(0.2, ge=0, le=1)
    max_retry_after_seconds: float = Field(60.0, ge=0, le=3600)


class LLMSettings(Section):
    api_key: Secret | None = None
    base_url: Url = "https://api.openai.com/v1"
    model: str = Field("gpt-4o-mini", min_length=1)
    timeout_seconds: float = Field(120.0, gt=0, le=600)
    max_retries: int = Field(2, ge=0, le=10)
    max_concurrency: int = Field(4, ge=1, le=64)
    structured_output: Literal["auto", "json_schema", "json_object", "prompt"] = "auto"
    score_batch_size: int = Field(15, ge=1, le=100)
    fulltext_token_budget: int = Field(12000, ge=1, le=1_000_000)
    answer_token_budget: int = Field(24000, ge=1000, le=1_000_000)
    retry: RetrySettings = RetrySettings()  # the [retry] table, handed down by Settings

    @field_validator("api_key", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @property
    def enabled(self) -> bool:
        return self.api_key is not None


class SourceSettings(Section):
    hf_endpoint: Url = "https://huggingface.co"
    arxiv_api_url: Url = "https://export.arxiv.org/api/query"
    arxiv_url: Url = "https://arxiv.org"
    user_agent: str = Field("digestbot/0.1 (research digest bot)", min_length=1)
    timeout_seconds: float = Field(30.0, gt=0, le=300)
    arxiv_min_interval_seconds: float = Field(3.0, ge=0, le=60)
    retries: int = Field(2, ge=0, le=10)
    # Extras of a deep dive, never worth delaying it: the links (code, project, Hugging Face
    # models/datasets/Spaces) and the key figure each get this long, and the figure at most
    # this many bytes.
    extras_timeout_seconds: float = Field(8.0, gt=0, le=60)
    figure_max_bytes: int = Field(5_000_000, ge=10_000, le=50_000_000)
    links_per_kind: int = Field(3, ge=0, le=10)
    retry: RetrySettings = RetrySettings()  # the [retry] table, handed down by Settings

    @field_validator("hf_endpoint", "arxiv_url")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")


class Settings(BaseSettings):
    """What the core needs. Built only by `load_settings` (or directly in tests)."""

    # Only what load_settings hands over: BaseSettings would otherwise read os.environ itself.
    model_config = SettingsConfigDict(frozen=True, extra="forbid")

    profile: Profile = Profile()
    digest: DigestSettings = DigestSettings()
    llm: LLMSettings = LLMSettings()
    sources: SourceSettings = SourceSettings()
    retry: RetrySettings = RetrySettings()
    db_path: Path = Path("data/digestbot.db")
    config_path: Path = DEFAULT_CONFIG

    # Contract environment variables -> the key each one sets. Keys named here and not in
    # FILE_KEYS may come only from the environment (addresses, secrets, the db path).
    ENV_VARS: ClassVar[dict[str, str]] = {
        "OPENAI_API_KEY": "llm.api_key",
        "OPENAI_BASE_URL": "llm.base_url",
        "DIGEST_LLM_MODEL": "llm.model",
        "HF_ENDPOINT": "sources.hf_endpoint",
        "ARXIV_API_URL": "sources.arxiv_api_url",
        "ARXIV_URL": "sources.arxiv_url",
        "DIGEST_TIMEZONE": "digest.timezone",
        "DIGEST_TIME": "digest.time",
        "DIGEST_DB": "db_path",
    }
    FILE_KEYS: ClassVar[frozenset[str]] = frozenset({"llm.model", "digest.timezone", "digest.time"})

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)

    @model_validator(mode="before")
    @classmethod
    def _hand_down_retry(cls, data: Any) -> Any:
        """Each slice that makes outside calls carries the retry policy's shape with it."""
        if not isinstance(data, dict):
            return data
        shape = data.get("retry", {})
        out = dict(data)
        for table in RETRY_USERS:
            sub = out.get(table, {})
            if isinstance(sub, dict):
                if "retry" in sub:
                    raise ValueError(f"{table}.retry: set the retry policy in [retry]")
                out[table] = {**sub, "retry": shape}
        return out

    def secrets(self) -> list[str]:
        """Every secret value, for the log redactor."""
        return [s.get() for s in self._secret_values() if s is not None and s.get()]

    def _secret_values(self) -> list[Secret | None]:
        return [self.llm.api_key]


class ContractEnvironment(PydanticBaseSettingsSource):
    """The contract's environment variables as nested settings values (names kept as they are,
    not derived from field names). Empty or blank variables count as unset."""

    def __init__(self, settings_cls: type[Settings], env: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        self.env = env
        self.names: dict[str, str] = settings_cls.ENV_VARS

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # values are built in __call__, by contract name

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, key in self.names.items():
            raw = self.env.get(name, "").strip()
            if raw:
                _put(values, key, raw)
        return values

    def source_of(self, key: str) -> str | None:
        """The variable that set `key`, if one did."""
        for name, path in self.names.items():
            if path == key and self.env.get(name, "").strip():
                return name
        return None


def load_settings(
    env: Mapping[str, str] | None = None,
    path: str | Path | None = None,
    *,
    model: type[Settings] = Settings,
) -> Settings:
    """Defaults, then the config file, then the environment. Raises ConfigError (one line)."""
    env = os.environ if env is None else env
    named = path or env.get("DIGEST_CONFIG", "").strip()
    config_path = Path(named or DEFAULT_CONFIG)
    data: dict[str, Any] = {}
    if config_path.exists():
        try:
            data = tomllib.loads(config_path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"DIGEST_CONFIG: {config_path} is not valid TOML ({exc})") from None
    elif named:
        raise ConfigError(f"DIGEST_CONFIG: file {config_path} does not exist")
    _refuse_env_only_keys(model, data, config_path)
    environment = ContractEnvironment(model, env)
    values = _merged(data, environment())
    values["config_path"] = config_path
    try:
        return model(**values)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc, model, environment, config_path)) from None


def _refuse_env_only_keys(model: type[Settings], data: dict[str, Any], where: Path) -> None:
    # Secrets and outside addresses never come from a committed file.
    for name, key in model.ENV_VARS.items():
        if key in model.FILE_KEYS:
            continue
        if _has(data, key):
            raise ConfigError(f"{where}: {key} is set only by the environment variable {name}")
    for key in ("config_path",):
        if key in data:
            raise ConfigError(f"{where}: unknown key {key} (it is set by DIGEST_CONFIG)")


def _one_line(
    exc: ValidationError, model: type[Settings], env: ContractEnvironment, where: Path
) -> str:
    """The first error as one line naming its key or variable; no input of a secret."""
    error = exc.errors(include_url=False)[0]
    loc = [str(part) for part in error["loc"] if not isinstance(part, int)]
    if loc[:1] and loc[0] in RETRY_USERS and loc[1:2] == ["retry"]:
        loc = loc[1:]  # a handed-down copy of [retry]: name the table the user wrote
    key = ".".join(loc)
    if error["type"] == "extra_forbidden":
        parent, _, leaf = key.rpartition(".")
        known = _field_names(model, parent)
        close = difflib.get_close_matches(leaf, known, n=1, cutoff=0.6)
        hint = f" (did you mean {'.'.join(filter(None, [parent, close[0]]))}?)" if close else ""
        return f"{where}: unknown key {key}{hint}"
    message = str(error["msg"]).removeprefix("Value error, ")
    if not key:
        return message  # a rule across keys: its message names what to set
    if message.split(":", 1)[0] in model.ENV_VARS:
        return message  # a validator named the variable itself
    name = env.source_of(key)
    secret = _is_secret(model, key)
    if not secret and error["type"] not in ("missing", "model_type", "dict_type"):
        message += f", got {error['input']!r}"
    return f"{name or key}: {message}"


def _field_names(model: type[BaseModel], dotted: str) -> list[str]:
    current: Any = model
    for part in filter(None, dotted.split(".")):
        field = current.model_fields.get(part)
        if field is None or not isinstance(field.annotation, type):
            return []
        current = field.annotation
    return [n for n in current.model_fields if n != "config_path"]


def _is_secret(model: type[BaseModel], dotted: str) -> bool:
    current: Any = model
    for part in dotted.split("."):
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return True  # unknown: assume the worst
        current = field.annotation
    return "Secret" in str(current)


def _put(values: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        values = values.setdefault(part, {})
    values[leaf] = value


def _has(data: Mapping[str, Any], dotted: str) -> bool:
    *parents, leaf = dotted.split(".")
    for part in parents:
        data = data.get(part)  # type: ignore[assignment]
        if not isinstance(data, Mapping):
            return False
    return leaf in data


def _merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out
