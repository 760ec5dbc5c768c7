"""Which proxy, if any, a request goes through: one rule for every HTTP client digestbot builds.

The standard variables `HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY` and `NO_PROXY` (each also in
lower case; a non-empty lower-case one wins, as with curl and Python's urllib) are read here and
nowhere else. The libraries each have their own reading of them (httpx honours NO_PROXY its
own way, slack_sdk ignores NO_PROXY and ALL_PROXY, aiohttp knows no SOCKS), so every client is
built with its own environment handling off and this module deciding instead:

* a host named in `NO_PROXY` is reached directly;
* otherwise an `https`/`wss` URL goes through `HTTPS_PROXY`, an `http`/`ws` URL through
  `HTTP_PROXY`, and either, if that is unset, through `ALL_PROXY`;
* otherwise directly.

`NO_PROXY` is a comma-separated list: `*` (everything direct), a name (`example.com` also
covers its subdomains; a leading `.` or `*.` changes nothing), a name with `:port` (only that
port), an IP address, or an address range (`10.0.0.0/8`). Names are compared as written, never
resolved.

A proxy is `http://`, `socks5://` or `socks5h://` (a bare `host:port` means `http://`); names
are resolved by the proxy in both SOCKS forms, so a local DNS that lies cannot misdirect a
request. The transports below use the libraries' own proxy support (httpcore's HTTP and SOCKS
pools); the aiohttp side (Slack) lives in `bot.channels.slack`.

A malformed value raises ConfigError naming the variable, never its credentials.
"""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import httpx
import httpx2

from digest_core.config import ConfigError

# The proxy variables, in upper case; each is also read in lower case.
PROXY_ENV_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")

# Proxy schemes every client here supports, with curl's default ports.
PROXY_SCHEMES = {"http": 80, "socks5": 1080, "socks5h": 1080}
_SCHEME_VARIABLE = {
    "https": "HTTPS_PROXY",
    "wss": "HTTPS_PROXY",
    "http": "HTTP_PROXY",
    "ws": "HTTP_PROXY",
}
_DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443}
_SAFE_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]{0,15}$")


