"""Every outside service at once, for tests that run the whole product.

`World` starts the Hugging Face, arXiv and LLM fakes (and Slack and Telegram when asked) and
gives the environment the contract's variables would hold to point digestbot at them. The
LLM fake answers like a research assistant would: scores for every paper it is asked about,
four-section deep dives as JSON, and plain-text answers, all derived from the request, so
tests can assert what the bot asked and what it did with the answer.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .llm import FakeLLM
from .papers import FakeArxiv, FakeHF

ROOT = Path(__file__).resolve().parent.parent.parent
CONFIG = ROOT / "config" / "digestbot.toml"
TEST_KEY = "sk-test-WORLD-0123456789abcdef"

ON_TOPIC = ("diffusion", "restoration", "super-resolution", "flow matching", "denois", "generation")


def topical_score(title: str, abstract: str) -> int:
    """A deterministic stand-in for the model's judgement."""
    text = f"{title} {abstract}".lower()
    hits = sum(1 for word in ON_TOPIC if word in text)
    return min(95, 30 + 30 * hits)


def _user_text(body: dict[str, Any]) -> str:
    return "\n".join(str(m.get("content", "")) for m in body["messages"] if m["role"] == "user")


def _system(body: dict[str, Any]) -> str:
    return next((str(m["content"]) for m in body["messages"] if m["role"] == "system"), "")


def research_responder(
    score: Callable[[str, str], object] = topical_score,
) -> Callable[[dict[str, Any]], str | dict[str, Any]]:
    """A responder for FakeLLM: scores, deep dives and answers from what the request holds."""

    def respond(body: dict[str, Any]) -> str:
        system, user = _system(body), _user_text(body)
        if "rate research papers" in system:
            block = re.search(r"<papers>\n(.*)\n</papers>", user, re.DOTALL)
            papers = json.loads(block.group(1)) if block else []
            scores = [
                {
                    "id": p["id"],
                    "score": score(p["title"], p["abstract"]),
                    "reason": f"about {p['title'][:40]}",
                }
                for p in papers
            ]
            return json.dumps({"scores": scores})
        if "You write a deep dive" in system:
            title = re.search(r"Title: (.*)", user)
            name = title.group(1) if title else "the paper"
            given = re.search(r"Text given: (.*)", user)
            return json.dumps(
                {
                    "contribution": f"**{name}** proposes something new.",
                    "methodology": f"Built on the text given ({given.group(1) if given else '?'}); relates to diffusion.",
                    "takeaway": "- Try it on restoration.\n- Reuse the prior.",
                    "limitations": "Costly at high resolution.",
                },
                ensure_ascii=False,
            )
        question = re.findall(r"<question>\n(.*?)\n</question>", user, re.DOTALL)
        return f"Answer to: {question[-1] if question else '?'} (Sec. 1)"

    return respond


def data_block(tag: str, text: str) -> str | None:
    """The content of a <tag>…</tag> block of a prompt."""
    found = re.search(rf"<{tag}>\n(.*?)\n</{tag}>", text, re.DOTALL)
    return found.group(1) if found else None


def profile_responder(body: dict[str, Any]) -> str:
    """Scores by the profile's topics found in a paper; deep dives naming the profile's first
    topic, in the language the system prompt asks for."""
    system = str(body["messages"][0]["content"])
    user = "\n".join(str(m["content"]) for m in body["messages"] if m["role"] == "user")
    profile = json.loads(data_block("profile", user) or '{"topics": []}')
    topics = [t.lower() for t in profile["topics"]]
    if "rate research papers" in system:
        papers = json.loads(data_block("papers", user) or "[]")
        scores = []
        for p in papers:
            text = f"{p['title']} {p['abstract']}".lower()
            hits = sum(1 for t in topics if t.split()[0] in text)  # "diffusion models": diffusion
            scores.append({"id": p["id"], "score": min(95, 30 + 35 * hits), "reason": "fits"})
        return json.dumps({"scores": scores})
    language = "en" if "Write in English" in system else "zh"
    title = re.search(r"Title: (.*)", user)
    return json.dumps(
        {
            "verdict": f"[{language}] on {topics[0] if topics else '?'}",
            "contribution": f"**{title.group(1) if title else '?'}** [{language}]",
            "methodology": f"relates to {topics[0] if topics else '?'}",
            "takeaway": "- try it",
            "limitations": "costly",
        },
        ensure_ascii=False,
    )


