"""The bot's own state in the shared SQLite file: runs, the posting ledger, threads, turns,
redelivery marks and rate-limit records, as typed records.

Design: `digest_core/store.py` owns the file, its single SQLite thread and the `digestbot`
migration sequence, and knows nothing of chats. This module registers its migrations in that
same sequence (the `migrations` object below, same set name) and passes them to
`Store.open(path, extensions=[migrations])` (`open_store`, `open_pipeline`); `ChatStore` then
reads and writes through `Store.run`, on the store's thread and connection. Migrations
m003–m005 keep the names under which digestbot recorded them before this move, so a database
made then is already up to date on them; new bot migrations are numbered m008 onwards (m006
and m007 are the core's).

    digest_core.store.Store ── papers, scores, analyses, full texts, digests, LLM calls
          ▲ run(fn)                          (core migrations m001, m002, m007; m006 reserved)
    bot.chatstore.ChatStore ── runs, posts, threads, turns, events, requests, journal,
                               ratings, chat profiles, profile changes, subscriptions,
                               paper choices ("which paper?" buttons)
                               (bot migrations m003, m004, m005, m008, m010, m030, m040, m052)
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlite_utils import Database, Migrations

from bot.channels.base import ErrorKind
from digest_core.models import Rating
from digest_core.store import MIGRATION_SET, Store, StoreError, owner_gone

if TYPE_CHECKING:
    from digest_core.config import Settings
    from digest_core.pipeline import Pipeline

migrations = Migrations(MIGRATION_SET)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _stamp() -> str:
    # Microseconds: votes cast in the same second still order as "most recent first".
    return datetime.now(UTC).isoformat(timespec="microseconds")


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
def m008_post_error_kind(db: Database) -> None:
    # The kind of a failure gets its own column; until now it was a prefix of the error text
    # ("permanent: not_in_channel"). Split the old rows once, here, and never parse again.
    db["posts"].add_column("error_kind", str)
    for kind in ErrorKind:
        prefix = f"{kind.value}: "
        db.execute(
            "update posts set error_kind = ?, error = substr(error, ?) "
            "where error_kind is null and substr(error, 1, ?) = ?",
            [kind.value, len(prefix) + 1, len(prefix), prefix],
        )


@migrations()
def m010_request_journal(db: Database) -> None:
    # Every accepted request (an /analyze, a question) from before its work is acknowledged
    # until its answer or failure line is posted, so a crash leaves a record to finish.
    # `key` is the platform's redelivery key (Telegram update, Slack message or trigger), so
    # the journal is also what tells a redelivery from new work.
    db["journal"].create(
        {
            "key": str,
            "platform": str,
            "chat": str,
            "request": str,  # the assistant.Request, as JSON
            "extra": str,  # what the adapter needs to resume it (Slack's response_url)
            "status": str,  # pending, done
            "owner": str,
            "accepted_at": str,
            "heartbeat_at": str,
            "finished_at": str,
        },
        pk="key",
        if_not_exists=True,
    )
    db["journal"].create_index(["status"], if_not_exists=True)


@migrations()
def m040_ratings(db: Database) -> None:
    # 👍/👎 on papers: one vote per person per paper per destination, for the destination's
    # profile (the scoring examples of that profile are read by profile).
    db["ratings"].create(
        {
            "platform": str,
            "chat": str,
            "arxiv_id": str,
            "user": str,
            "profile": str,
            "liked": int,
            "title": str,
            "at": str,
        },
        pk=("platform", "chat", "arxiv_id", "user"),
    )
    db["ratings"].create_index(["profile", "at"])


@migrations()
def m030_team_state(db: Database) -> None:
    # Which research profile each chat uses: a base profile ("default" or a config name) and
    # the fields edited here from chat (JSON), so a config change still reaches unedited ones.
    db["chat_profiles"].create(
        {"platform": str, "chat": str, "base": str, "edits": str, "updated_at": str},
        pk=("platform", "chat"),
        if_not_exists=True,
    )
    # Every change, with the state before it, for the announcement and `/digest profile undo`.
    db["profile_changes"].create(
        {
            "id": int,
            "platform": str,
            "chat": str,
            "user": str,
            "field": str,
            "old": str,
            "new": str,
            "before": str,
            "undone": int,
            "at": str,
        },
        pk="id",
        if_not_exists=True,
    )
    db["profile_changes"].create_index(["platform", "chat"], if_not_exists=True)
    # Subscriptions made from chat: active adds a chat to SLACK_CHANNELS / TELEGRAM_CHATS;
    # inactive (unsubscribed) takes a configured one out.
    db["subscriptions"].create(
        {"platform": str, "chat": str, "active": int, "user": str, "at": str},
        pk=("platform", "chat"),
        if_not_exists=True,
    )


@migrations()
def m052_paper_choices(db: Database) -> None:
    # A "which paper do you mean?" question with its buttons: the buttons carry only `key`
    # (Telegram's callback_data holds 64 bytes; the question may hold 4,000 characters), and
    # the first pick (a press or a typed reply) is recorded here, once.
    db["paper_choices"].create(
        {
            "key": str,
            "platform": str,
            "chat": str,
            "thread_ref": str,  # the bot thread the question was asked in
            "message": str,  # the person's message: the ledger scope of the replies to it
            "reply_to": str,  # where the replies to it go (Slack thread_ts; Telegram message)
            "asker": str,
            "question": str,
            "papers": str,  # the candidates, as JSON, in the order the buttons show them
            "chosen": str,  # the picked arXiv ID, null until picked
            "chosen_by": str,
            "chosen_at": str,
            "created_at": str,
        },
        pk="key",
        if_not_exists=True,
    )
    db["paper_choices"].create_index(["platform", "chat", "thread_ref"], if_not_exists=True)


# -- records ------------------------------------------------------------------------------------


class PostStatus(StrEnum):
    INTENT = "intent"  # recorded before the send: the outcome is unknown until the next row
    SENT = "sent"
    FAILED = "failed"


@dataclass(frozen=True)
class PostRecord:
    """One message of a scope (a digest day, an analysis, an answer) in one chat."""

    scope: str
    platform: str
    chat: str
    key: str
    seq: int
    status: PostStatus
    thread_ref: str | None = None  # the bot thread the message belongs to
    message_ref: str | None = None
    error_kind: ErrorKind | None = None
    error: str | None = None
    attempts: int = 0


@dataclass(frozen=True)
class ThreadRecord:
    """A thread the bot started (a digest or an analysis) and the papers it is about."""

    platform: str
    chat: str
    thread_ref: str
    kind: str
    scope: str
    papers: tuple[str, ...]


@dataclass(frozen=True)
class Turn:
    """One remembered line of a thread conversation."""

    role: str  # "user", "assistant", or PENDING: a question kept while asking which paper
    text: str
    arxiv_id: str


@dataclass(frozen=True)
class ProfileBinding:
    """The profile a chat uses: `base` ("default" or a [profiles.NAME]) with `edits` made here
    (field -> value; topics as a list)."""

    platform: str
    chat: str
    base: str = "default"
    edits: tuple[tuple[str, Any], ...] = ()

    @property
    def edited(self) -> dict[str, Any]:
        return dict(self.edits)


@dataclass(frozen=True)
class ProfileChange:
    """One change of a chat's profile, as announced, and the binding before it."""

    id: int
    user: str
    field: str
    old: str
    new: str
    before: ProfileBinding


