"""The train command is assembled from ppmodels.families: discovery, per-family options, and a
new family as one file. Parsing only; nothing is trained here."""

import argparse
import sys
import textwrap

import pytest

from ppmodels import families
from ppmodels.cli import build_parser, main
from ppmodels.families.base import Family, ImageFamily
from ppmodels.models import REGISTRY

NAMES = ["cvae", "dvae", "gmm", "sbn", "ssvae", "vae", "vqvae"]
#: an option only one family takes, a valid value, and what it parses to
OWN = {"vae": ["--preset", "burda"], "dvae": ["--latent", "mixture"], "ssvae": ["--labels", "100"],
       "cvae": ["--quadrants", "2"], "gmm": ["--components", "3"], "sbn": ["--layers", "nonlinear"],
       "vqvae": ["--codebook-size", "32"]}
PARSED = {"vae": ("preset", "burda"), "dvae": ("latent", "mixture"), "ssvae": ("labels", 100), "cvae": ("quadrants", 2),
          "gmm": ("components", 3), "sbn": ("layers", "nonlinear"), "vqvae": ("codebook_size", 32)}


def _exit_code(args):
    try:
        return main(args)
    except SystemExit as e:  # argparse
        return e.code


def test_the_six_families_are_discovered():
    assert list(families.FAMILIES) == NAMES
    assert list(families.discover()) == NAMES
    for name, family in families.FAMILIES.items():
        assert isinstance(family, Family) and family.name == name and family.help
        assert family.default_objective == REGISTRY[name].default_objective  # the model's natural objective


def test_the_train_command_offers_every_family(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert all(name in out for name in NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_each_family_parses_its_own_options_and_the_common_ones(name):
    svi = ["--guide", "bayes"] if name == "gmm" else []  # -K is an option of SVI, not of MAP restarts
    args = build_parser().parse_args(["train", name, *OWN[name], *svi, "--steps", "3", "--seed", "4", "-K", "2",
                                      "--out", "run"])
    assert (args.command, args.model, args.steps, args.seed, args.num_particles, args.out) == \
        ("train", name, 3, 4, 2, "run")
    dest, value = PARSED[name]
    assert getattr(args, dest) == value


def test_the_defaults_are_the_families_own():
    parse = build_parser().parse_args
    vae, gmm = parse(["train", "vae", "--out", "r"]), parse(["train", "gmm", "--out", "r"])
    assert (vae.lr, vae.batch_size, vae.preset, vae.guide) == (1e-3, 128, None, None)  # pyro, or burda with --recipe
    assert (gmm.lr, gmm.batch_size, gmm.guide, gmm.components, gmm.data) == (0.05, None, "map", 2, "tutorial")
    assert vae.objective is None and gmm.objective is None  # the family's natural objective, at train time


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("other", NAMES)
def test_another_familys_option_is_refused_in_one_line(name, other, capsys, tmp_path, monkeypatch):
    if name == other:
        return
    monkeypatch.chdir(tmp_path)
    code = _exit_code(["train", name, *OWN[other], "--epochs", "1", "--out", "x"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "unrecognized arguments" in err and f"ppmodels train {name} --help" in err
    assert not (tmp_path / "x").exists()


def test_guides_are_per_family(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert _exit_code(["train", "vae", "--guide", "map", "--epochs", "1", "--out", "x"]) == 2
    assert _exit_code(["train", "gmm", "--guide", "iaf", "--out", "x"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert "'diagonal', 'iaf'" in err[0] and "'map', 'bayes'" in err[1]


def test_a_familys_help_lists_only_its_options_and_the_common_ones(capsys):
    with pytest.raises(SystemExit):
        main(["train", "vae", "--help"])
    out = capsys.readouterr().out
    for option in ("--preset", "--guide", "--flow-layers", "--z-dim", "--epochs", "--objective", "--out", "--no-jit"):
        assert option in out, option
    for option in ("--components", "--restarts", "--labels", "--quadrants", "--latent", "--data"):
        assert option not in out, option
    with pytest.raises(SystemExit):
        main(["train", "gmm", "--help"])
    out = capsys.readouterr().out
    assert "--components" in out and "--preset" not in out and "--hidden" not in out and "default: enum" in out


TOY = textwrap.dedent('''
    """A toy family: all it takes is this file."""
    from ppmodels.families.base import Family


    class Toy(Family):
        name = "toy"
        help = "a family that prints its settings"
        default_objective = "elbo"  # no model class in the registry

        def add_options(self, parser):
            parser.add_argument("--width", type=int, default=7)

        def train(self, args):
            print(f"toy width={args.width} steps={args.steps} lr={args.lr} out={args.out}")


    FAMILY = Toy()
''')


def test_a_new_family_is_one_file(tmp_path, monkeypatch, capsys):
    (tmp_path / "toy.py").write_text(TOY)
    monkeypatch.setattr(families, "__path__", [*families.__path__, str(tmp_path)])  # as if in ppmodels/families/
    try:
        found = families.discover()
        assert list(found) == sorted([*NAMES, "toy"])
        monkeypatch.setattr(families, "FAMILIES", found)
        args = build_parser().parse_args(["train", "toy", "--width", "3", "--steps", "2", "--out", "r"])
        assert (args.model, args.width, args.steps) == ("toy", 3, 2)
        assert main(["train", "toy", "--steps", "5", "--out", "r"]) == 0
        assert capsys.readouterr().out.strip() == "toy width=7 steps=5 lr=0.001 out=r"
        assert _exit_code(["train", "vae", "--width", "3", "--epochs", "1", "--out", "r"]) == 2  # toy's alone
    finally:
        sys.modules.pop("ppmodels.families.toy", None)


def test_a_module_without_family_is_a_helper_and_a_bad_family_is_refused(tmp_path, monkeypatch):
    (tmp_path / "helper.py").write_text("X = 1\n")
    (tmp_path / "bad.py").write_text("FAMILY = object()\n")
    monkeypatch.setattr(families, "__path__", [*families.__path__, str(tmp_path)])
    try:
        with pytest.raises(Exception, match="must be a named"):
            families.discover()
        (tmp_path / "bad.py").unlink()
        sys.modules.pop("ppmodels.families.bad", None)
        assert list(families.discover()) == NAMES
    finally:
        for name in ("helper", "bad"):
            sys.modules.pop(f"ppmodels.families.{name}", None)


def test_models_do_not_import_the_families():
    import subprocess

    code = "import sys, ppmodels.models; print(any(m.startswith('ppmodels.families') for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_the_common_options_are_the_same_parser_for_each_family():
    from ppmodels.families.base import common_options

    def options(parser: argparse.ArgumentParser):
        return sorted(o for a in parser._actions for o in a.option_strings)

    first, *rest = [options(common_options(f)) for f in families.FAMILIES.values() if isinstance(f, ImageFamily)]
    assert all(r == first for r in rest) and "--out" in first and "--preset" not in first
    # gmm's points are no images: it takes the others, not the options of MNIST splits and the test NLL
    images = {"--binarize", "--validation", "--train-subset", "--eval-subset", "--num-samples"}
    assert options(common_options(families.FAMILIES["gmm"])) == sorted(set(first) - images)
