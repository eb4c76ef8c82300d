"""Every strategy and filter option declares its help and bounds with `option`, checked in one place."""
import dataclasses

import pytest

from purify.errors import ConfigError
from purify.filters import FILTERS
from purify.registry import available_strategies, option


def _configs():
    return ([e.config_cls for e in available_strategies().values()]
            + [FILTERS[name].config_cls for name in FILTERS.names()])


@pytest.mark.parametrize("config_cls", _configs(), ids=lambda c: c.__name__)
def test_every_option_declares_its_help(config_cls):
    helps = config_cls.option_help()
    assert set(helps) == {f.name for f in dataclasses.fields(config_cls) if f.name != "seed"}
    assert all(helps.values())
    config_cls().validate()


def test_declared_bounds_name_the_config_and_the_field():
    from strategies.bayes_prune import BayesPruneConfig
    from strategies.rl_prune import RLPruneConfig

    with pytest.raises(ConfigError, match=r"BayesPruneConfig\.prior_inclusion must be > 0 and < 1, got 1.0"):
        BayesPruneConfig(prior_inclusion=1.0).validate()
    with pytest.raises(ConfigError, match=r"BayesPruneConfig\.init_logit must be a number"):
        BayesPruneConfig(init_logit=None).validate()
    with pytest.raises(ConfigError, match="RLPruneConfig: ppo_batch_size must be <= n_steps"):
        RLPruneConfig(ppo_batch_size=100, n_steps=64).validate()


def test_option_keeps_its_metadata():
    f = option(1.0, "a knob", low=0, high=1, high_open=True)
    assert f.default == 1.0 and f.metadata["high_open"] and f.metadata["help"] == "a knob"