@dataclass(frozen=True)
class Proxy:
    """One proxy server. `url` carries the credentials (for the libraries only); `shown` and
    `repr` never do."""

    scheme: str
    host: str
    port: int
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    variable: str = "ALL_PROXY"

    @property
    def url(self) -> str:
        auth = ""
        if self.username is not None:
            auth = quote(self.username, safe="")
            if self.password is not None:
                auth += ":" + quote(self.password, safe="")
            auth += "@"
        return f"{self.scheme}://{auth}{self._hostport()}"

    @property
    def shown(self) -> str:
        """The proxy without credentials, for log lines."""
        return f"{self.scheme}://{self._hostport()}"

    @property
    def is_socks(self) -> bool:
        return self.scheme.startswith("socks")

    def _hostport(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_proxy(variable: str, value: str) -> Proxy:
    """A proxy URL as a Proxy, or ConfigError naming `variable` (never echoing the value, which
    may hold a password)."""
    text = value.strip()
    if not text or any(c.isspace() for c in text):
        raise ConfigError(f"{variable}: not a proxy URL (it contains spaces)")
    if "://" not in text:
        text = "http://" + text  # `host:port`, as curl and pip read it
    scheme = text.split("://", 1)[0].lower()
    if scheme not in PROXY_SCHEMES:
        named = repr(scheme) if _SAFE_SCHEME.match(scheme) else "this scheme"
        raise ConfigError(
            f"{variable}: proxy scheme {named} is not supported (use http://, socks5:// "
            "or socks5h://)"
        )
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise ConfigError(f"{variable}: the proxy port is not a number from 1 to 65535") from None
    host = parts.hostname
    if not host:
        raise ConfigError(f"{variable}: the proxy URL names no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(f"{variable}: a proxy URL is scheme://host:port, without a path")
    if port == 0:
        raise ConfigError(f"{variable}: the proxy port is not a number from 1 to 65535")
    return Proxy(
        scheme=scheme,
        host=host,
        port=port or PROXY_SCHEMES[scheme],
        username=unquote(parts.username) if parts.username is not None else None,
        password=unquote(parts.password) if parts.password is not None else None,
        variable=variable,
    )


@dataclass(frozen=True)
class _Bypass:
    """One NO_PROXY entry."""

    name: str | None = None
    port: int | None = None
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None

    def matches(self, host: str, port: int | None) -> bool:
        if self.port is not None and port != self.port:
            return False
        if self.network is not None:
            try:
                return ipaddress.ip_address(host) in self.network
            except ValueError:
                return False
        assert self.name is not None
        return host == self.name or host.endswith("." + self.name)


def _bypass_entry(variable: str, raw: str) -> _Bypass:
    entry = raw.strip().lower()
    if entry.startswith("[") and "]" in entry:  # [::1] or [::1]:8080
        address, _, rest = entry[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        entry, port_text = address, port
    elif entry.count(":") == 1:  # name:port or 1.2.3.4:port
        entry, port_text = entry.split(":")
    else:
        port_text = ""
    port = None
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ConfigError(f"{variable}: {raw.strip()!r} has a port that is not a number")
        port = int(port_text)
    if "/" in entry:
        try:
            return _Bypass(port=port, network=ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ConfigError(f"{variable}: {raw.strip()!r} is not an address range") from None
    try:
        address = ipaddress.ip_address(entry)
        return _Bypass(port=port, network=ipaddress.ip_network(address))
    except ValueError:
        pass
    name = entry.removeprefix("*").removeprefix(".").rstrip(".")
    if not name or not re.match(r"^[a-z0-9_-]+(\.[a-z0-9_-]+)*$", name):
        raise ConfigError(f"{variable}: {raw.strip()!r} is not a host name, address or range")
    return _Bypass(name=name, port=port)


@dataclass(frozen=True)
class ProxyRoutes:
    """The proxy environment, read once: `proxy_for(url)` is the one rule every client uses."""

    http: Proxy | None = None
    https: Proxy | None = None
    all: Proxy | None = None
    bypass_all: bool = False
    bypass: tuple[_Bypass, ...] = ()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ProxyRoutes:
        """Read the proxy variables (os.environ by default). Raises ConfigError, one line."""
        env = os.environ if env is None else env
        found: dict[str, tuple[str, str]] = {}
        for name in PROXY_ENV_VARS:
            for spelled in (name.lower(), name):
                value = env.get(spelled, "").strip()
                if value:
                    found[name] = (spelled, value)
                    break
        proxies = {
            name: parse_proxy(*found[name])
            for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")
            if name in found
        }
        bypass: list[_Bypass] = []
        bypass_all = False
        if "NO_PROXY" in found:
            spelled, value = found["NO_PROXY"]
            for raw in re.split(r"[,\s]+", value):
                if not raw:
                    continue
                if raw == "*":
                    bypass_all = True
                    continue
                bypass.append(_bypass_entry(spelled, raw))
        return cls(
            http=proxies.get("HTTP_PROXY"),
            https=proxies.get("HTTPS_PROXY"),
            all=proxies.get("ALL_PROXY"),
            bypass_all=bypass_all,
            bypass=tuple(bypass),
        )

    @property
    def any(self) -> bool:
        """Whether any request could go through a proxy."""
        return not self.bypass_all and any((self.http, self.https, self.all))

    def proxy_for(self, url: str) -> Proxy | None:
        """The proxy `url` goes through, or None for a direct connection."""
        if not self.any:
            return None
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        host = (parts.hostname or "").rstrip(".")
        try:
            port = parts.port or _DEFAULT_PORTS.get(scheme)
        except ValueError:
            port = None
        if any(entry.matches(host, port) for entry in self.bypass):
            return None
        chosen = {"HTTPS_PROXY": self.https, "HTTP_PROXY": self.http}.get(
            _SCHEME_VARIABLE.get(scheme, "")
        )
        return chosen or self.all


# One verifying TLS context per library, shared by every transport built here: loading the CA
# bundle costs tens of milliseconds of CPU, and each client used to load its own. SSLContext is
# made to be shared; the library's own create_ssl_context builds it (with whatever CA setting
# it honours), once per process.
_TLS_CONTEXTS: dict[str, ssl.SSLContext] = {}


def default_tls_context(module: Any) -> ssl.SSLContext:
    """The library's default verifying context (`module.create_ssl_context()`), built once."""
    if module.__name__ not in _TLS_CONTEXTS:
        _TLS_CONTEXTS[module.__name__] = module.create_ssl_context()
    return _TLS_CONTEXTS[module.__name__]


def proxy_routes() -> ProxyRoutes:
    """The routes the process environment gives (read at each client's construction)."""
    return ProxyRoutes.from_env()


class _Routed:
    """Per request: the direct transport, or one through the proxy the rule names.

    One transport per configured proxy and one direct, each with the client's limits and TLS
    settings; the proxying itself is httpcore's. They are built up front, as httpx builds its
    own: building one loads the CA bundle, which must not delay a client's first request
    (arXiv's request spacing is measured from the moment a request is sent).
    """

    def __init__(self, module: Any, routes: ProxyRoutes | None, kwargs: dict[str, Any]) -> None:
        self._module = module
        self._routes = proxy_routes() if routes is None else routes
        if kwargs.get("verify", True) is True and not kwargs.get("cert"):
            if kwargs.get("trust_env", True):
                kwargs = {**kwargs, "verify": default_tls_context(module)}
        self._kwargs = kwargs
        self._transports: dict[str | None, Any] = {}
        self._build()

    def _build(self) -> None:
        configured = (self._routes.http, self._routes.https, self._routes.all)
        for key in (None, *(proxy.url for proxy in configured if proxy is not None)):
            if key not in self._transports:
                self._transports[key] = self._module.AsyncHTTPTransport(proxy=key, **self._kwargs)

    def _transport_for(self, url: object) -> Any:
        proxy = self._routes.proxy_for(str(url))
        key = proxy.url if proxy is not None else None
        if key not in self._transports:  # closed, then used again (PTB re-initialises)
            self._build()
        return self._transports[key]

    async def handle_async_request(self, request: Any) -> Any:
        return await self._transport_for(request.url).handle_async_request(request)

    async def aclose(self) -> None:
        transports = list(self._transports.values())
        self._transports.clear()
        for transport in transports:
            await transport.aclose()


class RoutedHttpxTransport(_Routed, httpx.AsyncBaseTransport):
    """An httpx transport that follows ProxyRoutes (sources, Telegram)."""

    def __init__(self, routes: ProxyRoutes | None = None, **kwargs: Any) -> None:
        super().__init__(httpx, routes, kwargs)


class RoutedHttpx2Transport(_Routed, httpx2.AsyncBaseTransport):
    """The same routing for httpx2, openai 3.x's HTTP stack (the LLM client)."""

    def __init__(self, routes: ProxyRoutes | None = None, **kwargs: Any) -> None:
        super().__init__(httpx2, routes, kwargs)
