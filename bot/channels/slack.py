"""Slack as a Channel: render with `digest_core.render.slack`, post with slack_sdk's AsyncWebClient.

Delivery rules this module owns:

* Every post carries message metadata `{"event_type": "digestbot_post", "event_payload":
  {"key": <ledger key>}}`. Slack has no idempotency key for `chat.postMessage`, so when a post's
  outcome is unknown (the connection dropped after Slack may have stored it) the caller asks
  `find_posted` before posting again; the metadata is how the earlier copy is recognised.
* The client never re-sends a `chat.postMessage` after a connection error (see
  `make_slack_client`): a blind retry is exactly how a "delivered but timed out" post becomes
  two posts. Such failures surface as a transient `DeliveryError` and the ledger reconciles.
* 429s are retried by the SDK after `Retry-After`; 500/503 a couple of times with backoff.
* Error reasons are short code-like strings (`"slack chat.postMessage: not_in_channel"`) built
  from the API error code or the exception class name only, so no token or URL can leak.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp_socks import ProxyConnectionError as SocksConnectionError
from aiohttp_socks import ProxyConnector, ProxyType
from aiohttp_socks import ProxyError as SocksError
from aiohttp_socks import ProxyTimeoutError as SocksTimeoutError
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.http_retry.async_handler import AsyncRetryHandler
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
    AsyncServerErrorRetryHandler,
)
from slack_sdk.http_retry.interval_calculator import RetryIntervalCalculator
from slack_sdk.http_retry.request import HttpRequest
from slack_sdk.http_retry.response import HttpResponse
from slack_sdk.http_retry.state import RetryState
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook import WebhookResponse
from slack_sdk.webhook.async_client import AsyncWebhookClient

from bot.channels.base import STREAM_INTERVAL, DeliveryError, Outgoing
from digest_core.models import Answer, Digest, DigestEntry, FigureImage
from digest_core.proxy import Proxy, ProxyRoutes, proxy_routes
from digest_core.render.slack import SlackMessage, escape, figure_comment

if TYPE_CHECKING:
    from bot.channels.progress import SlackThreadStatus
    from bot.channels.streaming import AnswerStream
    from bot.history import Listing
from digest_core.retry import retry_after

log = logging.getLogger(__name__)

SLACK_API = "https://slack.com/api/"
METADATA_EVENT_TYPE = "digestbot_post"
THINKING = "🤔 Reading the paper…"

# Errors that the same request will hit again however often it is retried.
# Refusals of one message, not of the channel: the next message may still go through.
CONTENT_ERRORS = frozenset(
    {"invalid_blocks", "msg_too_long", "msg_blocks_too_long", "no_text", "invalid_blocks_format"}
)

PERMANENT_ERRORS = frozenset(
    {
        "channel_not_found",
        "not_in_channel",
        "is_archived",
        "invalid_auth",
        "not_authed",
        "account_inactive",
        "token_revoked",
        "token_expired",
        "missing_scope",
        "not_allowed_token_type",
        "team_access_not_granted",
        "ekm_access_denied",
        "invalid_blocks",
        "invalid_blocks_format",
        "msg_too_long",
        "msg_blocks_too_long",
        "no_text",
        "too_many_attachments",
        "invalid_metadata_format",
        "invalid_metadata_schema",
        "metadata_too_large",
        "invalid_arguments",
        "thread_not_found",
        "message_not_found",
        "cant_update_message",
        "edit_window_closed",
        "user_not_in_channel",
        "restricted_action",
        "restricted_action_read_only_channel",
        "restricted_action_thread_only_channel",
        "restricted_action_non_threadable_channel",
    }
)

# Methods whose request may have taken effect even though the client saw a connection error;
# repeating them blindly can post the same message twice.
NOT_SAFE_TO_REPEAT = frozenset(
    {
        "chat.postMessage",
        "chat.postEphemeral",
        "chat.scheduleMessage",
        # Shares the uploaded file into the channel: repeated, the figure shows twice.
        "files.completeUploadExternal",
    }
)

# How long a 429 may ask us to wait before we give up and report a transient failure instead
# of parking the whole digest (Slack has answered with Retry-After of many minutes).
MAX_RETRY_AFTER = 120


def _api_method(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


class _ReadsOnly:
    """Mixin: never repeat a method that posts.

    Reads (conversations.replies, auth.test, apps.connections.open) are safe to repeat. A reset
    or a 5xx on chat.postMessage may come after Slack stored the message (reliability.md §2.1:
    duplicate posts from outbound retries), so the ledger looks for it before posting again
    (bot.service.post_thread) instead of the SDK repeating it blindly.
    """

    async def _can_retry_async(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        if _api_method(request.url) in NOT_SAFE_TO_REPEAT:
            return False
        return await super()._can_retry_async(  # type: ignore[misc]
            state=state, request=request, response=response, error=error
        )


class _ReadsOnlyConnectionErrorRetryHandler(_ReadsOnly, AsyncConnectionErrorRetryHandler):
    pass


class _ReadsOnlyServerErrorRetryHandler(_ReadsOnly, AsyncServerErrorRetryHandler):
    pass


def _retry_after(response: HttpResponse | None) -> float:
    # The project's one Retry-After parser; 1 s when Slack sent none (as the SDK assumes).
    wait = retry_after(response.headers) if response is not None else None
    return 1.0 if wait is None else wait


class _CappedRateLimitRetryHandler(AsyncRateLimitErrorRetryHandler):
    """The SDK's 429 handler (sleep Retry-After + jitter), but only for waits we can afford.

    A 429 is rejected before Slack does anything, so re-sending a post after one is safe.
    """

    def __init__(self, max_retry_count: int = 5, max_wait: float = MAX_RETRY_AFTER) -> None:
        super().__init__(max_retry_count=max_retry_count)
        self.max_wait = max_wait

    async def _can_retry_async(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        if response is None or response.status_code != 429:
            return False
        return _retry_after(response) <= self.max_wait

    async def prepare_for_next_attempt_async(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> None:
        state.next_attempt_requested = True
        # Jitter keeps concurrent senders from hitting the limit again in lock-step.
        await asyncio.sleep(_retry_after(response) + random.random())
        state.increment_current_attempt()


def make_slack_client(
    token: str,
    base_url: str = SLACK_API,
    *,
    timeout: int = 30,
    retry_interval: RetryIntervalCalculator | None = None,
    routes: ProxyRoutes | None = None,
) -> AsyncWebClient:
    """An AsyncWebClient with the retry policy digestbot needs.

    * 429: retried up to 5 times after `Retry-After` (+ up to 1 s jitter), if that is at most
      MAX_RETRY_AFTER seconds.
    * HTTP 500/503 and connection errors: retried for reads only (5xx twice with exponential
      backoff, `retry_interval`; a reset once). slack_sdk's handlers would also repeat a
      chat.postMessage whose 5xx or reset came after Slack accepted it, which duplicates the
      post; the ledger reconciles with `SlackChannel.find_posted` and then posts again instead.

    Note the SDK counts attempts across all handlers (one shared RetryState per call).
    """
    server_kwargs: dict[str, Any] = {}
    if retry_interval is not None:
        server_kwargs["interval_calculator"] = retry_interval
    handlers: list[AsyncRetryHandler] = [
        _ReadsOnlyConnectionErrorRetryHandler(max_retry_count=1, **server_kwargs),
        _CappedRateLimitRetryHandler(max_retry_count=5),
        _ReadsOnlyServerErrorRetryHandler(max_retry_count=2, **server_kwargs),
    ]
    # One host: the proxy rule of digest_core.proxy is applied once, to the API base. Call this
    # inside the running loop (a proxied session's connector binds to it).
    proxy = (routes or proxy_routes()).proxy_for(base_url)
    client = AsyncWebClient(
        token=token,
        base_url=base_url,
        timeout=timeout,
        retry_handlers=handlers,
        session=proxied_session(proxy) if proxy is not None else None,
    )
    # slack_sdk reads HTTPS_PROXY by itself (ignoring NO_PROXY and ALL_PROXY) when it gets no
    # proxy; the routing is the session's (or none), so its own reading is switched off.
    client.proxy = None
    return client


def proxied_session(proxy: Proxy) -> aiohttp.ClientSession:
    """An aiohttp session whose every connection goes through `proxy`.

    aiohttp-socks opens the tunnel (SOCKS5, or HTTP CONNECT for an http:// proxy) for plain and
    TLS connections and WebSockets alike, so Slack's API, Socket Mode and response_url use one
    mechanism. Names are resolved by the proxy (rdns), as httpcore does for the other clients.
    """
    kind = ProxyType.HTTP if proxy.scheme == "http" else ProxyType.SOCKS5
    connector = _ProxyConnector(
        proxy_type=kind,
        host=proxy.host,
        port=proxy.port,
        username=proxy.username,
        password=proxy.password,
        rdns=True,
    )
    return aiohttp.ClientSession(connector=connector)


class _ProxyConnector(ProxyConnector):
    """aiohttp-socks' connector, failing the way aiohttp does.

    aiohttp-socks raises its own exception classes (not aiohttp.ClientError) when the proxy is
    unreachable, refuses the login or the target; every caller here handles aiohttp's, so
    they are re-raised as aiohttp's proxy errors (the message has no credentials).
    """

    async def _wrap_create_connection(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super()._wrap_create_connection(*args, **kwargs)
        except SocksTimeoutError:
            raise aiohttp.ConnectionTimeoutError("proxy did not answer in time") from None
        except (SocksConnectionError, SocksError) as exc:
            key = kwargs["req"].connection_key
            raise aiohttp.ClientProxyConnectionError(key, OSError(str(exc))) from None


class RoutedSocketModeClient(SocketModeClient):
    """slack_sdk's aiohttp Socket Mode client, routed by digest_core.proxy.

    The WebSocket URL comes from `apps.connections.open` (a different host from the Web API:
    wss-primary.slack.com), so the rule is applied to each URL as it is issued. The URL request
    itself goes through the (already routed) Web API client.
    """

    def __init__(self, *args: Any, routes: ProxyRoutes | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.proxy = None  # as for the Web API client: no reading of HTTPS_PROXY on its own
        self._routes = routes or proxy_routes()
        self._sessions: dict[str | None, aiohttp.ClientSession] = {
            None: self.aiohttp_client_session
        }

    async def issue_new_wss_url(self) -> str:
        url: str = await super().issue_new_wss_url()
        proxy = self._routes.proxy_for(url)
        key = proxy.url if proxy is not None else None
        if key not in self._sessions:
            assert proxy is not None
            self._sessions[key] = proxied_session(proxy)
        self.aiohttp_client_session = self._sessions[key]
        return url

    async def close(self) -> None:
        await super().close()
        for session in self._sessions.values():
            if not session.closed:
                await session.close()


class RoutedSocketModeHandler(AsyncSocketModeHandler):
    """Bolt's Socket Mode adapter with a RoutedSocketModeClient (the same wiring as Bolt's
    constructor: the app's own Web API client, Bolt's ping interval, Bolt's handler)."""

    def __init__(self, app: Any, app_token: str, *, routes: ProxyRoutes | None = None) -> None:
        self.app = app
        self.app_token = app_token
        self.client = RoutedSocketModeClient(
            app_token=app_token,
            logger=app.logger,
            web_client=app.client,
            ping_interval=10,
            routes=routes,
        )
        self.client.socket_mode_request_listeners.append(self.handle)  # type: ignore[arg-type]


async def send_to_response_url(
    url: str, text: str, *, routes: ProxyRoutes | None = None
) -> WebhookResponse:
    """Post an ephemeral line to a slash command's `response_url`, routed like the Web API."""
    proxy = (routes or proxy_routes()).proxy_for(url)
    session = proxied_session(proxy) if proxy is not None else None
    webhook = AsyncWebhookClient(url, session=session)
    webhook.proxy = None  # the same switch as for the Web API client
    try:
        return await webhook.send(text=text, response_type="ephemeral")
    finally:
        if session is not None:
            await session.close()


def _delivery_error(method: str, exc: BaseException) -> DeliveryError:
    """Translate whatever the SDK raised into a DeliveryError with a short, secret-free reason."""
    if isinstance(exc, SlackApiError):
        response = exc.response
        # A body that would not parse as JSON leaves the raw aiohttp response (`.status`).
        status = getattr(response, "status_code", None) or getattr(response, "status", 0) or 0
        data = getattr(response, "data", None)
        code = data.get("error") if isinstance(data, dict) else None
        if status == 429 or code == "ratelimited":
            return DeliveryError(f"slack {method}: ratelimited (429)", permanent=False)
        if not code:
            # An HTML error page, an empty body: Slack (or a proxy before it) in trouble.
            return DeliveryError(
                f"slack {method}: not a Slack answer (http {status})", permanent=False
            )
        if code in PERMANENT_ERRORS:
            return DeliveryError(
                f"slack {method}: {code}", permanent=True, content=code in CONTENT_ERRORS
            )
        if status >= 500:
            return DeliveryError(f"slack {method}: http {status}", permanent=False)
        # Unknown codes (internal_error, fatal_error, service_unavailable, new ones...) are
        # treated as transient: a later run may retry, bounded by the ledger's attempt count.
        label = code if isinstance(code, str) and code.isidentifier() else f"http {status}"
        return DeliveryError(f"slack {method}: {label}", permanent=False)
    if isinstance(exc, TimeoutError):
        return DeliveryError(f"slack {method}: timeout", permanent=False)
    # aiohttp.ClientError covers resets, refused connections and server disconnects. Only the
    # class name is kept: exception text can carry URLs and request details.
    return DeliveryError(f"slack {method}: {type(exc).__name__}", permanent=False)


def slack_channel(settings: Any) -> SlackChannel:
    """The Slack channel the settings describe (SLACK_BOT_TOKEN at SLACK_API_URL), for the
    CLI's one-shot delivery and for `serve` alike."""
    token = settings.slack.bot_token
    if token is None:
        raise ValueError("SLACK_BOT_TOKEN is not set")
    return SlackChannel(
        make_slack_client(token.get(), settings.slack.api_url), settings.digest.language
    )


class SlackChannel:
    """Slack implementation of the Channel protocol (bot.channels.base.Channel)."""

    platform = "slack"
    searchable = True  # every post carries its key in message metadata
    buttons = True

    def __init__(self, client: AsyncWebClient, language: str = "zh") -> None:
        self.client = client
        self.language = language
        # Thread answers are streamed (chat.startStream…) until Slack refuses the methods,
        # one call per stream_interval at most.
        self.streaming = True
        self.stream_interval = STREAM_INTERVAL
        # An analysis shows its stage as the thread's status until Slack refuses setStatus.
        self.thread_status = True
        self.progress_interval: float | None = None  # None: bot.channels.progress's default

    async def aclose(self) -> None:
        """Close the client's HTTP session (one-shot use from the CLI)."""
        session = getattr(self.client, "session", None)
        if session is not None and not session.closed:
            await session.close()

    # ------------------------------------------------------------------ render

    def render_digest(self, digest: Digest) -> list[Outgoing]:
        """`toc` first, then `<arxiv_id>#<j>` (j from 0, as Telegram) for each part of each pick."""
        from digest_core.render import slack as render

        out = [
            Outgoing(
                key="toc",
                payload=render.render_toc(digest),
                summary=f"toc {digest.date}: {len(digest.picked)} picked of {len(digest.entries)}",
            )
        ]
        language = digest.language or self.language
        for i, entry in enumerate(digest.picked, start=1):
            out.extend(self._parts(entry, render.render_deep_dive(entry, i, language)))
        return out

    def render_analysis(self, entry: DigestEntry) -> list[Outgoing]:
        """`root` naming the paper, then its deep dive as `<arxiv_id>#<j>` replies."""
        from digest_core.render import slack as render

        # In the language it was written in: the language of the chat's profile.
        language = entry.deep_dive.language if entry.deep_dive else self.language
        root = Outgoing(
            key="root",
            payload=render.render_paper_root(entry, language),
            summary=f"analysis root {entry.paper.arxiv_id}",
        )
        return [root, *self._parts(entry, render.render_deep_dive(entry, 1, language))]

    def render_answer(self, answer: Answer) -> list[Outgoing]:
        """`answer#<j>` (j from 0), as many messages as the limits need."""
        from digest_core.render import slack as render

        return [
            Outgoing(key=f"answer#{j}", payload=msg, summary=f"answer {answer.arxiv_id} part {j}")
            for j, msg in enumerate(render.render_answer(answer))
        ]

    def render_line(self, text: str) -> Outgoing:
        """A short line from the bot, as one mrkdwn section (never parsed for links or pings)."""
        return Outgoing(key="line", payload=line_message(text), summary=text.splitlines()[0][:80])

    def render_listing(self, listing: Listing, key: str) -> Outgoing:
        """mrkdwn, titles as `<url|title>`. A section holds 3,000 characters: a long roundup
        (two lists of up to ten linked titles) takes several, each line whole; the text
        keeps every line."""
        from bot.history import slack_mrkdwn
        from digest_core.render.slack import mrkdwn_sections

        text = slack_mrkdwn(listing)
        payload = SlackMessage(text, mrkdwn_sections(text.split("\n")))
        return Outgoing(key, payload, listing.summary(key))

    def render_choices(self, text: str, key: str, options: list[tuple[str, str]]) -> Outgoing:
        """The "which paper do you mean?" line with one button per paper (`options`: arXiv ID
        and label), the buttons naming the kept question by its `key`."""
        from digest_core.render.slack import pick_blocks

        line = line_message(text)
        payload = SlackMessage(line.text, line.blocks + pick_blocks(key, options))
        return Outgoing(key="line", payload=payload, summary=text.splitlines()[0][:80])

    @staticmethod
    def _parts(entry: DigestEntry, messages: list[SlackMessage]) -> list[Outgoing]:
        arxiv_id = entry.paper.arxiv_id
        return [
            Outgoing(key=f"{arxiv_id}#{j}", payload=msg, summary=f"deep dive {arxiv_id} part {j}")
            for j, msg in enumerate(messages)
        ]

    # -------------------------------------------------------------------- send

    async def send(
        self, chat: str, payload: SlackMessage, thread: str | None, *, key: str | None = None
    ) -> str:
        """Post one message (a reply when `thread` is a parent ts). Returns the new `ts`.

        `key` goes into message metadata so `find_posted` can recognise the post later.
        Raises DeliveryError; `permanent` tells the caller not to try again.
        """
        kwargs: dict[str, Any] = {
            "channel": chat,
            "text": payload.text,
            # Link previews of arXiv pages would bury the digest; never set link_names either,
            # so nothing in a paper or an LLM answer can turn into a ping.
            "unfurl_links": False,
            "unfurl_media": False,
        }
        if payload.blocks:
            kwargs["blocks"] = payload.blocks
        if thread:
            kwargs["thread_ts"] = thread
        if key is not None:
            kwargs["metadata"] = {
                "event_type": METADATA_EVENT_TYPE,
                "event_payload": {"key": key},
            }
        try:
            response = await self.client.chat_postMessage(**kwargs)
        except (SlackClientError, aiohttp.ClientError, TimeoutError) as exc:
            raise self._fail("chat.postMessage", exc) from None
        return str(response["ts"])

    async def send_image(
        self, chat: str, image: FigureImage, caption: str, thread: str | None, *, key: str
    ) -> str:
        """Upload an image into the thread with Slack's external upload (slack_sdk's
        `files_upload_v2`: files.getUploadURLExternal, the upload, then
        files.completeUploadExternal with `channel_id` and `thread_ts`); the caption is the
        file's comment. Needs the `files:write` scope. Returns the file's id."""
        try:
            response = await self.client.files_upload_v2(
                content=image.data,
                filename=image.filename,
                title=image.filename,
                alt_txt=caption[:1000] or image.filename,
                channel=chat,
                thread_ts=thread,
                initial_comment=figure_comment(caption) or None,
            )
        except (SlackClientError, aiohttp.ClientError, TimeoutError) as exc:
            raise self._fail("files.upload", exc) from None
        file = response.get("file") or {}
        return str(file.get("id") or "")

    async def find_posted(self, chat: str, thread: str | None, key: str) -> str | None:
        """The ts of an earlier post carrying `key`, or None if Slack has no such message.

        For a reply, reads the whole thread (`conversations.replies`); for a root, the last 50
        top-level messages (`conversations.history`). Raises DeliveryError if Slack cannot be
        asked, in which case the outcome is still unknown and the caller must not re-post yet.
        """
        if thread:
            method = "conversations.replies"
            cursor: str | None = None
            # A digest thread is tens of messages; the page cap only guards against loops.
            for _ in range(20):
                try:
                    response = await self.client.conversations_replies(
                        channel=chat,
                        ts=thread,
                        include_all_metadata=True,
                        limit=200,
                        cursor=cursor,
                    )
                except (SlackClientError, aiohttp.ClientError, TimeoutError) as exc:
                    raise self._fail(method, exc) from None
                found = _match(response.get("messages") or [], key)
                if found:
                    return found
                cursor = (response.get("response_metadata") or {}).get("next_cursor") or None
                if not cursor:
                    return None
            return None
        try:
            response = await self.client.conversations_history(
                channel=chat, include_all_metadata=True, limit=50
            )
        except (SlackClientError, aiohttp.ClientError, TimeoutError) as exc:
            raise self._fail("conversations.history", exc) from None
        return _match(response.get("messages") or [], key)

    async def working(self, chat: str, thread: str | None) -> str | None:
        """A "Reading the paper…" placeholder in the thread; its ts, for `replace`."""
        return await self.send(chat, line_message(THINKING), thread)

    def answer_stream(
        self,
        chat: str,
        thread: str | None,
        *,
        placeholder: str | None,
        user: str | None = None,
        team: str | None = None,
    ) -> AnswerStream | None:
        """A poster that streams a thread answer as it is written (bot.channels.streaming),
        or None where it cannot: outside a thread, or once Slack refused streaming."""
        if not self.streaming or not thread:
            return None
        from bot.channels.streaming import SlackAnswerStream

        return SlackAnswerStream(
            self,
            chat,
            thread,
            placeholder=placeholder,
            user=user,
            team=team,
            interval=self.stream_interval,
        )

    def analysis_progress(
        self, chat: str, *, thread: str | None, opening: tuple[str, str] | None = None
    ) -> SlackThreadStatus | None:
        """Where an analysis can show its stages (bot.channels.progress): the status of the
        thread the request came from (assistant.threads.setStatus), or None: without a
        thread (a slash command has none), or once Slack refused the method. `opening` is
        not used: Slack's opening line is an ephemeral acknowledgement, which cannot be
        edited."""
        if not self.thread_status or not thread:
            return None
        from bot.channels.progress import PROGRESS_INTERVAL, SlackThreadStatus

        return SlackThreadStatus(
            self, chat, thread, interval=self.progress_interval or PROGRESS_INTERVAL
        )

    async def replace(self, chat: str, ts: str, payload: SlackMessage) -> None:
        """Replace message `ts` (e.g. a "working on it…" placeholder) with `payload`."""
        kwargs: dict[str, Any] = {"channel": chat, "ts": ts, "text": payload.text}
        # An empty list clears the old blocks, so the text becomes the visible body.
        kwargs["blocks"] = payload.blocks or []
        try:
            await self.client.chat_update(**kwargs)
        except (SlackClientError, aiohttp.ClientError, TimeoutError) as exc:
            raise self._fail("chat.update", exc) from None

    async def permalink(self, chat: str, ts: str) -> str | None:
        """A link to message `ts` (chat.getPermalink), or None when Slack cannot give one."""
        try:
            answer = await self.client.chat_getPermalink(channel=chat, message_ts=ts)
        except (SlackClientError, aiohttp.ClientError, TimeoutError) as exc:
            log.info(
                "slack %s: no permalink for %s: %s",
                chat,
                ts,
                self._fail("chat.getPermalink", exc).reason,
            )
            return None
        link = answer.get("permalink")
        return link if isinstance(link, str) else None

    async def set_rating_counts(
        self, chat: str, ts: str, text: str, blocks: list[dict], arxiv_id: str, up: int, down: int
    ) -> None:
        """Show a deep dive's current 👍/👎 counts on its buttons: the pressed message's own
        blocks (as the press delivered them) with the buttons re-rendered (chat.update)."""
        from digest_core.render.slack import with_rating_counts

        await self.replace(
            chat, ts, SlackMessage(text, with_rating_counts(blocks, arxiv_id, up, down))
        )

    async def post_ephemeral(
        self, chat: str, user: str, text: str, *, thread: str | None = None
    ) -> None:
        """A message only `user` sees (refusals, usage hints), in `thread` when given. `text`
        must be escaped mrkdwn."""
        kwargs: dict[str, Any] = {"channel": chat, "user": user, "text": text}
        if thread:
            kwargs["thread_ts"] = thread
        try:
            await self.client.chat_postEphemeral(**kwargs)
        except (SlackClientError, aiohttp.ClientError, TimeoutError) as exc:
            raise self._fail("chat.postEphemeral", exc) from None

    def _fail(self, method: str, exc: BaseException) -> DeliveryError:
        error = _delivery_error(method, exc)
        # Defence in depth: the reason is built from codes, but never let the token through.
        token = self.client.token
        if token and token in error.reason:
            error = DeliveryError(
                error.reason.replace(token, "***"),
                permanent=error.permanent,
                content=error.content,
            )
        log.debug("%s (permanent=%s)", error.reason, error.permanent)  # the caller reports it once
        return error


def line_message(text: str) -> SlackMessage:
    """One plain line as a Slack message: escaped, in a verbatim section."""
    escaped = escape(text)
    block = {
        "type": "section",
        "text": {"type": "mrkdwn", "text": escaped[:2900], "verbatim": True},
    }
    return SlackMessage(escaped, [block])


def _match(messages: list[dict[str, Any]], key: str) -> str | None:
    for message in messages:
        metadata = message.get("metadata") or {}
        if metadata.get("event_type") != METADATA_EVENT_TYPE:
            continue
        if (metadata.get("event_payload") or {}).get("key") == key:
            return str(message["ts"])
    return None
