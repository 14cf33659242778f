"""Prompt presets: the exact text each renders (through the tiny model's ChatML template and the
embedded SmolLM2's own), a tokenizer without a chat template, recipes, and training, held-out
evaluation and `eval --run` all rendering the recipe's preset."""

from __future__ import annotations

import json
import re

import pytest

from gcpo_cli import prompts, rollout
from gcpo_cli import recipe_load as recipes
from gcpo_cli.cli import app
from gcpo_cli.errors import GcpoError
from gcpo_cli.model import build_tiny, load_tokenizer, tiny_tokenizer
from gcpo_cli.rollout import render_prompt

PROBLEM = "What is 2 + 3?"
STEP = "Please reason step by step, and put your final answer within \\boxed{}."
SMOL_SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"

# Through the tiny model's plain ChatML template (no default system prompt).
CHATML = {
    "boxed": "<|im_start|>user\nWhat is 2 + 3? Put the final answer in \\boxed{}.<|im_end|>\n<|im_start|>assistant\n",
    # Qwen2.5-Math's evaluation/utils.py, PROMPT_TEMPLATES["qwen25-math-cot"], with {input} filled in
    "qwen25-math-cot": f"<|im_start|>system\n{STEP}<|im_end|>\n<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n"
                       "<|im_start|>assistant\n",
    "r1-distill": f"<|im_start|>user\nWhat is 2 + 3?\n{STEP}<|im_end|>\n<|im_start|>assistant\n<think>\n",
    "raw": "Problem:\nWhat is 2 + 3?\n\nSolution:",
}


@pytest.fixture(scope="module")
def tiny_tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def smol_tok():
    """The embedded model's own tokenizer, read from its GGUF file (the weights are not loaded)."""
    from transformers import AutoTokenizer

    from gcpo_cli.model import embedded_gguf

    gguf = embedded_gguf()
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


@pytest.mark.parametrize("name", list(CHATML))
def test_each_preset_renders_exactly(tiny_tok, name):
    assert prompts.resolve(name).render(tiny_tok, PROBLEM) == CHATML[name]


def test_the_presets_are_the_ones_documented():
    assert list(prompts.PRESETS) == ["boxed", "qwen25-math-cot", "r1-distill", "raw"]
    assert prompts.resolve().name == "boxed"


def test_smollm2_keeps_its_default_system_prompt_for_boxed_and_r1(smol_tok):
    boxed = prompts.resolve("boxed").render(smol_tok, PROBLEM)
    assert boxed == SMOL_SYSTEM + CHATML["boxed"]
    # byte-identical to gcpo 0.2's rendering: the user turn alone through the chat template
    assert boxed == smol_tok.apply_chat_template(
        [{"role": "user", "content": "What is 2 + 3? Put the final answer in \\boxed{}."}], tokenize=False,
        add_generation_prompt=True)
    assert render_prompt(smol_tok, PROBLEM) == boxed  # the old entry point, its default template
    assert prompts.resolve("r1-distill").render(smol_tok, PROBLEM) == SMOL_SYSTEM + CHATML["r1-distill"]
    # A system turn replaces SmolLM2's default.
    assert prompts.resolve("qwen25-math-cot").render(smol_tok, PROBLEM) == CHATML["qwen25-math-cot"]
    assert prompts.resolve("raw").render(smol_tok, PROBLEM) == CHATML["raw"]


def test_template_and_system_prompt_replace_the_presets_turns(tiny_tok):
    custom = prompts.resolve(template="Q: {problem} A in \\boxed{{}}", system_prompt="Be brief.")
    assert custom.render(tiny_tok, PROBLEM) == ("<|im_start|>system\nBe brief.<|im_end|>\n"
                                                "<|im_start|>user\nQ: What is 2 + 3? A in \\boxed{}<|im_end|>\n"
                                                "<|im_start|>assistant\n")
    assert custom.params() == {"prompt": "boxed", "template": "Q: {problem} A in \\boxed{{}}",
                               "system_prompt": "Be brief."}
    assert prompts.resolve("raw", template="Question: {problem}\nAnswer:").render(tiny_tok, PROBLEM) == \
        "Question: What is 2 + 3?\nAnswer:"
    assert render_prompt(tiny_tok, PROBLEM, "Q: {problem}") == "<|im_start|>user\nQ: What is 2 + 3?<|im_end|>\n" \
                                                             "<|im_start|>assistant\n"


def test_a_template_that_opens_the_thinking_block_itself_is_not_doubled(tiny_tok):
    tok = tiny_tokenizer()  # DeepSeek's later R1-distill templates end the generation prompt with it
    tok.chat_template = tok.chat_template.replace("assistant\n' }}", "assistant\n<think>\n' }}")
    assert tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False,
                                   add_generation_prompt=True).endswith("assistant\n<think>\n")
    text = prompts.resolve("r1-distill").render(tok, PROBLEM)
    assert text == CHATML["r1-distill"] and text.count("<think>") == 1


@pytest.mark.parametrize("args,message", [
    (("qwen",), "unknown prompt 'qwen'; presets: boxed, qwen25-math-cot, r1-distill, raw"),
    (("boxed", "no placeholder"), "must contain {problem}"),
    (("boxed", "{problem} \\boxed{}"), "write other braces doubled"),
    (("raw", None, "Be brief."), "the 'raw' prompt has no chat template, so no system prompt"),
])
def test_bad_prompts_are_one_clear_error(args, message):
    with pytest.raises(GcpoError, match=re.escape(message)):
        prompts.resolve(*args)


