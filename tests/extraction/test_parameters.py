"""The extraction parameters are declared once (:mod:`tripletsk.extraction.parameters`): the
Python API, ``ExtractOptions``, ``ImageFeatures``, Dask and the command line agree with it, so
that a copy cannot drift."""

from __future__ import annotations

import argparse
import inspect

import pytest

from tripletsk.cli import build_parser
from tripletsk.cli.extract import extraction_options
from tripletsk.errors import UserError
from tripletsk.extraction.distributed import extract_with_dask
from tripletsk.extraction.image_features import ImageFeatures
from tripletsk.extraction.options import ExtractOptions
from tripletsk.extraction.parameters import (
    AUTO,
    DEFAULTS,
    IMAGE_FEATURES_PARAMETERS,
    NETWORK_PARAMETERS,
    PARAMETERS,
    SHARD_PARAMETERS,
    cli_parameters,
)
from tripletsk.extraction.run import extract_features

#: ``extract-features`` options that are not parameters of one extraction (Dask, shards).
SCALING_OPTIONS = {"scheduler", "dask_workers", "shards", "gpus"}


def _signature(fn) -> dict:
    return {
        name: p.default
        for name, p in inspect.signature(fn).parameters.items()
        if p.kind is not inspect.Parameter.VAR_KEYWORD
    }


def _extract_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["extract-features"]


def test_extract_features_takes_every_declared_parameter_with_its_default():
    params = _signature(extract_features)
    assert list(params) != list(PARAMETERS)  # (its own order: positional ones first)
    assert set(params) == set(PARAMETERS)
    assert params.pop("images_dir") is inspect.Parameter.empty
    assert params == dict(DEFAULTS)


def test_extract_features_docstring_documents_every_parameter():
    doc = extract_features.__doc__
    assert "{parameters}" not in doc
    for name, p in PARAMETERS.items():
        assert f"\n    {name} : {p.kind}" in doc
        assert " ".join(p.doc.split()[:6]) in " ".join(doc.split())


def test_extract_options_defaults_are_the_declared_ones(tmp_path):
    opts = ExtractOptions.from_arguments(tmp_path, tmp_path / "f.h5", weights="none")
    for name in ("image_size", "batch_size", "dtype", "recursive", "prune", "verify",
                 "max_pixels", "quiet", "shard", "replace", "only"):  # fmt: skip
        assert getattr(opts, name) == DEFAULTS[name], name
    assert opts.backend == DEFAULTS["backend"] and opts.spec.arch.name == DEFAULTS["backbone"]
    with pytest.raises(TypeError, match=r"unexpected extraction arguments \['image_sise'\]"):
        ExtractOptions.from_arguments(tmp_path, tmp_path / "f.h5", image_sise=32)


def test_cli_options_are_the_declared_ones_with_their_help_and_defaults():
    parser = _extract_parser()
    actions = {a.dest: a for a in parser._actions if a.dest != "help"}
    declared = {p.name: p for p in cli_parameters()}
    assert set(actions) - SCALING_OPTIONS == set(declared)
    for name, p in declared.items():
        action = actions[name]
        assert action.help == p.help, name
        assert action.default == DEFAULTS.get(name), name
        flags = [s for s in p.option_strings if s.startswith("-")]
        assert action.option_strings[: len(flags)] == flags, name
    assert actions["image_size"].option_strings == ["--image-size"]
    assert actions["quiet"].option_strings == ["-q", "--quiet"]
    assert actions["recursive"].option_strings == ["--recursive", "--no-recursive"]
    args = parser.parse_args(["imgs", "--shard", "2/3"])
    assert args.shard == (2, 3)  # parsed by the CLI's own type
    assert vars(args)["images_dir"] == "imgs"


def test_cli_passes_the_declared_parameters_on():
    args = _extract_parser().parse_args(["imgs", "--image-size", "64", "--precision", "int8"])
    options = extraction_options(args)
    assert set(options) <= set(SHARD_PARAMETERS) | {"quiet"}
    assert options == {k: DEFAULTS[k] for k in options} | {"image_size": 64, "precision": "int8"}
    every_option = {p.name for p in cli_parameters()} & set(SHARD_PARAMETERS)
    assert set(options) == every_option | {"quiet"}


def test_image_features_shares_the_declared_parameters():
    params = _signature(ImageFeatures.__init__)
    params.pop("self")
    shared = {k: v for k, v in params.items() if k in PARAMETERS}
    assert set(shared) == set(IMAGE_FEATURES_PARAMETERS)
    assert set(NETWORK_PARAMETERS) <= set(shared)
    for name, default in shared.items():
        assert default == (AUTO if name in NETWORK_PARAMETERS else DEFAULTS[name]), name
    # output and images_dir are spelled cache and root there
    assert params["cache"] == DEFAULTS["output"] and params["root"] is None
    # the rest are ImageFeatures' own
    assert set(params) - set(shared) == {"root", "cache", "append", "lock_timeout"}


def test_image_features_network_defaults_are_the_declared_ones():
    from tripletsk.extraction.image_features import _NETWORK_DEFAULTS

    assert _NETWORK_DEFAULTS == {k: DEFAULTS[k] for k in NETWORK_PARAMETERS} | {
        "precision": "float32"  # never int8 unless asked for or cached
    }


def test_extract_with_dask_passes_on_the_declared_shard_parameters(tmp_path):
    params = _signature(extract_with_dask)
    assert params["output"] == DEFAULTS["output"]
    assert {"progress", "quiet"} <= set(params) and not set(params) & set(SHARD_PARAMETERS)
    assert set(SHARD_PARAMETERS) < set(_signature(extract_features))
    for name in ("shard", "replace", "only", "int8_model", "decode_memory", "image_sise"):
        with pytest.raises(TypeError, match=rf"unexpected arguments \['{name}'\]"):
            extract_with_dask(tmp_path, tmp_path / "f.h5", **{name: None})
    doc = " ".join(extract_with_dask.__doc__.split())
    assert ", ".join(f"``{k}``" for k in SHARD_PARAMETERS) in doc


def test_every_run_setting_reaches_extract_features(tmp_path):
    """What Dask and the CLI pass on is accepted by extract_features (checked: before any
    work, a missing folder is the error)."""
    settings = {k: DEFAULTS[k] for k in SHARD_PARAMETERS}
    with pytest.raises(UserError, match="images folder does not exist"):
        extract_features(tmp_path / "missing", tmp_path / "f.h5", **settings)
