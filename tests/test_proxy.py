"""Proxies: every client follows one rule (digest_core.proxy) through real HTTP and SOCKS5 proxies.

The proxies are the small recording servers in fakes/proxies.py; the clients are the real ones
(httpx for Hugging Face and arXiv, openai/httpx2 for the LLM, slack_sdk/aiohttp for the Web API,
Socket Mode and response_url, PTB/httpx for Telegram). The fakes speak plain http, so the
proxies under test are HTTP_PROXY and ALL_PROXY; a host named in NO_PROXY must not reach the
proxy at all. "Direct" fakes are addressed as `localhost` (the proxied ones as 127.0.0.1), so
NO_PROXY can tell them apart.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from fakes.llm import FakeLLM
from fakes.papers import FakeHF
from fakes.proxies import HttpProxy, Socks5Proxy
from fakes.slack import DEFAULT_CHANNEL, FakeSlack
from fakes.telegram import DEFAULT_TOKEN, FakeTelegram
from fakes.world import World, run_cli

from bot.channels.base import DeliveryError
from bot.channels.slack import (
    RoutedSocketModeClient,
    SlackChannel,
    make_slack_client,
    send_to_response_url,
)
from bot.channels.telegram import TelegramChannel, make_bot, make_rate_limiter
from bot.settings import load_settings
from digest_core.config import ConfigError, LLMSettings, Secret, SourceSettings
from digest_core.llm import LLMClient, LLMError
from digest_core.proxy import ProxyRoutes, parse_proxy
from digest_core.render.slack import SlackMessage
from digest_core.sources import SourceError, make_http_client
from digest_core.sources.hf import fetch_daily_papers

DAY = "2026-01-23"  # a day the HF fixture has
KEY = "sk-test-proxy-0123456789abcdef"

pytestmark = pytest.mark.filterwarnings("ignore:.*retry_after.*:DeprecationWarning")


def port_of(url: str) -> str:
    return url.rsplit(":", 1)[1].split("/")[0]


def as_localhost(url: str) -> str:
    return url.replace("127.0.0.1", "localhost")


@pytest.fixture(params=["http", "socks5"])
async def proxy(request: pytest.FixtureRequest) -> AsyncIterator[HttpProxy | Socks5Proxy]:
    server = HttpProxy() if request.param == "http" else Socks5Proxy()
    async with server:
        yield server


@pytest.fixture(autouse=True)
def _no_proxy_from_outside(monkeypatch: pytest.MonkeyPatch) -> None:
    # A developer's own proxy settings must not decide these tests.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


def use(
    monkeypatch: pytest.MonkeyPatch, proxy: HttpProxy | Socks5Proxy, no_proxy: str = ""
) -> None:
    """HTTP proxies as HTTP_PROXY (the fakes are http://), SOCKS as ALL_PROXY."""
    monkeypatch.setenv("HTTP_PROXY" if proxy.scheme == "http" else "ALL_PROXY", proxy.url)
    if no_proxy:
        monkeypatch.setenv("NO_PROXY", no_proxy)


# ---------------------------------------------------------------------------- the rule itself


def test_the_rule_scheme_variable_then_all_proxy_then_direct() -> None:
    routes = ProxyRoutes.from_env(
        {
            "HTTPS_PROXY": "socks5://127.0.0.1:1080",
            "http_proxy": "proxy.lan:3128",  # no scheme: http, as curl reads it
            "ALL_PROXY": "socks5h://127.0.0.1:9050",
            "NO_PROXY": "hf-mirror.com, .internal,10.0.0.0/8,[::1],localhost:8080",
        }
    )

    def via(url: str) -> str | None:
        found = routes.proxy_for(url)
        return found.url if found else None

    assert via("https://api.openai.com/v1") == "socks5://127.0.0.1:1080"
    assert via("wss://wss-primary.slack.com/link") == "socks5://127.0.0.1:1080"
    assert via("http://export.arxiv.org/api/query") == "http://proxy.lan:3128"
    assert via("ftp://example.org/") == "socks5h://127.0.0.1:9050"
    # NO_PROXY: a name covers its subdomains, not look-alikes; ranges, IPv6, ports.
    assert via("https://hf-mirror.com/api") is None
    assert via("https://cdn.hf-mirror.com/x") is None
    assert via("https://nothf-mirror.com/x") == "socks5://127.0.0.1:1080"
    assert via("https://a.b.internal/") is None
    assert via("https://10.2.3.4/") is None
    assert via("http://[::1]:99/") is None
    assert via("http://localhost:8080/") is None
    assert via("http://localhost:8081/") == "http://proxy.lan:3128"


def test_lower_case_wins_and_star_turns_proxies_off() -> None:
    routes = ProxyRoutes.from_env(
        {"HTTPS_PROXY": "http://upper:1", "https_proxy": "http://lower:2", "NO_PROXY": ""}
    )
    found = routes.proxy_for("https://slack.com/api/")
    assert found is not None and found.host == "lower" and found.variable == "https_proxy"
    off = ProxyRoutes.from_env({"ALL_PROXY": "socks5://127.0.0.1:1", "no_proxy": "example.org,*"})
    assert off.proxy_for("https://slack.com/api/") is None


def test_credentials_reach_the_library_url_but_no_log_line() -> None:
    found = parse_proxy("HTTPS_PROXY", "socks5://alice:p%40ss@127.0.0.1:1080")
    assert found.password == "p@ss"
    assert found.url == "socks5://alice:p%40ss@127.0.0.1:1080"
    assert "p@ss" not in found.shown and "p@ss" not in repr(found)


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("https://u:hunter2@proxy:8443", "scheme 'https' is not supported"),
        ("socks4://u:hunter2@proxy:1080", "scheme 'socks4' is not supported"),
        ("http://u:hunter2@proxy:99999", "port is not a number"),
        ("http://u:hunter2@proxy:x", "port is not a number"),
        ("http://u:hunter2@:8080", "names no host"),
        ("http://u:hunter2@proxy:8080/path", "without a path"),
        ("http://u:hunter2@pro xy:80", "contains spaces"),
    ],
)
def test_a_malformed_proxy_is_one_line_naming_the_variable(value: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env={"HTTPS_PROXY": value})
    message = str(info.value)
    assert message.startswith("HTTPS_PROXY: ") and says in message
    assert "\n" not in message and "hunter2" not in message and "u:" not in message


