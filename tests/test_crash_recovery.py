"""`kill -9` while an /analyze is in flight, then a restart (issue 10, item 1).

Each test runs `digestbot serve` as a child process against the fakes (the helpers of
tests/test_serve.py), kills it with SIGKILL while the LLM is writing, starts it again on the
same database, and reads what the fakes recorded: every requester gets the answer, or one line
saying the request failed and how to ask again, exactly once; never both, never neither.
"""

from __future__ import annotations

import signal

import pytest
from fakes.world import fast_config
from test_serve import (  # noqa: F401  (fixtures)
    CHANNEL,
    GROUP,
    PAPER_A,
    PAPER_B,
    WEBHOOK_SECRET,
    analysing_lines,
    base_env,
    client,
    launch,
    llm_calls_about,
    no_duplicates,
    port,
    slack,
    slack_done,
    slack_env,
    slack_thread,
    slash_form,
    telegram_env,
    tg,
    tg_done,
    tg_thread,
    until,
    world,
)

pytestmark = pytest.mark.slow


async def crash_during_analyses(world, slack, tg, env, launch) -> dict:  # noqa: F811
    """Start serve, ask for one analysis on each platform, SIGKILL it while both are inside
    the LLM. Returns the Telegram update."""
    world.llm.latency = 10.0  # the model is still writing when the process dies
    serve = await launch(env)
    await serve.banner()
    await slack.push_envelope("slash_commands", slash_form(slack, PAPER_A), envelope_id="k-1")
    update = tg.push_message(GROUP, f"/analyze@DigestBot {PAPER_B}")
    ack = await slack.wait_for_ack("k-1", within=5.0)
    assert "Analysing arXiv:1605.08386" in ack["payload"]["text"]
    await until(
        lambda: llm_calls_about(world, PAPER_A) and llm_calls_about(world, PAPER_B),
        10,
        "both analyses inside the LLM",
    )
    await until(lambda: analysing_lines(tg), 5, "the Telegram opening line")
    serve.proc.send_signal(signal.SIGKILL)
    assert await serve.exited() == -signal.SIGKILL
    # what the requesters saw before the crash: only "Analysing…"
    assert slack.messages(CHANNEL) == [] and slack.ephemerals == []
    assert [m["text"].startswith("🔎 Analysing") for m in tg.sent(GROUP)] == [True]
    world.llm.latency = 0.0
    return update


async def test_after_kill_9_the_interrupted_analyses_are_finished_once(
    world,  # noqa: F811
    slack,  # noqa: F811
    tg,  # noqa: F811
    port,  # noqa: F811
    launch,  # noqa: F811
) -> None:
    env = base_env(world, port, **slack_env(slack), **telegram_env(tg))
    await crash_during_analyses(world, slack, tg, env, launch)

    serve = await launch(env)
    await serve.banner()
    await until(lambda: slack_done(slack) and tg_done(tg, PAPER_B), 30, "both answers")
    assert await serve.stop() == 0

    root, replies = slack_thread(slack)
    assert PAPER_A in str(root["blocks"]) + root["text"] and replies
    no_duplicates([m["text"] for m in slack.messages(CHANNEL)])
    assert [e["text"][:1] for e in slack.ephemerals] == ["✅"]  # one closing line, no failure

    root_tg, replies_tg = tg_thread(tg, PAPER_B)
    assert root_tg is not None and replies_tg
    assert len(analysing_lines(tg)) == 1  # the opening line was not said again
    no_duplicates([m["text"] for m in tg.sent(GROUP)])
    assert not [m for m in tg.sent(GROUP) if m["text"].startswith("⚠️")]
    assert "Traceback" not in serve.err


async def test_after_kill_9_requests_too_old_to_finish_get_one_failure_line(
    world,  # noqa: F811
    slack,  # noqa: F811
    tg,  # noqa: F811
    port,  # noqa: F811
    launch,  # noqa: F811
) -> None:
    env = base_env(world, port, **slack_env(slack), **telegram_env(tg))
    update = await crash_during_analyses(world, slack, tg, env, launch)
    # every request is too old to finish from now on
    world.config.write_text(
        fast_config(**{"resume_within_minutes =": "resume_within_minutes = 0"}), encoding="utf-8"
    )
    calls_before = len(world.llm.calls)

    serve = await launch(env)
    await serve.banner()
    await until(lambda: slack.ephemerals and len(tg.sent(GROUP)) >= 2, 20, "both failure lines")
    assert await serve.stop() == 0

    assert [e["text"] for e in slack.ephemerals] == [
        f"⚠️ digestbot restarted and could not finish /analyze {PAPER_A}; please send it again."
    ]
    assert slack.messages(CHANNEL) == []  # no analysis as well
    lines = [
        m for m in tg.sent(GROUP) if m["reply_to_message_id"] == update["message"]["message_id"]
    ]
    assert [m["text"] for m in lines][1:] == [
        f"⚠️ digestbot restarted and could not finish /analyze {PAPER_B}; please send it again."
    ]
    assert len(tg.sent(GROUP)) == 2 and tg_thread(tg, PAPER_B)[0] is None
    assert len(world.llm.calls) == calls_before  # nothing was worked on again


async def test_a_webhook_update_redelivered_after_the_crash_is_answered_once(
    world,  # noqa: F811
    slack,  # noqa: F811
    tg,  # noqa: F811
    port,  # noqa: F811
    launch,  # noqa: F811
) -> None:
    env = base_env(world, port, **telegram_env(tg, webhook=True))
    world.llm.latency = 10.0
    serve = await launch(env)
    await serve.banner()
    update = tg.push_message(GROUP, f"/analyze@DigestBot {PAPER_B}")
    right = {"X-Telegram-Bot-Api-Secret-Token": WEBHOOK_SECRET}
    async with client() as c:
        assert (await c.post(serve.url("/telegram"), json=update, headers=right)).status_code == 200
    await until(lambda: llm_calls_about(world, PAPER_B), 10, "the analysis inside the LLM")
    serve.proc.send_signal(signal.SIGKILL)
    await serve.exited()
    world.llm.latency = 2.0
    before = len(world.llm.calls)

    serve = await launch(env)
    await serve.banner()
    async with client() as c:  # Telegram sends the update again, while it is being finished
        again = await c.post(serve.url("/telegram"), json=update, headers=right)
        assert again.status_code == 200
        await until(lambda: tg_done(tg, PAPER_B), 30, "the answer")
        late = await c.post(serve.url("/telegram"), json=update, headers=right)
        assert late.status_code == 200  # and once more after it was answered
    assert await serve.stop() == 0

    assert len(analysing_lines(tg)) == 1
    no_duplicates([m["text"] for m in tg.sent(GROUP)])
    assert len(world.llm.calls) - before == 2  # one score and one deep dive, once
    assert not [m for m in tg.sent(GROUP) if m["text"].startswith("⚠️")]
