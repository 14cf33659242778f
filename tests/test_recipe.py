import pytest

from gcpo_cli import recipe_load as recipes
from gcpo_cli.recipe_load import RecipeError


@pytest.mark.parametrize("name", sorted(recipes.available()))
def test_every_recipe_loads_and_resolves(name):
    r = recipes.load(name)
    assert r.name == name
    assert r.loss.ratio_level and r.loss.loss_agg and r.loss.eps_low is not None and r.golden.enabled in (True, False)


def test_shipped_recipes_are_the_ones_the_readme_names():
    assert {"1.5b-qlora", "smollm2-cpu", "tiny"} <= set(recipes.available())
    q = recipes.load("1.5b-qlora")
    assert q.model.quant == "nf4" and q.model.double_quant and q.model.dtype == "bfloat16"
    assert q.lora.target_modules == "all-linear" and q.model.gradient_checkpointing


def test_algorithm_presets_fill_unset_knobs_and_overrides_win():
    g = recipes.load("smollm2-cpu")
    assert (g.algorithm, g.golden.enabled, g.loss.ratio_level, g.loss.eps_low, g.loss.eps_high) == (
        "gcpo", True, "sequence", 3e-4, 4e-4)
    grpo = recipes.load("smollm2-cpu", ["algorithm=grpo"])
    assert (grpo.golden.enabled, grpo.loss.ratio_level, grpo.loss.loss_agg, grpo.loss.eps_high) == (
        False, "token", "token_mean", 0.2)
    dapo = recipes.load("smollm2-cpu", ["algorithm=dapo"])
    assert dapo.loss.dynamic_sampling and dapo.loss.eps_high == 0.28 and dapo.loss.overlong_buffer == 12
    ablation = recipes.load("smollm2-cpu", ["golden.enabled=false", "loss.ratio_level=token", "lora.r=8",
                                            "optimizer.lr=3e-4"])
    assert not ablation.golden.enabled and ablation.loss.ratio_level == "token" and ablation.lora.r == 8
    assert ablation.optimizer.lr == 3e-4


@pytest.mark.parametrize(
    "override, key",
    [
        ("learnin_rate=1e-4", "learnin_rate"),
        ("lora.rank=8", "lora.rank"),
        ("steps=many", "steps"),
        ("algorithm=ppo", "algorithm"),
        ("temperature=-1", "generation.temperature"),
        ("samples_per_problem=1", "generation.samples_per_problem"),
        ("model.quant=int3", "model.quant"),
        ("prompt_template=no placeholder", "generation.prompt_template"),
        ("model.gradient_checkpoint=true", "model.gradient_checkpoint"),
        ("loss.lr=1", "loss.lr"),
    ],
)
def test_bad_key_type_or_value_names_the_key(override, key):
    with pytest.raises(RecipeError) as e:
        recipes.load("tiny", [override])
    assert f"'{key}'" in str(e.value)


def test_bad_recipe_on_the_command_line_is_one_clear_line(runner):
    from gcpo_cli.cli import app

    result = runner.invoke(app, ["train", "--recipe", "tiny", "-o", "lora.rank=8"])
    assert result.exit_code == 1
    assert "lora.rank" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["train", "--recipe", "nope"])
    assert result.exit_code == 1 and "unknown recipe 'nope'" in result.output


def test_recipe_file_path_and_yaml_errors(tmp_path):
    good = tmp_path / "mine.yaml"
    good.write_text("model:\n  name: tiny\nsteps: 2\n")
    assert recipes.load(str(good)).steps == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        recipes.load(str(bad))
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("lora: 5\n")
    with pytest.raises(RecipeError, match="'lora'"):
        recipes.load(str(wrong))


@pytest.mark.parametrize("name", sorted(recipes.available()))
def test_a_recipe_sets_only_what_differs_from_the_defaults(name):
    """Defaults live once, in recipe.py: a recipe key equal to its default is noise."""
    data = recipes.normalise(recipes.load_dict(name))
    defaults = recipes.to_dict(recipes.Recipe())
    same = [f"{k}.{s}" for k, v in data.items() if isinstance(v, dict) for s, x in v.items() if defaults[k][s] == x]
    same += [k for k, v in data.items() if not isinstance(v, dict) and k != "name" and defaults[k] == v]
    assert same == []