def test_a_malformed_no_proxy_entry_is_named() -> None:
    with pytest.raises(ConfigError, match=r"^no_proxy: '10\.0\.0\.0/99' is not an address range"):
        load_settings(env={"no_proxy": "localhost,10.0.0.0/99"})


async def test_the_cli_stops_with_one_line_and_exit_2(tmp_path: Any) -> None:
    async with World(tmp_path) as world:
        env = world.env(ALL_PROXY="socks5://user:hunter2@127.0.0.1:notaport")
        code, out, err = await run_cli(["digest", "--date", DAY, "--dry-run"], env)
    assert code == 2, err
    assert err.strip().splitlines() == [
        "digestbot: ALL_PROXY: the proxy port is not a number from 1 to 65535"
    ]
    assert world.hf.requests == [] and world.llm.calls == []


# --------------------------------------------------------------- Hugging Face / arXiv (httpx)


def source_settings(hf: str) -> SourceSettings:
    return SourceSettings(hf_endpoint=hf, timeout_seconds=5.0, retries=0)


async def test_hugging_face_goes_through_the_proxy(
    monkeypatch: pytest.MonkeyPatch, proxy: HttpProxy | Socks5Proxy
) -> None:
    use(monkeypatch, proxy)
    async with FakeHF.with_fixture_days() as hf:
        settings = source_settings(hf.url)
        async with make_http_client(settings) as client:
            papers = await fetch_daily_papers(client, settings, DAY)
    assert papers and hf.paths("/api/daily_papers")
    assert proxy.hosts == [f"127.0.0.1:{port_of(hf.url)}"]


async def test_a_no_proxy_mirror_goes_direct_while_the_rest_is_proxied(
    monkeypatch: pytest.MonkeyPatch, proxy: HttpProxy | Socks5Proxy
) -> None:
    # The README's example: HF through a mirror reached directly, everything else proxied.
    use(monkeypatch, proxy, no_proxy="localhost")
    async with FakeHF.with_fixture_days() as mirror, FakeHF.with_fixture_days() as other:
        direct = source_settings(as_localhost(mirror.url))
        async with make_http_client(direct) as client:
            assert await fetch_daily_papers(client, direct, DAY)
            # The same client, another host: proxied.
            assert await fetch_daily_papers(client, source_settings(other.url), DAY)
    assert mirror.paths("/api/daily_papers") and other.paths("/api/daily_papers")
    assert proxy.hosts == [f"127.0.0.1:{port_of(other.url)}"]


# ---------------------------------------------------------------------- the LLM (openai, httpx2)


async def ask_llm(base: str) -> str:
    settings = LLMSettings(
        api_key=Secret(KEY),
        base_url=f"{base}/v1",
        model="gpt-test",
        timeout_seconds=5.0,
        max_retries=0,
    )
    client = LLMClient(settings)
    try:
        result = await client.text(
            system="s", user="u", purpose="qa", prompt_version="t", max_tokens=20
        )
    finally:
        await client.aclose()
    return result.content


