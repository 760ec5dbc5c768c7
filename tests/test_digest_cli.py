"""The digest core as a user meets it: the `digestbot` command against local fakes.

Each test runs the real command in a child process with the contract's environment pointing
at fakes of Hugging Face, arXiv and an OpenAI-compatible server on 127.0.0.1.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fakes.world import World, run_cli

DAY = "2026-02-18"


@pytest.fixture
async def world(tmp_path: Path):
    async with World(tmp_path) as w:
        yield w


async def test_dry_run_prints_a_scored_digest_with_two_deep_dives(world: World) -> None:
    code, out, err = await run_cli(["digest", "--date", DAY, "--dry-run"], world.env())
    assert code == 0, err
    assert out.startswith(f"# 🚀 CV 论文日报 | {DAY}")
    assert "扫描 13 篇" in out and "精选 2 篇" in out
    assert out.count("核心创新点 (Key Contribution)") == 2
    assert "潜在缺陷 (Limitations)" in out
    assert "Model: gpt-4o" in out  # the footer names the model that answered
    # every scanned paper is listed with a score
    payload = json.loads(
        (Path(__file__).parent / "fixtures/hf/daily_papers_2026-02-18.json").read_text()
    )
    for item in payload:
        assert item["paper"]["title"][:30] in out
    # scores in one call, two deep dives in parallel
    kinds = [c["messages"][0]["content"][:30] for c in world.llm.calls]
    assert len(world.llm.calls) == 3, kinds
    assert err == ""  # nothing on a pipe: no progress bar, no warnings


async def test_second_run_of_the_day_makes_no_llm_call(world: World) -> None:
    code, first, _ = await run_cli(["digest", "--date", DAY, "--dry-run"], world.env())
    assert code == 0
    calls = len(world.llm.calls)
    code, second, _ = await run_cli(["digest", "--date", DAY, "--dry-run"], world.env())
    assert code == 0
    assert len(world.llm.calls) == calls
    assert second == first


async def test_quiet_day_says_so_and_writes_no_deep_dive(tmp_path: Path) -> None:
    from fakes.llm import FakeLLM
    from fakes.world import research_responder

    async with World(tmp_path, llm=FakeLLM(responder=research_responder(lambda t, a: 12))) as world:
        code, out, err = await run_cli(["digest", "--date", DAY, "--dry-run"], world.env())
    assert code == 0, err
    assert "核心创新点" not in out
    assert "60" in out and ("阈值" in out or "threshold" in out)
    assert len(world.llm.calls) == 1  # scoring only


async def test_without_an_llm_key_the_digest_still_comes_and_says_so(tmp_path: Path) -> None:
    async with World(tmp_path, llm_key=None) as world:
        code, out, err = await run_cli(["digest", "--date", "2026-01-23", "--dry-run"], world.env())
    assert code == 0, err
    assert world.llm.calls == []
    assert "LLM unavailable (no OPENAI_API_KEY set): ranked by keyword relevance" in out
    assert out.count("LLM 不可用") == 2  # each deep dive says it is extractive
    assert out.count("核心创新点 (Key Contribution)") == 2


async def test_llm_down_the_digest_still_comes(world: World) -> None:
    world.llm.fail_next("500", times=1000)
    code, out, err = await run_cli(["digest", "--date", "2026-01-23", "--dry-run"], world.env())
    assert code == 0, err
    assert "ranked by keyword relevance" in out
    assert out.count("LLM 不可用") == 2 and "核心创新点" in out
    assert "<html" not in out + err  # no raw error body anywhere
    # bounded: one retry per call in the test config; scoring does not ask again after a failure
    assert len(world.llm.calls) == 2 + 2 * 2


async def test_one_failing_deep_dive_does_not_sink_the_digest(world: World) -> None:
    from fakes.world import research_responder

    normal = research_responder()
    failed_once: set[str] = set()

    def flaky(body: dict) -> str | dict:
        user = "\n".join(str(m["content"]) for m in body["messages"] if m["role"] == "user")
        if "deep dive" in body["messages"][0]["content"] and "Scaling Text-to-Image" in user:
            failed_once.add("x")
            return {"status": 500, "json": {"error": {"message": "boom", "type": "server_error"}}}
        return normal(body)

    world.llm.responder = flaky
    code, out, err = await run_cli(["digest", "--date", "2026-01-23", "--dry-run"], world.env())
    assert code == 0, err
    assert failed_once
    assert "ranked by keyword relevance" not in out  # the scores came from the LLM
    assert out.count("核心创新点 (Key Contribution)") == 2
    assert out.count("LLM 不可用") == 1  # only the failed deep dive is extractive, and says so


@pytest.mark.parametrize(
    ("knob", "expected"),
    [
        ({"html_body": True}, "not the papers list"),
        ({"status": 500}, "500"),
    ],
)
async def test_hugging_face_trouble_is_one_line_and_exit_1(
    world: World, knob: dict, expected: str
) -> None:
    for name, value in knob.items():
        setattr(world.hf, name, value)
    code, out, err = await run_cli(["digest", "--date", DAY, "--dry-run"], world.env())
    assert code == 1
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], err


async def test_weekend_with_no_papers(world: World) -> None:
    code, out, err = await run_cli(["digest", "--date", "2026-02-21", "--dry-run"], world.env())
    assert code == 0, err
    assert "2026-02-21" in out
    assert world.llm.calls == []


@pytest.mark.parametrize("bad", ["2026-13-40", "yesterday", "2999-01-01"])
async def test_bad_dates_are_refused_before_any_request(world: World, bad: str) -> None:
    code, out, err = await run_cli(["digest", "--date", bad, "--dry-run"], world.env())
    assert code == 2 and out == ""
    assert err.startswith("digestbot: --date") and len(err.strip().splitlines()) == 1
    assert world.hf.requests == []


async def test_export_writes_the_report_without_llm_calls(world: World, tmp_path: Path) -> None:
    code, _, err = await run_cli(["digest", "--date", DAY, "--dry-run"], world.env())
    assert code == 0, err
    calls = len(world.llm.calls)
    target = tmp_path / "out" / "report.md"
    code, _, err = await run_cli(["export", "--date", DAY, "--out", str(target)], world.env())
    assert code == 0, err
    text = target.read_text(encoding="utf-8")
    assert text.startswith(f"# 🚀 CV 论文日报 | {DAY}")
    assert "## 📋 目录 (Quick View)" in text and "(#item-0)" in text and "(Score: " in text
    assert "**原文链接**" in text
    assert len(world.llm.calls) == calls
    code, _, err = await run_cli(["export", "--date", "2026-01-01"], world.env())
    assert code == 2 and "no digest stored for 2026-01-01" in err


async def test_config_error_names_the_variable_and_hides_tokens(world: World) -> None:
    code, out, err = await run_cli(
        ["digest", "--dry-run"], world.env(DIGEST_TIME="7am", OPENAI_API_KEY="sk-hidden-1234567890")
    )
    assert code == 2
    assert err.strip() == "digestbot: DIGEST_TIME: expected HH:MM (24-hour), got '7am'"
    assert "sk-hidden" not in out + err


async def test_corrupt_database_stops_with_one_line(world: World) -> None:
    world.db.parent.mkdir(parents=True, exist_ok=True)
    world.db.write_bytes(b"garbage" * 500)
    code, _, err = await run_cli(["digest", "--date", DAY, "--dry-run"], world.env())
    assert code == 2
    assert err.startswith("digestbot: DIGEST_DB:") and len(err.strip().splitlines()) == 1


async def test_demo_runs_offline(tmp_path: Path) -> None:
    # No fake at all: every address points at a closed port; the demo must not need them.
    env = {
        "DIGEST_DB": str(tmp_path / "unused.db"),
        "HF_ENDPOINT": "http://127.0.0.1:9",
        "ARXIV_API_URL": "http://127.0.0.1:9/api/query",
        "ARXIV_URL": "http://127.0.0.1:9",
        "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
        "OPENAI_API_KEY": "sk-test-unused-0000000000",
    }
    code, out, err = await run_cli(["demo"], env)
    assert code == 0, err
    assert out.startswith("# 🚀 CV 论文日报 | 2026-01-23")
    assert out.count("核心创新点 (Key Contribution)") == 2
    assert "LLM 不可用" in out or "LLM unavailable" in out
    assert not (tmp_path / "unused.db").exists()


async def test_version_and_help(world: World) -> None:
    code, out, _ = await run_cli(["--version"], world.env())
    assert code == 0 and out.startswith("digestbot ")
    for command in ("digest", "analyze", "ask", "export", "serve", "demo"):
        code, out, _ = await run_cli([command, "--help"], world.env())
        assert code == 0 and "usage: digestbot" in out


@pytest.mark.parametrize(
    ("to", "expected"),
    [
        ("pigeon", "--to: unknown destination 'pigeon'"),
        ("slack", "--to slack: set SLACK_BOT_TOKEN"),
    ],
)
async def test_bad_destination_is_one_line_before_any_llm_call(
    world: World, to: str, expected: str
) -> None:
    code, out, err = await run_cli(["digest", "--date", DAY, "--to", to], world.env())
    assert code == 2 and out == ""
    assert err.strip().startswith(f"digestbot: {expected}") and len(err.strip().splitlines()) == 1
    assert world.llm.calls == [] and world.hf.requests == []