@dataclass(frozen=True)
class Subscription:
    platform: str
    chat: str
    active: bool


def _binding(platform: str, chat: str, base: str, edits: str | None) -> ProfileBinding:
    return ProfileBinding(platform, chat, base, tuple(json.loads(edits or "{}").items()))


class Admission(StrEnum):
    """What the journal says about a request as it arrives."""

    NEW = "new"  # recorded now: run it
    TAKEN_OVER = "taken_over"  # recorded before by a process that is gone: run it here
    RUNNING = "running"  # pending under a live owner (this process included): it will answer
    DONE = "done"  # answered already: a redelivery


@dataclass(frozen=True)
class JournalEntry:
    """One accepted request in the journal."""

    key: str
    platform: str
    chat: str
    request: dict[str, Any]
    extra: dict[str, Any]
    status: str
    owner: str
    accepted_at: datetime


def _journal(row: dict[str, Any]) -> JournalEntry:
    return JournalEntry(
        key=row["key"],
        platform=row["platform"],
        chat=row["chat"],
        request=json.loads(row["request"]),
        extra=json.loads(row["extra"] or "{}"),
        status=row["status"],
        owner=row["owner"],
        accepted_at=datetime.fromisoformat(row["accepted_at"]),
    )


def _stale(row: dict[str, Any], owner: str, lease_seconds: float) -> bool:
    """A pending journal row whose owner is another process that is gone or silent."""
    if row["owner"] == owner:
        return False
    cutoff = (datetime.now(UTC) - timedelta(seconds=lease_seconds)).isoformat(timespec="seconds")
    return owner_gone(row["owner"]) or (row["heartbeat_at"] or "") < cutoff


@dataclass(frozen=True)
class Vote:
    """What a 👍/👎 came to: the person's vote now (None: withdrawn) and the paper's counts in
    that destination."""

    liked: bool | None
    up: int
    down: int
    changed: bool  # False when the press changed nothing (a `/digest like` said twice)


@dataclass(frozen=True)
class PaperChoice:
    """A "which paper do you mean?" question kept for its buttons (table paper_choices)."""

    key: str
    platform: str
    chat: str
    thread_ref: str
    message: str
    reply_to: str | None
    asker: str
    question: str
    papers: tuple[str, ...]
    chosen: str | None = None
    chosen_by: str | None = None


