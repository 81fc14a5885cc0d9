import pytest

from edgekit.errors import RecipeInvalid
from edgekit.recipe import load_recipe, parse_recipe


def test_example_recipes_parse():
    from pathlib import Path

    recipes = sorted((Path(__file__).resolve().parents[2] / "models" / "recipes").glob("*.yaml"))
    assert len(recipes) >= 4
    for path in recipes:
        assert load_recipe(path).passes


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"passes": [{"type": "quantize_ort", "modee": "static"}]}, "modee: unknown key"),
        ({"passes": [{"type": "quantise"}]}, "unknown pass type 'quantise'"),
        ({"passes": [{"type": "lowrank", "rank_ratio": 0.5, "energy": 0.9}]}, "exactly one of rank_ratio or energy"),
        ({"passes": [{"type": "prune_structured", "ratio": 1.5}]}, "ratio"),
        ({"pases": []}, "pases: unknown key"),
        ({"passes": "quantize"}, "passes must be a list"),
    ],
)
def test_bad_recipes_fail_with_the_reason(data, message):
    with pytest.raises(RecipeInvalid, match=message):
        parse_recipe(data)


def test_missing_and_malformed_recipe_files(tmp_path):
    with pytest.raises(RecipeInvalid, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("passes: [\n")
    with pytest.raises(RecipeInvalid, match="not valid YAML"):
        load_recipe(bad)