def test_recipes_are_package_data():
    from importlib.resources import files

    shipped = {p.name for p in (files("gcpo_cli") / "recipes").iterdir()}
    assert {f"{n}.yaml" for n in recipes.available()} == shipped


def test_text_keys_keep_their_value_as_typed_and_old_keys_still_read():
    assert recipes.load("tiny", ["set_name=007"]).set_name == "007"  # not the integer 7
    assert recipes.load("tiny", ["set_name=on"]).set_name == "on"  # not True
    assert recipes.load("tiny", ["set_name=null"]).set_name is None
    assert recipes.load("tiny", ["prompt_template='{problem} ok'"]).generation.prompt_template == "{problem} ok"
    assert recipes.load("tiny", [], {"set_name": "null"}).set_name == "null"  # a typed flag is a value
    old = recipes.load("tiny", ["data=sums", "all_correct=keep"])
    assert old.set_name == "sums" and old.loss.zero_variance == "keep"


def test_the_flat_keys_of_0_4_still_read_in_files_and_overrides(tmp_path):
    """A 0.4 recipe (flat keys) and the same knobs in sections are the same recipe."""
    flat = tmp_path / "flat.yaml"
    flat.write_text("lr: 2.0e-4\nmax_new_tokens: 64\ngolden: off\ngolden_source: teacher\nmini_batches: 2\n"
                    "golden_template: '{solution} #'\n")
    sectioned = tmp_path / "sectioned.yaml"
    sectioned.write_text("optimizer:\n  lr: 2.0e-4\ngeneration:\n  max_new_tokens: 64\ngolden:\n  enabled: false\n"
                         "  origin: teacher\n  template: '{solution} #'\nloss:\n  mini_batches: 2\n")
    a, b = recipes.load(str(flat)), recipes.load(str(sectioned))
    assert recipes.to_dict(a) | {"name": ""} == recipes.to_dict(b) | {"name": ""}
    assert a.golden.origin == "teacher" and not a.golden.enabled and a.loss.mini_batches == 2
    o = recipes.load("tiny", ["lr=1e-3", "golden=off", "temperature=0.7"])
    assert (o.optimizer.lr, o.golden.enabled, o.generation.temperature) == (1e-3, False, 0.7)
    with pytest.raises(RecipeError, match="'lr' and 'optimizer.lr' set the same knob"):
        recipes.from_dict({"lr": 1e-3, "optimizer": {"lr": 2e-3}})


def test_trl_grpo_config_names_are_aliases_and_the_rest_answer_in_one_line():
    r = recipes.load("tiny", ["num_generations=6", "max_completion_length=64", "learning_rate=3e-4",
                              "epsilon=0.2", "num_iterations=2", "importance_sampling_level=token",
                              "loss_type=dapo", "vllm_importance_sampling_cap=3", "max_steps=7", "beta=0.0"])
    assert (r.generation.samples_per_problem, r.generation.max_new_tokens, r.optimizer.lr) == (6, 64, 3e-4)
    assert (r.loss.eps_low, r.loss.eps_high, r.loss.ppo_epochs) == (0.2, 0.2, 2)  # epsilon_high defaults to epsilon
    assert (r.loss.ratio_level, r.loss.loss_agg, r.loss.tis_cap, r.steps) == ("token", "token_sum", 3.0, 7)
    assert recipes.load("tiny", ["epsilon=0.2", "epsilon_high=0.28"]).loss.eps_high == 0.28
    with pytest.raises(RecipeError, match="no KL term"):
        recipes.load("tiny", ["beta=0.04"])
    with pytest.raises(RecipeError, match="loss_type.*dr_grpo"):
        recipes.load("tiny", ["loss_type=dr_grpo"])


def test_unknown_keys_recipes_and_prompts_say_what_was_meant():
    with pytest.raises(RecipeError, match="did you mean 'optimizer.lr'"):
        recipes.load("tiny", ["optimizer.lrr=1"])
    with pytest.raises(RecipeError, match="did you mean 'samples_per_problem'"):
        recipes.load("tiny", ["samples_per_problm=4"])
    with pytest.raises(RecipeError, match="did you mean 'smollm2-cpu'"):
        recipes.load("smollm2-cpuu")
    with pytest.raises(RecipeError, match="did you mean 'boxed'"):
        recipes.load("tiny", ["prompt=boxd"])