def _choice(row: dict[str, Any]) -> PaperChoice:
    return PaperChoice(
        key=row["key"],
        platform=row["platform"],
        chat=row["chat"],
        thread_ref=row["thread_ref"],
        message=row["message"],
        reply_to=row["reply_to"],
        asker=row["asker"],
        question=row["question"],
        papers=tuple(json.loads(row["papers"])),
        chosen=row["chosen"],
        chosen_by=row["chosen_by"],
    )


@dataclass(frozen=True)
class Seen:
    """A paper deep-dived in a destination: when, and the root of the thread it is in."""

    arxiv_id: str
    date: str
    thread_ref: str | None


@dataclass(frozen=True)
class PaperThread:
    """Where a paper was posted in a destination: the date and the root of the thread to
    link it to; `deep_dive`: its deep dive is in that thread (not only its title in a list)."""

    arxiv_id: str
    date: str
    thread_ref: str
    deep_dive: bool


@dataclass(frozen=True)
class Liked:
    """A paper's 👍 and 👎 in a destination over a period."""

    arxiv_id: str
    title: str
    up: int
    down: int


def _post(row: dict[str, Any]) -> PostRecord:
    kind = row.get("error_kind")
    return PostRecord(
        scope=row["scope"],
        platform=row["platform"],
        chat=row["chat"],
        key=row["key"],
        seq=row["seq"],
        status=PostStatus(row["status"]),
        thread_ref=row["thread_ref"],
        message_ref=row["message_ref"],
        error_kind=ErrorKind(kind) if kind else None,
        error=row["error"],
        attempts=int(row.get("attempts") or 0),
    )


def _thread(row: dict[str, Any]) -> ThreadRecord:
    return ThreadRecord(
        platform=row["platform"],
        chat=row["chat"],
        thread_ref=row["thread_ref"],
        kind=row["kind"],
        scope=row["scope"],
        papers=tuple(json.loads(row["papers"])),
    )


# -- opening ------------------------------------------------------------------------------------


async def open_store(path: str | Path) -> Store:
    """The shared store with the bot's migrations applied."""
    return await Store.open(path, extensions=[migrations])


async def open_pipeline(settings: Settings, *, offline: bool = False) -> Pipeline:
    """The core pipeline over a store that also holds the bot's state."""
    from digest_core.pipeline import Pipeline  # the LLM and HTTP stacks, only when needed

    return await Pipeline.open(settings, offline=offline, extensions=[migrations])


