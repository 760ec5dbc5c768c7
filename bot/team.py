"""The team surface: which research profile each chat uses, who gets the daily digest, and
`/digest` (help, subscribe, unsubscribe, profile show/change/use/reset/undo, like/dislike,
search, week) as plain values.

Nothing here posts. `Team.command` reads a `/digest` line and returns a `Reply`: the lines for
the requester and, for a change, the one announcement the assistant posts in the channel
through the ledger (who made it, the old value and the new). A chat's profile is a base
profile from the config ("default" or a [profiles.NAME]) plus the fields edited in that chat
(`bot.chatstore.ProfileBinding`); `profile_for` resolves it into the core's `ResearchProfile`,
which the pipeline takes as an argument. Limits are the config's (digest_core.config), so a
value refused in the file is refused in chat with one line naming the limit.

`search` and `week` read a chat's history: the papers posted there (the bot's threads), the
core's full-text index (`Store.search`) and scores, and the chat's 👍. They come back as a
`bot.history.Listing` whose titles name threads; the assistant adds the links and posts it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from bot.channels.base import Channel
from bot.chatstore import ChatStore, PaperThread, ProfileBinding
from bot.history import Line, Listing, short
from bot.service import Destination
from bot.settings import AppSettings as Settings
from digest_core.config import (
    DEFAULT_PROFILE,
    LANGUAGES,
    MAX_FOCUS_CHARS,
    MAX_PICKS,
    MAX_TOPIC_CHARS,
    MAX_TOPICS,
)
from digest_core.models import ResearchProfile
from digest_core.render.parse import one_line, truncate
from digest_core.search import BadQuery, fts_query

log = logging.getLogger(__name__)

EDITABLE = ("topics", "focus", "language", "threshold", "picks")
SEARCH_RESULTS = 8  # papers a search shows at most
WEEK_DAYS = 7
NOT_ADMIN = "Sorry, only this bot's admins can change the digest here."

HELP_COMMANDS = """Commands:
/digest help: this message
/digest subscribe [PROFILE] · /digest unsubscribe: start or stop the daily digest here
/digest profile: show this channel's profile
/digest profile topics A, B, C · focus TEXT · language zh|en · threshold 0-100 · picks 1-15
/digest profile use NAME · /digest profile reset · /digest profile undo
/digest like ID · /digest dislike ID: rate a paper for this channel's profile
/digest search WORDS: find papers posted here before (English or 中文)
/digest week: post this channel's roundup of the last 7 days"""


@dataclass
class Reply:
    """What a /digest line came to: `lines` for the requester; `announce` for the channel;
    `rate` a (paper, liked) for the assistant's rating flow (`Assistant.rate`)."""

    lines: list[str] = field(default_factory=list)
    announce: str | None = None
    rate: tuple[str, bool] | None = None  # (arXiv ID, liked)
    listing: Listing | None = None  # for the requester, after `lines` (search results)
    post: Listing | None = None  # for the channel, once (the week's roundup)


def resolve(settings: Settings, binding: ProfileBinding) -> ResearchProfile:
    """A chat's profile: its base with its edits. A base no longer in the config falls back to
    the default profile (the binding is kept, so restoring the table restores it)."""
    try:
        base = settings.research_profile(binding.base)
    except KeyError:
        log.warning(
            "%s %s: profile %r is not in the config; using the default",
            binding.platform,
            binding.chat,
            binding.base,
        )
        base = settings.research_profile()
    edits = binding.edited
    if not edits:
        return base
    values = {k: tuple(v) if k == "topics" else v for k, v in edits.items() if k in EDITABLE}
    return replace(base, **values, key=f"{base.key}*{binding.platform}:{binding.chat}")


def describe(profile: ResearchProfile) -> str:
    """One line: what a profile is (for `profiles`, `/digest help` and `/digest profile`)."""
    return (
        f"{profile.name} · language {profile.language} · threshold {profile.threshold}"
        f" · picks {profile.picks} · topics: {', '.join(profile.topics)}"
    )


def label(profile: ResearchProfile) -> str:
    """A profile's name as people use it: the config name, or an edited copy of one."""
    base, _, where = profile.key.partition("*")
    return f"{base} (edited here)" if where else base


