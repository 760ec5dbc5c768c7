"""A real paper's text as a FullText, questions about it, and a glossary "translator".

Shared by tests/test_qa.py and bench/qa.py. The paper text is tests/fixtures/papers/
clair_fin_sections.json (its source is in tests/fixtures/SOURCES.md). The glossary stands in
for the model that turns a Chinese question into English search terms: it is a fixed table,
so what it measures is retrieval given reasonable terms, not a model's translation.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from digest_core.models import SOURCE_HTML, DeepDive, Paper
from digest_core.sources.fulltext import FullText

FIXTURE = Path(__file__).parent / "fixtures" / "papers" / "clair_fin_sections.json"
ARXIV_ID = "2601.00001"  # a stand-in ID: the draft is not on arXiv under a known ID


def paper_and_text() -> tuple[Paper, FullText]:
    data = json.loads(FIXTURE.read_text(encoding="utf-8"))
    sections = tuple((h, b) for h, b in data["sections"])
    abstract = dict(sections)["Abstract"]
    paper = Paper(ARXIV_ID, data["title"], abstract, version=1, source="arxiv")
    return paper, FullText(SOURCE_HTML, sections)


def deep_dive(paper: Paper) -> DeepDive:
    return DeepDive(
        arxiv_id=paper.arxiv_id,
        title=paper.title,
        sections={
            "contribution": "A nine-agent framework with a typed claim ledger.",
            "methodology": "Claims are checked at the drafting hand-off and at a final audit.",
            "takeaway": "Claim-level verification before synthesis.",
            "limitations": "Evaluated on one central bank's reports.",
        },
        language="en",
        source_read=SOURCE_HTML,
        model="gpt-4o",
        prompt_version="deep-dive-test",
    )


# (question, the section that answers it). English and Chinese ask the same things.
QUESTIONS_EN: list[tuple[str, str]] = [
    ("Which language model do the agents use as backbone?", "Appendix B.5"),
    ("What faithfulness does Graph-RAG reach?", "6 Results and Discussion"),
    ("What are the main limitations?", "Limitations"),
    ("Which embedding model and vector database are used?", "Appendix B.3"),
    ("How is narrative text chunked during ingestion?", "Appendix B.2"),
    ("How many Fact Extraction questions are Text Only?", "Appendix B.2"),
    ("What happens to faithfulness when ARC is removed?", "6.3 RQ3"),
    ("What is the AEA impact rate?", "6.1 RQ1"),
    ("Which presentation format has the highest faithfulness?", "6.5 RQ5"),
    ("How are lexical and vector similarity weighted in retrieval?", "Appendix B.4"),
    ("When does the synthesizer abstain?", "3.8 Phase VIII"),
    ("What is the coverage escalation cutoff?", "Appendix B.7"),
]
QUESTIONS_ZH: list[tuple[str, str]] = [
    ("这篇论文用了哪些基座模型？", "Appendix B.5"),
    ("Graph-RAG 的忠实度是多少？", "6 Results and Discussion"),
    ("主要的局限性是什么？", "Limitations"),
    ("用了什么嵌入模型和向量数据库？", "Appendix B.3"),
    ("数据导入时文本是怎么切块的？", "Appendix B.2"),
    ("纯文本格式下有多少事实抽取题？", "Appendix B.2"),
    ("去掉 ARC 之后忠实度怎么变化？", "6.3 RQ3"),
    ("AEA 的影响率是多少？", "6.1 RQ1"),
    ("哪种呈现格式的忠实度最高？", "6.5 RQ5"),
    ("检索时词汇相似度和向量相似度的权重是多少？", "Appendix B.4"),
    ("合成器什么时候会拒绝回答？", "3.8 Phase VIII"),
    ("覆盖率升级阈值是多少？", "Appendix B.7"),
]

# Chinese words -> English terms, as a cheap translation model would give them.
GLOSSARY: dict[str, str] = {
    "基座模型": "backbone language model",
    "忠实度": "faithfulness",
    "局限性": "limitations",
    "嵌入模型": "embedding model",
    "向量数据库": "vector database",
    "数据导入": "ingestion",
    "切块": "chunked chunks",
    "纯文本": "Text Only",
    "事实抽取": "Fact Extraction",
    "去掉": "removed without",
    "影响率": "impact rate",
    "呈现格式": "presentation format",
    "最高": "highest",
    "词汇相似度": "lexical similarity",
    "向量相似度": "vector similarity",
    "权重": "weight",
    "检索": "retrieval",
    "合成器": "synthesizer",
    "拒绝回答": "abstain abstention",
    "覆盖率": "coverage",
    "升级阈值": "escalation cutoff threshold",
}

SEARCH_TERMS_SYSTEM = "You turn a question about an English research paper"


def is_search_terms(body: dict[str, Any]) -> bool:
    system = body["messages"][0]["content"]
    return system.startswith(SEARCH_TERMS_SYSTEM)


def question_of(body: dict[str, Any]) -> str:
    found = re.findall(r"<question>\n(.*?)\n</question>", body["messages"][-1]["content"], re.S)
    return found[-1] if found else ""


def glossary_terms(question: str) -> str:
    return " ".join(en for zh, en in GLOSSARY.items() if zh in question) or "paper"


def responder(body: dict[str, Any]) -> str:
    """Search-terms requests get glossary terms; answers name the question they answer."""
    if is_search_terms(body):
        return glossary_terms(question_of(body))
    return f"Answer to: {question_of(body)} (Sec. Limitations)"