class ChatStore:
    """Async access to the bot's tables, through the core store's thread."""

    def __init__(self, store: Store) -> None:
        if migrations not in store.extensions:
            raise StoreError("chat state needs the store opened with bot.chatstore.migrations")
        self.store = store

    @classmethod
    async def open(cls, path: str | Path) -> ChatStore:
        return cls(await open_store(path))

    async def close(self) -> None:
        await self.store.close()

    @property
    def _db(self) -> Database:
        return self.store.db

    # -- run ledger (one digest per day) ---------------------------------------------------------

    async def claim_run(self, digest_date: str, owner: str, lease_seconds: float = 600) -> bool:
        """Claim the day. True for exactly one caller. A run that failed, or whose owner stopped
        renewing its lease for `lease_seconds` (a dead process), can be reclaimed so a restart
        finishes it; a run that is done, or alive in another process, cannot."""

        def claim() -> bool:
            now = datetime.now(UTC)
            stale = (now - timedelta(seconds=lease_seconds)).isoformat(timespec="seconds")
            stamp = now.isoformat(timespec="seconds")
            with self._db.conn:
                cur = self._db.conn.execute(
                    "insert into runs(digest_date, status, owner, started_at, heartbeat_at) "
                    "values (?, 'running', ?, ?, ?) "
                    "on conflict(digest_date) do update set status = 'running', "
                    "owner = excluded.owner, started_at = excluded.started_at, "
                    "heartbeat_at = excluded.heartbeat_at, detail = null "
                    "where runs.status = 'failed' "
                    "or (runs.status = 'running' and runs.heartbeat_at < ?)",
                    [digest_date, owner, stamp, stamp, stale],
                )
                return cur.rowcount == 1

        return await self.store.run(claim)

    async def heartbeat(self, digest_date: str, owner: str) -> None:
        """Renew the lease of a running day (the job calls it as it goes)."""

        def write() -> None:
            with self._db.conn:
                self._db.conn.execute(
                    "update runs set heartbeat_at = ? where digest_date = ? and owner = ? "
                    "and status = 'running'",
                    [_now(), digest_date, owner],
                )

        await self.store.run(write)

    async def finish_run(
        self, digest_date: str, status: str, detail: str = "", *, owner: str | None = None
    ) -> None:
        """Record how a run ended; with `owner`, only if that owner still holds the day (a run
        taken over after its lease lapsed must not overwrite the new owner's record)."""

        def write() -> None:
            with self._db.conn:
                self._db.conn.execute(
                    "update runs set status = ?, finished_at = ?, detail = ? "
                    "where digest_date = ? and (? is null or owner = ?)",
                    [status, _now(), detail, digest_date, owner, owner],
                )

        await self.store.run(write)

    async def run_status(self, digest_date: str) -> str | None:
        def read() -> str | None:
            rows = list(self._db["runs"].rows_where("digest_date = ?", [digest_date]))
            return rows[0]["status"] if rows else None

        return await self.store.run(read)

    # -- posting ledger ------------------------------------------------------------------------

    async def post_state(self, scope: str, platform: str, chat: str) -> dict[str, PostRecord]:
        """Every ledger row of one destination for one scope, by key."""

        def read() -> dict[str, PostRecord]:
            rows = self._db["posts"].rows_where(
                "scope = ? and platform = ? and chat = ?", [scope, platform, chat]
            )
            return {r["key"]: _post(r) for r in rows}

        return await self.store.run(read)

    async def has_posts(self, scope: str) -> bool:
        """Whether anything of this scope (e.g. a day's digest) was sent or attempted."""

        def read() -> bool:
            rows = list(self._db.query("select 1 from posts where scope = ? limit 1", [scope]))
            return bool(rows)

        return await self.store.run(read)

    async def record_post(self, post: PostRecord) -> None:
        record = {
            "scope": post.scope,
            "platform": post.platform,
            "chat": post.chat,
            "key": post.key,
            "seq": post.seq,
            "status": post.status.value,
            "thread_ref": post.thread_ref,
            "message_ref": post.message_ref,
            "error_kind": post.error_kind.value if post.error_kind else None,
            "error": post.error,
            "attempts": post.attempts,
            "updated_at": _now(),
        }
        await self.store.run(
            lambda: self._db["posts"].upsert(record, pk=("scope", "platform", "chat", "key"))
        )

    # -- threads -------------------------------------------------------------------------------

    async def save_thread(self, thread: ThreadRecord) -> None:
        record = {
            "platform": thread.platform,
            "chat": thread.chat,
            "thread_ref": thread.thread_ref,
            "kind": thread.kind,
            "scope": thread.scope,
            "papers": json.dumps(list(thread.papers)),
            "created_at": _now(),
        }
        await self.store.run(
            lambda: self._db["threads"].upsert(record, pk=("platform", "chat", "thread_ref"))
        )

    async def find_thread(self, platform: str, chat: str, ref: str) -> ThreadRecord | None:
        """The bot's thread that `ref` is the root of, or a message inside of."""

        def read() -> ThreadRecord | None:
            rows = list(
                self._db.query(
                    "select * from threads where platform = ? and chat = ? and thread_ref = ? "
                    "union all "
                    "select t.* from posts p join threads t on t.platform = p.platform "
                    "and t.chat = p.chat and t.thread_ref = p.thread_ref "
                    "where p.platform = ? and p.chat = ? and p.message_ref = ? limit 1",
                    [platform, chat, ref, platform, chat, ref],
                )
            )
            return _thread(rows[0]) if rows else None

        return await self.store.run(read)

    async def latest_thread(
        self, platform: str, chat: str, kind: str | None = None
    ) -> ThreadRecord | None:
        """The newest thread the bot started in a chat, of one kind if given (a Telegram forum
        topic's latest digest)."""

        def read() -> ThreadRecord | None:
            rows = list(
                self._db.query(
                    "select * from threads where platform = ? and chat = ? "
                    "and (? is null or kind = ?) order by created_at desc, rowid desc limit 1",
                    [platform, chat, kind, kind],
                )
            )
            return _thread(rows[0]) if rows else None

        return await self.store.run(read)

    # -- request journal -------------------------------------------------------------------------

    async def journal_accept(
        self,
        key: str,
        platform: str,
        chat: str,
        request: dict[str, Any],
        extra: dict[str, Any],
        owner: str,
        lease_seconds: float,
    ) -> Admission:
        """Record a request before its work is acknowledged, or say what became of the one
        recorded under the same key (a redelivery). Raises when the database cannot be
        written: the caller then still owes the person a line."""

        def write() -> Admission:
            conn = self._db.conn
            now = _now()
            conn.execute("begin immediate")  # the read and the write as one step
            try:
                row = conn.execute(
                    "select status, owner, heartbeat_at from journal where key = ?", [key]
                ).fetchone()
                if row is None:
                    conn.execute(
                        "insert into journal(key, platform, chat, request, extra, status, owner, "
                        "accepted_at, heartbeat_at) values (?, ?, ?, ?, ?, 'pending', ?, ?, ?)",
                        [key, platform, chat, json.dumps(request), json.dumps(extra), owner]
                        + [now, now],
                    )
                    verdict = Admission.NEW
                elif row[0] == "done":
                    verdict = Admission.DONE
                elif _stale({"owner": row[1], "heartbeat_at": row[2]}, owner, lease_seconds):
                    conn.execute(
                        "update journal set owner = ?, heartbeat_at = ? where key = ?",
                        [owner, now, key],
                    )
                    verdict = Admission.TAKEN_OVER
                else:
                    verdict = Admission.RUNNING
            except BaseException:
                conn.execute("rollback")
                raise
            conn.execute("commit")
            return verdict

        return await self.store.run(write)

    async def journal_renew(self, keys: list[str], owner: str) -> None:
        """Renew this process's hold on the requests it is working on."""

        def write() -> None:
            with self._db.conn:
                self._db.conn.executemany(
                    "update journal set heartbeat_at = ? where key = ? and owner = ? "
                    "and status = 'pending'",
                    [(_now(), k, owner) for k in keys],
                )

        await self.store.run(write)

    async def journal_finish(self, key: str) -> None:
        def write() -> None:
            with self._db.conn:
                self._db.conn.execute(
                    "update journal set status = 'done', finished_at = ? where key = ?",
                    [_now(), key],
                )

        await self.store.run(write)

    async def journal_take_pending(self, owner: str, lease_seconds: float) -> list[JournalEntry]:
        """Take over every pending request whose owner is gone (a crash) or silent for
        `lease_seconds`; oldest first. Requests of a live process are left to it."""

        def write() -> list[JournalEntry]:
            conn = self._db.conn
            conn.execute("begin immediate")
            try:
                cur = conn.execute("select * from journal where status = 'pending' order by rowid")
                names = [d[0] for d in cur.description]
                rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
                taken = [r for r in rows if _stale(r, owner, lease_seconds)]
                conn.executemany(
                    "update journal set owner = ?, heartbeat_at = ? where key = ?",
                    [(owner, _now(), r["key"]) for r in taken],
                )
            except BaseException:
                conn.execute("rollback")
                raise
            conn.execute("commit")
            return [_journal(r) for r in taken]

        return await self.store.run(write)

    async def journal_entry(self, key: str) -> JournalEntry | None:
        def read() -> JournalEntry | None:
            rows = list(self._db["journal"].rows_where("key = ?", [key]))
            return _journal(rows[0]) if rows else None

    # -- "which paper?" choices ------------------------------------------------------------------

    async def save_choice(
        self,
        platform: str,
        chat: str,
        thread_ref: str,
        *,
        message: str,
        reply_to: str | None,
        asker: str,
        question: str,
        papers: list[str],
    ) -> PaperChoice:
        """Keep a "which paper?" question under a new short random key (8 URL-safe
        characters; random, so a key of one chat cannot be guessed from another's)."""

        def write() -> PaperChoice:
            while True:
                key = secrets.token_urlsafe(6)
                with self._db.conn:
                    cur = self._db.conn.execute(
                        "insert into paper_choices(key, platform, chat, thread_ref, message, "
                        "reply_to, asker, question, papers, created_at) "
                        "values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) on conflict do nothing",
                        [
                            key,
                            platform,
                            chat,
                            thread_ref,
                            message,
                            reply_to,
                            asker,
                            question,
                            json.dumps(papers),
                            _now(),
                        ],
                    )
                if cur.rowcount == 1:
                    return PaperChoice(
                        key,
                        platform,
                        chat,
                        thread_ref,
                        message,
                        reply_to,
                        asker,
                        question,
                        tuple(papers),
                    )

        return await self.store.run(write)

    async def choice(self, key: str) -> PaperChoice | None:
        def read() -> PaperChoice | None:
            rows = list(self._db.query("select * from paper_choices where key = ?", [key]))
            return _choice(rows[0]) if rows else None

        return await self.store.run(read)

    async def latest_choice(self, platform: str, chat: str, thread_ref: str) -> PaperChoice | None:
        """The thread's most recent "which paper?" question, picked or not."""

        def read() -> PaperChoice | None:
            rows = list(
                self._db.query(
                    "select * from paper_choices where platform = ? and chat = ? and "
                    "thread_ref = ? order by created_at desc, rowid desc limit 1",
                    [platform, chat, thread_ref],
                )
            )
            return _choice(rows[0]) if rows else None

        return await self.store.run(read)

    async def claim_choice(self, key: str, arxiv_id: str, user: str) -> bool:
        """Record the pick of a "which paper?" question: True for the first pick only (one
        statement, so two presses at once cannot both win)."""

        def write() -> bool:
            with self._db.conn:
                cur = self._db.conn.execute(
                    "update paper_choices set chosen = ?, chosen_by = ?, chosen_at = ? "
                    "where key = ? and chosen is null",
                    [arxiv_id, user, _now(), key],
                )
            return cur.rowcount == 1

        return await self.store.run(write)

    async def release_choice(self, key: str, user: str) -> bool:
        """Undo `user`'s pick of a "which paper?" question whose answer could not be started,
        so that a later press (or a typed reply) still answers it. True when it was undone."""

        def write() -> bool:
            with self._db.conn:
                cur = self._db.conn.execute(
                    "update paper_choices set chosen = null, chosen_by = null, chosen_at = null "
                    "where key = ? and chosen_by = ?",
                    [key, user],
                )
            return cur.rowcount == 1

        return await self.store.run(write)

    # -- ratings and "seen here" -----------------------------------------------------------------

    async def vote(
        self,
        platform: str,
        chat: str,
        arxiv_id: str,
        user: str,
        *,
        profile: str,
        liked: bool,
        title: str,
        toggle: bool = True,
    ) -> Vote:
        """Record one person's 👍/👎 on a paper in a destination, atomically (one transaction
        on the store's thread, so concurrent presses never lose a vote). With `toggle` (a
        button), pressing the same verdict again withdraws it and the other one switches it;
        without (a command), the verdict is set."""

        def write() -> Vote:
            key = [platform, chat, arxiv_id, user]
            with self._db.conn:
                row = self._db.conn.execute(
                    "select liked from ratings where platform = ? and chat = ? and arxiv_id = ? "
                    "and user = ?",
                    key,
                ).fetchone()
                before = None if row is None else bool(row[0])
                now: bool | None = liked
                if before == liked:
                    now = None if toggle else liked
                if now is None:
                    self._db.conn.execute(
                        "delete from ratings where platform = ? and chat = ? and arxiv_id = ? "
                        "and user = ?",
                        key,
                    )
                elif now != before:
                    self._db.conn.execute(
                        "insert into ratings(platform, chat, arxiv_id, user, profile, liked, "
                        "title, at) values (?, ?, ?, ?, ?, ?, ?, ?) "
                        "on conflict(platform, chat, arxiv_id, user) do update set "
                        "profile = excluded.profile, liked = excluded.liked, "
                        "title = excluded.title, at = excluded.at",
                        [*key, profile, int(now), title, _stamp()],
                    )
                up, down = self._db.conn.execute(
                    "select coalesce(sum(liked), 0), coalesce(sum(1 - liked), 0) from ratings "
                    "where platform = ? and chat = ? and arxiv_id = ?",
                    [platform, chat, arxiv_id],
                ).fetchone()
            return Vote(now, int(up), int(down), now != before)

        return await self.store.run(write)

    async def votes(self, platform: str, chat: str, arxiv_id: str) -> tuple[int, int]:
        """(👍, 👎) on a paper in a destination."""

        def read() -> tuple[int, int]:
            up, down = self._db.conn.execute(
                "select coalesce(sum(liked), 0), coalesce(sum(1 - liked), 0) from ratings "
                "where platform = ? and chat = ? and arxiv_id = ?",
                [platform, chat, arxiv_id],
            ).fetchone()
            return int(up), int(down)

        return await self.store.run(read)

    async def profile_ratings(self, profile: str, limit: int | None = None) -> list[Rating]:
        """A profile's rated papers, most recently rated first, one verdict per paper: the
        balance of its votes over every destination that uses the profile (a tie says
        nothing and is left out)."""

        def read() -> list[Rating]:
            rows = self._db.conn.execute(
                "select arxiv_id, max(title), sum(liked) - sum(1 - liked) as net, max(at) as last "
                "from ratings where profile = ? group by arxiv_id having net != 0 "
                "order by last desc, arxiv_id limit ?",
                [profile, -1 if limit is None else limit],
            ).fetchall()
            return [Rating(r[0], r[1] or r[0], r[2] > 0) for r in rows]

        return await self.store.run(read)

    async def deep_dived(
        self, platform: str, chat: str, since: datetime, *, other_than: str | None = None
    ) -> dict[str, Seen]:
        """Papers whose deep dive was posted in a destination since `since` (a digest pick or
        an /analyze), by arXiv ID, the latest of each; `other_than` leaves one scope out (the
        day being delivered, so a re-run does not count its own deep dives as seen)."""

        def read() -> dict[str, Seen]:
            rows = self._db.conn.execute(
                "select key, updated_at, thread_ref from posts where platform = ? and chat = ? "
                "and status = ? and key like '%#0' and updated_at >= ? "
                "and (? is null or scope != ?) order by updated_at",
                [
                    platform,
                    chat,
                    PostStatus.SENT.value,
                    since.isoformat(timespec="seconds"),
                    other_than,
                    other_than,
                ],
            ).fetchall()
            out: dict[str, Seen] = {}
            for key, at, thread_ref in rows:
                arxiv_id = key.rsplit("#", 1)[0]
                out[arxiv_id] = Seen(arxiv_id, at[:10], thread_ref)
            return out

        return await self.store.run(read)

    # -- history: where each paper was posted, the week's votes (`/digest search`, `week`) -----

    async def paper_threads(
        self, platform: str, chat: str, since: datetime | None = None
    ) -> dict[str, PaperThread]:
        """Every paper posted in a destination (listed in a digest or deep-dived there), by
        arXiv ID, with the thread to link it to: the newest one holding its deep dive, else
        the newest digest that listed it. `since`: only threads started since then."""

        def read() -> dict[str, PaperThread]:
            rows = self._db.conn.execute(
                "select j.value, t.thread_ref, t.kind, t.scope, t.created_at, exists("
                "  select 1 from posts p where p.scope = t.scope and p.platform = t.platform"
                "  and p.chat = t.chat and substr(p.key, 1, length(j.value) + 1) = j.value || '#'"
                "  and p.status = ?) "
                "from threads t, json_each(t.papers) j "
                "where t.platform = ? and t.chat = ? and t.kind in ('digest', 'analysis') "
                "and (? is null or t.created_at >= ?)",
                [PostStatus.SENT.value, platform, chat]
                + [since.isoformat(timespec="seconds") if since else None] * 2,
            ).fetchall()
            best: dict[str, tuple[tuple[int, str, int], PaperThread]] = {}
            for arxiv_id, ref, kind, scope, created, dived in rows:
                # A digest's date is the day it covers; an analysis's, the day it was posted.
                day = scope.split(":", 1)[1] if kind == "digest" else (created or "")[:10]
                # Its deep dive first, then the newest; at the same moment, its own analysis.
                order = (int(dived), created or "", int(kind == "analysis"))
                if arxiv_id not in best or order > best[arxiv_id][0]:
                    best[arxiv_id] = (order, PaperThread(arxiv_id, day, ref, bool(dived)))
            return {k: v for k, (_, v) in best.items()}

        return await self.store.run(read)

    async def liked_since(
        self, platform: str, chat: str, since: datetime, limit: int
    ) -> list[Liked]:
        """Papers given a 👍 in a destination since `since`, most 👍 first (then fewest 👎,
        then most recent)."""

        def read() -> list[Liked]:
            rows = self._db.conn.execute(
                "select arxiv_id, max(title), sum(liked), sum(1 - liked), max(at) as last "
                "from ratings where platform = ? and chat = ? and at >= ? group by arxiv_id "
                "having sum(liked) > 0 order by sum(liked) desc, sum(1 - liked), last desc "
                "limit ?",
                [platform, chat, since.isoformat(timespec="microseconds"), limit],
            ).fetchall()
            return [Liked(r[0], r[1] or r[0], int(r[2]), int(r[3])) for r in rows]

        return await self.store.run(read)

    # -- interactive: dedupe, memory, rate limits ------------------------------------------------

    async def first_sight(self, event_key: str) -> bool:
        """True the first time an event key is seen, False for every redelivery."""

        def write() -> bool:
            with self._db.conn:
                cur = self._db.conn.execute(
                    "insert into events(event_key, seen_at) values (?, ?) on conflict do nothing",
                    [event_key, _now()],
                )
                return cur.rowcount == 1

        return await self.store.run(write)

    async def prune(self, older_than: timedelta = timedelta(days=3)) -> int:
        """Forget redelivery marks and rate-limit records past any use: Slack retries within
        minutes, Telegram keeps updates 24 h, the rate window is an hour. Returns rows removed."""

        def write() -> int:
            cutoff = (datetime.now(UTC) - older_than).isoformat(timespec="seconds")
            with self._db.conn:
                a = self._db.conn.execute("delete from events where seen_at < ?", [cutoff])
                b = self._db.conn.execute("delete from requests where at < ?", [cutoff])
                c = self._db.conn.execute(
                    "delete from journal where status = 'done' and finished_at < ?", [cutoff]
                )
            return a.rowcount + b.rowcount + c.rowcount

        return await self.store.run(write)

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
        await self.store.run(lambda: self._db["turns"].insert(record))

    async def turns(self, platform: str, chat: str, thread_ref: str, limit: int) -> list[Turn]:
        """The thread's last `limit` turns, oldest first."""

        def read() -> list[Turn]:
            rows = list(
                self._db.query(
                    "select role, text, arxiv_id from turns where platform = ? and chat = ? "
                    "and thread_ref = ? order by id desc limit ?",
                    [platform, chat, thread_ref, limit],
                )
            )
            return [Turn(r["role"], r["text"], r["arxiv_id"]) for r in reversed(rows)]

        return await self.store.run(read)

    async def count_request(self, user_key: str, window: timedelta, limit: int) -> int | None:
        """Record a request if the user is under `limit` in `window`; otherwise return the
        seconds until the oldest request in the window expires (and record nothing)."""

        def write() -> int | None:
            now = datetime.now(UTC)
            since = (now - window).isoformat(timespec="seconds")
            with self._db.conn:
                rows = self._db.conn.execute(
                    "select at from requests where user_key = ? and at >= ? order by at",
                    [user_key, since],
                ).fetchall()
                if len(rows) >= limit:
                    oldest = datetime.fromisoformat(rows[0][0])
                    return max(1, int((oldest + window - now).total_seconds()) + 1)
                self._db.conn.execute(
                    "insert into requests(user_key, at) values (?, ?)",
                    [user_key, now.isoformat(timespec="seconds")],
                )
            return None

        return await self.store.run(write)

    # -- team state: profile bindings, their history, subscriptions ------------------------------

    async def binding(self, platform: str, chat: str) -> ProfileBinding:
        """The chat's profile binding (the default profile when none was set)."""

        def read() -> ProfileBinding:
            rows = list(
                self._db.query(
                    "select base, edits from chat_profiles where platform = ? and chat = ?",
                    [platform, chat],
                )
            )
            if not rows:
                return ProfileBinding(platform, chat)
            return _binding(platform, chat, rows[0]["base"], rows[0]["edits"])

        return await self.store.run(read)

    async def bindings(self) -> list[ProfileBinding]:
        def read() -> list[ProfileBinding]:
            rows = self._db.query(
                "select platform, chat, base, edits from chat_profiles order by platform, chat"
            )
            return [_binding(r["platform"], r["chat"], r["base"], r["edits"]) for r in rows]

        return await self.store.run(read)

    async def change_binding(
        self, new: ProfileBinding, user: str, field: str, old: str, shown: str
    ) -> ProfileChange:
        """Store a chat's new binding and the change (with the binding before it), at once."""

        def write() -> ProfileChange:
            with self._db.conn:
                rows = self._db.conn.execute(
                    "select base, edits from chat_profiles where platform = ? and chat = ?",
                    [new.platform, new.chat],
                ).fetchall()
                before = (
                    _binding(new.platform, new.chat, rows[0][0], rows[0][1])
                    if rows
                    else ProfileBinding(new.platform, new.chat)
                )
                cur = self._db.conn.execute(
                    "insert into profile_changes(platform, chat, user, field, old, new, before, "
                    "undone, at) values (?, ?, ?, ?, ?, ?, ?, 0, ?)",
                    [
                        new.platform,
                        new.chat,
                        user,
                        field,
                        old,
                        shown,
                        json.dumps({"base": before.base, "edits": before.edited}),
                        _now(),
                    ],
                )
                self._write_binding(new)
                return ProfileChange(cur.lastrowid or 0, user, field, old, shown, before)

        return await self.store.run(write)

    async def undo_change(self, platform: str, chat: str) -> ProfileChange | None:
        """Take back the chat's last change not yet undone: its binding before is restored."""

        def write() -> ProfileChange | None:
            with self._db.conn:
                rows = self._db.conn.execute(
                    "select id, user, field, old, new, before from profile_changes "
                    "where platform = ? and chat = ? and undone = 0 order by id desc limit 1",
                    [platform, chat],
                ).fetchall()
                if not rows:
                    return None
                id_, user, field, old, new, before_json = rows[0]
                before = json.loads(before_json)
                binding = ProfileBinding(
                    platform, chat, before["base"], tuple(before["edits"].items())
                )
                self._db.conn.execute("update profile_changes set undone = 1 where id = ?", [id_])
                self._write_binding(binding)
                return ProfileChange(id_, user, field, old, new, binding)

        return await self.store.run(write)

    def _write_binding(self, binding: ProfileBinding) -> None:
        self._db.conn.execute(
            "insert into chat_profiles(platform, chat, base, edits, updated_at) "
            "values (?, ?, ?, ?, ?) on conflict(platform, chat) do update set "
            "base = excluded.base, edits = excluded.edits, updated_at = excluded.updated_at",
            [
                binding.platform,
                binding.chat,
                binding.base,
                json.dumps(binding.edited, ensure_ascii=False),
                _now(),
            ],
        )

    async def set_subscription(self, platform: str, chat: str, active: bool, user: str) -> bool:
        """Subscribe or unsubscribe a chat; False when it already was so."""

        def write() -> bool:
            with self._db.conn:
                rows = self._db.conn.execute(
                    "select active from subscriptions where platform = ? and chat = ?",
                    [platform, chat],
                ).fetchall()
                if rows and bool(rows[0][0]) == active:
                    return False
                self._db.conn.execute(
                    "insert into subscriptions(platform, chat, active, user, at) "
                    "values (?, ?, ?, ?, ?) on conflict(platform, chat) do update set "
                    "active = excluded.active, user = excluded.user, at = excluded.at",
                    [platform, chat, int(active), user, _now()],
                )
                return True

        return await self.store.run(write)

    async def subscriptions(self) -> list[Subscription]:
        def read() -> list[Subscription]:
            rows = self._db.query(
                "select platform, chat, active from subscriptions order by platform, at, chat"
            )
            return [Subscription(r["platform"], r["chat"], bool(r["active"])) for r in rows]

        return await self.store.run(read)
