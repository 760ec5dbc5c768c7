"""Choices as buttons: "which paper do you mean?" offers one button per paper, end to end.

The bot runs as `digestbot serve` builds it (the `Bot` rig of test_interactive) against
FakeSlack, FakeTelegram, FakeLLM and the fake arXiv and Hugging Face, after the day's digest
(two picks) was posted. A vague question in the digest thread gets the list with buttons;
presses are sent the way the platforms send them, in the shapes of the recorded payloads in
tests/fixtures (slack/block_actions_*, telegram/callback_query_*): a Socket Mode `interactive`
envelope and a `callback_query` update served by getUpdates. What a person would see is
asserted: what was posted where, what the presser alone was told, what the LLM was asked.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from test_interactive import (
    PICK_1,
    PICK_2,
    TEAM,
    TG_GROUP,
    Bot,
    _deliver_digest,
    paper_block,
    questions_in,
)
from test_ratings import BLOCK_ACTIONS, CALLBACK_QUERY, press_socket
from test_request_reliability import read_only

from bot.assistant import PICK_STALE, UNRECORDED
from bot.channels.base import Outgoing
from bot.chatstore import ChatStore
from bot.service import Destination
from digest_core.render.slack import PICK_BLOCK_ID
from digest_core.render.telegram import CALLBACK_DATA_LIMIT, parse_pick_data

pytestmark = pytest.mark.slow

VAGUE = "What is the main idea here?"
# A question near the stored limit: the buttons must name it by a key, never carry it.
LONG = "What is the main idea here, and why is it new? " * 80


def asked_about(call: dict[str, Any]) -> str:
    """Which pick an answer request was about (its paper block names the title)."""
    context = paper_block(call)
    found = [pid for pid, title in titles_of_picks().items() if f"Title: {title}" in context]
    assert len(found) == 1, context[:300]
    return found[0]


def titles_of_picks() -> dict[str, str]:
    return {
        PICK_1: "The Flexibility Trap: Why Arbitrary Order Limits Reasoning Potential in Diffusion Language Models",
        PICK_2: "Scaling Text-to-Image Diffusion Transformers with Representation Autoencoders",
    }


# -- Slack ---------------------------------------------------------------------------------------


async def slack_digest(bot: Bot) -> str:
    assert bot.slack_rt is not None
    await _deliver_digest(bot, bot.slack_rt.destinations())
    (toc,) = bot.roots("C1")
    return str(toc["ts"])


def pick_buttons(message: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        el
        for b in message.get("blocks") or []
        if str(b.get("block_id", "")).startswith(PICK_BLOCK_ID)
        for el in b["elements"]
    ]


def find(bot: Bot, ts: str) -> dict[str, Any]:
    return next(m for m in bot.slack.messages("C1") if m["ts"] == ts)


_action_ts = iter(range(1_700_000_000_000_100, 1_700_000_000_999_999, 100))


def pick_payload(
    message: dict[str, Any],
    user: str,
    n: int,
    *,
    value: str | None = None,
    channel: str = "C1",
    team: str = TEAM,
) -> dict[str, Any]:
    """A block_actions payload in the recorded shape, for a press on button `n` (1-based)
    of the bot's "which paper?" `message` (as the pressed message was when pressed)."""
    payload = copy.deepcopy(BLOCK_ACTIONS)
    element = pick_buttons(message)[n - 1] if pick_buttons(message) else {}
    stamp = next(_action_ts)
    payload |= {
        "team": {"id": team, "domain": "fake"},
        "user": {"id": user, "username": user.lower(), "name": user.lower(), "team_id": team},
        "api_app_id": "A0APP0001",
        "container": {
            "type": "message",
            "message_ts": message["ts"],
            "channel_id": channel,
            "is_ephemeral": False,
            "thread_ts": message.get("thread_ts"),
        },
        "channel": {"id": channel, "name": "papers"},
        "message": {"type": "message"}
        | {k: message.get(k) for k in ("user", "ts", "thread_ts", "text", "blocks")}
        | {"bot_id": "B0BOT0001"},
        "response_url": f"https://hooks.slack.com/actions/{team}/1/abc",
        "actions": [
            {
                "action_id": element.get("action_id", f"pick_paper_{n}"),
                "block_id": PICK_BLOCK_ID,
                "text": element.get("text", {"type": "plain_text", "text": str(n)}),
                "value": value if value is not None else element["value"],
                "type": "button",
                "action_ts": f"{stamp // 1_000_000}.{stamp % 1_000_000:06d}",
            }
        ],
    }
    return payload


