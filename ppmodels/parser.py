"""The parser of the ``ppmodels`` command line: :func:`build_parser`.

Its own module, so that :mod:`ppmodels.cli` (which runs the commands) and :mod:`ppmodels.sweep`
(which checks every run's command line, and asks it which options hold a list in one run) both
use it without importing each other. ``train MODEL`` is assembled from :mod:`ppmodels.families`.
"""

from __future__ import annotations

import argparse

__all__ = ["build_parser", "option_name"]


#: the action classes that also record, in the parser that parses, that their option was given
_RECORDING: dict[type, type] = {}


def _recording(cls: type) -> type:
    if getattr(cls, "records_given", False):
        return cls
    if cls not in _RECORDING:
        def __call__(self, parser, namespace, values, option_string=None):
            if isinstance(parser, _Parser):
                parser.given.add(option_name(self))
            cls.__call__(self, parser, namespace, values, option_string)

        _RECORDING[cls] = type(cls.__name__, (cls,), {"__call__": __call__, "records_given": True})
    return _RECORDING[cls]


def option_name(action: argparse.Action) -> str:
    """How rules and ``args.given_options`` name an option: its longest option string (``--num-particles``
    for ``-K``), or a positional's dest."""
    return max(action.option_strings, key=len) if action.option_strings else action.dest


class _Parser(argparse.ArgumentParser):
    #: which options need or exclude which (:class:`ppmodels.argtypes.Needs`, ``Excludes``),
    #: checked after parsing
    rules: tuple = ()

    def error(self, message: str) -> None:  # one line, exit code 2
        self.exit(2, f"ppmodels: error: {message} (see `{self.prog} --help`)\n")

    def parse_known_args(self, args=None, namespace=None):
        from .argtypes import broken_rule

        self.given: set[str] = set()
        for action in self._actions:
            action.__class__ = _recording(type(action))
        # the innermost parser reports what nothing recognized, so that the line points to the
        # --help that lists the options, e.g. `ppmodels train vae --help`
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        # the options typed on the command line (not their defaults), for what must tell them apart
        namespace.given_options = frozenset(getattr(namespace, "given_options", ())) | frozenset(self.given)
        actions = {option_name(a): a for a in self._actions}
        broken = broken_rule(self.rules, namespace.given_options,
                             lambda option: getattr(namespace, actions[option].dest))
        if broken:
            self.error(broken)
        return namespace, extras