# ----------------------------------------------------------------------- no chat template


@pytest.fixture
def base_dir(tmp_path):
    """The tiny model saved without a chat template, as a base model ships."""
    d = build_tiny(tmp_path / "base")
    (d / "chat_template.jinja").unlink()
    return d


def test_a_tokenizer_without_a_chat_template_needs_the_raw_prompt(base_dir, tiny_tok):
    tok = load_tokenizer(str(base_dir))  # gcpo's loader gives it a ChatML stand-in; that does not count
    assert not prompts.has_chat_template(tok) and prompts.has_chat_template(tiny_tok)
    with pytest.raises(GcpoError, match="has no chat template, which the 'boxed' prompt needs; use the raw prompt"):
        prompts.resolve("boxed").render(tok, PROBLEM)
    assert prompts.resolve("raw").render(tok, PROBLEM) == CHATML["raw"]


def test_eval_of_a_base_model_errors_for_a_chat_preset_and_runs_with_raw(runner, db, base_dir):
    from gcpo_cli.ingest import ingest_rows

    ingest_rows(db, [{"problem": PROBLEM, "answer": "5"}], "one", problem="problem", answer="answer")
    r = runner.invoke(app, ["eval", "--model", str(base_dir), "--set", "one", "--max-new-tokens", "4"])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert r.output.strip().splitlines() == ["error: the model's tokenizer has no chat template, which the 'boxed' "
                                             "prompt needs; use the raw prompt (--prompt raw, or 'prompt: raw' in a "
                                             "recipe) for a base model"]
    assert db["evaluations"].count == 0  # nothing half-written
    r = runner.invoke(app, ["eval", "--model", str(base_dir), "--set", "one", "--max-new-tokens", "4",
                            "--prompt", "raw", "--json"])
    assert r.exit_code == 0, r.output
    (ev,) = db["evaluations"].rows
    assert json.loads(ev["params_json"])["prompt"] == "raw"
    assert [p["text"] for p in db["prompts"].rows] == [CHATML["raw"]]


# -------------------------------------------------------------------- recipes and training


def test_recipe_keys_choose_and_check_the_preset():
    assert recipes.load("tiny").generation.prompt == "boxed"
    assert prompts.from_recipe(recipes.load("tiny")) == prompts.PRESETS["boxed"]
    r = recipes.load("tiny", ["prompt=qwen25-math-cot", "system_prompt=Be brief."])
    assert prompts.from_recipe(r) == prompts.Prompt("qwen25-math-cot", "{problem}", "Be brief.")
    # A run stored before presets has only its template: the boxed preset with that user turn.
    stored = {"generation": {"prompt_template": "Q: {problem}"}}
    assert prompts.from_recipe(stored) == prompts.Prompt("boxed", "Q: {problem}")
    for override, key in (("prompt=qwen", "generation.prompt"), ("prompt_template=none here",
                          "generation.prompt_template"), ("system_prompt=x", "generation.system_prompt")):
        with pytest.raises(recipes.RecipeError, match=f"'{key}'"):
            recipes.load("tiny", [override] + (["prompt=raw"] if key.endswith("system_prompt") else []))


def test_training_heldout_and_eval_run_render_the_recipes_preset(runner, db, tmp_path, monkeypatch):
    from gcpo_cli import train as training

    tiny = str(build_tiny(tmp_path / "tiny"))
    seen: list[str] = []
    real = rollout.generate

    def spy(model, tok, texts, *a, **kw):
        seen.extend(texts)
        return real(model, tok, texts, *a, **kw)

    monkeypatch.setattr(rollout, "generate", spy)
    r = recipes.load("tiny", [f"model.name={tiny}", "prompt=qwen25-math-cot", "steps=1", "max_new_tokens=4",
                              "eval.holdout=2"])
    summary = training.train(db, r)
    assert summary["status"] == "completed"
    system = f"<|im_start|>system\n{STEP}<|im_end|>\n<|im_start|>user\n"
    assert seen and all(t.startswith(system) and t.endswith("<|im_end|>\n<|im_start|>assistant\n") for t in seen)
    held_out = list(db["evaluations"].rows)
    assert len(held_out) == 2 and all(json.loads(e["params_json"])["prompt"] == "qwen25-math-cot" for e in held_out)
    assert db["prompts"].count == 2 and all(p["text"].startswith(system) for p in db["prompts"].rows)
    # eval --run uses the run's own preset; --prompt overrides it
    out = runner.invoke(app, ["eval", "--run", summary["run_id"], "--set", summary["set_name"], "--limit", "1",
                              "--max-new-tokens", "2", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["results"][0]["sets"][0]["prompt"] == "qwen25-math-cot"
    out = runner.invoke(app, ["eval", "--run", summary["run_id"], "--set", summary["set_name"], "--limit", "1",
                              "--max-new-tokens", "2", "--prompt", "raw", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["results"][0]["sets"][0]["prompt"] == "raw"


def test_training_a_base_model_on_a_chat_preset_fails_before_the_run_exists(db, base_dir):
    from gcpo_cli import train as training

    r = recipes.load("tiny", [f"model.name={base_dir}", "steps=1", "max_new_tokens=4"])
    with pytest.raises(GcpoError, match="has no chat template, which the 'boxed' prompt needs"):
        training.train(db, r)
    assert db["runs"].count == 0  # no phantom failed run
