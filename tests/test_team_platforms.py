"""`/digest` over the real adapters: a signed Slack slash command over HTTP, Telegram updates
through getUpdates and through the webhook, against FakeSlack and FakeTelegram. The command
logic itself is covered in test_team.py; here: the requester's lines, the announcement in the
channel, and the change reaching the profile that the next digest uses.
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import Any

import httpx
from test_interactive import TG_FORUM, TG_GROUP, TG_TOPIC, Bot, eventually, sign, slash

from bot.http import HttpServer
from bot.serve import TelegramRuntime

WEBHOOK_SECRET = "team_webhook_secret_1"


def digest_cmd(text: str, **kw: Any) -> dict[str, Any]:
    return slash(text, **kw) | {"command": "/digest"}


async def test_slack_signed_digest_command_changes_and_announces(tmp_path: Path) -> None:
    async with Bot(tmp_path, slack="http") as bot, httpx.AsyncClient() as http:
        form = {"Content-Type": "application/x-www-form-urlencoded"}

        async def run(text: str, user: str = "U1") -> httpx.Response:
            body = urllib.parse.urlencode(digest_cmd(text, user=user)).encode()
            return await http.post(bot.events_url, content=body, headers=form | sign(body))

        body = urllib.parse.urlencode(digest_cmd("help")).encode()
        assert (await http.post(bot.events_url, content=body, headers=form)).status_code == 401

        assert (await run("help")).status_code == 200
        await eventually(lambda: bot.ephemerals("U1"), "the help line")
        (help_line,) = bot.ephemerals("U1")
        # C1 is in SLACK_CHANNELS; this bot runs with DIGEST_TIME=off
        assert help_line.startswith("This channel is subscribed, but this deployment has no daily")
        assert "Profile: default" in help_line
        assert bot.roots("C1") == []  # help is for the requester only

        assert (await run("profile threshold 75", user="U2")).status_code == 200
        await eventually(lambda: bot.roots("C1"), "the announcement")
        await bot.settle()
        (announce,) = bot.roots("C1")
        assert "@u2 changed this channel's threshold: 60 → 75" in str(announce)
        assert bot.ephemerals("U2") == ["Done."]
        profile = await bot.assistant.team.profile_for("slack", "C1")
        assert profile.threshold == 75

        assert (await run("profile threshold 500", user="U2")).status_code == 200
        await eventually(lambda: len(bot.ephemerals("U2")) == 2, "the refusal")
        assert bot.ephemerals("U2")[-1] == "The threshold must be a whole number from 0 to 100."
        assert len(bot.roots("C1")) == 1

        assert (await run("profile undo")).status_code == 200
        await eventually(lambda: len(bot.roots("C1")) == 2, "the undo announcement")
        await bot.settle()
        assert "@u1 undid the last change of this channel's threshold: 75 → 60" in str(
            bot.roots("C1")[-1]
        )
        assert bot.world.llm.calls == []  # no command costs an LLM call


async def test_telegram_digest_by_polling_in_a_group_and_a_forum_topic(tmp_path: Path) -> None:
    async with Bot(tmp_path, slack=None, telegram=True) as bot:
        sent = await bot.tg_say(TG_GROUP, "/digest@DigestBot profile topics video, robots")
        (announce,) = sent
        assert announce["visible"] == (
            "🛠 @ann_cv changed this channel's topics: diffusion models, flow matching, masked"
            " autoregressive models, super-resolution, image generation, image restoration →"
            " video, robots"
        )
        profile = await bot.assistant.team.profile_for("telegram", str(TG_GROUP))
        assert profile.topics == ("video", "robots")

        sent = await bot.tg_say(TG_GROUP, "/digest@OtherBot help")
        assert sent == []  # a command for another bot

        sent = await bot.tg_say(TG_FORUM, "/digest profile language en", message_thread_id=TG_TOPIC)
        (line,) = sent
        assert line["message_thread_id"] == TG_TOPIC
        assert "language: zh → en" in line["visible"]
        topic = f"{TG_FORUM}:{TG_TOPIC}"
        assert (await bot.assistant.team.profile_for("telegram", topic)).language == "en"
        # The group's profile is its own: the topic's change did not touch it.
        assert (await bot.assistant.team.profile_for("telegram", str(TG_GROUP))).language == "zh"

        (refused,) = await bot.tg_say(TG_GROUP, "/digest profile topics " + "x" * 61)
        assert (
            refused["visible"]
            == "A topic can be at most 60 characters ('xxxxxxxxxxxxxxxxxxxx'… has 61)."
        )


async def test_telegram_digest_through_the_webhook(tmp_path: Path) -> None:
    async with Bot(tmp_path, slack=None, telegram=False) as bot:
        await bot.tg.start()
        bot.tg.add_chat(TG_GROUP)
        settings = bot.world.settings(
            DIGEST_TIME="off",
            TELEGRAM_BOT_TOKEN=bot.tg.token,
            TELEGRAM_API_URL=bot.tg.url + "/bot",
            TELEGRAM_WEBHOOK_URL="https://bot.example.org/telegram",
            TELEGRAM_WEBHOOK_SECRET=WEBHOOK_SECRET,
        )
        runtime = TelegramRuntime(settings, bot.assistant, bot.work)
        http = HttpServer(0, _healthy, host="127.0.0.1")
        await runtime.check()
        await runtime.start(http)
        port = await http.start()
        try:
            update = bot.tg.push_message(TG_GROUP, "/digest subscribe")
            async with httpx.AsyncClient() as client:
                url = f"http://127.0.0.1:{port}/telegram"
                refused = await client.post(url, json=update)
                assert refused.status_code == 403
                headers = {"X-Telegram-Bot-Api-Secret-Token": WEBHOOK_SECRET}
                assert (await client.post(url, json=update, headers=headers)).status_code == 200
                # Telegram retries a webhook it thinks failed: handled once.
                assert (await client.post(url, json=update, headers=headers)).status_code == 200
            await eventually(lambda: bot.tg.sent(TG_GROUP), "the announcement")
            await bot.settle()
            (line,) = bot.tg.sent(TG_GROUP)
            assert (
                "daily digest" in line["visible"]
                and "not subscribed → subscribed" in line["visible"]
            )
            assert await bot.assistant.team.subscribed("telegram", str(TG_GROUP))
        finally:
            await http.stop()
            await runtime.stop_intake()
            await bot.settle()
            await runtime.close()


async def _healthy() -> dict[str, Any]:
    return {}
