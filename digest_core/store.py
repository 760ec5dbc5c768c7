"""The only module that touches SQLite: papers, scores, analyses, digests, LLM calls, ledgers.

sqlite-utils connections belong to the thread that opened them, so every operation runs on
one dedicated worker thread and the async methods await it. That also makes this the single
writer path the WAL journal wants. Schema changes are numbered migrations; a database written
by a newer digestbot, or a file that is not a database, stops with a clear StoreError.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from sqlite_utils import Database, Migrations

from digest_core.models import DeepDive, Digest, DigestEntry, Paper, Score

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
def m003_delivery(db: Database) -> None:
    # One row per digest day: claimed once, so two processes or a restart never post twice.
    db["runs"].create(
        {
            "digest_date": str,
            "status": str,
            "owner": str,
            "started_at": str,
            "heartbeat_at": str,
            "finished_at": str,
            "detail": str,
        },
        pk="digest_date",
    )
    # The posting ledger: intent recorded before the post, the result after it.
    db["posts"].create(
        {
            "scope": str,
            "platform": str,
            "chat": str,
            "key": str,
            "seq": int,
            "status": str,
            "thread_ref": str,
            "message_ref": str,
            "error": str,
            "updated_at": str,
        },
        pk=("scope", "platform", "chat", "key"),
    )
    db["posts"].create_index(["platform", "chat", "message_ref"])
    # Threads the bot started, and which papers each one is about (for follow-up questions).
    db["threads"].create(
        {
            "platform": str,
            "chat": str,
            "thread_ref": str,
            "kind": str,
            "scope": str,
            "papers": str,
            "created_at": str,
        },
        pk=("platform", "chat", "thread_ref"),
    )


@migrations()
def m004_interactive(db: Database) -> None:
    db["events"].create({"event_key": str, "seen_at": str}, pk="event_key")
    db["turns"].create(
        {
            "id": int,
            "platform": str,
            "chat": str,
            "thread_ref": str,
            "arxiv_id": str,
            "role": str,
            "text": str,
            "at": str,
        },
        pk="id",
    )
    db["turns"].create_index(["platform", "chat", "thread_ref"])
    db["requests"].create({"id": int, "user_key": str, "at": str}, pk="id")
    db["requests"].create_index(["user_key", "at"])


@migrations()
def m005_post_attempts(db: Database) -> None:
    # How often a post was sent: blind re-sends on unsearchable platforms are bounded.
    db["posts"].add_column("attempts", int, not_null_default=0)


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


class Store:
    """Async facade over one SQLite file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._db: Database | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @classmethod
    async def open(cls, path: str | Path) -> Store:
        store = cls(path)
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
                applied = {m.name for m in migrations.applied(db)}
                known = {m.name for m in migrations._migrations}
                newer = applied - known
                if newer:
                    conn.close()
                    raise StoreError(
                        f"DIGEST_DB: {self.path} was written by a newer digestbot "
                        f"(unknown migration {sorted(newer)[0]}); upgrade digestbot or use another file"
                    )
                migrations.apply(db)
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

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

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
        if rows:
            await self._run(lambda: self.db["papers"].upsert_all(rows, pk="arxiv_id"))

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
        if records:
            await self._run(lambda: self.db["scores"].upsert_all(records, pk="cache_key"))

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
            "created_at": _now(),
        }
        await self._run(lambda: self.db["analyses"].upsert(record, pk="cache_key"))

    async def latest_analysis(
        self,
        arxiv_id: str,
        language: str,
        *,
        model: str | None = None,
        prompt_version: str | None = None,
    ) -> DeepDive | None:
        """The newest cached analysis of a paper in a language; of one model and prompt
        version when given (what the pipeline would reuse without an LLM call)."""

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
                        _key_pattern(arxiv_id, prompt_version, model, language),
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

    async def save_digest(self, digest: Digest) -> None:
        record = {
            "date": digest.date,
            "payload": json.dumps(_digest_to_dict(digest), ensure_ascii=False),
            "created_at": _now(),
        }
        await self._run(lambda: self.db["digests"].upsert(record, pk="date"))

    async def load_digest(self, date: str) -> Digest | None:
        def read() -> Digest | None:
            rows = list(self.db["digests"].rows_where("date = ?", [date]))
            return _digest_from_dict(json.loads(rows[0]["payload"])) if rows else None

        return await self._run(read)

    # -- LLM calls -----------------------------------------------------------------------------

    def record_llm_call(self, call: Any) -> None:
        """Callback for LLMClient(on_call=...): queued on the store's thread, awaited by close().
        `origin` says who caused the call (the daily digest or a person), for the budget."""
        record = asdict(call) | {"origin": ORIGIN.get()}
        self.submit(lambda: self.db["llm_calls"].insert(record))

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

    # -- run ledger (one digest per day) ---------------------------------------------------------

    async def claim_run(self, digest_date: str, owner: str, lease_seconds: float = 600) -> bool:
        """Claim the day. True for exactly one caller. A run that failed, or whose owner stopped
        renewing its lease for `lease_seconds` (a dead process), can be reclaimed so a restart finishes it; a run
        that is done, or alive in another process, cannot."""

        def claim() -> bool:
            now = datetime.now(UTC)
            stale = (now - timedelta(seconds=lease_seconds)).isoformat(timespec="seconds")
            with self.db.conn:
                cur = self.db.conn.execute(
                    "insert into runs(digest_date, status, owner, started_at, heartbeat_at) "
                    "values (?, 'running', ?, ?, ?) "
                    "on conflict(digest_date) do update set status = 'running', "
                    "owner = excluded.owner, started_at = excluded.started_at, "
                    "heartbeat_at = excluded.heartbeat_at, detail = null "
                    "where runs.status = 'failed' "
                    "or (runs.status = 'running' and runs.heartbeat_at < ?)",
                    [
                        digest_date,
                        owner,
                        now.isoformat(timespec="seconds"),
                        now.isoformat(timespec="seconds"),
                        stale,
                    ],
                )
                return cur.rowcount == 1

        return await self._run(claim)

    async def heartbeat(self, digest_date: str, owner: str) -> None:
        """Renew the lease of a running day (the job calls it as it goes)."""

        def write() -> None:
            with self.db.conn:
                self.db.conn.execute(
                    "update runs set heartbeat_at = ? where digest_date = ? and owner = ? "
                    "and status = 'running'",
                    [_now(), digest_date, owner],
                )

        await self._run(write)

    async def finish_run(
        self, digest_date: str, status: str, detail: str = "", *, owner: str | None = None
    ) -> None:
        """Record how a run ended; with `owner`, only if that owner still holds the day (a run
        taken over after its lease lapsed must not overwrite the new owner's record)."""

        def write() -> None:
            with self.db.conn:
                self.db.conn.execute(
                    "update runs set status = ?, finished_at = ?, detail = ? "
                    "where digest_date = ? and (? is null or owner = ?)",
                    [status, _now(), detail, digest_date, owner, owner],
                )

        await self._run(write)

    async def run_status(self, digest_date: str) -> str | None:
        def read() -> str | None:
            rows = list(self.db["runs"].rows_where("digest_date = ?", [digest_date]))
            return rows[0]["status"] if rows else None

        return await self._run(read)

    # -- posting ledger ------------------------------------------------------------------------

    async def post_state(self, scope: str, platform: str, chat: str) -> dict[str, dict[str, Any]]:
        """Every ledger row of one destination for one scope, by key."""

        def read() -> dict[str, dict[str, Any]]:
            rows = self.db["posts"].rows_where(
                "scope = ? and platform = ? and chat = ?", [scope, platform, chat]
            )
            return {r["key"]: r for r in rows}

        return await self._run(read)

    async def has_posts(self, scope: str) -> bool:
        """Whether anything of this scope (e.g. a day's digest) was sent or attempted."""

        def read() -> bool:
            rows = list(self.db.query("select 1 from posts where scope = ? limit 1", [scope]))
            return bool(rows)

        return await self._run(read)

    async def record_post(
        self,
        scope: str,
        platform: str,
        chat: str,
        key: str,
        *,
        seq: int,
        status: str,
        thread_ref: str | None = None,
        message_ref: str | None = None,
        error: str | None = None,
        attempts: int = 0,
    ) -> None:
        record = {
            "scope": scope,
            "platform": platform,
            "chat": chat,
            "key": key,
            "seq": seq,
            "status": status,
            "thread_ref": thread_ref,
            "message_ref": message_ref,
            "error": error,
            "attempts": attempts,
            "updated_at": _now(),
        }
        await self._run(
            lambda: self.db["posts"].upsert(record, pk=("scope", "platform", "chat", "key"))
        )

    async def save_thread(
        self, platform: str, chat: str, thread_ref: str, kind: str, scope: str, papers: list[str]
    ) -> None:
        record = {
            "platform": platform,
            "chat": chat,
            "thread_ref": thread_ref,
            "kind": kind,
            "scope": scope,
            "papers": json.dumps(papers),
            "created_at": _now(),
        }
        await self._run(
            lambda: self.db["threads"].upsert(record, pk=("platform", "chat", "thread_ref"))
        )

    async def find_thread(self, platform: str, chat: str, ref: str) -> dict[str, Any] | None:
        """The bot's thread that `ref` is the root of, or a message inside of."""

        def read() -> dict[str, Any] | None:
            rows = list(
                self.db.query(
                    "select * from threads where platform = ? and chat = ? and thread_ref = ? "
                    "union all "
                    "select t.* from posts p join threads t on t.platform = p.platform "
                    "and t.chat = p.chat and t.thread_ref = p.thread_ref "
                    "where p.platform = ? and p.chat = ? and p.message_ref = ? limit 1",
                    [platform, chat, ref, platform, chat, ref],
                )
            )
            if not rows:
                return None
            row = dict(rows[0])
            row["papers"] = json.loads(row["papers"])
            return row

        return await self._run(read)

    async def latest_thread(
        self, platform: str, chat: str, kind: str | None = None
    ) -> dict[str, Any] | None:
        """The newest thread the bot started in a chat, of one kind if given (a Telegram forum
        topic's latest digest)."""

        def read() -> dict[str, Any] | None:
            rows = list(
                self.db.query(
                    "select * from threads where platform = ? and chat = ? "
                    "and (? is null or kind = ?) order by created_at desc, rowid desc limit 1",
                    [platform, chat, kind, kind],
                )
            )
            if not rows:
                return None
            row = dict(rows[0])
            row["papers"] = json.loads(row["papers"])
            return row

        return await self._run(read)

    # -- interactive: dedupe, memory, rate limits ------------------------------------------------

    async def first_sight(self, event_key: str) -> bool:
        """True the first time an event key is seen, False for every redelivery."""

        def write() -> bool:
            with self.db.conn:
                cur = self.db.conn.execute(
                    "insert into events(event_key, seen_at) values (?, ?) on conflict do nothing",
                    [event_key, _now()],
                )
                return cur.rowcount == 1

        return await self._run(write)

    async def prune(self, older_than: timedelta = timedelta(days=3)) -> int:
        """Forget redelivery marks and rate-limit records past any use: Slack retries within
        minutes, Telegram keeps updates 24 h, the rate window is an hour. Returns rows removed."""

        def write() -> int:
            cutoff = (datetime.now(UTC) - older_than).isoformat(timespec="seconds")
            with self.db.conn:
                a = self.db.conn.execute("delete from events where seen_at < ?", [cutoff]).rowcount
                b = self.db.conn.execute("delete from requests where at < ?", [cutoff]).rowcount
            return a + b

        return await self._run(write)

    async def get_search_terms(self, key: str) -> str | None:
        def read() -> str | None:
            rows = list(self.db.query("select terms from search_terms where key = ?", [key]))
            return str(rows[0]["terms"]) if rows else None

        return await self._run(read)

    async def save_search_terms(self, key: str, terms: str) -> None:
        record = {"key": key, "terms": terms, "created_at": _now()}
        await self._run(lambda: self.db["search_terms"].upsert(record, pk="key"))

    async def add_turn(
        self, platform: str, chat: str, thread_ref: str, arxiv_id: str, role: str, text: str
    ) -> None:
        record = {
            "platform": platform,
            "chat": chat,
            "thread_ref": thread_ref,
            "arxiv_id": arxiv_id,
            "role": role,
            "text": text,
            "at": _now(),
        }
        await self._run(lambda: self.db["turns"].insert(record))

    async def turns(
        self, platform: str, chat: str, thread_ref: str, limit: int
    ) -> list[dict[str, Any]]:
        def read() -> list[dict[str, Any]]:
            rows = list(
                self.db.query(
                    "select role, text, arxiv_id from turns where platform = ? and chat = ? "
                    "and thread_ref = ? order by id desc limit ?",
                    [platform, chat, thread_ref, limit],
                )
            )
            return list(reversed(rows))

        return await self._run(read)

    async def count_request(self, user_key: str, window: timedelta, limit: int) -> int | None:
        """Record a request if the user is under `limit` in `window`; otherwise return the
        seconds until the oldest request in the window expires (and record nothing)."""

        def write() -> int | None:
            now = datetime.now(UTC)
            since = (now - window).isoformat(timespec="seconds")
            with self.db.conn:
                rows = self.db.conn.execute(
                    "select at from requests where user_key = ? and at >= ? order by at",
                    [user_key, since],
                ).fetchall()
                if len(rows) >= limit:
                    oldest = datetime.fromisoformat(rows[0][0])
                    return max(1, int((oldest + window - now).total_seconds()) + 1)
                self.db.conn.execute(
                    "insert into requests(user_key, at) values (?, ?)",
                    [user_key, now.isoformat(timespec="seconds")],
                )
            return None

        return await self._run(write)


# -- serialization ------------------------------------------------------------------------------


def _key_pattern(
    arxiv_id: str, prompt_version: str | None, model: str | None, language: str
) -> str:
    """A LIKE pattern for analysis cache keys (see analysis.analysis_cache_key), any version."""

    def lit(text: str) -> str:
        return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")

    return f"{lit(arxiv_id)}|v%|{lit(prompt_version or '')}|{lit(model or '')}|{lit(language)}"


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
            )
        )
    rest = {k: v for k, v in data.items() if k != "entries"}
    return Digest(entries=tuple(entries), **rest)
