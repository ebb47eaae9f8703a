"""No silent options (issue 13): the shared rule, and every built-in profile obeys it."""
from __future__ import annotations

import pytest

from adbench.config import reject_inert, resolve_config
from adbench.errors import ConfigError
from adbench.registry import METHODS


def _every_profile():
    for name in METHODS.names():
        cls = METHODS.get(name)
        for profile in sorted(set(cls.PROFILES) | {"paper"}):
            yield name, profile


@pytest.mark.parametrize("method, profile", list(_every_profile()))
def test_no_profile_sets_an_option_it_cannot_use(method, profile):
    """A profile that sets an option its own configuration ignores would be a silent option."""
    cls = METHODS.get(method)
    config = resolve_config(cls.Config, cls.PROFILES, profile, method=method)
    reject_inert(config, config.inert_options(), user_set=None)


def test_user_set_inert_option_is_an_error_a_profile_set_one_is_not():
    """``--profile quick --set stages=ncl`` leaves quick's discriminator settings unused: that is
    the profile's doing and allowed; setting one of them by hand is the error."""
    from adbench.methods.tocoad import ToCoAD, ToCoADConfig

    config = resolve_config(ToCoADConfig, ToCoAD.PROFILES, "quick", {"stages": "ncl"}, method="tocoad")
    assert config.stages == "ncl"
    with pytest.raises(ConfigError) as info:
        resolve_config(ToCoADConfig, ToCoAD.PROFILES, "quick", {"stages": "ncl", "dnp_epochs": "3"}, method="tocoad")
    assert str(info.value).startswith("--set dnp_epochs=3 has no effect: with stages=ncl")


def test_source_of_an_inert_option_is_named():
    from adbench.config import yaml_source
    from adbench.methods.draem import DRAEM

    with pytest.raises(ConfigError) as info:
        resolve_config(DRAEM.Config, DRAEM.PROFILES, "paper", {"rotate_prob": 0, "rotate_degrees": 10},
                       method="draem", sources={"rotate_degrees": yaml_source("grid.yaml", "draem")})
    assert str(info.value) == ("--config grid.yaml: key methods.draem.rotate_degrees=10.0 has no effect: "
                               "rotate_prob=0 (no image is rotated)")
