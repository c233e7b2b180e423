"""C-Eval / MMLU multiple choice: the answer is the letter whose token the model scores highest after the prompt.

Prompts follow C-Eval's official answer-only format (``prompt_language="zh"``)::

    以下是中国关于{subject}考试的单项选择题，请选出其中的正确答案。\\n\\n
    {question}\\nA. {A}\\nB. {B}\\nC. {C}\\nD. {D}\\n答案：{answer}\\n\\n      (once per example of the dev split)
    {question}\\nA. {A}\\nB. {B}\\nC. {C}\\nD. {D}\\n答案：

and MMLU's (``"en"``): ``The following are multiple choice questions (with answers) about {subject}.\\n\\n``, each
question closed by ``\\nAnswer:`` and, in an example, `` {answer}\\n\\n``. The prompt is encoded with bos in front.

Which token stands for a letter (``choice_token``):

- ``continuation`` (default): the token the letter becomes where the examples put it, i.e. the last token of
  ``encode(prompt + "A")`` (``prompt + " A"`` in English) when ``encode(prompt)`` is the rest; with LLaMA's
  tokenizer that is ``A`` (id 29909) after ``答案：`` and ``▁A`` (id 319) after ``Answer:``.
- ``standalone``: ``encode("A")[0]``, what C-Eval's official LLaMA evaluator reads (``▁A``, 319, in both
  languages).

When the examples make a prompt longer than ``seq_length``, examples are dropped from the end until it fits (as
MMLU's evaluation does); a question that does not fit even alone keeps its last ``seq_length`` tokens. The header
and examples, the same for every question of a subject, run through the model once (a shared-prefix KV cache).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from tencentpretrain.errors import InputError
from tencentpretrain.evaluation.readers import LETTERS, Question
from tencentpretrain.evaluation.scoring import next_token_logits, next_token_logits_after_prefix
from tencentpretrain.model import Model
from tencentpretrain.tokenizers import prefix_ids

CHOICE_TOKENS = ("continuation", "standalone")


@dataclass(frozen=True)
class PromptStyle:
    """A prompt language: the header, the answer cue and what precedes the letter of an example's answer."""

    header: str
    cue: str
    before_letter: str


PROMPT_STYLES = {
    "zh": PromptStyle("以下是中国关于{subject}考试的单项选择题，请选出其中的正确答案。\n\n", "\n答案：", ""),
    "en": PromptStyle("The following are multiple choice questions (with answers) about {subject}.\n\n",
                      "\nAnswer:", " "),
}


def format_question(question: Question, style: PromptStyle, with_answer: bool) -> str:
    """A question, its four options and the answer cue; an example also gets its answer and a blank line."""
    text = question.question + "".join(f"\n{letter}. {option}" for letter, option in zip(LETTERS, question.options))
    text += style.cue
    return text + f"{style.before_letter}{question.answer}\n\n" if with_answer else text


def build_prompt(question: Question, examples: Sequence[Question], subject: str, style: PromptStyle) -> str:
    """The whole prompt: header, examples with their answers, then the question."""
    shots = "".join(format_question(example, style, with_answer=True) for example in examples)
    return style.header.format(subject=subject) + shots + format_question(question, style, with_answer=False)


@dataclass
class SubjectResult:
    """The outcome of one subject.

    Attributes:
        name: the subject (from the file name).
        predictions: question id -> predicted letter, in file order.
        answers: question id -> correct letter (absent for questions without one).
        shots_reduced: questions whose prompt kept fewer examples than asked, to fit ``seq_length``.
        truncated: questions cut to their last ``seq_length`` tokens even without examples.
        prefix_shared: questions whose header and examples were computed once for the subject.
    """

    name: str
    predictions: dict[str, str] = field(default_factory=dict)
    answers: dict[str, str] = field(default_factory=dict)
    shots_reduced: int = 0
    truncated: int = 0
    prefix_shared: int = 0

    @property
    def correct(self) -> int:
        return sum(self.predictions[qid] == answer for qid, answer in self.answers.items())

    @property
    def accuracy(self) -> float | None:
        return self.correct / len(self.answers) if self.answers else None

    def to_dict(self) -> dict:
        return {"questions": len(self.predictions), "answered": len(self.answers), "correct": self.correct,
                "accuracy": self.accuracy, "shots_reduced": self.shots_reduced, "truncated": self.truncated,
                "prefix_shared": self.prefix_shared, "predictions": self.predictions}


