"""Fakes of every outside service, served over real HTTP on 127.0.0.1.

Each fake is an aiohttp application started on an ephemeral port. The real client libraries
(httpx, openai, slack_sdk, python-telegram-bot) are pointed at it through the contract's
base-URL variables, so tests exercise real serialization, retries and rate-limit handling.
Faults are injected here, at the fake, never by patching the code under test.
"""