def ephemerals_in_thread(bot: Bot, user: str, thread: str) -> list[str]:
    return [
        e["text"] for e in bot.slack.ephemerals if e["user"] == user and e["thread_ts"] == thread
    ]


async def test_slack_press_answers_the_kept_question_once_and_shows_the_choice(
    tmp_path: Path,
) -> None:
    async with Bot(tmp_path, slack="socket") as bot:
        root = await slack_digest(bot)
        (ask,) = await bot.ask_slack(LONG, root)
        shown = json.dumps(ask["blocks"], ensure_ascii=False)
        assert "Which paper do you mean?" in shown and "\\n2. Scaling Text-to-Image" in shown
        buttons = pick_buttons(ask)
        assert [b["text"]["text"][:3] for b in buttons] == ["1. ", "2. "]
        assert len({b["action_id"] for b in buttons}) == 2  # unique in the block
        # The buttons name the question by a short key and the paper by its ID.
        assert [b["value"].split(":", 1)[1] for b in buttons] == [PICK_1, PICK_2]
        assert all(len(b["value"]) <= 40 and "idea" not in b["value"] for b in buttons)
        assert bot.llm_calls("answer") == []

        before = len(bot.slack.thread("C1", root))
        press = pick_payload(ask, "U2", 2)
        ack = await press_socket(bot, press)
        assert "envelope_id" in ack
        await press_socket(bot, press)  # Slack redelivers the same envelope: served once
        await bot.settle()

        (call,) = bot.llm_calls("answer")
        assert asked_about(call) == PICK_2
        (asked,) = questions_in(call)  # the question as kept (the prompt holds 2,000 chars)
        assert LONG.startswith(asked) and len(asked) >= 1900
        replies = bot.slack.thread("C1", root)[before:]
        assert (
            len(replies) == 1
            and "Answer to: What is the main idea here, and why" in replies[0]["text"]
        )
        # The list stays, says which paper was chosen, and offers no buttons any more.
        chosen = find(bot, ask["ts"])
        assert pick_buttons(chosen) == []
        text = json.dumps(chosen["blocks"], ensure_ascii=False)
        assert "1. The Flexibility Trap" in text and "✅ Chosen: 2. Scaling" in text
        assert ephemerals_in_thread(bot, "U2", root) == []  # the answer speaks for itself

        # Another person presses the other button (the message as they still saw it): told
        # it was answered, only them; nothing posted, no LLM call.
        await press_socket(bot, pick_payload(ask, "U3", 1))
        await bot.settle()
        assert ephemerals_in_thread(bot, "U3", root) == [
            "Already answered, about: " + titles_of_picks()[PICK_2]
        ]
        assert len(bot.llm_calls("answer")) == 1
        assert len(bot.slack.thread("C1", root)) == before + 1