@pytest.mark.parametrize("direct", [False, True], ids=["proxied", "no_proxy"])
async def test_the_llm_follows_the_rule(
    monkeypatch: pytest.MonkeyPatch, proxy: HttpProxy | Socks5Proxy, direct: bool
) -> None:
    use(monkeypatch, proxy, no_proxy="localhost" if direct else "")
    async with FakeLLM(responder=lambda body: "hello through") as llm:
        base = as_localhost(llm.url) if direct else llm.url
        assert await ask_llm(base) == "hello through"
        assert len(llm.calls) == 1
    assert proxy.hosts == ([] if direct else [f"127.0.0.1:{port_of(llm.url)}"])


# -------------------------------------------------------------- Slack: Web API, response_url


class RespondingSlack(FakeSlack):
    """FakeSlack plus a slash command's response_url, whose posts it keeps."""

    def routes(self, app: web.Application) -> None:
        super().routes(app)
        app.router.add_post("/response_url", self._respond)

    async def _respond(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")


def line(text: str) -> SlackMessage:
    return SlackMessage(text, [{"type": "section", "text": {"type": "mrkdwn", "text": text}}])


@pytest.mark.parametrize("direct", [False, True], ids=["proxied", "no_proxy"])
async def test_slack_web_api_and_response_url_follow_the_rule(
    monkeypatch: pytest.MonkeyPatch, proxy: HttpProxy | Socks5Proxy, direct: bool
) -> None:
    # Before: slack_sdk used HTTPS_PROXY/HTTP_PROXY for every host, NO_PROXY or not, and
    # ignored ALL_PROXY altogether.
    use(monkeypatch, proxy, no_proxy="localhost" if direct else "")
    async with RespondingSlack() as slack:
        base = as_localhost(slack.url) if direct else slack.url
        channel = SlackChannel(make_slack_client(slack.token, base + "/api/"))
        try:
            ts = await channel.send(DEFAULT_CHANNEL, line("via proxy?"), None, key="toc")
        finally:
            await channel.aclose()
        answer = await send_to_response_url(f"{base}/response_url", "only you see this")
        assert answer.status_code == 200
        assert [m["ts"] for m in slack.messages(DEFAULT_CHANNEL)] == [ts]
        posted = [r.json() for r in slack.requests if r.path == "/response_url"]
        assert posted == [{"text": "only you see this", "response_type": "ephemeral"}]
    expected = f"127.0.0.1:{port_of(slack.url)}"
    assert proxy.hosts == ([] if direct else [expected, expected])


# ------------------------------------------------------------------- Slack Socket Mode (aiohttp)


@pytest.mark.parametrize("direct", [False, True], ids=["proxied", "no_proxy"])
async def test_socket_mode_websocket_follows_the_rule(
    monkeypatch: pytest.MonkeyPatch, proxy: HttpProxy | Socks5Proxy, direct: bool
) -> None:
    use(monkeypatch, proxy, no_proxy="localhost" if direct else "")
    async with FakeSlack() as slack:
        base = as_localhost(slack.url) if direct else slack.url
        web_client = make_slack_client(slack.token, base + "/api/")
        received: list[dict[str, Any]] = []
        arrived = asyncio.Event()

        async def on_message(client: Any, message: dict[str, Any], raw: str | None) -> None:
            received.append(message)
            arrived.set()

        client = RoutedSocketModeClient(app_token=slack.app_token, web_client=web_client)
        client.message_listeners.append(on_message)
        try:
            await client.connect()
            assert await client.is_connected()
            envelope = await slack.push_envelope("events_api", {"event": {"type": "app_mention"}})
            while not any(m.get("envelope_id") == envelope for m in received):
                arrived.clear()
                await asyncio.wait_for(arrived.wait(), 5)
        finally:
            await client.close()
            if web_client.session is not None:
                await web_client.session.close()
    expected = f"127.0.0.1:{port_of(slack.url)}"
    # apps.connections.open (Web API), then the WebSocket itself.
    assert proxy.hosts == ([] if direct else [expected, expected])


# ------------------------------------------------------------------------- Telegram (PTB, httpx)


@pytest.mark.parametrize("direct", [False, True], ids=["proxied", "no_proxy"])
async def test_telegram_follows_the_rule(
    monkeypatch: pytest.MonkeyPatch, proxy: HttpProxy | Socks5Proxy, direct: bool
) -> None:
    use(monkeypatch, proxy, no_proxy="localhost" if direct else "")
    async with FakeTelegram(DEFAULT_TOKEN) as telegram:
        telegram.add_chat(-100555, title="CV papers")
        base = as_localhost(telegram.url) if direct else telegram.url
        limiter = make_rate_limiter(group_max_rate=100_000, overall_max_rate=100_000)
        async with make_bot(DEFAULT_TOKEN, f"{base}/bot", rate_limiter=limiter) as bot:
            channel = TelegramChannel(bot, language="en")
            ref = await channel.send("-100555", "hello <b>through</b>", None)
        assert [m["message_id"] for m in telegram.sent(-100555)] == [int(ref)]
    expected = f"127.0.0.1:{port_of(telegram.url)}"
    assert (proxy.hosts == []) if direct else (proxy.hosts and set(proxy.hosts) == {expected})


# ------------------------------------------------------------------ end to end: the CLI over SOCKS


async def test_digest_dry_run_over_socks_end_to_end(tmp_path: Any) -> None:
    """`ALL_PROXY=socks5://…` used to end `digest` with an ImportError traceback (no socksio)."""
    async with World(tmp_path) as world, Socks5Proxy() as socks:
        env = world.env(ALL_PROXY=socks.url)
        code, out, err = await run_cli(["digest", "--date", DAY, "--dry-run"], env)
        assert code == 0, err
        assert "Traceback" not in err
        assert world.hf.paths("/api/daily_papers") and world.llm.calls
    reached = {host.rsplit(":", 1)[1] for host in socks.hosts}
    assert port_of(world.hf.url) in reached and port_of(world.llm.url) in reached


async def test_digest_dry_run_hf_mirror_direct_rest_over_socks(tmp_path: Any) -> None:
    """The README's set-up: HF through a mirror reached directly (NO_PROXY), the rest proxied."""
    async with World(tmp_path) as world, Socks5Proxy() as socks:
        env = world.env(
            ALL_PROXY=socks.url, HF_ENDPOINT=as_localhost(world.hf.url), NO_PROXY="localhost"
        )
        code, out, err = await run_cli(["digest", "--date", DAY, "--dry-run"], env)
        assert code == 0, err
        assert world.hf.paths("/api/daily_papers") and world.llm.calls
    reached = {host.rsplit(":", 1)[1] for host in socks.hosts}
    assert port_of(world.hf.url) not in reached and port_of(world.llm.url) in reached


# ----------------------------------------------------- SOCKS: names go to the proxy, with a login


async def test_socks_clients_send_names_and_credentials_to_the_proxy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every client hands the host name to the SOCKS proxy (which resolves it) and logs in with
    the user:password from ALL_PROXY; a wrong password is refused, not bypassed."""
    async with Socks5Proxy(credentials=("alice", "s3cret")) as socks:
        monkeypatch.setenv("ALL_PROXY", socks.url.replace("://", "://alice:s3cret@"))
        async with (
            FakeHF.with_fixture_days() as hf,
            FakeLLM(responder=lambda body: "ok") as llm,
            FakeSlack() as slack,
            FakeTelegram(DEFAULT_TOKEN) as telegram,
        ):
            telegram.add_chat(-100555, title="CV papers")
            settings = source_settings(as_localhost(hf.url))
            async with make_http_client(settings) as client:
                assert await fetch_daily_papers(client, settings, DAY)
            assert await ask_llm(as_localhost(llm.url)) == "ok"
            channel = SlackChannel(
                make_slack_client(slack.token, as_localhost(slack.url) + "/api/")
            )
            try:
                await channel.send(DEFAULT_CHANNEL, line("hi"), None)
            finally:
                await channel.aclose()
            limiter = make_rate_limiter(group_max_rate=100_000, overall_max_rate=100_000)
            async with make_bot(
                DEFAULT_TOKEN, f"{as_localhost(telegram.url)}/bot", rate_limiter=limiter
            ) as bot:
                await TelegramChannel(bot, language="en").send("-100555", "hi", None)
            names = {f"localhost:{port_of(f.url)}" for f in (hf, llm, slack, telegram)}
            assert set(socks.hosts) == names and socks.refused == 0

            monkeypatch.setenv("ALL_PROXY", socks.url.replace("://", "://alice:wrong@"))
            before = len(hf.requests)
            async with make_http_client(settings) as client:
                with pytest.raises(SourceError) as source_error:
                    await fetch_daily_papers(client, settings, DAY)
            with pytest.raises(LLMError) as llm_error:
                await ask_llm(as_localhost(llm.url))
            # aiohttp-socks' own exceptions are not aiohttp's: they must still end as the
            # channel's DeliveryError, not escape the delivery code.
            channel = SlackChannel(
                make_slack_client(slack.token, as_localhost(slack.url) + "/api/")
            )
            try:
                with pytest.raises(DeliveryError) as slack_error:
                    await channel.send(DEFAULT_CHANNEL, line("hi"), None)
            finally:
                await channel.aclose()
            assert socks.refused == 3 and len(hf.requests) == before
            for error in (source_error.value, llm_error.value, slack_error.value):
                assert "wrong" not in str(error) and "alice" not in str(error)
