# The reference ROUGE-L values of rouge_l.json, made with rouge-score itself:
#   python -m venv v && v/bin/pip install rouge-score==0.1.2 && v/bin/python make_rouge_l.py
import json, rouge_score
from importlib.metadata import version
from rouge_score import rouge_scorer
s = rouge_scorer.RougeScorer(["rougeL"])
pairs = [
 ("The quick brown fox jumps over the lazy dog", "The quick brown dog jumps on the log."),
 ("Event sourcing keeps the log as the truth. Every table is a projection that a replay rebuilds.",
  "In event sourcing the log is the truth, and a replay rebuilds every table from it."),
 ("Don't retry at once: back off, then retry. A 429 means slow down!",
  "dont RETRY at once -- back-off; 429 means: slow down."),
 ("Le café est très bon à Paris, naïve résumé.", "The café in Paris is très bon."),
 ("Numbers like 3.14 and 2,718 count as tokens: 3 14 2 718.", "3.14 2,718"),
 ("", "something"),
 ("only words here", ""),
 ("a a a b b", "b a b a a"),
 ("Fine-tuning on one person's writing teaches tone more than facts; retrieval brings the facts.",
  "Retrieval brings the facts, while fine-tuning teaches the tone of one person's writing."),
]
out = {"made_with": {"rouge-score": version("rouge-score"), "nltk": version("nltk")},
       "pairs": [{"reference": r, "candidate": c, "fmeasure": s.score(r, c)["rougeL"].fmeasure} for r, c in pairs]}
json.dump(out, open(__import__("os").path.join(__import__("os").path.dirname(__file__), "rouge_l.json"), "w"), indent=1, ensure_ascii=False)
print(out)
