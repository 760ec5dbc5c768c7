"""Real papers as FullTexts, questions about them, and a glossary "translator".

Shared by tests/test_qa.py and bench/qa.py. Two papers: "clair" is tests/fixtures/papers/
clair_fin_sections.json (section texts of a draft, see tests/fixtures/SOURCES.md); "selfaware"
is the real arXiv page tests/fixtures/arxiv_html/2501.11120v1.html (~41k tokens, so the
default answer budget retrieves passages), parsed by the real extractor. The glossary stands
in for the model that turns a Chinese question into English search terms: it is a fixed
table, so what it measures is retrieval given reasonable terms, not a model's translation.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from digest_core.models import SOURCE_HTML, DeepDive, Paper
from digest_core.sources.fulltext import FullText, parse_arxiv_html

FIXTURES = Path(__file__).parent / "fixtures"
FIXTURE = FIXTURES / "papers" / "clair_fin_sections.json"
SELFAWARE_HTML = FIXTURES / "arxiv_html" / "2501.11120v1.html"
ARXIV_ID = "2601.00001"  # a stand-in ID: the draft is not on arXiv under a known ID
PAPERS = ("clair", "selfaware")


def paper_and_text(name: str = "clair") -> tuple[Paper, FullText]:
    if name == "selfaware":
        text = FullText(SOURCE_HTML, parse_arxiv_html(SELFAWARE_HTML.read_text(encoding="utf-8")))
        abstract = text.sections[0].text
        title = "Tell me about yourself: LLMs are aware of their learned behaviors"
        return Paper("2501.11120", title, abstract, version=1, source="arxiv"), text
    data = json.loads(FIXTURE.read_text(encoding="utf-8"))
    sections = tuple((h, b) for h, b in data["sections"])
    abstract = dict(sections)["Abstract"]
    paper = Paper(ARXIV_ID, data["title"], abstract, version=1, source="arxiv")
    return paper, FullText(SOURCE_HTML, sections)


# Stand-in deep dives (the bot would have posted one): short, written for these tests.
_DIVES = {
    "clair": {
        "contribution": "A nine-agent framework with a typed claim ledger.",
        "methodology": "Claims are checked at the drafting hand-off and at a final audit.",
        "takeaway": "Claim-level verification before synthesis.",
        "limitations": "Evaluated on one central bank's reports.",
    },
    "selfaware": {
        "contribution": "Finetuned LLMs describe behaviours they were only shown implicitly.",
        "methodology": "GPT-4o and Llama-3 finetuned on economic decisions, Make Me Say and code.",
        "takeaway": "Behavioural self-awareness may help surface backdoors.",
        "limitations": "Three settings; backdoor awareness results are weaker.",
    },
}


def deep_dive(paper: Paper) -> DeepDive:
    return DeepDive(
        arxiv_id=paper.arxiv_id,
        title=paper.title,
        sections=_DIVES["selfaware" if paper.arxiv_id == "2501.11120" else "clair"],
        language="en",
        source_read=SOURCE_HTML,
        model="gpt-4o",
        prompt_version="deep-dive-test",
    )


# (question, the section that answers it), per paper; English and Chinese ask the same
# things. A hit is a passage whose section starts with the given one. The selfaware answers
# were read off the page: Table 2 (3.3), the "Limitations and future work" paragraph (7),
# Tables 12 and 13 (C.1.2), the trigger list (B.3), Table 9 (B.5.4), Table 5 (4.2).
QUESTIONS_EN: dict[str, list[tuple[str, str]]] = {
    "clair": [
        ("Which language model do the agents use as backbone?", "Appendix B.5"),
        ("What faithfulness does Graph-RAG reach?", "6 Results and Discussion"),
        ("What are the main limitations?", "Limitations"),
        ("Which embedding model and vector database are used?", "Appendix B.3"),
        ("What happens to faithfulness when ARC is removed?", "6.3 RQ3"),
        ("How are lexical and vector similarity weighted in retrieval?", "Appendix B.4"),
    ],
    "selfaware": [
        ("How often do models finetuned on vulnerable code output secure code?", "3.3"),
        ("What are the limitations and future work?", "7 Discussion"),
        ("What batch size and LR multiplier were used to finetune GPT-4o?", "C.1.2"),
        ("Which LoRA rank was used for Llama-3.1-70B?", "C.1.2"),
        ("Which individual triggers were used for trigger recognition?", "B.3"),
        ("What percentage of the data has the real trigger versus fake triggers?", "4.2"),
    ],
}
QUESTIONS_ZH: dict[str, list[tuple[str, str]]] = {
    "clair": [
        ("这篇论文用了哪些基座模型？", "Appendix B.5"),
        ("Graph-RAG 的忠实度是多少？", "6 Results and Discussion"),
        ("主要的局限性是什么？", "Limitations"),
        ("用了什么嵌入模型和向量数据库？", "Appendix B.3"),
        ("去掉 ARC 之后忠实度怎么变化？", "6.3 RQ3"),
        ("检索时词汇相似度和向量相似度的权重是多少？", "Appendix B.4"),
    ],
    "selfaware": [
        ("在漏洞代码上微调的模型生成安全代码的比例是多少？", "3.3"),
        ("这篇论文的局限性和未来工作是什么？", "7 Discussion"),
        ("微调 GPT-4o 时用的批大小和学习率倍数是多少？", "C.1.2"),
        ("Llama-3.1-70B 用的 LoRA 秩是多少？", "C.1.2"),
        ("触发词识别实验用了哪些单独的触发词？", "B.3"),
        ("真实触发词和假触发词各占数据的百分之多少？", "4.2"),
    ],
}

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
    "漏洞代码": "vulnerable code",
    "安全代码": "secure code",
    "微调": "finetuned finetune",
    "比例": "rate",
    "未来工作": "future work",
    "批大小": "batch size",
    "学习率倍数": "learning rate LR multiplier",
    "秩": "rank",
    "触发词": "trigger triggers",
    "识别": "recognition",
    "单独": "individual",
    "真实": "real",
    "假": "fake",
    "百分之多少": "percentage",
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