def build_parser() -> argparse.ArgumentParser:
    from . import families
    from .argtypes import TRUST_HELP, ints, list_valued, positive
    from .families.base import COMMON_RULES as common_rules, common_options

    p = _Parser(prog="ppmodels", description="Latent-variable models as Pyro programs: train, evaluate, sample.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="train a zoo model by SVI",
                       description="Train a zoo model by SVI (on MNIST, or on a CSV file for gmm); writes "
                       "history.csv, checkpoint.pt, report.json and image grids to --out and prints the test figures. "
                       "`ppmodels train MODEL --help` lists a family's options.")
    models = t.add_subparsers(dest="model", required=True, parser_class=_Parser, title="model families")
    for name, family in families.FAMILIES.items():
        f = models.add_parser(name, parents=[common_options(family)], help=family.help,
                              description=family.description or family.help)
        family.add_options(f)
        f.rules = (*common_rules, *family.rules)
        named = {option_name(a) for a in f._actions}
        for rule in f.rules:  # a rule about an option the family does not take is a bug of the family
            for option in (rule.option, *getattr(rule, "others", (getattr(rule, "other", rule.option),))):
                assert option in named, f"train {name}: rule {rule} names {option}, not an option of the family"

    e = sub.add_parser("evaluate", help="test ELBO and importance-sampled NLL of a run",
                       description="Evaluate a trained run: test ELBO, importance-sampled NLL (K samples), active units.")
    e.add_argument("run_dir", help="a run directory, or one of its checkpoint files (a kept checkpoint-epochN.pt)")
    e.add_argument("--num-samples", type=positive(int), default=5000)
    e.add_argument("--subset", type=positive(int), default=None, help="first N test images (default: all)")
    e.add_argument("--device", default="auto")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--trust-checkpoint", action="store_true", help=TRUST_HELP)
    e.add_argument("--diagnostics", action="store_true",
                   help="also each image's Pareto k-hat of its importance weights and their ESS: print the summary "
                        "(fraction above the threshold min(1 - 1/log10 S, 0.7), NLL over all and over the reliable "
                        "images), add it to RUN/report.json and draw RUN/khat.png")

    s = sub.add_parser("sample", help="draw images from a trained run's prior",
                       description="Decode prior draws of a trained run into an image grid.")
    s.add_argument("run_dir", help="a run directory, or one of its checkpoint files (a kept checkpoint-epochN.pt)")
    s.add_argument("-n", type=positive(int), default=64)
    s.add_argument("--out", default=None, help="PNG path (default RUN_DIR/samples.png; for a file, samples-FILE.png beside it)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="auto")
    s.add_argument("--trust-checkpoint", action="store_true", help=TRUST_HELP)

    v = sub.add_parser("variance", help="bias, variance and SNR of objectives' gradient estimators",
                       description="Study gradient estimators: R replicate gradients per objective and K, summarised "
                       "per parameter group (model/guide) against the exact gradient where one is known. Writes "
                       "study.csv and study.png to --out and prints the table.")
    v.add_argument("--model", required=True,
                   help="vae, dvae, linear-gaussian, categorical-gaussian, bernoulli-belief, gaussian-toy, or a trained RUN_DIR")
    list_valued(v.add_argument("--objectives", default="elbo,iwae,dreg",
                               help="comma-separated names; options after colons, e.g. "
                                    "renyi:alpha=0.5,reinforce:baseline=neural"))
    v.add_argument("--num-particles", type=ints, default=(1, 5, 50), help="K values, e.g. 1,5,50")
    v.add_argument("--replicates", type=positive(int), default=500)
    v.add_argument("--batch-size", type=positive(int), default=16, help="datapoints in the studied batch")
    v.add_argument("--exact", default="auto", help="auto (closed form), none, or an objective name to estimate it")
    v.add_argument("--reference-replicates", type=positive(int), default=2000,
                   help="replicates of the --exact estimator (1 for a deterministic one such as enum)")
    v.add_argument("--out", required=True)
    v.add_argument("--device", default="auto")
    v.add_argument("--seed", type=int, default=0)

    c = sub.add_parser("compare", help="final metrics, settings and learning curves of several runs",
                       description="Put runs side by side: one table of their final metrics and settings (printed, "
                       "and written as CSV) and one figure of their learning curves.")
    c.add_argument("runs", nargs="+", help="run directories")
    c.add_argument("--out", default="compare.png", help="figure path (.png); the CSV is written beside it")

    w = sub.add_parser("sweep", help="many runs: comma-separated values expanded into their product",
                       description="Run a train or variance command for every combination of its comma-separated "
                       "option values, e.g. `ppmodels sweep train vae --objective elbo,iwae -K 1,5 --seed 0,1 --out "
                       "runs/grid`: one run directory per combination under --out, then summary.csv. Runs are Ray "
                       "tasks when Ray is installed (pip install 'ppmodels[ray]'), else --workers local processes. "
                       "The sweep options below may stand anywhere on the line.")
    w.add_argument("--workers", type=positive(int), default=None,
                   help="run on this many local processes (default: Ray if installed, else 1)")
    w.add_argument("--address", default=None, help="join this Ray cluster (default: start Ray locally)")
    w.add_argument("--max-concurrent", type=positive(int), default=None, help="Ray: runs in flight at most")
    w.add_argument("--retries", type=int, default=2, help="retries of a failed run (default 2)")
    w.add_argument("--threads", type=positive(int), default=1, help="torch threads per run (default 1)")
    w.add_argument("--gpus-per-run", type=float, default=0, help="Ray: GPUs per run (default 0)")
    w.add_argument("--out", default=None, help="the sweep's folder (one run directory per combination)")
    w.add_argument("--max-runs", type=positive(int), default=10_000,
                   help="refuse a grid of more runs than this, before any is parsed (default 10000)")
    w.add_argument("sweep_command", nargs=argparse.REMAINDER, metavar="COMMAND ...",
                   help="train MODEL ... or variance ...")

    d = sub.add_parser("data", help="fetch MNIST into the cache",
                       description="Fetch MNIST into $PPMODELS_DATA (default ~/.cache/ppmodels) and report the sources.")
    d.add_argument("--root", default=None)
    return p