_TEMPLATE: list[Path] = []  # this process's migrated empty database, made once


async def migrated_database(path: Path) -> Path:
    """Put at `path` a copy of an empty database that today's migrations (the core's and the
    chat store's) made, as every start after the first finds it, unless a file is there
    already; returns `path`.

    Migrating a new file costs ~17 CPU ms, and the fast layer opened ~240 of them (4 CPU
    seconds a run). The migrations themselves, from nothing and from an older database, are
    tested where that is the subject: test_store, test_chatstore, and `World(new_db=True)`."""
    if not _TEMPLATE:
        from bot.chatstore import open_store

        # In the test run's folder (tests/conftest.py removes it at the end); outside a run,
        # removed when this process exits (forked children leave it to this process).
        shared = os.environ.get("DIGESTBOT_TESTS_FOLDER")
        folder = Path(tempfile.mkdtemp(prefix="digestbot-template-", dir=shared))
        if shared is None:
            owner = os.getpid()
            atexit.register(lambda: os.getpid() == owner and shutil.rmtree(folder, True))
        store = await open_store(folder / "migrated.db")
        await store.close()  # the last connection closed: the WAL is folded into the file
        _TEMPLATE.append(folder / "migrated.db")
    return _copy_unless_there(_TEMPLATE[0], path)


def _copy_unless_there(source: Path, path: Path) -> Path:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, path)
    return path


@dataclass
class World:
    """The fakes, started and stopped together. The database at `db` starts as a migrated,
    empty one (see `migrated_database`); `new_db=True` leaves no file, for tests of a first
    start."""

    tmp: Path
    llm_key: str | None = TEST_KEY
    hf: FakeHF = field(default_factory=FakeHF.with_fixture_days)
    arxiv: FakeArxiv = field(default_factory=FakeArxiv.with_fixture_entries)
    llm: FakeLLM = field(default_factory=lambda: FakeLLM(responder=research_responder()))
    extra: dict[str, str] = field(default_factory=dict)
    new_db: bool = False

    async def __aenter__(self) -> World:
        if not self.new_db:
            await migrated_database(self.db)
        for fake in (self.hf, self.arxiv, self.llm):
            await fake.start()
        self.config = self.tmp / "digestbot.toml"
        self.config.write_text(fast_config(), encoding="utf-8")
        return self

    async def __aexit__(self, *exc: object) -> None:
        for fake in (self.hf, self.arxiv, self.llm):
            await fake.stop()

    @property
    def db(self) -> Path:
        return self.tmp / "data" / "digestbot.db"

    def env(self, **overrides: str) -> dict[str, str]:
        env = {
            "DIGEST_CONFIG": str(self.config),
            "DIGEST_DB": str(self.db),
            "HF_ENDPOINT": self.hf.url,
            "ARXIV_API_URL": self.arxiv.api_url,
            "ARXIV_URL": self.arxiv.url,
            "OPENAI_BASE_URL": f"{self.llm.url}/v1",
            "DIGEST_LLM_MODEL": "gpt-test",
        }
        if self.llm_key:
            env["OPENAI_API_KEY"] = self.llm_key
        env.update(self.extra)
        env.update(overrides)
        return env

    def settings(self, **overrides: str) -> Any:
        from bot.settings import load_settings

        return load_settings(env=self.env(**overrides))


def fast_config(**replace: str) -> str:
    """The committed config with test timings: arXiv spacing, deadlines and retries kept short.
    `replace` maps a key line's start (e.g. "threshold =") to its new, uncommented text."""
    text = CONFIG.read_text(encoding="utf-8")
    changes = {
        "arxiv_min_interval_seconds =": "arxiv_min_interval_seconds = 0.05",
        "timeout_seconds = 120": "timeout_seconds = 5",
        "timeout_seconds = 30": "timeout_seconds = 5",
        "max_retries = 2": "max_retries = 1",
        "retries = 2": "retries = 1",
        # The retry policy's first wait: a retry is still a pause (the checks that it waited
        # read settings.retry), only not half a second of an idle test.
        "backoff_base_seconds =": "backoff_base_seconds = 0.05",
        # Tests state the schedule they reason about: 09:00 in Shanghai, waiting until 13:00.
        "time =": 'time = "09:00"',
        "wait_until =": 'wait_until = "13:00"',
        **replace,
    }
    lines = []
    for line in text.splitlines():
        # The committed file shows each key commented out with its default.
        bare = line.removeprefix("# ")
        for start, new in changes.items():
            if bare.startswith(start):
                line = new
                break
        lines.append(line)
    return "\n".join(lines) + "\n"


