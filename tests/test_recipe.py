import pytest

from gcpo_cli import recipe as recipes
from gcpo_cli.recipe import RecipeError


@pytest.mark.parametrize("name", sorted(recipes.available()))
def test_every_recipe_loads_and_resolves(name):
    r = recipes.load(name)
    assert r.name == name
    assert r.ratio_level and r.loss_agg and r.eps_low is not None and r.golden in ("on", "off")


def test_shipped_recipes_are_the_ones_the_readme_names():
    assert {"1.5b-qlora", "smollm2-cpu", "tiny"} <= set(recipes.available())
    q = recipes.load("1.5b-qlora")
    assert q.model.quant == "nf4" and q.model.double_quant and q.model.dtype == "bfloat16"
    assert q.lora.target_modules == "all-linear" and q.model.gradient_checkpointing


def test_algorithm_presets_fill_unset_knobs_and_overrides_win():
    g = recipes.load("smollm2-cpu")
    assert (g.algorithm, g.golden, g.ratio_level, g.eps_low, g.eps_high) == ("gcpo", "on", "sequence", 3e-4, 4e-4)
    grpo = recipes.load("smollm2-cpu", ["algorithm=grpo"])
    assert (grpo.golden, grpo.ratio_level, grpo.loss_agg, grpo.eps_high) == ("off", "token", "token_mean", 0.2)
    dapo = recipes.load("smollm2-cpu", ["algorithm=dapo"])
    assert dapo.dynamic_sampling and dapo.eps_high == 0.28 and dapo.overlong_buffer == 12
    ablation = recipes.load("smollm2-cpu", ["golden=off", "ratio_level=token", "lora.r=8", "lr=3e-4"])
    assert ablation.golden == "off" and ablation.ratio_level == "token" and ablation.lora.r == 8
    assert ablation.lr == 3e-4


@pytest.mark.parametrize(
    "override, key",
    [
        ("learning_rate=1e-4", "learning_rate"),
        ("lora.rank=8", "lora.rank"),
        ("steps=many", "steps"),
        ("algorithm=ppo", "algorithm"),
        ("temperature=-1", "temperature"),
        ("samples_per_problem=1", "samples_per_problem"),
        ("model.quant=int3", "model.quant"),
        ("prompt_template=no placeholder", "prompt_template"),
        ("gradient_checkpointing=true", "gradient_checkpointing"),
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
    data = recipes.load_dict(name)
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
    assert recipes.load("tiny", ["prompt_template='{problem} ok'"]).prompt_template == "{problem} ok"
    assert recipes.load("tiny", [], {"set_name": "null"}).set_name == "null"  # a typed flag is a value
    old = recipes.load("tiny", ["data=sums", "all_correct=keep"])
    assert old.set_name == "sums" and old.zero_variance == "keep"
