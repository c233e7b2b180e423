"""Evaluation: perplexity and bits per character/byte, C-Eval / MMLU multiple choice (docs/evaluation.md)."""

from tencentpretrain.evaluation.choice import ChoiceScorer, SubjectResult, evaluate_subject, summarize
from tencentpretrain.evaluation.perplexity import PerplexityResult, count_words, evaluate_perplexity, rolling_windows
from tencentpretrain.evaluation.readers import EvaluationInputError, Question, read_choice_file, read_documents

__all__ = ["ChoiceScorer", "EvaluationInputError", "PerplexityResult", "Question", "SubjectResult", "count_words",
           "evaluate_perplexity", "evaluate_subject", "read_choice_file", "read_documents", "rolling_windows",
           "summarize"]
