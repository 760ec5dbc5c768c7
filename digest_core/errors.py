"""Every exception digestbot defines, drawn as one tree: read this before adding another.

Nothing is defined or imported here (the classes live beside the code that raises them, so
importing this module costs nothing and cannot create a cycle); `tests/test_house.py` checks
that the tree names every exception class in `digest_core` and `bot`, and only those.

    Exception
     ├── LLMError ............... digest_core.llm       an LLM call failed after its retries;
     │                                                  `.kind` (timeout, rate_limit, quota,
     │                                                  auth, server, refusal, ...) says how
     ├── _Failure ............... digest_core.llm       one attempt failed (internal: the retry
     │                                                  policy run by llm.py catches it)
     ├── SourceError ............ digest_core.sources   Hugging Face or arXiv gave no answer
     ├── _Refused ............... digest_core.sources.figure  the key figure's image may not
     │                                                  or cannot be posted (internal: logged
     │                                                  once, the figure is skipped)
     ├── TryAgain ............... digest_core.retry     one attempt failed for now (internal:
     │                                                  the retry policy catches it; `.wait`
     │                                                  is what Retry-After asked for)
     ├── DeliveryError .......... bot.channels.base     a post failed after the channel's own
     │                                                  retries; `.permanent` says whether a
     │                                                  later run may retry it
     ├── UserError .............. bot.cli               input the command line cannot serve
     ├── ValueError
     │    ├── ConfigError ....... digest_core.config    a setting is missing or malformed
     │    ├── InvalidArxivId .... digest_core.arxiv_id  the text is not an arXiv ID
     │    ├── BadValue .......... bot.team              a /digest profile value out of its
     │    │                                             limits (the one line to answer with)
     │    ├── BadQuery .......... digest_core.search    /digest search words that cannot be
     │    │                                             searched for (the one line to answer with)
     │    └── UnknownDestination  bot.service           `--to` names no configured destination
     ├── LookupError
     │    └── PaperNotFound ..... digest_core.pipeline  a well-formed ID that names no paper
     └── RuntimeError
          ├── StoreError ........ digest_core.store     the database cannot be used
          └── StartupError ...... bot.serve             a platform cannot be started

The core's errors (`digest_core.*`) are values the bot turns into one line where the input came
from: the CLI prints it and exits 1 (a source or destination failed) or 2 (input or
configuration that cannot be served); in chat it is the answer in the same thread. Every
message is short and safe to show: no URL with a token, no secret, no traceback.
"""
