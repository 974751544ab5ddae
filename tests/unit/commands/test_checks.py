import pytest

from corral.commands._checks import check_settings
from corral.config import parse_settings
from corral.errors import ConfigError


@pytest.mark.parametrize(
    ("document", "named"),
    [
        pytest.param({"models": [{"name": "m", "policy": {"name": "nosuch"}}]},
                     "models.0 (m).policy: unknown routing policy", id="policy-name"),
        pytest.param({"models": [{"name": "m", "policy": {
            "name": "cache_aware", "params": {"cache_threshhold": 0.5}}}]},
                     "unknown parameter 'cache_threshhold'", id="policy-param"),
        pytest.param({"models": [{"name": "m", "tokenizer": "/nonexistent/dir"}]},
                     "models.0 (m).tokenizer: no such file", id="tokenizer-path"),
        pytest.param({"models": [{"name": "m"}], "default_model": "x"},
                     "default_model", id="default-model"),
    ],
)
def test_settings_that_cannot_work_are_refused_naming_the_key(document, named):
    with pytest.raises(ConfigError) as caught:
        check_settings(parse_settings(document))
    assert named in caught.value.message


def test_good_settings_pass(tinyllama_path):
    check_settings(parse_settings({"models": [
        {"name": "a", "tokenizer": str(tinyllama_path)},
        {"name": "b", "tokenizer": "org/model", "policy": {"name": "round_robin"}},
    ]}))