class Team:
    def __init__(self, settings: Settings, chat: ChatStore) -> None:
        self.settings = settings
        self.chat = chat

    # -- reading ---------------------------------------------------------------------------------

    async def profile_for(self, platform: str, chat: str) -> ResearchProfile:
        return resolve(self.settings, await self.chat.binding(platform, chat))

    def configured(self, platform: str, chat: str) -> bool:
        if platform == "slack":
            return chat in self.settings.slack.channels
        if platform == "telegram":
            return chat in self.settings.telegram.chats
        return False

    async def subscribed(self, platform: str, chat: str) -> bool:
        for sub in await self.chat.subscriptions():
            if (sub.platform, sub.chat) == (platform, chat):
                return sub.active
        return self.configured(platform, chat)

    async def destinations(
        self, configured: Sequence[Destination], channels: Mapping[str, Channel]
    ) -> list[Destination]:
        """The daily digest's destinations: the configured ones, less those unsubscribed from
        chat, plus those subscribed from chat (on a platform with a channel)."""
        subs = {(s.platform, s.chat): s.active for s in await self.chat.subscriptions()}
        out = [d for d in configured if subs.get((d.channel.platform, d.chat), True)]
        have = {(d.channel.platform, d.chat) for d in out}
        for (platform, chat), active in subs.items():
            channel = channels.get(platform)
            if active and channel is not None and (platform, chat) not in have:
                out.append(Destination(channel, chat))
                have.add((platform, chat))
        return out

    async def plan(
        self, destinations: Sequence[Destination], only: str | None = None
    ) -> list[tuple[Destination, ResearchProfile]]:
        """Each destination with the profile its digest is built for (`only`: one named
        profile for all; KeyError when it is unknown)."""
        if only is not None:
            profile = self.settings.research_profile(only)
            return [(d, profile) for d in destinations]
        return [(d, await self.profile_for(d.channel.platform, d.chat)) for d in destinations]

    # -- /digest ---------------------------------------------------------------------------------

    async def command(self, platform: str, chat: str, user: str, who: str, text: str) -> Reply:
        """One /digest line. `user` is the platform's user ID (for the admin list), `who`
        how the announcement names them."""
        words = text.strip().split(None, 1)
        verb = words[0].lower() if words else "help"
        rest = words[1].strip() if len(words) > 1 else ""
        if verb == "help":
            return Reply([await self.help(platform, chat)])
        if verb in ("like", "dislike"):
            if not rest:
                return Reply([f"Usage: /digest {verb} ARXIV_ID (e.g. /digest {verb} 2602.14941)"])
            return Reply(rate=(rest.split()[0], verb == "like"))
        if verb == "search":
            return await self.search(platform, chat, rest)
        if verb == "week":
            roundup = await self.week(platform, chat)
            if roundup is None:
                return Reply([f"Nothing was posted here in the last {WEEK_DAYS} days."])
            return Reply(post=roundup)
        if verb == "profile":
            return await self._profile(platform, chat, user, who, rest)
        if verb in ("subscribe", "unsubscribe"):
            if not self.settings.team.may_change(platform, user):
                return Reply([NOT_ADMIN])
            if verb == "subscribe":
                return await self._subscribe(platform, chat, user, who, rest)
            return await self._unsubscribe(platform, chat, user, who)
        return Reply([f"Unknown command /digest {verb[:40]}; try /digest help."])

    async def help(self, platform: str, chat: str) -> str:
        profile = await self.profile_for(platform, chat)
        cfg = self.settings.digest
        if not await self.subscribed(platform, chat):
            state = "does not get the daily digest (/digest subscribe)"
        elif cfg.time:
            state = f"gets the digest daily at {cfg.time} {cfg.timezone}"
        else:
            state = "is subscribed, but this deployment has no daily run (DIGEST_TIME=off)"
        return (
            f"This channel {state}.\n"
            f"Profile: {label(profile)}: {describe(profile)}\n\n{HELP_COMMANDS}"
        )

    async def _profile(self, platform: str, chat: str, user: str, who: str, rest: str) -> Reply:
        words = rest.split(None, 1)
        what = words[0].lower() if words else ""
        value = words[1].strip() if len(words) > 1 else ""
        if not what:
            profile = await self.profile_for(platform, chat)
            return Reply(
                [f"Profile: {label(profile)}\n{describe(profile)}\nfocus: {profile.focus}"]
            )
        if what not in (*EDITABLE, "use", "reset", "undo"):
            return Reply(
                [
                    f"Unknown profile field {what[:40]!r}: use topics, focus, language, "
                    "threshold, picks, use, reset or undo."
                ]
            )
        if not self.settings.team.may_change(platform, user):
            return Reply([NOT_ADMIN])
        if what == "undo":
            return await self._undo(platform, chat, who)
        binding = await self.chat.binding(platform, chat)
        before = resolve(self.settings, binding)
        if what == "reset":
            new = ProfileBinding(platform, chat)
            return await self._change(new, user, who, "profile", label(before), DEFAULT_PROFILE)
        if what == "use":
            if not value:
                return Reply([f"Usage: /digest profile use NAME ({self._known()})."])
            name = value.split()[0]
            if name not in self.settings.profile_names():
                return Reply(
                    [f"Unknown profile {name[:40]!r}: known profiles are {self._known()}."]
                )
            new = ProfileBinding(platform, chat, name)
            return await self._change(new, user, who, "profile", label(before), name)
        try:
            parsed = parse_field(what, value)
        except BadValue as exc:
            return Reply([str(exc)])
        edits = {**binding.edited, what: list(parsed) if what == "topics" else parsed}
        new = ProfileBinding(platform, chat, binding.base, tuple(edits.items()))
        return await self._change(new, user, who, what, _shown(before, what), _shown_value(parsed))

    async def _change(
        self, new: ProfileBinding, user: str, who: str, what: str, old: str, shown: str
    ) -> Reply:
        await self.chat.change_binding(new, user, what, old, shown)
        return Reply(["Done."], announce=f"🛠 {who} changed this channel's {what}: {old} → {shown}")

    async def _undo(self, platform: str, chat: str, who: str) -> Reply:
        undone = await self.chat.undo_change(platform, chat)
        if undone is None:
            return Reply(["Nothing to undo: this channel's profile has not been changed."])
        return Reply(
            ["Done."],
            announce=(
                f"↩️ {who} undid the last change of this channel's {undone.field}:"
                f" {undone.new} → {undone.old}"
            ),
        )

    async def _subscribe(self, platform: str, chat: str, user: str, who: str, name: str) -> Reply:
        name = name.split()[0] if name else ""
        if name and name not in self.settings.profile_names():
            return Reply([f"Unknown profile {name[:40]!r}: known profiles are {self._known()}."])
        already = await self.subscribed(platform, chat)
        binding = await self.chat.binding(platform, chat)
        switch = bool(name) and binding != ProfileBinding(platform, chat, name)
        if already and not switch:
            return Reply(["This channel already gets the daily digest."])
        parts = []
        if switch:
            before = label(resolve(self.settings, binding))
            await self.chat.change_binding(
                ProfileBinding(platform, chat, name), user, "profile", before, name
            )
            parts.append(f"profile: {before} → {name}")
        if not already:
            await self.chat.set_subscription(platform, chat, True, user)
            cfg = self.settings.digest
            when = f" (daily at {cfg.time} {cfg.timezone})" if cfg.time else ""
            parts.insert(0, f"daily digest{when}: not subscribed → subscribed")
        return Reply(["Done."], announce=f"📬 {who} changed this channel's " + "; ".join(parts))

    async def _unsubscribe(self, platform: str, chat: str, user: str, who: str) -> Reply:
        if not await self.subscribed(platform, chat):
            return Reply(["This channel does not get the daily digest."])
        await self.chat.set_subscription(platform, chat, False, user)
        return Reply(
            ["Done."],
            announce=f"📭 {who} changed this channel's daily digest: subscribed → not subscribed",
        )

    def _known(self) -> str:
        return ", ".join(self.settings.profile_names())

    # -- history: search and the week's roundup --------------------------------------------------

    async def search(self, platform: str, chat: str, words: str) -> Reply:
        """`/digest search WORDS`: the papers posted in this chat that match, best first."""
        try:
            query = fts_query(words)
        except BadQuery as exc:
            return Reply([str(exc)])
        posted = await self.chat.paper_threads(platform, chat)
        shown = truncate(one_line(words), 60)
        if not posted:
            return Reply([f"No paper matches “{shown}”: nothing has been posted here yet."])
        profile = await self.profile_for(platform, chat)
        hits = await self.chat.store.search(
            query,
            among={k: v.date for k, v in posted.items()},
            fingerprint=profile.fingerprint,
            limit=SEARCH_RESULTS + 1,
        )
        if not hits:
            return Reply([f"No paper posted here matches “{shown}”."])
        more = len(hits) > SEARCH_RESULTS
        hits = hits[:SEARCH_RESULTS]
        head = (
            f"🔎 {'The best ' if more else ''}{len(hits)} paper(s) posted here matching “{shown}”:"
        )
        lines = [Line(head)]
        for i, hit in enumerate(hits, start=1):
            lines.append(_paper_line(i, hit.title, hit.arxiv_id, hit.score, posted[hit.arxiv_id]))
        return Reply(listing=Listing(tuple(lines), tuple(h.arxiv_id for h in hits)))

    async def week(self, platform: str, chat: str, now: datetime | None = None) -> Listing | None:
        """This chat's roundup of the last seven days: the papers posted here with the best
        scores for its profile, and those given the most 👍 here. None for an empty week."""
        now = now or datetime.now(UTC)
        since = now - timedelta(days=WEEK_DAYS)
        top = self.settings.roundup.top
        posted = await self.chat.paper_threads(platform, chat, since)
        liked = await self.chat.liked_since(platform, chat, since, top)
        if not posted and not liked:
            return None
        profile = await self.profile_for(platform, chat)
        scores = await self.chat.store.latest_scores(list(posted), profile.fingerprint)
        best = sorted(
            (aid for aid in posted if aid in scores),
            key=lambda aid: (scores[aid], posted[aid].deep_dive, posted[aid].date),
            reverse=True,
        )[:top]
        titles = await self.chat.store.titles([*best, *(x.arxiv_id for x in liked)])
        tz = self.settings.digest.tz
        first, last = since.astimezone(tz).date(), now.astimezone(tz).date()
        dived = sum(1 for p in posted.values() if p.deep_dive)
        lines = [
            Line(
                f"📅 This week here ({first:%b %d} – {last:%b %d}): {len(posted)} paper(s)"
                f" posted, {dived} deep dive(s)."
            )
        ]
        if best:
            lines.append(Line(f"Top by score for {label(profile)}:"))
            for i, aid in enumerate(best, start=1):
                lines.append(_paper_line(i, titles.get(aid, aid), aid, scores[aid], posted[aid]))
        if liked:
            lines.append(Line("Top by 👍 here:"))
            # A paper posted before the week and liked during it still links to its thread.
            earlier = posted
            if any(x.arxiv_id not in posted for x in liked):
                earlier = await self.chat.paper_threads(platform, chat)
            for i, x in enumerate(liked, start=1):
                where = earlier.get(x.arxiv_id)
                votes = f" · 👍 {x.up}" + (f" 👎 {x.down}" if x.down else "")
                lines.append(
                    Line(
                        f"{i}. ",
                        short(titles.get(x.arxiv_id) or x.title),
                        f"{votes} · arXiv:{x.arxiv_id}",
                        thread=where.thread_ref if where else None,
                    )
                )
        papers = tuple(dict.fromkeys([*best, *(x.arxiv_id for x in liked)]))
        return Listing(tuple(lines), papers)


