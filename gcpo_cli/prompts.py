"""Prompt presets: how a problem becomes the text a model continues. Training rollouts, the
held-out evaluation and `gcpo eval` all render through `Prompt.render`, so a recipe's
`prompt: NAME` means the same thing everywhere (and `eval --run` uses the run's own).

A preset fixes three things: the system turn, the user turn (a template with {problem}) and
the text the answer opens with. `prompt_template` (flag `--template`) replaces its user turn
and `system_prompt` (flag `--system-prompt`) its system turn.

"No system turn" is the tokenizer's business: SmolLM2's chat template (the embedded model's)
inserts its own default system prompt, "You are a helpful AI assistant named SmolLM, trained by
Hugging Face", when the messages hold none. `boxed` keeps that, so it renders byte-identical to
gcpo 0.1/0.2; a preset with a system turn replaces it. Raw presets use no chat template at all.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import GcpoError

# The chat template a tokenizer without one gets (ChatML, SmolLM2's and Qwen's format).
CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

BOXED_TEMPLATE = "{problem} Put the final answer in \\boxed{{}}."
# Qwen2.5-Math and DeepSeek-R1 word the boxed-answer instruction the same way.
STEP_BY_STEP = "Please reason step by step, and put your final answer within \\boxed{}."


@dataclass(frozen=True)
class Prompt:
    name: str  # the preset it starts from
    template: str  # the user turn (raw: the whole text), with {problem}; other braces doubled
    system: str | None = None  # the system turn; None: none is sent
    chat: bool = True  # through the tokenizer's chat template (False: the text as it is)
    opening: str = ""  # what the answer opens with, after the assistant prefix

    def params(self) -> dict:
        """What an evaluation records of its prompt (stored in its params)."""
        return {"prompt": self.name, "template": self.template, "system_prompt": self.system}

    def render(self, tokenizer, problem: str) -> str:
        """The exact text the model continues (fed without added special tokens)."""
        user = self.template.format(problem=problem)
        if not self.chat:
            return user
        if not has_chat_template(tokenizer):
            raise GcpoError(f"the model's tokenizer has no chat template, which the '{self.name}' prompt needs; "
                            "use the raw prompt (--prompt raw, or 'prompt: raw' in a recipe) for a base model")
        messages = [{"role": "system", "content": self.system}] if self.system is not None else []
        text = tokenizer.apply_chat_template(messages + [{"role": "user", "content": user}], tokenize=False,
                                             add_generation_prompt=True)
        # DeepSeek's later R1-distill chat templates open the thinking block themselves.
        return text if text.endswith(self.opening) else text + self.opening


PRESETS: dict[str, Prompt] = {
    # gcpo's own since 0.1, the default: the instruction after the problem, no system turn.
    "boxed": Prompt("boxed", BOXED_TEMPLATE),
    # Qwen2.5-Math's evaluation, prompt type "qwen25-math-cot" (QwenLM/Qwen2.5-Math,
    # evaluation/utils.py PROMPT_TEMPLATES): the instruction as the system turn, the problem alone
    # as the user turn.
    "qwen25-math-cot": Prompt("qwen25-math-cot", "{problem}", STEP_BY_STEP),
    # DeepSeek-R1's usage recommendations for its distilled models (deepseek-ai/DeepSeek-R1
    # README, "Usage Recommendations"): no system prompt, "Please reason step by step, and put
    # your final answer within \boxed{}." in the user turn, and the answer forced to open with
    # "<think>\n".
    "r1-distill": Prompt("r1-distill", "{problem}\nPlease reason step by step, and put your final answer within \\boxed{{}}.",
                         opening="<think>\n"),
    # For base models, no chat template: Minerva's format as lm-evaluation-harness's minerva_math
    # task writes it (lm_eval/tasks/minerva_math/utils.py doc_to_text), zero-shot.
    "raw": Prompt("raw", "Problem:\n{problem}\n\nSolution:", chat=False),
}
DEFAULT = "boxed"


def has_chat_template(tokenizer) -> bool:
    """Whether the tokenizer ships a chat template. gcpo's loader gives a tokenizer without one
    a ChatML stand-in (model.load_tokenizer); that is not the model's own format, so it does not
    count. transformers keeps what the tokenizer was loaded with in `init_kwargs`."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return False
    loaded = (getattr(tokenizer, "init_kwargs", None) or {}).get("chat_template")
    return bool(loaded) or template != CHATML_TEMPLATE


def template_error(template: str) -> str | None:
    """Why `template` cannot be a prompt template, or None when it can."""
    if "{problem}" not in template:
        return "must contain {problem}"
    try:
        template.format(problem="")
    except (KeyError, IndexError, ValueError) as e:
        return f"{type(e).__name__}: {e} (write other braces doubled, e.g. '\\boxed{{{{}}}}')"
    return None


def resolve(name: str | None = None, template: str | None = None, system_prompt: str | None = None) -> Prompt:
    """The preset `name` (default boxed) with its user turn and system turn replaced where given.
    A bad name, template or combination is a GcpoError that says which."""
    name = name or DEFAULT
    if name not in PRESETS:
        raise GcpoError(f"unknown prompt '{name}'; presets: {', '.join(PRESETS)}")
    p = PRESETS[name]
    if template is not None:
        why = template_error(template)
        if why:
            raise GcpoError(f"prompt template {template!r}: {why}")
        p = Prompt(p.name, template, p.system, p.chat, p.opening)
    if system_prompt is not None:
        if not p.chat:
            raise GcpoError(f"the '{name}' prompt has no chat template, so no system prompt; "
                            "put the instruction in its template instead")
        p = Prompt(p.name, p.template, system_prompt, p.chat, p.opening)
    return p


def from_recipe(recipe) -> Prompt:
    """A recipe's prompt: a Recipe, or the dict stored with a run (its `generation` section; a run
    from before presets has only `prompt_template`, which rendered as `boxed` with that user turn)."""
    if isinstance(recipe, dict):
        g = recipe.get("generation") or {}
        return resolve(g.get("prompt"), g.get("prompt_template"), g.get("system_prompt"))
    g = recipe.generation
    return resolve(g.prompt, g.prompt_template, g.system_prompt)


# ---------------------------------------------------------------- a golden answer, written as a response

CALCULATOR = re.compile(r"<<[^<>\n]*>>")  # GSM8K's calculator annotations: 48/2 = <<48/2=24>>24
FINAL_ANSWER_LINE = re.compile(r"\n?[ \t]*####[^\n]*\s*$")  # GSM8K's last line: #### 72


def reasoning(solution: str) -> str:
    """A worked solution as a model would write its reasoning: without GSM8K's calculator
    annotations (text the model never sees in a prompt and should not learn to emit) and without
    a trailing `#### N` line (a golden template states the answer in the prompt's own format)."""
    return FINAL_ANSWER_LINE.sub("", CALCULATOR.sub("", solution)).strip()


def golden_response(template: str, solution: str, answer: str) -> str:
    """A golden answer written as a model response by the recipe's golden.template, whose
    {solution} is the worked solution as stored, {reasoning} the same cleaned (reasoning()) and
    {answer} the problem's final answer. Training, the curriculum and `gcpo golden report` all
    write it through here."""
    return template.format(solution=solution, reasoning=reasoning(solution), answer=answer)
