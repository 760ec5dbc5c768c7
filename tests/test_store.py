"""The core store: migrations, WAL, caches, and clear refusals of unusable files."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from digest_core.models import DeepDive, Digest, DigestEntry, Paper, Score
from digest_core.store import Store, StoreError


def _paper(i: int = 1) -> Paper:
    return Paper(
        f"2602.1494{i}", f"Title {i}", "Abstract.", ("Ann", "李明"), upvotes=i, abs_url="x"
    )


async def test_creates_missing_directory_and_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "bot.db"
    store = await Store.open(path)
    try:
        assert path.exists()
        mode = await store._run(lambda: store.db.execute("pragma journal_mode").fetchone()[0])
        assert mode == "wal"
    finally:
        await store.close()
    # opening again applies nothing new and keeps the data
    store = await Store.open(path)
    await store.close()


async def test_corrupt_file_stops_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bot.db"
    path.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(StoreError) as info:
        await Store.open(path)
    assert str(info.value).startswith("DIGEST_DB:") and "\n" not in str(info.value)


async def test_database_from_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bot.db"
    store = await Store.open(path)
    await store.close()
    conn = sqlite3.connect(path)
    conn.execute(
        "insert into _sqlite_migrations(migration_set, name, applied_at) values ('digestbot', 'm999_future', 'now')"
    )
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="newer digestbot"):
        await Store.open(path)


async def test_digest_round_trip(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "bot.db")
    dive = DeepDive(
        "2602.14941", "Title 1", {"contribution": "x"}, "zh", "abstract only", "m", "dive-1", 10
    )
    digest = Digest(
        "2026-02-18",
        (
            DigestEntry(_paper(1), Score("2602.14941", 90, "r"), dive),
            DigestEntry(_paper(2), Score("2602.14942", 10, "r")),
        ),
        "prof",
        "zh",
        60,
        None,
        13,
    )
    await store.save_digest(digest)
    assert await store.load_digest("2026-02-18") == digest
    assert await store.load_digest("2026-02-19") is None
    await store.close()


async def test_latest_analysis_matches_model_and_prompt_version(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "bot.db")
    dive = DeepDive(
        "2602.14941",
        "T",
        {"contribution": "x"},
        "zh",
        "abstract only",
        "gpt-4o-2024-08-06",
        "dive-1",
        5,
    )
    await store.save_analysis("2602.14941|v2|dive-1|gpt_4o|zh", dive, 2)
    found = await store.latest_analysis("2602.14941", "zh", model="gpt_4o", prompt_version="dive-1")
    assert found is not None and found.model == "gpt-4o-2024-08-06"
    assert (
        await store.latest_analysis("2602.14941", "zh", model="gpt_4o", prompt_version="dive-2")
        is None
    )
    assert (
        await store.latest_analysis("2602.14941", "zh", model="gptX4o", prompt_version="dive-1")
        is None
    )
    assert await store.latest_analysis("2602.14941", "en") is None
    assert await store.latest_analysis("2602.14941", "zh") is not None
    await store.close()


async def test_titles_of_stored_papers_in_one_read(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "t.db")
    try:
        await store.save_papers(
            [Paper("2601.00001", "First", "a"), Paper("2601.00002", "Two", "b")]
        )
        found = await store.titles(["2601.00002", "2601.99999", "2601.00001", "2601.00002"])
        assert found == {"2601.00001": "First", "2601.00002": "Two"}
        assert await store.titles([]) == {}
    finally:
        await store.close()
