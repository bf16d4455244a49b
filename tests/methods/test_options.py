"""Method options (methods/options.py): what the CLI builds each method's flags from.

Each method declares an Option per parameter of its config's resolve(); a command line built
from the declarations (as the CLI builds it, with argparse) gives the same config as the Python
API with the same values; defaults are shown from _defaults; unknown parameters stay refused.
"""

from __future__ import annotations

import argparse
import inspect
import subprocess
import sys

import pytest

from tokcompile.errors import TokcompileError
from tokcompile.methods import METHODS, adavit, avit, evit, get_method, resolve_config, tome
from tokcompile.methods.adavit import AdavitConfig
from tokcompile.methods.avit import AvitConfig
from tokcompile.methods.evit import EvitConfig
from tokcompile.methods.options import Option
from tokcompile.methods.tome import TomeConfig

LEGACY = {"adavit": {"seed"}}  # resolve() keywords of old manifests, not flags


def parser_of(method: str) -> argparse.ArgumentParser:
    """The method's flags as an argparse group, the way the CLI declares them (default None)."""
    parser = argparse.ArgumentParser(prog="t", exit_on_error=False)
    group = parser.add_argument_group(method)
    for opt in METHODS[method].options:
        kwargs = (
            {"action": argparse.BooleanOptionalAction} if opt.boolean else {"type": opt.type, "metavar": opt.metavar}
        )
        group.add_argument(
            opt.option_string, dest=opt.name, default=None, help=f"{opt.help} (default {opt.default})", **kwargs
        )
    return parser


def cli_config(models, method: str, argv: list[str]):
    _, spec = models("test_vit")
    args = vars(parser_of(method).parse_args(argv))
    return resolve_config(get_method(method), spec, {k: v for k, v in args.items() if v is not None})


@pytest.mark.parametrize("name", list(METHODS))
def test_every_resolve_parameter_is_declared_once(name: str) -> None:
    method = METHODS[name]
    declared = [opt.name for opt in method.options]
    assert len(set(declared)) == len(declared)
    if method.config is None:
        assert declared == []
        return
    parameters = set(inspect.signature(method.config.resolve).parameters) - {"spec"} - LEGACY.get(name, set())
    assert set(declared) == parameters
    for opt in method.options:
        assert isinstance(opt, Option) and opt.help and opt.default
        assert "default" not in opt.help  # the CLI appends the default
        assert opt.option_string == "--" + opt.name.replace("_", "-")


def test_todays_flags_are_all_declared() -> None:
    flags = {opt.option_string for m in METHODS.values() for opt in m.options}
    assert flags >= {
        "--keep-rate", "--layers", "--fuse", "--r", "--prop-attn", "--max-tokens", "--gamma", "--beta", "--eps",
        "--token-threshold", "--head-threshold", "--layer-threshold", "--keep-layers", "--heads-seed",
    }  # fmt: skip
    # --layers means blocks in each method that takes it, with that method's own help and default
    layers = {name: opt for name, m in METHODS.items() for opt in m.options if opt.name == "layers"}
    assert set(layers) == {"evit", "tome", "ats"} and len({o.help for o in layers.values()}) == 3


def test_defaults_are_shown_from_defaults() -> None:
    shown = {(name, opt.name): opt.default for name, m in METHODS.items() for opt in m.options}
    assert shown["evit", "keep_rate"] == str(evit.DEFAULT_KEEP_RATE)
    assert shown["evit", "layers"].startswith(",".join(map(str, evit.DEFAULT_LAYERS_12)))
    assert shown["evit", "fuse"] == ("on" if evit.DEFAULT_FUSE else "off")
    assert shown["tome", "r"] == str(tome.DEFAULT_R)
    assert shown["avit", "eps"] == str(avit.DEFAULT_EPS)
    assert str(int(avit.DEFAULT_GAMMA_BETA["deit_tiny_patch16_224"][1])) in shown["avit", "beta"]
    assert shown["adavit", "token_threshold"] == str(adavit.DEFAULT_TOKEN_THRESHOLD)
    assert shown["adavit", "keep_layers"] == str(adavit.DEFAULT_KEEP_LAYERS)
    assert shown["adavit", "heads_seed"] == str(adavit.DEFAULT_HEADS_SEED)


@pytest.mark.parametrize(
    ("method", "argv", "expected"),
    [
        ("evit", ["--keep-rate", "0.5", "--layers", "1,3", "--no-fuse"], EvitConfig(0.5, (1, 3), False)),
        ("tome", ["--r", "2", "--layers", "0,1", "--no-prop-attn"], TomeConfig((2, 2, 0, 0, 0, 0), (0, 1), False)),
        ("avit", ["--gamma", "5", "--beta", "2", "--eps", "0.1"], AvitConfig(5.0, 2.0, 0.1)),
        (
            "adavit",
            ["--token-threshold", "0.7", "--head-threshold", "0.4", "--keep-layers", "2", "--heads-seed", "9"],
            AdavitConfig(0.7, 0.4, adavit.DEFAULT_LAYER_THRESHOLD, 2, 9),
        ),
    ],
)
def test_command_line_gives_the_config_of_the_same_values(models, method, argv, expected) -> None:
    assert cli_config(models, method, argv) == expected


def test_ats_command_line(models) -> None:
    config = cli_config(models, "ats", ["--layers", "2,4", "--max-tokens", "50,40"])
    assert (config.layers, config.max_tokens) == ((2, 4), (50, 40))


def test_no_flags_give_the_defaults(models) -> None:
    _, spec = models("test_vit")
    for name, method in METHODS.items():
        if method.config is not None:
            assert cli_config(models, name, []) == method.config.resolve(spec)


def test_bad_values_are_refused_by_resolve(models) -> None:
    with pytest.raises(TokcompileError, match=r"--keep-rate must be in \(0, 1\]"):
        cli_config(models, "evit", ["--keep-rate", "1.5"])
    with pytest.raises(TokcompileError, match="--layers must not repeat a block"):
        cli_config(models, "ats", ["--layers", "3,3"])
    with pytest.raises(TokcompileError, match=r"--heads-seed must be in \[0, 2\*\*64\)"):
        cli_config(models, "adavit", ["--heads-seed", "-1"])
    _, spec = models("test_vit")
    with pytest.raises(TokcompileError, match="method 'evit' has no parameter r"):
        resolve_config(get_method("evit"), spec, {"r": 3})


def test_adavit_heads_seed_and_its_old_name(models) -> None:
    """The decision-head seed is its own parameter (build's seed is the weights'); bundles built
    before the rename carry it as 'seed' in their manifests and still resolve."""
    _, spec = models("test_vit")
    m = get_method("adavit")
    assert resolve_config(m, spec, {"heads_seed": 7}).heads_seed == 7
    old = resolve_config(m, spec, {"seed": 7, "keep_layers": 1})
    assert old.heads_seed == 7 and old.params()["heads_seed"] == 7 and "seed" not in old.params()


def test_method_registry_loads_without_torch() -> None:
    """The CLI reads METHODS for its flags: importing it must stay cheap (pipelines load on use)."""
    code = "import sys, tokcompile.methods as m; m.METHODS['evit'].options; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