async def test_slack_typed_number_still_works_and_a_later_press_is_told_so(
    tmp_path: Path,
) -> None:
    async with Bot(tmp_path, slack="socket") as bot:
        root = await slack_digest(bot)
        (ask,) = await bot.ask_slack(VAGUE, root)
        assert len(pick_buttons(ask)) == 2

        (answer,) = await bot.ask_slack("1", root)
        assert "Answer to: What is the main idea here?" in answer["text"]
        assert asked_about(bot.llm_calls("answer")[-1]) == PICK_1
        chosen = find(bot, ask["ts"])
        assert pick_buttons(chosen) == []
        assert "✅ Chosen: 1. The Flexibility Trap" in json.dumps(
            chosen["blocks"], ensure_ascii=False
        )

        before = len(bot.slack.thread("C1", root))
        await press_socket(bot, pick_payload(ask, "U1", 2))
        await bot.settle()
        assert ephemerals_in_thread(bot, "U1", root) == [
            "Already answered, about: " + titles_of_picks()[PICK_1]
        ]
        assert len(bot.llm_calls("answer")) == 1
        assert len(bot.slack.thread("C1", root)) == before


async def test_slack_stale_forged_and_misplaced_buttons_get_one_line_and_no_post(
    tmp_path: Path,
) -> None:
    async with Bot(tmp_path, slack="socket") as bot:
        root = await slack_digest(bot)
        (ask,) = await bot.ask_slack(VAGUE, root)
        key = pick_buttons(ask)[0]["value"].split(":")[0]
        toc = find(bot, root)
        forged = [
            pick_payload(ask, "U5", 1, value="nokey123:" + PICK_1),  # no such question
            pick_payload(ask, "U5", 1, value=f"{key}:2104.12255"),  # not one of its papers
            pick_payload(ask, "U5", 1, value=f"{key}:9"),  # no ninth paper
            pick_payload(ask, "U5", 1, value="garbage"),  # no key at all
            pick_payload(toc | {"blocks": ask["blocks"]}, "U5", 1),  # on another message
            pick_payload(ask, "U5", 1, channel="C2"),  # from another channel
        ]
        before = len(bot.slack.messages("C1"))
        for payload in forged:
            await press_socket(bot, payload)
        await bot.settle()
        lines = [e["text"] for e in bot.slack.ephemerals if e["user"] == "U5"]
        assert lines == [PICK_STALE] * len(forged)
        assert bot.llm_calls("answer") == [] and len(bot.slack.messages("C1")) == before
        assert len(pick_buttons(find(bot, ask["ts"]))) == 2  # still open

        # The real button still works afterwards.
        await press_socket(bot, pick_payload(ask, "U5", 1))
        await bot.settle()
        assert asked_about(bot.llm_calls("answer")[-1]) == PICK_1


async def test_slack_press_is_admitted_like_a_typed_question(tmp_path: Path) -> None:
    config = {
        "user_requests_per_hour =": "user_requests_per_hour = 1",
        "allowed_slack_teams =": f'allowed_slack_teams = ["{TEAM}"]',
    }
    async with Bot(tmp_path, slack="socket", config=config) as bot:
        root = await slack_digest(bot)
        (ask,) = await bot.ask_slack(VAGUE, root)  # U1's one request this hour
        await press_socket(bot, pick_payload(ask, "U1", 1))
        await press_socket(bot, pick_payload(ask, "U9", 1, team="T0OTHER01"))
        await bot.settle()
        (limited,) = ephemerals_in_thread(bot, "U1", root)
        assert limited.startswith("⚠️ You have reached 1 requests this hour")
        assert ephemerals_in_thread(bot, "U9", root) == [
            "⚠️ digestbot is not enabled for this workspace or chat."
        ]
        assert bot.llm_calls("answer") == [] and len(pick_buttons(find(bot, ask["ts"]))) == 2

        # A refused press took nothing: someone with requests left can still pick.
        await press_socket(bot, pick_payload(ask, "U2", 2))
        await bot.settle()
        assert asked_about(bot.llm_calls("answer")[-1]) == PICK_2


# -- Telegram ------------------------------------------------------------------------------------


def tg_keyboard(message: dict[str, Any]) -> list[tuple[str, str]]:
    rows = (message.get("reply_markup") or {}).get("inline_keyboard") or []
    return [(b["text"], b["callback_data"]) for row in rows for b in row]