async def run_cli(
    args: list[str], env: dict[str, str], stdin: bytes | None = None, *, fresh: bool = False
) -> tuple[int, str, str]:
    """Run `digestbot ARGS` in a child process, as a user would, with only `env` (plus PATH).

    The child is forked from a parent that has already imported the CLI (fakes/zygote.py):
    a process of its own in every way a run can see, minus a CPU-second of imports.
    `fresh=True` starts a new interpreter instead (`python -m bot.cli`), for tests whose
    point is the start-up itself."""
    import asyncio
    import signal

    full_env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"), **env}
    if fresh:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bot.cli",
            *args,
            env=full_env,
            cwd=str(ROOT),
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate(stdin)
        return proc.returncode or 0, out.decode(), err.decode()
    run = Path(tempfile.mkdtemp(prefix="digestbot-cli-"))
    if stdin is not None:
        (run / "stdin").write_bytes(stdin)
    zygote = await asyncio.to_thread(_zygote)
    request = {"dir": str(run), "args": args, "env": full_env, "cwd": str(ROOT)}
    assert zygote.stdin is not None
    zygote.stdin.write(json.dumps(request).encode() + b"\n")
    zygote.stdin.flush()
    try:
        # The code file is another process's doing: nothing to wait on but the file.
        while not (run / "code").exists():  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    except BaseException:  # the test gave up (a timeout, cancellation): so does the run
        pid = run / "pid"
        if pid.exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid.read_text()), signal.SIGKILL)
        raise
    try:
        code = int((run / "code").read_text())
        out = (run / "stdout").read_text(encoding="utf-8", errors="replace")
        err = (run / "stderr").read_text(encoding="utf-8", errors="replace")
    finally:
        shutil.rmtree(run, ignore_errors=True)
    return code, out, err


_ZYGOTE: subprocess.Popen[bytes] | None = None


def _stop_zygote(zygote: subprocess.Popen[bytes]) -> None:
    """End of the test process: EOF ends the parent once its runs have ended."""
    assert zygote.stdin is not None
    zygote.stdin.close()
    try:
        zygote.wait(10)
    except subprocess.TimeoutExpired:
        zygote.kill()


def _zygote() -> subprocess.Popen[bytes]:
    """This test process's CLI parent (started once, with the environment a CLI run gets)."""
    global _ZYGOTE

    if _ZYGOTE is None or _ZYGOTE.poll() is not None:
        env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp")}
        _ZYGOTE = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("zygote.py"))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=str(ROOT),
            env=env,
        )
        assert _ZYGOTE.stdout is not None
        ready = _ZYGOTE.stdout.readline()
        if ready.strip() != b"ready":
            raise RuntimeError("the CLI test parent (tests/fakes/zygote.py) did not start")
        atexit.register(_stop_zygote, _ZYGOTE)
    return _ZYGOTE


@contextlib.asynccontextmanager
async def platform_channels(slack: Any, tg: Any, language: str = "en") -> AsyncIterator[Any]:
    """The real SlackChannel and TelegramChannel (with Telegram's group pacing lifted) pointed
    at a started FakeSlack and FakeTelegram; both closed at the end. Yields (slack, telegram)."""
    from bot.channels.slack import SlackChannel, make_slack_client
    from bot.channels.telegram import TelegramChannel, make_bot, make_rate_limiter

    slack_channel = SlackChannel(make_slack_client(slack.token, slack.url + "/api/"), language)
    limiter = make_rate_limiter(group_max_rate=100_000, overall_max_rate=100_000)
    bot = make_bot(tg.token, f"{tg.url}/bot", rate_limiter=limiter)
    await bot.initialize()
    try:
        yield slack_channel, TelegramChannel(bot, language)
    finally:
        await slack_channel.aclose()
        await bot.shutdown()
