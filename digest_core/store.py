"""The core's SQLite store: papers, scores, analyses, full texts, digests and the LLM call log.

sqlite-utils connections belong to the thread that opened them, so every operation runs on
one dedicated worker thread and the async methods await it. That also makes this the single
writer path the WAL journal wants. Schema changes are numbered migrations in one sequence
(the `digestbot` migration set); a database written by a newer digestbot, or a file that is
not a database, stops with a clear StoreError.

The core knows nothing of chats. An application that keeps state of its own in the same file
(the bot's posting ledger, threads, turns: `bot/chatstore.py`) hands its migrations to
`Store.open(path, extensions=...)`: they join the same sequence, are applied after the core's,
and their names count as known, so neither side mistakes the other for a newer digestbot. It
then reads and writes through `Store.run`, on the same thread and connection.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlite_utils import Database, Migrations

from digest_core.models import DeepDive, Digest, DigestEntry, Link, Paper, Score
from digest_core.search import COLUMNS, TOKENIZER, WEIGHTS, SearchHit, index_text

T = TypeVar("T")

# Who caused the LLM calls made in the current task: "digest" (the daily job, the CLI) or
# "interactive" (a person in a chat). The daily token budget counts only the latter.
ORIGIN: ContextVar[str] = ContextVar("digestbot_llm_origin", default="digest")

MIGRATION_SET = "digestbot"
migrations = Migrations(MIGRATION_SET)


class StoreError(RuntimeError):
    """The database cannot be used. The message is one line for the operator."""


MIGRATION_ATTEMPTS = 5


def _migration_race(exc: sqlite3.DatabaseError) -> bool:
    """Whether an error while migrating is another process migrating the same file."""
    text = str(exc).lower()
    return isinstance(exc, sqlite3.OperationalError | sqlite3.IntegrityError) and (
        "already exists" in text or "unique constraint" in text or "locked" in text
    )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@migrations(transactional=False)
def m001_wal(db: Database) -> None:
    # The journal mode cannot change inside a transaction.
    db.enable_wal()


@migrations()
def m002_core(db: Database) -> None:
    db["papers"].create(
        {
            "arxiv_id": str,
            "title": str,
            "abstract": str,
            "authors": str,
            "version": int,
            "upvotes": int,
            "published": str,
            "abs_url": str,
            "source": str,
            "extra": str,
            "updated_at": str,
        },
        pk="arxiv_id",
    )
    db["scores"].create(
        {
            "cache_key": str,
            "arxiv_id": str,
            "score": int,
            "reason": str,
            "model": str,
            "prompt_version": str,
            "created_at": str,
        },
        pk="cache_key",
    )
    db["analyses"].create(
        {
            "cache_key": str,
            "arxiv_id": str,
            "version": int,
            "prompt_version": str,
            "model": str,
            "language": str,
            "title": str,
            "sections": str,
            "source_read": str,
            "tokens": int,
            "created_at": str,
        },
        pk="cache_key",
    )
    db["analyses"].create_index(["arxiv_id"])
    db["fulltexts"].create(
        {"cache_key": str, "source": str, "sections": str, "created_at": str}, pk="cache_key"
    )
    db["digests"].create({"date": str, "payload": str, "created_at": str}, pk="date")
    db["llm_calls"].create(
        {
            "id": int,
            "purpose": str,
            "model": str,
            "prompt_version": str,
            "mode": str,
            "prompt_tokens": int,
            "completion_tokens": int,
            "latency_s": float,
            "outcome": str,
            "attempts": int,
            "started_at": str,
            "origin": str,
        },
        pk="id",
    )
    db["llm_calls"].create_index(["started_at"])


@migrations()
def m006_grounding_counts(db: Database) -> None:
    # The number guard's counts per LLM call (found by call_id, which LLMClient assigns),
    # and the verdict and counts of a cached analysis.
    calls = db["llm_calls"]
    calls.add_column("call_id", str, not_null_default="")
    calls.add_column("numbers_checked", int, not_null_default=0)
    calls.add_column("numbers_unverified", int, not_null_default=0)
    calls.create_index(["call_id"])
    analyses = db["analyses"]
    analyses.add_column("verdict", str, not_null_default="")
    analyses.add_column("numbers_checked", int, not_null_default=0)
    analyses.add_column("numbers_unverified", int, not_null_default=0)


@migrations()
def m007_cached_tokens(db: Database) -> None:
    # Prompt tokens the provider served from its cache, to see whether answers reuse a prefix.
    db["llm_calls"].add_column("cached_tokens", int, not_null_default=0)


@migrations()
def m007_search_terms(db: Database) -> None:
    # English search terms the model gave for a non-English question. Kept across restarts so
    # a thread's earlier questions find the same passages again: their bytes, and so the
    # provider's cached prompt prefix, stay the same (digest_core/qa.py).
    db["search_terms"].create(
        {"key": str, "terms": str, "created_at": str}, pk="key", if_not_exists=True
    )


@migrations()
def m020_analysis_claims(db: Database) -> None:
    # Who is writing a deep dive right now, so two processes on one file pay for it once.
    # `heartbeat_at` is renewed while the work runs; a claim whose owner stopped renewing (or
    # whose process is gone) can be taken over. `status`: running, done or failed.
    db["analysis_claims"].create(
        {
            "cache_key": str,
            "owner": str,
            "status": str,
            "claimed_at": str,
            "heartbeat_at": str,
            "finished_at": str,
        },
        pk="cache_key",
        if_not_exists=True,
    )


@migrations()
def m035_profile_digests(db: Database) -> None:
    # One digest per day and research profile (its content key); the `digests` table keeps
    # the day's main digest (the default profile's), which `export` writes.
    db["profile_digests"].create(
        {"date": str, "profile_key": str, "payload": str, "created_at": str},
        pk=("date", "profile_key"),
        if_not_exists=True,
    )


@migrations(transactional=False)
def m050_search_index(db: Database) -> None:
    # `/digest search`: one row per paper with the text people search (its title, the
    # scorer's reasons, its deep dives) as the index holds it (digest_core.search), and an
    # FTS5 index over it that sqlite-utils' triggers keep in step with every write. The store
    # rewrites a paper's row whenever it saves the paper, a score or an analysis of it; here
    # the rows a database already has are indexed once. Not transactional: enable_fts runs
    # a script (which commits); each step is idempotent, so a race or a crash just repeats it.
    docs = db["search_docs"]
    docs.create(
        {"arxiv_id": str, "title": str, "reasons": str, "dive": str, "updated_at": str},
        pk="arxiv_id",
        if_not_exists=True,
    )
    # Each paper's reasons are read by paper: without this index every rewrite scans scores.
    db["scores"].create_index(["arxiv_id"], if_not_exists=True)
    with db.conn:
        _reindex(db, _all_paper_ids(db))
    docs.enable_fts(list(COLUMNS), tokenize=TOKENIZER, create_triggers=True, replace=True)
    # FTS5 keeps the rank function as a setting of the index: `rank` is then bm25 with the
    # column weights, for sqlite-utils' `search` as for any query.
    weights = ", ".join(str(w) for w in WEIGHTS)
    with db.conn:
        db.execute(
            "insert into search_docs_fts(search_docs_fts, rank) values ('rank', ?)",
            [f"bm25({weights})"],
        )


def _all_paper_ids(db: Database) -> list[str]:
    rows = db.execute(
        "select arxiv_id from papers union select arxiv_id from scores "
        "union select arxiv_id from analyses"
    ).fetchall()
    return [r[0] for r in rows if r[0]]


def _reindex(db: Database, arxiv_ids: Iterable[str]) -> None:
    """Rewrite the search rows of these papers from what the store holds of them (inside the
    caller's transaction; the FTS triggers follow)."""
    conn = db.conn
    for arxiv_id in dict.fromkeys(arxiv_ids):
        paper = conn.execute("select title from papers where arxiv_id = ?", [arxiv_id]).fetchone()
        reasons = [
            r[0]
            for r in conn.execute(
                "select reason from scores where arxiv_id = ? and reason != '' "
                "group by reason order by max(created_at) desc limit 20",
                [arxiv_id],
            )
        ]
        dives = conn.execute(
            "select title, sections, verdict from analyses where arxiv_id = ? "
            "order by created_at desc limit 10",
            [arxiv_id],
        ).fetchall()
        title = paper[0] if paper else (dives[0][0] if dives else "")
        parts: list[str] = []
        for _, sections, verdict in dives:
            parts.append(verdict or "")
            try:
                parts.extend(str(v) for v in json.loads(sections or "{}").values())
            except (ValueError, AttributeError):
                continue
        dive = "\n".join(dict.fromkeys(p for p in parts if p))
        conn.execute(
            "insert into search_docs(arxiv_id, title, reasons, dive, updated_at) "
            "values (?, ?, ?, ?, ?) on conflict(arxiv_id) do update set title = excluded.title, "
            "reasons = excluded.reasons, dive = excluded.dive, updated_at = excluded.updated_at "
            # Unchanged text leaves the row alone: the FTS trigger would re-index it for nothing.
            "where search_docs.title is not excluded.title "
            "or search_docs.reasons is not excluded.reasons "
            "or search_docs.dive is not excluded.dive",
            [
                arxiv_id,
                index_text(title or ""),
                index_text("\n".join(reasons)),
                index_text(dive),
                _now(),
            ],
        )


# -- who holds a claim ------------------------------------------------------------------------

# One name per process incarnation: host, pid and a nonce (a container restarted with the
# same hostname and pid 1 is a new incarnation, not the old owner).
_INCARNATION = uuid.uuid4().hex[:8]


def process_owner(suffix: str = "") -> str:
    """This process's name as a lease owner: `host:pid:nonce[:suffix]`."""
    base = f"{socket.gethostname()}:{os.getpid()}:{_INCARNATION}"
    return f"{base}:{suffix}" if suffix else base


def owner_gone(owner: str) -> bool:
    """Whether a lease owner is known to be dead: an earlier incarnation of this very process
    slot, or a process of this host that no longer runs. Owners on other hosts are only ever
    judged by their lease."""
    parts = owner.split(":")
    if len(parts) < 3 or parts[0] != socket.gethostname():
        return False
    try:
        pid = int(parts[1])
    except ValueError:
        return False
    if pid == os.getpid():
        return parts[2] != _INCARNATION
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _stamp(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")


class Store:
    """Async facade over one SQLite file."""

    def __init__(self, path: str | Path, extensions: Sequence[Migrations] = ()) -> None:
        self.path = Path(path)
        for ext in extensions:
            if ext.name != MIGRATION_SET:
                raise ValueError(f"extension migrations must be in the {MIGRATION_SET!r} set")
        self.extensions = tuple(extensions)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._db: Database | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @classmethod
    async def open(cls, path: str | Path, *, extensions: Sequence[Migrations] = ()) -> Store:
        """Open (creating if needed) and migrate: the core's migrations, then each extension's."""
        store = cls(path, extensions)
        try:
            await store._run(store._open)
        except BaseException:
            store._executor.shutdown(wait=True)
            raise
        return store

    def _open(self) -> None:
        if str(self.path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        for attempt in range(MIGRATION_ATTEMPTS):
            conn = None
            try:
                conn = sqlite3.connect(str(self.path), timeout=10)
                db = Database(conn)
                sets = (migrations, *self.extensions)
                applied = {m.name for m in migrations.applied(db)}
                known = {m.name for s in sets for m in s._migrations}
                newer = applied - known
                if newer:
                    conn.close()
                    raise StoreError(
                        f"DIGEST_DB: {self.path} was written by a newer digestbot "
                        f"(unknown migration {sorted(newer)[0]}); upgrade digestbot or use another file"
                    )
                for s in sets:
                    s.apply(db)
                break
            except sqlite3.DatabaseError as exc:
                if conn is not None:
                    conn.close()
                # Two processes starting on a fresh file migrate it at the same time: the loser
                # sees "already exists", a duplicate migration record or a lock while the WAL
                # switch happens. Every migration is atomic or idempotent, so look again.
                if attempt < MIGRATION_ATTEMPTS - 1 and _migration_race(exc):
                    time.sleep(0.1 * (attempt + 1))
                    continue
                raise StoreError(
                    f"DIGEST_DB: {self.path} is not a usable SQLite database ({exc})"
                ) from None
        self._db = db

    async def close(self) -> None:
        if self._db is not None:
            await self._run(self._db.close)
            self._db = None
        self._executor.shutdown(wait=True)

    async def ping(self) -> None:
        """A trivial query through the store's thread: raises if the database cannot answer."""
        await self._run(lambda: self.db.execute("select 1").fetchone())

    async def check_writable(self, busy_ms: int = 500) -> None:
        """A real write that changes nothing: the header's user_version (unused by the
        migrations) rewritten with its own value, committed. Raises sqlite3 errors when the
        database cannot be written now (locked by another writer beyond `busy_ms`, read-only,
        disk full); a health check must not report "ok" from a read alone."""

        def probe() -> None:
            conn = self.db.conn
            previous = conn.execute("pragma busy_timeout").fetchone()[0]
            conn.execute(f"pragma busy_timeout = {int(busy_ms)}")
            try:
                version = int(conn.execute("pragma user_version").fetchone()[0])
                conn.execute(f"pragma user_version = {version}")
                conn.commit()
            finally:
                conn.execute(f"pragma busy_timeout = {int(previous)}")

        await self._run(probe)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn` on the store's thread (the only one that may use `db`) and await it."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    _run = run

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue a write without awaiting it (used from synchronous callbacks). `close` waits."""
        self._executor.submit(fn, *args)

    @property
    def db(self) -> Database:
        if self._db is None:
            raise StoreError("store is not open")
        return self._db

    # -- papers --------------------------------------------------------------------------------

    async def save_papers(self, papers: Iterable[Paper]) -> None:
        rows = [_paper_row(p) for p in papers]

        def write() -> None:
            with self.db.conn:
                self.db["papers"].upsert_all(rows, pk="arxiv_id")
                _reindex(self.db, [r["arxiv_id"] for r in rows])

        if rows:
            await self._run(write)

    async def titles(self, arxiv_ids: Sequence[str]) -> dict[str, str]:
        """Stored papers' titles by ID, in one query; IDs with no stored paper are absent."""
        return await self._run(lambda: _paper_titles(self.db, arxiv_ids))

    async def get_paper(self, arxiv_id: str) -> Paper | None:
        def read() -> Paper | None:
            rows = list(self.db["papers"].rows_where("arxiv_id = ?", [arxiv_id]))
            return _paper_from_row(rows[0]) if rows else None

        return await self._run(read)

    # -- scores and analyses (caches) ----------------------------------------------------------

    async def get_scores(self, keys: dict[str, str]) -> dict[str, Score]:
        """`keys` maps arxiv_id -> cache key; returns the cached scores by arxiv_id."""

        def read() -> dict[str, Score]:
            if not keys:
                return {}
            marks = ",".join("?" for _ in keys)
            rows = self.db.query(
                f"select * from scores where cache_key in ({marks})", list(keys.values())
            )
            by_key = {r["cache_key"]: r for r in rows}
            found: dict[str, Score] = {}
            for arxiv_id, key in keys.items():
                if key in by_key:
                    row = by_key[key]
                    found[arxiv_id] = Score(arxiv_id, row["score"], row["reason"], by_llm=True)
            return found

        return await self._run(read)

    async def save_scores(self, rows: list[tuple[str, Score, str, str]]) -> None:
        """Each row: (cache_key, score, model, prompt_version). Only LLM scores are cached."""
        records = [
            {
                "cache_key": key,
                "arxiv_id": s.arxiv_id,
                "score": s.score,
                "reason": s.reason,
                "model": model,
                "prompt_version": version,
                "created_at": _now(),
            }
            for key, s, model, version in rows
        ]

        def write() -> None:
            with self.db.conn:
                self.db["scores"].upsert_all(records, pk="cache_key")
                _reindex(self.db, [r["arxiv_id"] for r in records])

        if records:
            await self._run(write)

    async def get_analysis(self, cache_key: str) -> DeepDive | None:
        def read() -> DeepDive | None:
            rows = list(self.db["analyses"].rows_where("cache_key = ?", [cache_key]))
            if not rows:
                return None
            r = rows[0]
            return DeepDive(
                arxiv_id=r["arxiv_id"],
                title=r["title"],
                sections=json.loads(r["sections"]),
                language=r["language"],
                source_read=r["source_read"],
                model=r["model"],
                prompt_version=r["prompt_version"],
                tokens=r["tokens"],
                llm_used=True,
                verdict=r.get("verdict") or "",
                numbers_checked=r.get("numbers_checked") or 0,
                numbers_unverified=r.get("numbers_unverified") or 0,
            )

        return await self._run(read)

    async def save_analysis(self, cache_key: str, dive: DeepDive, version: int | None) -> None:
        """Only LLM-written analyses are cached: a fallback must not hide a later real one."""
        if not dive.llm_used:
            return
        record = {
            "cache_key": cache_key,
            "arxiv_id": dive.arxiv_id,
            "version": version or 0,
            "prompt_version": dive.prompt_version,
            "model": dive.model,
            "language": dive.language,
            "title": dive.title,
            "sections": json.dumps(dive.sections, ensure_ascii=False),
            "source_read": dive.source_read,
            "tokens": dive.tokens,
            "verdict": dive.verdict,
            "numbers_checked": dive.numbers_checked,
            "numbers_unverified": dive.numbers_unverified,
            "created_at": _now(),
        }

        def write() -> None:
            with self.db.conn:
                self.db["analyses"].upsert(record, pk="cache_key")
                _reindex(self.db, [dive.arxiv_id])

        await self._run(write)

    # -- analysis claims (one writer of a deep dive across processes) --------------------------

    async def claim_analysis(
        self,
        cache_key: str,
        owner: str,
        lease_seconds: float,
        *,
        failed_since: datetime | None = None,
    ) -> bool:
        """Claim the writing of one deep dive. True for exactly one caller at a time; a claim
        that is done or failed, or whose owner is gone or stopped renewing it for
        `lease_seconds`, can be taken. But not one that failed at or after `failed_since`:
        a caller that was waiting for that writer answers without a second try."""

        # The read and the write must not interleave with another process's: sqlite3's
        # implicit transaction would only start at the write, so take the write lock first.
        def locked() -> bool:
            conn = self.db.conn
            conn.execute("begin immediate")
            try:
                won = claim_in_tx(conn)
            except BaseException:
                conn.execute("rollback")
                raise
            conn.execute("commit")
            return won

        def claim_in_tx(conn: sqlite3.Connection) -> bool:
            now = time.time()
            row = conn.execute(
                "select owner, status, heartbeat_at, finished_at from analysis_claims "
                "where cache_key = ?",
                [cache_key],
            ).fetchone()
            if row is not None and failed_since is not None:
                if claim_failed_since(row[1], row[3], failed_since):
                    return False
            if row is not None and row[1] == "running" and row[0] != owner:
                fresh = row[2] >= _stamp(now - lease_seconds)
                if fresh and not owner_gone(row[0]):
                    return False
            conn.execute(
                "insert into analysis_claims(cache_key, owner, status, claimed_at, "
                "heartbeat_at) values (?, ?, 'running', ?, ?) on conflict(cache_key) do "
                "update set owner = excluded.owner, status = 'running', "
                "claimed_at = excluded.claimed_at, heartbeat_at = excluded.heartbeat_at, "
                "finished_at = null",
                [cache_key, owner, _stamp(now), _stamp(now)],
            )
            return True

        return await self._run(locked)

    async def renew_claim(self, cache_key: str, owner: str) -> None:
        def write() -> None:
            with self.db.conn:
                self.db.conn.execute(
                    "update analysis_claims set heartbeat_at = ? where cache_key = ? "
                    "and owner = ? and status = 'running'",
                    [_stamp(time.time()), cache_key, owner],
                )

        await self._run(write)

    async def release_claim(self, cache_key: str, owner: str, status: str) -> None:
        """End a claim as `done` (the analysis is stored) or `failed` (none was written)."""

        def write() -> None:
            with self.db.conn:
                self.db.conn.execute(
                    "update analysis_claims set status = ?, finished_at = ? "
                    "where cache_key = ? and owner = ?",
                    [status, _stamp(time.time()), cache_key, owner],
                )

        await self._run(write)

    async def claim_state(self, cache_key: str) -> tuple[str, str | None] | None:
        """(status, finished_at) of a deep dive's claim, or None when nobody claimed it."""

        def read() -> tuple[str, str | None] | None:
            row = self.db.conn.execute(
                "select status, finished_at from analysis_claims where cache_key = ?",
                [cache_key],
            ).fetchone()
            return (row[0], row[1]) if row else None

        return await self._run(read)

    async def latest_analysis(
        self,
        arxiv_id: str,
        language: str,
        *,
        model: str | None = None,
        prompt_version: str | None = None,
        profile: str | None = None,
    ) -> DeepDive | None:
        """The newest cached analysis of a paper in a language; of one model, prompt version
        and profile fingerprint when given (what the pipeline would reuse without an LLM
        call)."""

        def read() -> str | None:
            rows = list(
                self.db.query(
                    "select cache_key from analyses where arxiv_id = ? and language = ? "
                    "and (? is null or cache_key like ? escape '\\') "
                    "order by created_at desc limit 1",
                    [
                        arxiv_id,
                        language,
                        model,
                        _key_pattern(arxiv_id, prompt_version, model, language, profile),
                    ],
                )
            )
            return rows[0]["cache_key"] if rows else None

        key = await self._run(read)
        return await self.get_analysis(key) if key else None

    async def get_fulltext(self, cache_key: str) -> tuple[str, list[tuple[str, str]]] | None:
        def read() -> tuple[str, list[tuple[str, str]]] | None:
            rows = list(self.db["fulltexts"].rows_where("cache_key = ?", [cache_key]))
            if not rows:
                return None
            return rows[0]["source"], [tuple(s) for s in json.loads(rows[0]["sections"])]

        return await self._run(read)

    async def save_fulltext(
        self, cache_key: str, source: str, sections: Iterable[tuple[str, str]]
    ) -> None:
        record = {
            "cache_key": cache_key,
            "source": source,
            "sections": json.dumps([list(s) for s in sections], ensure_ascii=False),
            "created_at": _now(),
        }
        await self._run(lambda: self.db["fulltexts"].upsert(record, pk="cache_key"))

    # -- digests -------------------------------------------------------------------------------

    async def save_digest(self, digest: Digest, *, main: bool = True) -> None:
        """Keep a built digest under its profile; `main`: also as the day's digest (export)."""
        payload = json.dumps(_digest_to_dict(digest), ensure_ascii=False)
        record = {"date": digest.date, "payload": payload, "created_at": _now()}

        def write() -> None:
            with self.db.conn:
                if main:
                    self.db["digests"].upsert(record, pk="date")
                if digest.profile_key:
                    self.db["profile_digests"].upsert(
                        record | {"profile_key": digest.profile_key}, pk=("date", "profile_key")
                    )

        await self._run(write)

    async def load_digest(self, date: str, profile_key: str | None = None) -> Digest | None:
        """The day's digest, or the one built for a profile (its content key)."""

        def read() -> Digest | None:
            if profile_key is None:
                rows = list(self.db["digests"].rows_where("date = ?", [date]))
            else:
                rows = list(
                    self.db["profile_digests"].rows_where(
                        "date = ? and profile_key = ?", [date, profile_key]
                    )
                )
            return _digest_from_dict(json.loads(rows[0]["payload"])) if rows else None

        return await self._run(read)

    # -- LLM calls -----------------------------------------------------------------------------

    def record_llm_call(self, call: Any) -> None:
        """Callback for LLMClient(on_call=...): queued on the store's thread, awaited by close().
        `origin` says who caused the call (the daily digest or a person), for the budget."""
        record = asdict(call) | {"origin": ORIGIN.get()}
        self.submit(lambda: self.db["llm_calls"].insert(record))

    def record_grounding(self, call_id: str, checked: int, unverified: int) -> None:
        """Callback for LLMClient(on_grounding=...): the number guard's counts for one call.
        Queued after the call's own insert on the same thread, so the row is there."""

        def write() -> None:
            with self.db.conn:
                self.db.conn.execute(
                    "update llm_calls set numbers_checked = ?, numbers_unverified = ? "
                    "where call_id = ?",
                    [checked, unverified, call_id],
                )

        self.submit(write)

    async def llm_calls(self) -> list[dict[str, Any]]:
        return await self._run(lambda: list(self.db["llm_calls"].rows_where(order_by="id")))

    async def tokens_since(self, since: datetime, origin: str) -> int:
        def read() -> int:
            rows = list(
                self.db.query(
                    "select coalesce(sum(prompt_tokens + completion_tokens), 0) as t from llm_calls "
                    "where started_at >= ? and origin = ?",
                    [since.isoformat(timespec="seconds"), origin],
                )
            )
            return int(rows[0]["t"])

        return await self._run(read)

    # -- full-text search over past papers (`/digest search`) ---------------------------------

    async def search(
        self,
        query: str,
        *,
        among: Mapping[str, str] | None = None,
        fingerprint: str | None = None,
        limit: int = 10,
    ) -> list[SearchHit]:
        """Papers matching `query` (an FTS5 expression: `digest_core.search.fts_query`), best
        first (`_relevance`: bm25 rank weighed by score and deep dive; then newer). `among`
        restricts the search to these papers (arXiv ID -> the ISO date the caller knows them
        by, the tie-break); `fingerprint` picks the score given for that profile where there
        is one."""
        dates = dict(among or {})

        def read() -> list[SearchHit]:
            where = None
            args: dict[str, Any] = {}
            if among is not None:
                where = "arxiv_id in (select value from json_each(:among))"
                args["among"] = json.dumps(list(dates))
            rows = list(
                self.db["search_docs"].search(
                    query,
                    columns=["arxiv_id", "dive"],
                    where=where,
                    where_args=args,
                    include_rank=True,
                    # Candidates by bm25 alone; `_relevance` reorders them by score and deep
                    # dive, which can at most triple a rank, so the best are among these.
                    limit=max(limit * 3, limit + 20),
                )
            )
            scores = _latest_scores(self.db, [r["arxiv_id"] for r in rows], fingerprint)
            hits = [
                SearchHit(r["arxiv_id"], "", r["rank"], scores.get(r["arxiv_id"]), bool(r["dive"]))
                for r in rows
            ]
            hits.sort(key=lambda h: dates.get(h.arxiv_id, ""), reverse=True)  # ties: newer
            hits.sort(key=_relevance)
            # Titles only for the hits kept, in one read (a paper not stored: its analysis's).
            kept = hits[:limit]
            titles = _paper_titles(self.db, [h.arxiv_id for h in kept])

            def title(aid: str) -> str:
                return " ".join((titles.get(aid) or _analysis_title(self.db, aid)).split())

            return [replace(h, title=title(h.arxiv_id)) for h in kept]

        return await self._run(read)

    async def latest_scores(
        self, arxiv_ids: Sequence[str], fingerprint: str | None = None
    ) -> dict[str, int]:
        """Each paper's most recent score: the one given for the profile with `fingerprint`
        where there is one, else the most recent of any profile."""
        ids = list(arxiv_ids)
        return await self._run(lambda: _latest_scores(self.db, ids, fingerprint))

    # -- search terms for questions in other languages (digest_core/qa.py) ----------------------

    async def get_search_terms(self, key: str) -> str | None:
        def read() -> str | None:
            rows = list(self.db.query("select terms from search_terms where key = ?", [key]))
            return str(rows[0]["terms"]) if rows else None

        return await self._run(read)

    async def save_search_terms(self, key: str, terms: str) -> None:
        record = {"key": key, "terms": terms, "created_at": _now()}
        await self._run(lambda: self.db["search_terms"].upsert(record, pk="key"))


def _latest_scores(db: Database, arxiv_ids: list[str], fingerprint: str | None) -> dict[str, int]:
    if not arxiv_ids:
        return {}
    # A score's cache key is `arxiv_id|profile fingerprint|...` (scoring.score_cache_key).
    rows = db.execute(
        "select arxiv_id, score, cache_key like arxiv_id || '|' || ? || '|%' as mine "
        "from scores where arxiv_id in (select value from json_each(?)) "
        "order by mine, created_at",
        [fingerprint or "", json.dumps(arxiv_ids)],
    ).fetchall()
    return {arxiv_id: int(score) for arxiv_id, score, _ in rows}  # the last row wins


def _relevance(hit: SearchHit) -> float:
    """The sort key of a hit, lower first: FTS5's bm25 rank (negative; more relevant is lower)
    times 1 to 2 by the paper's score, and 1.5 for a paper with a deep dive. bm25 divides by
    the length of the whole row, so a paper with a long deep dive would lose to a bare title
    that says the word once, although it is the better answer: what the person came back for.
    Together the two factors can at most triple a rank."""
    score = min(100, max(0, hit.score or 0))
    return round(hit.rank * (1 + score / 100) * (1.5 if hit.deep_dive else 1.0), 9)


def claim_failed_since(status: str, finished_at: str | None, since: datetime) -> bool:
    """Whether an analysis claim (its status and `finished_at`) ended in failure at or after
    `since`: its writer gave up while a waiter waited, so the waiter does not try again."""
    return status == "failed" and bool(finished_at) and datetime.fromisoformat(finished_at) >= since


def _paper_titles(db: Database, arxiv_ids: Sequence[str]) -> dict[str, str]:
    """Stored papers' titles by ID, in one query; IDs with no stored paper are absent."""
    wanted = list(dict.fromkeys(arxiv_ids))
    if not wanted:
        return {}
    marks = ", ".join("?" * len(wanted))
    rows = db.execute(
        f"select arxiv_id, title from papers where arxiv_id in ({marks})", wanted
    ).fetchall()
    return {str(aid): str(title) for aid, title in rows}


def _analysis_title(db: Database, arxiv_id: str) -> str:
    """The title of a paper that is not stored, from its analysis; else the ID."""
    row = db.execute("select title from analyses where arxiv_id = ? limit 1", [arxiv_id]).fetchone()
    return str(row[0]) if row else arxiv_id


# -- serialization ------------------------------------------------------------------------------


def _key_pattern(
    arxiv_id: str,
    prompt_version: str | None,
    model: str | None,
    language: str,
    profile: str | None = None,
) -> str:
    """A LIKE pattern for analysis cache keys (see analysis.analysis_cache_key), any version;
    of any profile unless one is given."""

    def lit(text: str) -> str:
        return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")

    head = f"{lit(arxiv_id)}|v%|{lit(prompt_version or '')}|{lit(model or '')}|{lit(language)}"
    return f"{head}|{lit(profile)}" if profile else f"{head}%"


def _paper_row(p: Paper) -> dict[str, Any]:
    return {
        "arxiv_id": p.arxiv_id,
        "title": p.title,
        "abstract": p.abstract,
        "authors": json.dumps(list(p.authors), ensure_ascii=False),
        "version": p.version,
        "upvotes": p.upvotes,
        "published": p.published,
        "abs_url": p.abs_url,
        "source": p.source,
        "extra": json.dumps(
            {
                "ai_summary": p.ai_summary,
                "github_repo": p.github_repo,
                "project_page": p.project_page,
            },
            ensure_ascii=False,
        ),
        "updated_at": _now(),
    }


def _paper_from_row(r: dict[str, Any]) -> Paper:
    extra = json.loads(r.get("extra") or "{}")
    return Paper(
        arxiv_id=r["arxiv_id"],
        title=r["title"],
        abstract=r["abstract"],
        authors=tuple(json.loads(r["authors"] or "[]")),
        version=r["version"],
        upvotes=r["upvotes"] or 0,
        published=r["published"],
        ai_summary=extra.get("ai_summary"),
        github_repo=extra.get("github_repo"),
        project_page=extra.get("project_page"),
        abs_url=r["abs_url"] or "",
        source=r["source"] or "hf",
    )


def _digest_to_dict(d: Digest) -> dict[str, Any]:
    out = asdict(d)
    return out


def _digest_from_dict(data: dict[str, Any]) -> Digest:
    entries = []
    for e in data["entries"]:
        p = dict(e["paper"])
        p["authors"] = tuple(p["authors"])
        dive = e.get("deep_dive")
        entries.append(
            DigestEntry(
                paper=Paper(**p),
                score=Score(**e["score"]),
                deep_dive=DeepDive(**dive) if dive else None,
                links=tuple(Link(**link) for link in e.get("links") or ()),
            )
        )
    rest = {k: v for k, v in data.items() if k != "entries"}
    return Digest(entries=tuple(entries), **rest)