def tg_message(bot: Bot, message_id: int) -> dict[str, Any]:
    return next(m for m in bot.tg.sent(TG_GROUP) if m["message_id"] == message_id)


def tg_person(user: int) -> dict[str, Any]:
    return dict(CALLBACK_QUERY["from"]) | {"id": user, "first_name": f"U{user}"}


async def tg_ask(bot: Bot, question: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A vague reply to the digest's table of contents; returns (the question's update,
    the bot's "which paper?" message)."""
    await _deliver_digest(bot, [Destination(bot.tg_channel, str(TG_GROUP))])
    toc = bot.tg_sent(TG_GROUP)[0]
    last = max(m["message_id"] for m in bot.tg.sent(TG_GROUP))
    update = bot.tg.push_message(TG_GROUP, question, reply_to_message_id=toc["message_id"])
    await bot.consumed(update)
    (ask,) = bot.tg_sent(TG_GROUP, after=last)
    return update, ask


async def test_telegram_press_answers_the_kept_question_once(tmp_path: Path) -> None:
    async with Bot(tmp_path, slack=None, telegram=True) as bot:
        update, ask = await tg_ask(bot, LONG)
        assert "Which paper do you mean?" in ask["visible"] and "\n2. Scaling" in ask["visible"]
        keyboard = tg_keyboard(ask)
        assert [label[:3] for label, _ in keyboard] == ["1. ", "2. "]
        assert all(len(data.encode()) <= CALLBACK_DATA_LIMIT for _, data in keyboard)
        assert [parse_pick_data(data)[1] for _, data in keyboard] == [PICK_1, PICK_2]  # type: ignore[index]
        question_id = update["message"]["message_id"]

        # Two people press at once (one batch), and the first press is delivered again.
        data = keyboard[1][1]
        first = bot.tg.push_callback(
            TG_GROUP, ask["message_id"], data, user=tg_person(501), query_id="p-1"
        )
        bot.tg.push_update(first)  # the same update_id again
        other = bot.tg.push_callback(
            TG_GROUP, ask["message_id"], keyboard[0][1], user=tg_person(502), query_id="p-2"
        )
        await bot.consumed(other)
        await bot.settle()

        (call,) = bot.llm_calls("answer")
        (asked,) = questions_in(call)
        assert LONG.startswith(asked) and len(asked) >= 1900
        winner = asked_about(call)
        answers = [m for m in bot.tg_sent(TG_GROUP, after=ask["message_id"])]
        assert (
            len(answers) == 1
            and "Answer to: What is the main idea here, and why" in answers[0]["visible"]
        )
        assert answers[0]["reply_to_message_id"] == question_id  # under the question asked
        toasts = {q: bot.tg.answered[q]["text"] for q in ("p-1", "p-2")}
        won = "p-1" if winner == PICK_2 else "p-2"
        lost = "p-2" if won == "p-1" else "p-1"
        assert toasts[won] == "Answering about: " + titles_of_picks()[winner]
        assert toasts[lost] == "Already answered, about: " + titles_of_picks()[winner]

        # The list stays, says which paper was chosen, and its keyboard is gone.
        chosen = tg_message(bot, ask["message_id"])
        assert chosen["reply_markup"] is None
        n = 1 if winner == PICK_1 else 2
        assert "1. The Flexibility Trap" in chosen["visible"]
        assert f"✅ Chosen: {n}. " in chosen["visible"]


async def test_telegram_typed_number_forged_data_and_late_presses(tmp_path: Path) -> None:
    async with Bot(tmp_path, slack=None, telegram=True) as bot:
        _, ask = await tg_ask(bot, VAGUE)
        keyboard = tg_keyboard(ask)
        key = parse_pick_data(keyboard[0][1])[0]  # type: ignore[index]

        # Forged or stale data: one toast each, nothing sent, no LLM call.
        for i, data in enumerate(
            ["pick:nokey123:" + PICK_1, f"pick:{key}:2104.12255", f"pick:{key}:7", "pick:x"]
        ):
            update = bot.tg.push_callback(
                TG_GROUP, ask["message_id"], data, user=tg_person(600), query_id=f"f-{i}"
            )
            await bot.consumed(update)
            assert bot.tg.answered[f"f-{i}"]["text"] == PICK_STALE
        assert bot.tg_sent(TG_GROUP, after=ask["message_id"]) == []
        assert bot.llm_calls("answer") == []

        # A typed reply still picks: the kept question is answered about paper 2 ...
        (answer,) = await bot.tg_say(TG_GROUP, "2", reply_to_message_id=ask["message_id"])
        assert "Answer to: What is the main idea here?" in answer["visible"]
        assert asked_about(bot.llm_calls("answer")[-1]) == PICK_2
        assert tg_message(bot, ask["message_id"])["reply_markup"] is None

        # ... and a press afterwards (a client still showing the keyboard) is told so.
        update = bot.tg.push_callback(
            TG_GROUP, ask["message_id"], keyboard[0][1], user=tg_person(601), query_id="late"
        )
        await bot.consumed(update)
        assert bot.tg.answered["late"]["text"] == (
            "Already answered, about: " + titles_of_picks()[PICK_2]
        )
        assert len(bot.llm_calls("answer")) == 1
        assert bot.tg_sent(TG_GROUP, after=answer["message_id"]) == []


async def test_telegram_press_after_the_budget_is_spent_gets_one_toast(tmp_path: Path) -> None:
    config = {"daily_token_budget =": "daily_token_budget = 1"}
    async with Bot(tmp_path, slack=None, telegram=True, config=config) as bot:
        _, ask = await tg_ask(bot, VAGUE)  # the digest is not interactive work
        # One answer spends more than the whole budget (a new question, not a pick).
        await bot.tg_say(TG_GROUP, f"#1 {VAGUE}", reply_to_message_id=ask["message_id"])
        answers = len(bot.llm_calls("answer"))
        assert answers == 1
        update = bot.tg.push_callback(
            TG_GROUP, ask["message_id"], tg_keyboard(ask)[1][1], user=tg_person(700), query_id="b"
        )
        await bot.consumed(update)
        assert "budget for on-demand analysis is spent" in bot.tg.answered["b"]["text"]
        assert len(bot.llm_calls("answer")) == answers
        assert bot.tg_sent(TG_GROUP, after=ask["message_id"] + 2) == []
        chat = ChatStore(bot.pipeline.store)
        choice = await chat.latest_choice("telegram", str(TG_GROUP), ask_thread(bot))
        assert choice is not None and choice.chosen is None  # still open for later
        assert tg_keyboard(tg_message(bot, ask["message_id"]))  # its buttons too


def ask_thread(bot: Bot) -> str:
    return str(bot.tg_sent(TG_GROUP)[0]["message_id"])


async def test_callback_data_fits_64_bytes_for_the_longest_ids(tmp_path: Path) -> None:
    async with Bot(tmp_path, slack=None, telegram=True) as bot:
        longest = [
            "2601.16208v9999",  # new style, 5-digit number, 4-digit version
            "plasm-ph/9501001v9999",  # old style, the longest archive names
            "math.GT/0309136v9999",  # old style with a subject class
            "physics-" + "x" * 40 + "/0101001",  # beyond any real ID: the number stands in
        ]
        key = "A" * 8
        options = [(pid, f"{n}. Paper {n}") for n, pid in enumerate(longest, start=1)]
        line: Outgoing = bot.tg_channel.render_choices("Which paper?", key, options)
        # Sent through the real client to the fake Bot API, which refuses data over 64 bytes.
        ref = await bot.tg_channel.send(str(TG_GROUP), line.payload, None, key="ask")
        sent = tg_message(bot, int(ref))
        data = [d for _, d in tg_keyboard(sent)]
        assert all(1 <= len(d.encode()) <= CALLBACK_DATA_LIMIT for d in data)
        assert [parse_pick_data(d) for d in data] == [
            (key, longest[0]),
            (key, longest[1]),
            (key, longest[2]),
            (key, "4"),
        ]


# == a database that cannot be written ===========================================================


async def refuse_pick_answers(bot: Bot, refuse: bool = True) -> None:
    """Make the database refuse (or take again) the journal record of a pick's answer, the
    write that follows the pick's own: a database failing between the two."""
    store = bot.pipeline.store

    def change() -> None:
        if refuse:
            store.db.execute(
                "create trigger refuse_pick_answers before insert on journal"
                " when new.key like '%-pick:%'"
                " begin select raise(abort, 'disk I/O error'); end"
            )
        else:
            store.db.execute("drop trigger refuse_pick_answers")

    await store.run(change)


# A database that refuses every write (the pick is not recorded), and one that takes the pick
# but refuses its answer's journal record: the presser is told, nothing is posted, and in the
# second case the question is not left marked answered.
FAILURES = {"read-only": read_only, "answer-not-recorded": refuse_pick_answers}


@pytest.mark.parametrize("failure", FAILURES)
async def test_slack_press_the_database_cannot_record_tells_the_presser_and_posts_nothing(
    tmp_path: Path, failure: str
) -> None:
    async with Bot(tmp_path, slack="socket") as bot:
        root = await slack_digest(bot)
        (ask,) = await bot.ask_slack(VAGUE, root)
        before = len(bot.slack.thread("C1", root))
        await FAILURES[failure](bot)
        await press_socket(bot, pick_payload(ask, "U2", 1))
        await bot.settle()
        assert ephemerals_in_thread(bot, "U2", root) == [UNRECORDED]
        assert len(bot.slack.thread("C1", root)) == before
        assert bot.llm_calls("answer") == []
        if failure == "read-only":
            return

        await refuse_pick_answers(bot, False)
        await press_socket(bot, pick_payload(ask, "U3", 2))  # not "already answered"
        await bot.settle()
        (call,) = bot.llm_calls("answer")
        assert asked_about(call) == PICK_2
        assert len(bot.slack.thread("C1", root)) == before + 1
        assert ephemerals_in_thread(bot, "U3", root) == []


@pytest.mark.parametrize("failure", FAILURES)
async def test_telegram_press_the_database_cannot_record_gets_a_toast_and_posts_nothing(
    tmp_path: Path, failure: str
) -> None:
    async with Bot(tmp_path, slack=None, telegram=True) as bot:
        _, ask = await tg_ask(bot, VAGUE)
        keyboard = tg_keyboard(ask)
        await FAILURES[failure](bot)
        update = bot.tg.push_callback(
            TG_GROUP, ask["message_id"], keyboard[0][1], user=tg_person(800), query_id="no-1"
        )
        await bot.consumed(update)
        await bot.settle()
        assert bot.tg.answered["no-1"]["text"] == UNRECORDED
        assert bot.tg_sent(TG_GROUP, after=ask["message_id"]) == []
        assert bot.llm_calls("answer") == []
        if failure == "read-only":
            return

        await refuse_pick_answers(bot, False)
        update = bot.tg.push_callback(
            TG_GROUP, ask["message_id"], keyboard[1][1], user=tg_person(811), query_id="ok-2"
        )
        await bot.consumed(update)
        await bot.settle()
        (call,) = bot.llm_calls("answer")
        assert asked_about(call) == PICK_2
        assert bot.tg.answered["ok-2"]["text"] == "Answering about: " + titles_of_picks()[PICK_2]
        assert len(bot.tg_sent(TG_GROUP, after=ask["message_id"])) == 1
