"""Full-text search over past papers: what the index holds, and how a person's words become
an FTS5 query. Pure functions and values; the index itself lives in the store
(`Store.search`, the `search_docs` table and its `search_docs_fts` index, migration m050).

Why this tokenization (measured on SQLite 3.40, see tests/test_history.py):

- `unicode61` (the default) keeps a run of Chinese characters as one token, so "扩散模型"
  never matches "扩散模型用于视频生成";
- `trigram` matches Chinese substrings of three characters or more but nothing shorter
  ("扩散", "视频" find nothing), and in English it matches inside words ("GAN" finds "organ",
  "art" finds "start");
- so the index uses `porter unicode61 remove_diacritics 2` (English words, stemmed:
  "generations" finds "generation") over text in which every CJK character stands alone.
  A Chinese word in a query becomes a phrase of its characters ("扩 散"), which matches
  exactly where those characters stand together, whatever the length, and ranks by BM25
  like any other term.

A query is never FTS syntax: each word is quoted as a phrase, so quotes, `*`, `-`,
parentheses, `NEAR`, `AND`, `OR` and column filters are plain text, and every word must match.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# The tokenizer of the index (sqlite-utils `enable_fts(tokenize=...)`).
TOKENIZER = "porter unicode61 remove_diacritics 2"
# bm25 weights of the indexed columns, in order: arxiv_id, title, reasons, dive. A word in
# the title says more about a paper than the same word somewhere in its deep dive.
COLUMNS = ("arxiv_id", "title", "reasons", "dive")
WEIGHTS = (10.0, 5.0, 2.0, 1.0)

MAX_QUERY_CHARS = 200
MAX_QUERY_WORDS = 12

# CJK ideographs (with extension A and compatibility), kana, Hangul syllables, fullwidth forms
# of letters are left as they are.
_CJK = re.compile(r"([\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af])")
_WORDISH = re.compile(r"[^\W_]")  # a letter or a digit: what the tokenizer keeps


class BadQuery(ValueError):
    """Search words that cannot be searched for; the message is the one line to answer with."""


@dataclass(frozen=True)
class SearchHit:
    """One paper found: its place in the ranking (`rank`, lower is better: FTS5's bm25),
    its title as stored, its latest score (for the profile asked about when it has one) and
    whether it has a deep dive."""

    arxiv_id: str
    title: str
    rank: float
    score: int | None
    deep_dive: bool = False


def index_text(text: str) -> str:
    """Text as the index holds it: every CJK character a word of its own."""
    return " ".join(_CJK.sub(r" \1 ", text or "").split())


def fts_query(words: str) -> str:
    """The FTS5 MATCH expression for what a person typed: each word a quoted phrase, all
    required. BadQuery (one line) for nothing searchable, or too much."""
    text = " ".join((words or "").split())
    if not text:
        raise BadQuery("Search for what? Try /digest search diffusion (or 扩散模型).")
    if len(text) > MAX_QUERY_CHARS:
        raise BadQuery(
            f"Search words can be at most {MAX_QUERY_CHARS} characters (yours have {len(text)})."
        )
    phrases = []
    for word in text.split():
        if not _WORDISH.search(word):
            continue  # only punctuation: nothing the index holds
        # Inside a quoted FTS5 string everything is literal but a double quote, doubled here;
        # the tokenizer then splits it as it split the documents.
        phrases.append('"' + index_text(word).replace('"', '""') + '"')
    if not phrases:
        raise BadQuery("Search for words, not only punctuation: e.g. /digest search diffusion.")
    if len(phrases) > MAX_QUERY_WORDS:
        raise BadQuery(f"At most {MAX_QUERY_WORDS} search words, please (you gave {len(phrases)}).")
    return " ".join(dict.fromkeys(phrases))
