"""The bot's state in the shared database: migration of a database made before the move,
the run and posting ledgers, redelivery marks and rate limits."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bot.channels.base import ErrorKind
from bot.chatstore import ChatStore, PostRecord, PostStatus, ThreadRecord, open_store
from digest_core.store import Store, StoreError

FIXTURE = Path(__file__).parent / "fixtures" / "db" / "digestbot_v1.sqlite"
CHAT_TABLES = ("runs", "posts", "threads", "turns", "events", "requests")


def _rows(path: Path, table: str) -> list[dict[str, object]]:
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(f'select * from "{table}" order by rowid')]
    finally:
        conn.close()


@pytest.fixture
def old_db(tmp_path: Path) -> Path:
    path = tmp_path / "v1.sqlite"
    shutil.copy(FIXTURE, path)
    return path


async def test_a_database_made_before_the_move_keeps_every_row(old_db: Path) -> None:
    before = {t: _rows(old_db, t) for t in (*CHAT_TABLES, "papers", "digests", "analyses")}
    assert all(before[t] for t in CHAT_TABLES)  # the fixture has rows of every kind
    chat = await ChatStore.open(old_db)
    await chat.close()
    after = {t: _rows(old_db, t) for t in before}
    for table in before:
        assert len(after[table]) == len(before[table]), table
    # Untouched tables keep every value; analyses only gained the number guard's columns
    # (m006, empty for old rows); posts only gained error_kind, with the old "kind: "
    # prefix moved out of the error text.
    guard_columns = {"verdict": "", "numbers_checked": 0, "numbers_unverified": 0}
    for table in (t for t in before if t != "posts"):
        added = guard_columns if table == "analyses" else {}
        assert after[table] == [old | added for old in before[table]], table
    for old, new in zip(before["posts"], after["posts"], strict=True):
        error, kind = old["error"], new.pop("error_kind")
        if error is None:
            assert kind is None and new == old
            continue
        assert error == f"{kind}: {new['error']}"
        assert new | {"error": error} == old
    applied = [r["name"] for r in _rows(old_db, "_sqlite_migrations")]
    assert applied[:5] == [
        "m001_wal",
        "m002_core",
        "m003_delivery",
        "m004_interactive",
        "m005_post_attempts",
    ]
    assert {"m006_grounding_counts", "m007_cached_tokens", "m008_post_error_kind"} <= set(applied)


async def test_a_migrated_database_works_as_before(old_db: Path) -> None:
    chat = await ChatStore.open(old_db)
    try:
        # the ledger: every failure kind read back as the enum, with its reason
        c2 = await chat.post_state("digest:2026-01-23", "slack", "C2")
        assert c2["2601.16208#1"].error_kind is ErrorKind.CONTENT
        assert c2["2601.16208#1"].error == "slack chat.postMessage: invalid_blocks"
        c9 = await chat.post_state("digest:2026-01-24", "slack", "C9")
        assert c9["toc"].error_kind is ErrorKind.PERMANENT
        flaky = await chat.post_state("digest:2026-01-24", "telegram", "-100999")
        assert flaky["toc"].error_kind is ErrorKind.TRANSIENT and flaky["toc"].attempts == 2
        intent = await chat.post_state("digest:2026-01-24", "telegram", "-100123")
        assert intent["toc"].status is PostStatus.INTENT and intent["toc"].error_kind is None
        # runs: the done day stays done, the failed day can be claimed again
        assert await chat.run_status("2026-01-23") == "done"
        assert not await chat.claim_run("2026-01-23", "new:1")
        assert await chat.claim_run("2026-01-24", "new:1")
        # threads, found by root and by a message inside (Telegram's recorded answer)
        thread = await chat.latest_thread("telegram", "-100123", kind="digest")
        assert thread is not None and thread.papers == ("2601.15165", "2601.16208")
        assert await chat.find_thread("telegram", "-100123", "777") == thread
        # turns, the pending question last; dedupe marks and rate limits still count
        turns = await chat.turns("telegram", "-100123", thread.thread_ref, 10)
        assert [t.role for t in turns] == ["user", "assistant", "pending"]
        assert turns[0].text == "它的局限？" and turns[0].arxiv_id == "2601.16208"
        assert not await chat.first_sight("tg-update:9001")
        assert await chat.first_sight("tg-update:9003")
        # The fixture's rate rows are as old as the fixture: a window that reaches back to them.
        made = datetime.fromisoformat(_rows(old_db, "requests")[0]["at"])
        window = datetime.now(UTC) - made + timedelta(hours=1)
        assert await chat.count_request("slack:U1", window, 2) is not None
        assert await chat.count_request("slack:U1", window, 3) is None
        # the core's data is still there for the core
        digest = await chat.store.load_digest("2026-01-23")
        assert digest is not None and len(digest.entries) == 2
    finally:
        await chat.close()


async def test_the_core_alone_keeps_no_chat_tables(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "core.db")
    try:
        tables = set(await store.run(lambda: store.db.table_names()))
    finally:
        await store.close()
    assert not tables & set(CHAT_TABLES)
    with pytest.raises(StoreError, match="chat state"):
        ChatStore(store)


async def test_a_database_with_bot_state_opened_by_the_core_alone_is_refused(
    tmp_path: Path,
) -> None:
    # The core does not know the bot's migrations: it must not guess at those tables.
    path = tmp_path / "bot.db"
    await (await ChatStore.open(path)).close()
    with pytest.raises(StoreError, match="newer digestbot"):
        await Store.open(path)
    store = await open_store(path)  # with the bot's migrations: fine
    await store.close()


async def test_database_from_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bot.db"
    await (await ChatStore.open(path)).close()
    conn = sqlite3.connect(path)
    conn.execute(
        "insert into _sqlite_migrations(migration_set, name, applied_at) "
        "values ('digestbot', 'm999_future', 'now')"
    )
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="newer digestbot"):
        await ChatStore.open(path)


async def test_run_claimed_once_even_concurrently(tmp_path: Path) -> None:
    path = tmp_path / "bot.db"
    a, b = await ChatStore.open(path), await ChatStore.open(path)
    results = await asyncio.gather(
        *(s.claim_run("2026-02-18", f"p{i}") for i, s in enumerate((a, b, a, b)))
    )
    assert sorted(results) == [False, False, False, True]
    # a live owner keeps its lease; a dead one (lease expired) can be taken over
    assert await a.claim_run("2026-02-18", "late", lease_seconds=600) is False
    assert await a.claim_run("2026-02-18", "rescuer", lease_seconds=-1) is True
    await b.finish_run("2026-02-18", "done")
    assert await a.claim_run("2026-02-18", "other", lease_seconds=-1) is False
    # a failed day can be tried again
    assert await a.claim_run("2026-02-19", "x") is True
    await a.finish_run("2026-02-19", "failed", "HF down")
    assert await b.claim_run("2026-02-19", "y") is True
    await a.close()
    await b.close()


async def test_event_first_sight_and_rate_window() -> None:
    store = await ChatStore.open(":memory:")
    assert await store.first_sight("slack:Ev1") is True
    assert await store.first_sight("slack:Ev1") is False
    for _ in range(3):
        assert await store.count_request("u1", timedelta(hours=1), 3) is None
    wait = await store.count_request("u1", timedelta(hours=1), 3)
    assert wait is not None and 0 < wait <= 3601
    assert await store.count_request("u2", timedelta(hours=1), 3) is None
    await store.close()


async def test_prune_forgets_old_marks_only() -> None:
    store = await ChatStore.open(":memory:")
    assert await store.first_sight("slack-msg:C1:1")
    assert await store.count_request("u", timedelta(hours=1), 5) is None
    assert await store.prune() == 0  # fresh: kept
    assert not await store.first_sight("slack-msg:C1:1")
    assert await store.prune(older_than=timedelta(seconds=-5)) == 2
    assert await store.first_sight("slack-msg:C1:1")
    await store.close()


async def test_ledger_rows_and_threads_round_trip() -> None:
    store = await ChatStore.open(":memory:")
    try:
        row = PostRecord(
            "digest:d",
            "slack",
            "C1",
            "toc",
            0,
            PostStatus.FAILED,
            error_kind=ErrorKind.PERMANENT,
            error="not_in_channel",
            attempts=1,
        )
        await store.record_post(row)
        assert (await store.post_state("digest:d", "slack", "C1")) == {"toc": row}
        assert await store.has_posts("digest:d") and not await store.has_posts("digest:e")
        thread = ThreadRecord("slack", "C1", "1.2", "digest", "digest:d", ("a", "b"))
        await store.save_thread(thread)
        await store.record_post(
            PostRecord("reply:9", "slack", "C1", "ask", 0, PostStatus.SENT, "1.2", "1.5")
        )
        assert await store.find_thread("slack", "C1", "1.2") == thread
        assert await store.find_thread("slack", "C1", "1.5") == thread
        assert await store.find_thread("slack", "C2", "1.5") is None
    finally:
        await store.close()
