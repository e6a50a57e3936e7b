from __future__ import annotations

from pathlib import Path

import pytest

from harness.config import (
    Config,
    TrainConfig,
    config_from_dict,
    config_to_dict,
    flatten,
    load_config,
    parse_override,
    save_config,
)
from harness.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_project_params_load_strictly():
    cfg = load_config(REPO / "pipelines" / "params.yaml")
    assert isinstance(cfg, Config)
    assert cfg.profile == "quick" and cfg.train.model == "bnas_a" and cfg.train.epochs == 2  # quick profile applied
    assert load_config(REPO / "pipelines" / "params.yaml", {"profile": "paper"}).train.epochs == 600


def test_defaults_live_in_dataclasses():
    cfg = config_from_dict({})
    assert cfg.train == TrainConfig()
    assert cfg.train.sched == "onecycle" and cfg.train.epochs == 600  # BNAS CIFAR recipe


def test_unknown_key_names_key_and_file(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("train:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"p\.yaml.*unknown key 'train\.lrr'"):
        load_config(p)


def test_a_renamed_switch_names_its_new_name(tmp_path):
    p = tmp_path / "p.yaml"
    for old, new in (("no_skip: true", "search.skip"), ("official_stale_filter: true", "official_binary_preprocess")):
        p.write_text(f"search:\n  {old}\n")
        with pytest.raises(ConfigError, match=rf"p\.yaml: .search\.\w+. is now \S*{new}"):
            load_config(p)


def test_unknown_group(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("trian:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match="unknown key 'trian'"):
        load_config(p)


@pytest.mark.parametrize(
    "text,key",
    [
        ("train:\n  lr: fast\n", "train.lr"),
        ("train:\n  epochs: 2.5\n", "train.epochs"),
        ("train:\n  epochs: true\n", "train.epochs"),
        ("train:\n  amp: 1\n", "train.amp"),
        ("train:\n  sched: exponential\n", "train.sched"),
        ("data:\n  split_seed: '0'\n", "data.split_seed"),
        ("train: 3\n", "train"),
    ],
)
def test_wrong_type_names_key_and_file(tmp_path, text, key):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "bad.yaml" in str(e.value) and key in str(e.value)


def test_int_is_accepted_for_float(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("train:\n  lr: 1\n")
    cfg = load_config(p)
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    p = tmp_path / "m.yaml"
    p.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)


def test_overrides_are_yaml_scalars_never_code():
    assert parse_override("train.lr=0.1") == ("train.lr", 0.1)
    key, value = parse_override("train.model=__import__('os').system('x')")
    assert value == "__import__('os').system('x')"  # stays a string
    with pytest.raises(ConfigError):
        parse_override("train.lr")
    cfg = load_config(None, {"train.epochs": 3, "data.train_subset": 10})
    assert cfg.train.epochs == 3 and cfg.data.train_subset == 10
    with pytest.raises(ConfigError, match="train.epochs"):
        load_config(None, {"train.epochs": "three"})


def test_frozen_and_resolved_config_roundtrip(tmp_path):
    cfg = load_config(None, {"train.lr": 0.2})
    with pytest.raises(AttributeError):
        cfg.train.lr = 0.3  # type: ignore[misc]
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg
    assert flatten({"a": {"b": 1}}) == {"a.b": 1}


def test_recipes_apply_over_train_and_overrides_win(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("train: {lr: 0.05, epochs: 9}\nrecipes:\n  r: {lr: 1, opt: adam, model_kwargs: {scale_shape: full}}\n")
    cfg = load_config(p, recipe="r")
    assert cfg.train.lr == 1.0 and cfg.train.opt == "adam" and cfg.train.recipe == "r" and cfg.train.epochs == 9
    assert cfg.train.model_kwargs == {"scale_shape": "full"} and cfg.recipes == {}
    assert load_config(p, {"train.lr": 0.2}, recipe="r").train.lr == 0.2
    assert load_config(p).recipes["r"]["opt"] == "adam"
    with pytest.raises(ConfigError, match="unknown recipe 'q'.*r"):
        load_config(p, recipe="q")
    p.write_text("recipes:\n  r: {lr: fast}\n")
    with pytest.raises(ConfigError, match=r"recipes\.r\.lr"):
        load_config(p)
    p.write_text("recipes:\n  r: {lrr: 1}\n")
    with pytest.raises(ConfigError, match=r"unknown key 'recipes\.r\.lrr'"):
        load_config(p)


def test_every_project_recipe_resolves():
    import yaml

    names = yaml.safe_load((REPO / "pipelines" / "params.yaml").read_text())["recipes"]
    assert {"shared", "xnornetpp_paper_stage1", "xnornetpp_paper_stage2", "bireal_scratch"} <= set(names)
    for n in names:
        assert load_config(REPO / "pipelines" / "params.yaml", recipe=n).train.recipe == n
        assert "batch_size" in names[n], f"recipe {n} does not state its global batch"


def test_bnas_paper_recipes_carry_the_release_hyperparameters():
    root = Path(__file__).resolve().parents[2]
    c = load_config(root / "pipelines" / "params.yaml", {"profile": "paper"}, recipe="bnas_cifar_paper").train
    assert (c.epochs, c.batch_size, c.opt, c.lr, c.weight_decay, c.sched, c.drop_path) == (
        600,
        256,
        "momentum",
        0.05,
        3e-6,
        "onecycle",
        0.2,
    )
    i = load_config(root / "pipelines" / "params.yaml", {"profile": "paper"}, recipe="bnas_imagenet_paper")
    t = i.train
    assert (t.epochs, t.lr, t.weight_decay, t.sched, t.restart_epochs, t.label_smoothing, t.clip_grad) == (
        250,
        0.05,
        3e-5,
        "cosine_restarts",
        50,
        0.1,
        5.0,
    )
    assert (i.data.color_jitter, i.data.color_jitter_hue) == (0.4, 0.2)
    assert t.batch_size == t.recipe_batch_size == 1024  # global: the release README's 4 GPUs x 256


def test_profiles_and_methods_resolve_in_order(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text(
        "profile: quick\n"
        "train: {epochs: 600, lr: 0.1}\n"
        "recipes: {r: {lr: 0.05, epochs: 300}}\n"
        "profiles:\n  quick: {train: {epochs: 1}, data: {train_subset: 100}}\n  paper: {}\n"
        "methods:\n"
        "  m:\n    recipe: r\n    train: {model: bnas_a, model_kwargs: {skip: false}}\n"
        "    profiles: {quick: {train: {model_kwargs: {layers: 5}}}}\n"
        "  s: {search: {skip: false}, profiles: {quick: {search: {epochs: 2}}}}\n"
        "pipeline: {seeds: [0, 1]}\n"
    )
    c = load_config(p, method="m", recipe="")
    # recipe < method groups < profile < method's profile (dicts merge key by key)
    assert (c.train.epochs, c.train.lr, c.train.recipe, c.train.model) == (1, 0.05, "r", "bnas_a")
    assert c.train.model_kwargs == {"skip": False, "layers": 5} and c.data.train_subset == 100
    assert c.profiles == {} and c.methods == {} and c.profile == "quick"
    paper = load_config(p, {"profile": "paper", "train.seed": 3}, method="m", recipe="")
    assert (paper.train.epochs, paper.train.model_kwargs, paper.train.seed) == (300, {"skip": False}, 3)
    s = load_config(p, method="s", recipe="")
    assert not s.search.skip and s.search.epochs == 2
    with pytest.raises(ConfigError, match="unknown method 'mm'.*closest: m"):
        load_config(p, method="mm", recipe="")
    assert load_config(p).pipeline == {"seeds": [0, 1]}
    with pytest.raises(ConfigError, match="profile: unknown profile 'gpu'"):
        load_config(p, {"profile": "gpu"})
    p.write_text("methods: {m: {train: {lr: fast}}}\n")
    with pytest.raises(ConfigError, match="methods.m.train.lr: expected float"):
        load_config(p)
    p.write_text("methods: {m: {recipe: nope}}\n")
    with pytest.raises(ConfigError, match="methods.m.recipe: unknown recipe 'nope'"):
        load_config(p)
    p.write_text("methods: {m: {trian: {lr: 1}}}\n")
    with pytest.raises(ConfigError, match="methods.m: unknown key 'trian'"):
        load_config(p)


def test_a_profile_changes_only_sizes(tmp_path):
    """Issue 14: a profile that sets an optimiser value is an error naming the key (sizes only)."""
    p = tmp_path / "params.yaml"
    p.write_text("profile: quick\nprofiles:\n  quick: {train: {epochs: 2, lr: 0.01}}\n")
    with pytest.raises(ConfigError, match=r"profiles\.quick\.train\.lr: a profile changes only sizes"):
        load_config(p)
    p.write_text("profile: quick\nprofiles:\n  quick: {train: {model_kwargs: {skip: false}}}\n")
    with pytest.raises(ConfigError, match=r"profiles\.quick\.train\.model_kwargs\.skip"):
        load_config(p)


def test_the_quick_profile_keeps_the_recipe_asked_for():
    """Issue 14: `--recipe shared` under the quick profile trains with the recipe's lr, not a profile's."""
    params = REPO / "pipelines" / "params.yaml"
    shared = load_config(params, recipe="shared").train
    assert (shared.lr, shared.opt, shared.sched, shared.epochs) == (0.001, "adam", "linear", 2)
    # a method that lowers its lr at small scale says so in its own entry
    assert load_config(params, method="bnas_a").train.lr == 0.01
    assert load_config(params, {"profile": "paper"}, method="bnas_a").train.lr == 0.05


@pytest.mark.parametrize(
    "key,value,want",
    [
        ("train.batch_size", 0, "> 0"),
        ("train.batch_size", -4, "> 0"),
        ("train.lr", -1, "> 0"),
        ("train.epochs", 0, "> 0"),
        ("train.momentum", 1.5, "in [0, 1)"),
        ("train.drop_path", 1.0, "in [0, 1)"),
        ("search.layers", 2, ">= 3"),
        ("search.batch_size", 0, "> 0"),
        ("search.temperature", 0, "> 0"),
        ("search.real_weight_fraction", 1.5, "in [0, 1)"),
        ("data.search_train_fraction", 1.0, "in (0, 1)"),
    ],
)
def test_out_of_range_values_name_the_key(key, value, want):
    with pytest.raises(ConfigError) as e:
        load_config(REPO / "pipelines" / "params.yaml", {key: value}, method="bnas_a")
    msg = str(e.value)
    assert key in msg and want in msg and repr(value) in msg and "\n" not in msg


def test_explain_config_names_the_layer_of_every_value():
    from harness.config import explain_config

    cfg, origin = explain_config(REPO / "pipelines" / "params.yaml", {"train.seed": 4}, method="bnas_a")
    assert cfg.train.seed == 4 and origin["train.seed"] == "override"
    assert origin["train.opt"] == "recipe bnas_cifar_paper" and origin["train.drop_path"] == "recipe bnas_cifar_paper"
    assert origin["train.epochs"] == "profile quick" and origin["data.train_subset"] == "profile quick"
    assert origin["train.lr"] == "method bnas_a, profile quick"
    assert origin["train.model"] == "method bnas_a"
    assert origin["train.amp"] == "default" and origin["data.split_seed"] == "params"
    assert set(origin) == set(flatten(config_to_dict(cfg)))


def test_an_explicit_recipe_keeps_its_values_over_a_method_entry(tmp_path):
    """Issue 14: `--recipe b --method m` trains recipe b's values; m keeps what b does not set (model, sizes)."""
    p = tmp_path / "params.yaml"
    p.write_text(
        "profile: quick\n"
        "recipes: {a: {lr: 0.05}, b: {lr: 0.001, opt: adam, model_kwargs: {weight_binary: false}}}\n"
        "profiles: {quick: {train: {epochs: 2}}}\n"
        "methods: {m: {recipe: a, train: {model: bnas_a, model_kwargs: {weight_binary: true}},\n"
        "   profiles: {quick: {train: {lr: 0.01, model_kwargs: {layers: 5}}}}}}\n"
    )
    own = load_config(p, method="m").train
    assert (own.lr, own.opt, own.model_kwargs) == (0.01, "momentum", {"weight_binary": True, "layers": 5})
    other = load_config(p, recipe="b", method="m").train
    assert (other.lr, other.opt, other.recipe, other.model, other.epochs) == (0.001, "adam", "b", "bnas_a", 2)
    assert other.model_kwargs == {"weight_binary": False, "layers": 5}


def test_recipe_own_is_the_methods_own_recipe_by_name(tmp_path):
    """`--recipe own` (the pipeline's paper-recipe stages) resolves exactly as the method alone would, and says so
    in train.recipe; a method without a recipe, no method, or a recipe named `own` is one clear error."""
    p = tmp_path / "params.yaml"
    p.write_text(
        "profile: quick\n"
        "recipes: {a: {lr: 0.05}, b: {lr: 0.001, opt: adam}}\n"
        "profiles: {quick: {train: {epochs: 2}}}\n"
        "methods: {m: {recipe: a, train: {model: bnas_a}, profiles: {quick: {train: {lr: 0.01}}}},\n"
        "   bare: {train: {model: bnas_a}}}\n"
    )
    own = load_config(p, recipe="own", method="m").train
    assert own == load_config(p, method="m").train
    assert (own.recipe, own.lr, own.opt) == ("a", 0.01, "momentum")
    with pytest.raises(ConfigError, match="method 'bare' has no recipe"):
        load_config(p, recipe="own", method="bare")
    with pytest.raises(ConfigError, match="needs a --method"):
        load_config(p, recipe="own")
    p.write_text("recipes: {own: {lr: 0.05}}\n")
    with pytest.raises(ConfigError, match="recipes.own: 'own' is reserved"):
        load_config(p)