def _paper_line(i: int, title: str, arxiv_id: str, score: int | None, where: PaperThread) -> Line:
    """`1. <title> · score 85 · 2026-01-23 · arXiv:ID`, the title linked to its thread."""
    scored = f" · score {score}" if score is not None else ""
    return Line(
        f"{i}. ",
        short(title),
        f"{scored} · {where.date} · arXiv:{arxiv_id}",
        thread=where.thread_ref,
    )


class BadValue(ValueError):
    """A value `/digest profile` cannot take; the message is the one line to answer with."""


def parse_field(what: str, value: str) -> object:
    """The value of `/digest profile FIELD VALUE`; BadValue says why not, in one line."""
    if not value:
        raise BadValue(f"/digest profile {what} needs a value; see /digest help.")
    if what == "topics":
        topics = [t.strip() for t in value.replace("，", ",").split(",")]
        topics = [t for t in topics if t]
        if not topics:
            raise BadValue(
                f"Topics cannot be empty: give 1-{MAX_TOPICS} topics separated by commas."
            )
        if len(topics) > MAX_TOPICS:
            raise BadValue(f"At most {MAX_TOPICS} topics, please (you gave {len(topics)}).")
        long = next((t for t in topics if len(t) > MAX_TOPIC_CHARS), None)
        if long is not None:
            raise BadValue(
                f"A topic can be at most {MAX_TOPIC_CHARS} characters"
                f" ({long[:20]!r}… has {len(long)})."
            )
        return tuple(dict.fromkeys(topics))  # the same topic twice counts once
    if what == "focus":
        if len(value) > MAX_FOCUS_CHARS:
            raise BadValue(
                f"The focus can be at most {MAX_FOCUS_CHARS} characters (yours has {len(value)})."
            )
        return " ".join(value.split())
    if what == "language":
        if value.lower() not in LANGUAGES:
            raise BadValue("The language must be zh or en.")
        return value.lower()
    low, high = (0, 100) if what == "threshold" else (1, MAX_PICKS)
    try:
        number = int(value)
    except ValueError:
        number = None
    if number is None or not low <= number <= high:
        raise BadValue(f"The {what} must be a whole number from {low} to {high}.")
    return number


def _shown_value(value: object) -> str:
    if isinstance(value, tuple | list):
        return ", ".join(str(v) for v in value)
    return str(value)


def _shown(profile: ResearchProfile, what: str) -> str:
    return _shown_value(getattr(profile, what))
