"""train's recipe fields by name: --set FIELD=VALUE, --config FILE.toml, --show."""

import pytest
from conftest import run_cli as run

from siamsearch.training import settings
from siamsearch.core.config import AUGMENT_PRESETS
from siamsearch.core.errors import UsageError


def test_set_takes_any_field_of_the_recipe_by_its_type():
    found = settings.parse_sets(["koleo=20", "gem_p=4", "freeze-backbone=no", "test_scales=1.41,2", "hinge=0.5",
                                 "unfreeze=3:blocks.5,blocks.6 6:head", "augment=copy-edits", "cache_gb=2"])
    assert found == {"koleo": 20.0, "gem_p": 4.0, "freeze_backbone": False, "test_scales": (1.41, 2.0), "hinge": 0.5,
                     "unfreeze": ((3, ("blocks.5", "blocks.6")), (6, ("head",))),
                     "augment": AUGMENT_PRESETS["copy-edits"], "cache_gb": 2.0}


@pytest.mark.parametrize("item, words", [("koleoo=3", "did you mean 'koleo'"), ("gem-pp=4", "did you mean 'gem_p'"),
                                         ("epochs=many", "epochs cannot be 'many'"), ("epochs=2.5", "cannot be"),
                                         ("koleo", "FIELD=VALUE"), ("augment=glyphs", "augment must be one of")])
def test_a_misspelt_field_or_a_bad_value_is_one_line_naming_what_to_do(item, words):
    with pytest.raises(UsageError, match=words):
        settings.parse_sets([item])


def test_a_toml_config_sets_fields_and_set_wins_over_it(tmp_path):
    config = tmp_path / "recipe.toml"
    config.write_text('koleo = 5\ntest_scales = [1.41]\nfreeze_backbone = true\nloss = "triplet"\n')
    assert settings.read_config(config) == {"koleo": 5.0, "test_scales": (1.41,), "freeze_backbone": True,
                                            "loss": "triplet"}
    config.write_text("kolea = 5\n")
    with pytest.raises(UsageError, match="did you mean 'koleo'"):
        settings.read_config(config)


def test_train_show_prints_the_recipe_with_the_settings_and_the_help_lists_at_most_25_options(tmp_path, photos):
    config = tmp_path / "r.toml"
    config.write_text("koleo = 5\nlr = 0.01\n")
    res = run("train", photos, "--recipe", "copies", "--show", "--set", "koleo=20", "--set", "gem_p=4",
              "--config", config)
    assert res.exit_code == 0, res.output
    shown = {line.split()[1]: line.split()[3] for line in res.output.splitlines() if line.count("│") == 3}
    assert (shown["koleo"], shown["gem_p"], shown["lr"], shown["backbone"]) == ("20.0", "4.0", "0.01",
                                                                                "efficientnet_lite0")
    res = run("train", photos, "--set", "koleoo=2", "--show")
    assert res.exit_code == 2 and "did you mean 'koleo'" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    help_text = run("train", "--help").output
    assert sum(line.lstrip("│ ").startswith("--") for line in help_text.splitlines()) <= 25
    assert "--gem-p" not in help_text and "--set" in help_text