class ChoiceScorer:
    """Turns a question into its prompt (token ids, bos first) and the token ids of the four letters.

    Args:
        tokenizer: has ``encode``, ``bos_id`` and ``pad_id``.
        prompt_language: ``zh`` (C-Eval) or ``en`` (MMLU).
        choice_token: ``continuation`` or ``standalone`` (module docstring).
        seq_length: the longest prompt in tokens, bos included.
    """

    def __init__(self, tokenizer, prompt_language: str = "zh", choice_token: str = "continuation",
                 seq_length: int = 2048):
        if choice_token not in CHOICE_TOKENS:
            raise ValueError(f"choice_token must be one of {', '.join(CHOICE_TOKENS)}, got {choice_token!r}")
        self.tokenizer, self.style = tokenizer, PROMPT_STYLES[prompt_language]
        self.choice_token, self.seq_length = choice_token, seq_length

    def letter_ids(self, prompt: str, prompt_ids: list[int]) -> list[int]:
        """The token id of each letter after ``prompt`` (whose encoding is ``prompt_ids``)."""
        if self.choice_token == "standalone":
            return [self.tokenizer.encode(letter)[0] for letter in LETTERS]
        ids = []
        for letter in LETTERS:
            full = self.tokenizer.encode(prompt + self.style.before_letter + letter)
            if len(full) != len(prompt_ids) + 1 or full[:-1] != prompt_ids:
                pieces = [self.tokenizer.id_to_piece(i) for i in full[len(prompt_ids) - 1:]]
                raise InputError(f"after the answer cue {self.style.cue.strip()!r} the letter {letter} is not one "
                                 f"token of this tokenizer (the prompt ends {pieces}); use --choice_token standalone")
            ids.append(full[-1])
        if len(set(ids)) != len(LETTERS):
            raise InputError(f"the letters share tokens {ids} under this tokenizer; use --choice_token standalone")
        return ids

    def prepare(self, question: Question, examples: Sequence[Question], subject: str) -> tuple[list[int], list[int],
                                                                                              int, bool]:
        """(prompt ids with bos, letter ids, examples kept, whether the prompt was cut) of one question.

        The prompt keeps as many of ``examples`` as fit in ``seq_length`` tokens; without any that still do not
        fit, its last ``seq_length`` tokens are kept.
        """
        for kept in range(len(examples), -1, -1):
            text = build_prompt(question, examples[:kept], subject, self.style)
            ids = self.tokenizer.encode(text)
            if len(ids) < self.seq_length:
                break
        cut = len(ids) >= self.seq_length
        return [*prefix_ids(self.tokenizer), *ids][-self.seq_length:], self.letter_ids(text, ids), kept, cut


    def shared_prefix(self, examples: Sequence[Question], subject: str) -> list[int]:
        """The ids (bos first) of the header and all ``examples``: the start of every prompt that keeps them all,
        wherever the tokenizer cuts the question after them the same way (checked per prompt)."""
        shots = "".join(format_question(example, self.style, with_answer=True) for example in examples)
        return [*prefix_ids(self.tokenizer), *self.tokenizer.encode(self.style.header.format(subject=subject) + shots)]


def evaluate_subject(model: Model, scorer: ChoiceScorer, name: str, questions: Sequence[Question],
                     examples: Sequence[Question], display_name: str, batch_size: int = 1) -> SubjectResult:
    """Answer every question of a subject.

    Args:
        model: the model, in eval mode.
        scorer: prompt and token rules.
        name: the subject's key (from the file name).
        questions: the questions to answer.
        examples: the examples put before each question (answers included).
        display_name: the subject as written in the prompt's header.
        batch_size: prompts per forward pass.
    """
    result = SubjectResult(name)
    prompts, candidates = [], []
    prefix = scorer.shared_prefix(examples, display_name) if examples else []
    shared = []  # prompts that start with the whole prefix: the prefix runs once for all of them
    for index, question in enumerate(questions):
        ids, letter_ids, kept, cut = scorer.prepare(question, examples, display_name)
        prompts.append(ids)
        candidates.append(letter_ids)
        result.shots_reduced += kept < len(examples)
        result.truncated += cut
        if prefix and len(ids) > len(prefix) and ids[:len(prefix)] == prefix:
            shared.append(index)
    result.prefix_shared = len(shared)
    logits = score_prompts(model, prompts, candidates, prefix, shared, batch_size, scorer.tokenizer.pad_id, name)
    for question, scores in zip(questions, logits):
        if question.id in result.predictions:
            raise InputError(f"subject {name}: question id {question.id!r} appears twice (line {question.line})")
        result.predictions[question.id] = LETTERS[max(range(len(LETTERS)), key=lambda i: (scores[i], -i))]
        if question.answer is not None:
            result.answers[question.id] = question.answer
    return result


def score_prompts(model: Model, prompts: list[list[int]], candidates: list[list[int]], prefix: list[int],
                  shared: list[int], batch_size: int, pad_id: int, desc: str) -> list[list[float]]:
    """The candidates' logits after every prompt; the prompts listed in ``shared`` start with ``prefix``, which
    runs once for them (the same logits as whole prompts, to rounding)."""
    out: list[list[float]] = [[] for _ in prompts]
    alone = sorted(set(range(len(prompts))) - set(shared))
    if shared:
        found = next_token_logits_after_prefix(model, prefix, [prompts[i][len(prefix):] for i in shared],
                                               [candidates[i] for i in shared], batch_size, pad_id, desc)
        for index, scores in zip(shared, found):
            out[index] = scores
    if alone:
        found = next_token_logits(model, [prompts[i] for i in alone], [candidates[i] for i in alone], batch_size,
                                  pad_id, desc)
        for index, scores in zip(alone, found):
            out[index] = scores
    return out


def summarize(results: Sequence[SubjectResult], categories: dict[str, str] | None = None) -> dict:
    """Average accuracy over subjects (macro) and over questions (micro), overall and per category."""
    groups: dict[str, list[SubjectResult]] = {"all": list(results)}
    for result in results:
        if categories and result.name in categories:
            groups.setdefault(categories[result.name], []).append(result)
    return {group: _average(members) for group, members in groups.items()}


def _average(results: Sequence[SubjectResult]) -> dict:
    scored = [r for r in results if r.accuracy is not None]
    answered = sum(len(r.answers) for r in scored)
    correct = sum(r.correct for r in scored)
    return {"subjects": len(scored), "questions": answered, "correct": correct,
            "macro_accuracy": sum(r.accuracy for r in scored) / len(scored) if scored else None,
            "micro_accuracy": correct / answered if answered else None}
