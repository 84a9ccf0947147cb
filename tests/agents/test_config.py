import pytest

from metasched.agents.config import ALGOS, TrainConfig, load_config, shipped_hyperparams
from metasched.errors import ConfigError, UnknownNameError


@pytest.mark.parametrize("algo", sorted(ALGOS))
def test_shipped_configs_resolve_and_validate(algo):
    cfg = load_config(algo, "metasched/NMF-v1")
    assert cfg.algo == algo and cfg.n_timesteps > 0 and cfg.vec_env == "batched"
    again = TrainConfig.from_dict(cfg.to_dict())
    assert again == cfg
    assert "default" in shipped_hyperparams(algo)


def test_env_block_overrides_default_and_merges_dicts(tmp_path):
    f = tmp_path / "hp.yml"
    f.write_text(
        "default:\n  n_steps: 32\n  env_kwargs: {budget: 500}\n"
        "metasched/NMF-v1:\n  env_kwargs: {steps_per_action: 25}\n"
    )
    cfg = load_config("ppo", "metasched/NMF-v1", hyperparams=f)
    assert cfg.algo_kwargs["n_steps"] == 32
    # shipped env block (action) + user default block + user env block, merged
    assert cfg.env_kwargs == {"action": "discrete3", "budget": 500, "steps_per_action": 25}


def test_flat_user_file_and_cli_overrides(tmp_path):
    f = tmp_path / "hp.yml"
    f.write_text("learning_rate: 0.001\nn_envs: 4\n")
    cfg = load_config("a2c", "metasched/NMF-v1", hyperparams=f,
                      overrides={"n_envs": 2, "n_timesteps": 999, "vec_env": None})
    assert cfg.algo_kwargs["learning_rate"] == 0.001 and cfg.n_envs == 2
    assert cfg.n_timesteps == 999 and cfg.vec_env == "batched"


def test_unknown_key_gets_a_suggestion(tmp_path):
    f = tmp_path / "hp.yml"
    f.write_text("learnin_rate: 0.001\n")
    with pytest.raises(ConfigError, match="did you mean 'learning_rate'"):
        load_config("ppo", "metasched/NMF-v1", hyperparams=f)


@pytest.mark.parametrize(
    ("algo", "action", "match"),
    [("dqn", "continuous", "dqn cannot act"), ("sac", "discrete3", "sac cannot act"),
     ("td3", "discrete5", "td3 cannot act")],
)
def test_wrong_algo_action_combination(algo, action, match):
    with pytest.raises(ConfigError, match=match):
        load_config(algo, "metasched/NMF-v1", overrides={"env_kwargs": {"action": action}})


def test_bad_names_and_values(tmp_path):
    with pytest.raises(UnknownNameError, match="did you mean 'ppo'"):
        load_config("ppoo", "metasched/NMF-v1")
    with pytest.raises(UnknownNameError, match=r"environment.*did you mean 'metasched/NMF-v1'"):
        load_config("ppo", "metasched/NMF-v0")  # -v1 replaced it
    with pytest.raises(ConfigError, match="env kwarg"):
        load_config("ppo", "metasched/NMF-v1", overrides={"env_kwargs": {"budgte": 3}})
    with pytest.raises(ConfigError, match="n_envs"):
        load_config("ppo", "metasched/NMF-v1", overrides={"n_envs": 0})
    with pytest.raises(ConfigError, match="vec_env"):
        load_config("ppo", "metasched/NMF-v1", overrides={"vec_env": "threads"})
    with pytest.raises(ConfigError, match="activation_fn"):
        load_config("ppo", "metasched/NMF-v1",
                    overrides={"policy_kwargs": {"activation_fn": "sigmoidd"}})
    with pytest.raises(ConfigError, match="set by metasched train"):
        load_config("ppo", "metasched/NMF-v1", overrides={"seed": 3, "verbose": 1})
    bad = tmp_path / "bad.yml"
    bad.write_text("n_steps: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config("ppo", "metasched/NMF-v1", hyperparams=bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("ppo", "metasched/NMF-v1", hyperparams=tmp_path / "nope.yml")


# -- issue 12, item 4: numbers as users write them, types checked before anything runs -----
def test_exponent_floats_in_a_hyperparameter_file_are_numbers(tmp_path):
    f = tmp_path / "hp.yml"
    f.write_text("learning_rate: 3e-4\nbuffer_size: 1e5\nenv_kwargs: {kappa: 1e0}\n")
    cfg = load_config("dqn", "metasched/NMF-v1", hyperparams=f)
    assert cfg.algo_kwargs["learning_rate"] == 3e-4
    assert cfg.algo_kwargs["buffer_size"] == 100000
    assert isinstance(cfg.algo_kwargs["buffer_size"], int)  # a whole float for an int option
    assert cfg.env_kwargs["kappa"] == 1.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("learning_rate: fast\n", "ppo hyperparameter learning_rate must be a number, got 'fast'"),
        ("n_steps: 64.5\n", "ppo hyperparameter n_steps must be an integer, got 64.5"),
        ("gamma: yes\n", "ppo hyperparameter gamma must be a number, got True"),
        ("env_kwargs: {kappa: big}\n", "env kwarg kappa must be a number, got 'big'"),
        ("env_kwargs: {budget: 1e2x}\n", "env kwarg budget must be an integer, got '1e2x'"),
    ],
)
def test_a_string_where_a_number_belongs_is_a_one_line_error(tmp_path, text, message):
    f = tmp_path / "hp.yml"
    f.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_config("ppo", "metasched/NMF-v1", hyperparams=f)
    assert str(exc.value) == message


def test_schedules_and_tuples_pass_the_type_check():
    from stable_baselines3.common.utils import LinearSchedule

    cfg = load_config("ppo", "metasched/NMF-v1",
                      overrides={"learning_rate": LinearSchedule(1e-3, 1e-4, 1.0)})  # fmt: skip
    assert callable(cfg.algo_kwargs["learning_rate"])
    cfg = load_config("dqn", "metasched/NMF-v1", overrides={"train_freq": [1, "episode"]})
    assert cfg.algo_kwargs["train_freq"] == [1, "episode"]
