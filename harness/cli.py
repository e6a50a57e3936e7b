"""`bnas`: the command-line interface. One thin command per pipeline stage; the work lives in harness modules."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from harness.config import TrainConfig
from harness.errors import BnasError

PARAMS_HELP = "Params YAML file (one group per stage; see pipelines/params.yaml)."


PACKAGE = "bnas-harness"


class _Group(click.Group):
    """Turns user errors (BnasError) into one line on stderr and a non-zero exit, without a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BnasError as e:
            raise click.ClickException(str(e)) from None


def _maybe_torchrun(nproc: int) -> None:
    """One DVC stage = one `bnas` call: with nproc > 1 (and not already under torchrun) relaunch this very command
    under torchrun on this node and exit with its status."""
    if nproc > 1 and "LOCAL_RANK" not in os.environ:
        import subprocess
        import sys

        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
            "-m",
            "harness.cli",
            *sys.argv[1:],
        ]
        raise SystemExit(subprocess.call(cmd))


def _overrides(seed: int | None, sets: tuple[str, ...], group: str = "train") -> dict[str, Any]:
    from harness.config import parse_override

    out = dict(parse_override(s) for s in sets)
    if seed is not None:
        out[f"{group}.seed"] = seed
    return out


def _run_options(group: str, out_example: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The options every run command shares: --params, --data, --out, --seed, --resume, -S."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        options = [
            click.option(
                "--params",
                type=click.Path(path_type=Path),
                default=Path("pipelines/params.yaml"),
                show_default=True,
                help=PARAMS_HELP,
            ),
            click.option(
                "--data", type=click.Path(path_type=Path), required=True, help="Prepared dataset (from `bnas prepare`)."
            ),
            click.option(
                "--out", type=click.Path(path_type=Path), required=True, help=f"Run folder, e.g. {out_example}."
            ),
            click.option("--seed", type=int, default=None, help=f"Override {group}.seed."),
            click.option(
                "--resume", is_flag=True, help="Continue from <out>/checkpoint.pt if it exists (and fits the config)."
            ),
            click.option(
                "-S",
                "--set",
                "sets",
                multiple=True,
                metavar="KEY=VALUE",
                help=f"Override a param, e.g. -S {group}.epochs=2.",
            ),
        ]
        for opt in reversed(options):
            fn = opt(fn)
        return fn

    return wrap


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name=PACKAGE, message="%(package)s %(version)s")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def cli(verbose: bool) -> None:
    """bnas-harness: reproduce BNAS (Kim, Singh, Choi, ECCV 2020) and binary baselines, seed for seed."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # we never fetch weights; avoid the hub's retries offline


@cli.command()
@click.argument("dataset", type=click.Choice(["cifar10", "imagenet"]))
@click.option(
    "--source",
    type=click.Path(path_type=Path),
    envvar="BNAS_DATA",
    default=None,
    help="Local copy of the data (env BNAS_DATA). CIFAR-10: a folder holding 'cifar-10-batches-py' or a "
    "class-folder tree 'cifar10/{train,test}/<class>/*.png'; ImageNet: a folder with train/ and val/ "
    "(or 'imagenette/' under it). Unset: CIFAR-10 is downloaded with torchvision.",
)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder the prepared dataset goes to.")
@click.option("--params", type=click.Path(path_type=Path), default=None, help=PARAMS_HELP)
@click.option(
    "--download-root",
    type=click.Path(path_type=Path),
    default=Path("data/raw"),
    show_default=True,
    help="Where a torchvision download is stored.",
)
def prepare(dataset: str, source: Path | None, out: Path, params: Path | None, download_root: Path) -> None:
    """Convert DATASET once into a cache with recorded fingerprint and splits."""
    from harness.cifar10 import prepare_cifar10
    from harness.config import load_config
    from harness.imagenet import imagenet_root, prepare_imagenet

    cfg = load_config(params)
    if dataset == "cifar10":
        meta = prepare_cifar10(
            source,
            out,
            split_seed=cfg.data.split_seed,
            search_train_fraction=cfg.data.search_train_fraction,
            download_root=download_root,
        )
    else:
        if source is None:
            raise BnasError(
                "ImageNet cannot be downloaded: pass --source or set BNAS_DATA to a folder with train/ val/"
            )
        meta = prepare_imagenet(imagenet_root(source), out)
    click.echo(
        f"{dataset}: {meta['num_train']} train / {meta.get('num_test', meta.get('num_val'))} eval images, "
        f"fingerprint {meta['fingerprint']} -> {out}"
    )


@cli.command()
@_run_options("train", "runs/cifar10/resnet18_cifar/seed0")
@click.option(
    "--method",
    default=None,
    help="A key of params group `methods` (its recipe, groups and per-profile overrides apply; an unknown name is an "
    "error). Default: train.model when that is a `methods` key and no --recipe is given.",
)
@click.option(
    "--recipe",
    default="",
    help="Apply params group recipes.<NAME> over train (before any -S); `own`: the --method's own recipe, by name.",
)
@click.option(
    "--init-from",
    type=click.Path(path_type=Path),
    default=None,
    help="Initialise the model from this model.pt (e.g. stage 1 of a two-stage recipe).",
)
def train(
    params: Path,
    data: Path,
    out: Path,
    seed: int | None,
    method: str | None,
    recipe: str,
    init_from: Path | None,
    resume: bool,
    sets: tuple[str, ...],
) -> None:
    """Train one model (torchrun-aware: launch with `torchrun --nproc_per_node N .venv/bin/bnas train ...`)."""
    from harness.config import load_config

    overrides = _overrides(seed, sets)
    if init_from is not None:
        overrides["train.init_from"] = str(init_from)
    method = method or _default_method(params, overrides)
    cfg = load_config(params, overrides, recipe=recipe, method=method)  # fail fast, before importing torch
    _maybe_torchrun(cfg.train.nproc_per_node)
    from harness.training import run_train

    metrics = run_train(cfg, data, out, resume=resume, method=method)
    if int(os.environ.get("RANK", "0")) == 0:
        click.echo(json.dumps({k: v for k, v in metrics.items() if not k.startswith("perf/")}, sort_keys=True))


def _default_method(params: Path, overrides: dict[str, Any]) -> str | None:
    """Without --method, `bnas train` trains train.model as its `methods` entry (so the profile's sizes apply to it;
    with another --recipe than the entry's own, the recipe's values stand)."""
    from harness.config import load_config

    cfg = load_config(params, overrides)  # as the file is, its `methods` group included
    if cfg.train.model in cfg.methods:
        return cfg.train.model
    if cfg.profile and cfg.profile != "paper":
        logging.getLogger(__name__).warning(
            "train.model '%s' has no `methods` entry: profile '%s' does not resize it (pass --method NAME)",
            cfg.train.model,
            cfg.profile,
        )
    return None


@cli.command("config")
@click.option(
    "--params",
    type=click.Path(path_type=Path),
    default=Path("pipelines/params.yaml"),
    show_default=True,
    help=PARAMS_HELP,
)
@click.option("--method", default=None, help="A key of params group `methods`.")
@click.option("--recipe", default="", help="A key of params group `recipes`.")
@click.option("--seed", type=int, default=None, help="Override train.seed.")
@click.option("-S", "--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a param.")
@click.option("--json", "as_json", is_flag=True, help="Print {key: {value, from}} as JSON.")
@click.option(
    "--pipeline",
    "pipeline_profile",
    default=None,
    metavar="PROFILE",
    help="Instead: print the `dvc exp run` arguments (one per line) that run dvc.yaml at PROFILE with the values of "
    "`pipeline.PROFILE` in the params file (`make repro-paper`).",
)
def config_cmd(
    params: Path,
    method: str | None,
    recipe: str,
    seed: int | None,
    sets: tuple[str, ...],
    as_json: bool,
    pipeline_profile: str | None,
) -> None:
    """Print a run's resolved config, each value with the layer it came from (default, params, recipe, method,
    profile, method+profile, override), as `bnas train` with the same options would resolve it."""
    from harness.config import config_to_dict, explain_config, flatten, pipeline_overrides

    if pipeline_profile is not None:
        for key, value in pipeline_overrides(params, pipeline_profile).items():
            click.echo(f"-S\n{params.as_posix()}:{key}={json.dumps(value, separators=(',', ':'))}")
        return

    overrides = _overrides(seed, sets)
    method = method or _default_method(params, overrides)
    cfg, origin = explain_config(params, overrides, recipe=recipe, method=method)
    flat = flatten(config_to_dict(cfg))
    if as_json:
        click.echo(json.dumps({k: {"value": v, "from": origin[k]} for k, v in flat.items()}, indent=1, default=str))
        return
    width = max(len(k) for k in flat)
    vwidth = min(40, max(len(json.dumps(v, default=str)) for v in flat.values()))
    for k, v in flat.items():
        click.echo(f"{k:<{width}}  {json.dumps(v, default=str):<{vwidth}}  # {origin[k]}")


@cli.command()
@_run_options("search", "runs/cifar10/search/seed2")
@click.option(
    "--method",
    default=None,
    help="A key of params group `methods` whose `search` overrides apply (e.g. an ablation); also the run's label.",
)
def search(
    params: Path, data: Path, out: Path, seed: int | None, resume: bool, sets: tuple[str, ...], method: str | None
) -> None:
    """BNAS architecture search on the recorded 25k/25k split: genotype.json, the alphas, a genotype per epoch."""
    from harness.config import load_config

    cfg = load_config(params, _overrides(seed, sets, "search"), recipe="", method=method)
    _maybe_torchrun(cfg.search.nproc_per_node)
    from harness.searching import run_search

    result = run_search(cfg, data, out, resume=resume, method=method or "bnas")
    if int(os.environ.get("RANK", "0")) == 0:
        click.echo(json.dumps(result, sort_keys=True))


@cli.command()
@click.option(
    "--alphas",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="Alphas of a search: alphas_best.json (behind the best epoch's genotype), alphas_final.json or alphas.json "
    "(alphas_normal, alphas_reduce: 14 x 7, DARTS edge order, S_B op columns).",
)
@click.option(
    "--gamma",
    type=float,
    default=1.0,
    show_default=True,
    help="Divide the Zeroise weights by G before ranking (3 = the ImageNet transfer of docs/bnas.md §4).",
)
@click.option(
    "--official-gamma-bug",
    is_flag=True,
    help="Release bug: divide row 0 (every op of the first edge) by G, not the Zeroise column (docs/bnas.md §8.4).",
)
@click.option("--exclude-zeroise", is_flag=True, help="Never choose Zeroise (the 'No Zeroise' ablation's derivation).")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), required=True, help="genotype.json to write.")
def derive(alphas: Path, gamma: float, official_gamma_bug: bool, exclude_zeroise: bool, out: Path) -> None:
    """Re-derive a genotype from saved alphas: per node the top-2 edges by their largest op weight, argmax op."""
    from harness.io import atomic_write_text
    from harness.searching import derive_from_alphas
    from methods.bnas.genotypes import genotype_to_json

    g = derive_from_alphas(alphas, gamma=gamma, official_gamma_bug=official_gamma_bug, exclude_zeroise=exclude_zeroise)
    text = genotype_to_json(g)
    atomic_write_text(out, text + "\n")
    click.echo(text)


def _report_options(out_default: str, out_help: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The options `bnas tables` and `bnas figures` share: --runs, --reference, --out, --profile."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        for opt in reversed(
            [
                click.option(
                    "--runs",
                    type=click.Path(path_type=Path, file_okay=False),
                    default=Path("runs"),
                    show_default=True,
                    help="Runs root: runs/<dataset>/<method>/seed<N>/ (metrics.json, config.yaml, history.csv).",
                ),
                click.option(
                    "--reference",
                    type=click.Path(path_type=Path, dir_okay=False),
                    default=Path("results/reference.yaml"),
                    show_default=True,
                    help="The paper's numbers, each with its source.",
                ),
                click.option(
                    "--out",
                    type=click.Path(path_type=Path, file_okay=False),
                    default=Path(out_default),
                    show_default=True,
                    help=out_help,
                ),
                click.option(
                    "--profile",
                    default=None,
                    help="The params profile the runs were made with (default: `profile` of --params); anything "
                    "but 'paper' is flagged as not comparable to the paper.",
                ),
                click.option(
                    "--params",
                    type=click.Path(path_type=Path),
                    default=Path("pipelines/params.yaml"),
                    show_default=True,
                    help="Params file: its `profile` (unless --profile) and its tracking group.",
                ),
            ]
        ):
            fn = opt(fn)
        return fn

    return wrap


def _report_profile(profile: str | None, params: Path) -> str:
    """--profile, else the params file's `profile` (the one its runs were made with)."""
    if profile:
        return profile
    from harness.config import load_config

    if not params.is_file():
        raise BnasError(f"{params}: params file not found; pass --profile (quick|paper) or --params FILE")
    found = load_config(params).profile
    if not found:
        raise BnasError(f"{params}: no `profile` set; pass --profile (quick|paper)")
    return found


@cli.command()
@_report_options("results", "Folder for the cifar10/imagenet/ablation/searches tables (.md, .csv, .tex) and claims.")
@click.option(
    "--tolerance",
    type=float,
    default=0.5,
    show_default=True,
    help="|ours - paper| (percentage points) within which a result counts as reproduced.",
)
@click.option(
    "--against",
    "against_ref",
    default=None,
    metavar="DIR|git:REV[:FOLDER]",
    help="Also compare these runs' tables, row by row (Welch, Holm), with a previous `bnas tables` output: a folder, "
    "or git:REV[:FOLDER] for the tables committed at a revision (git:HEAD = this checkout's published tables in "
    "results/; git:HEAD:results/quick = the quick profile's). Writes against.md/.csv to --out and prints the summary.",
)
def tables(
    runs: Path,
    reference: Path,
    out: Path,
    profile: str | None,
    params: Path,
    tolerance: float,
    against_ref: str | None,
) -> None:
    """Regenerate the CIFAR-10, ImageNet, ablation, searches and claims tables from the runs' metrics files (no
    MLflow needed), and the data of `dvc plots show` in <out>/plots/."""
    from harness.dvc_plots import write_plot_data
    from harness.tables import build_report, write_tables

    profile = _report_profile(profile, params)
    committed = None
    if against_ref is not None:  # read the reference first: --out may be the folder it names
        from harness.against import read_tables

        committed = read_tables(against_ref)
    built, plot_rows = build_report(runs, reference, profile, tolerance)
    for p in write_tables(built, out):
        click.echo(str(p))
    for p in write_plot_data(plot_rows, out / "plots"):
        click.echo(str(p))
    if committed is not None:
        from harness.against import against_table, read_tables

        t = against_table(read_tables(out), committed, str(against_ref))
        for p in write_tables([t], out):
            click.echo(str(p))
        for note in t.notes[:1] + t.notes[2:]:
            click.echo(note)


@cli.command()
@_report_options("results/figures", "Folder for the PNG files.")
@click.option(
    "--finish-pipeline-run",
    is_flag=True,
    help="Log the per-method aggregates, the tables and the figures to this pipeline's MLflow parent run and finish "
    "it (the last stage of `dvc repro` does this).",
)
def figures(
    runs: Path, reference: Path, out: Path, profile: str | None, params: Path, finish_pipeline_run: bool
) -> None:
    """Accuracy vs OPs with the Pareto front, learning curves, searched cells, alpha heatmaps over the search."""
    from harness.figures import write_figures

    profile = _report_profile(profile, params)
    paths = write_figures(runs, reference, out, profile)
    for p in paths:
        click.echo(str(p))
    if finish_pipeline_run:
        from harness.config import load_config
        from harness.pipeline_run import finish_pipeline_run as finish

        cfg = load_config(params)
        if cfg.tracking.enabled:
            click.echo(
                f"MLflow pipeline run: {finish(runs, out.parent, paths, profile, cfg.tracking.experiment_prefix)}"
            )


@cli.command()
@click.argument("genotype")
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="PNG to write (default: GENOTYPE with .png, or <name>.png for a published cell).",
)
def show(genotype: str, out: Path | None) -> None:
    """Draw the normal and reduction cells of GENOTYPE (a genotype.json or a published name such as latest_cell)."""
    from harness.figures import draw_genotype
    from methods.bnas.genotypes import GenotypeError, genotype_from_json, get_genotype

    try:
        g = genotype_from_json(genotype) if genotype.endswith(".json") else get_genotype(genotype)
    except GenotypeError as e:
        raise BnasError(f"{genotype}: {e}") from None
    if out is None:
        out = Path(genotype).with_suffix(".png") if genotype.endswith(".json") else Path(f"{genotype}.png")
    click.echo(str(draw_genotype(g, out, f"genotype {genotype}")))


@cli.command("import-checkpoint")
@click.argument("source", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--model", "model_name", required=True, help="The release's network: bnas_a (CIFAR-10), bnas_d ... bnas_h."
)
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), required=True, help="The run folder to write.")
@click.option(
    "--release-fp-tail/--no-release-fp-tail",
    default=True,
    show_default=True,
    help="Keep the release's last two convs real, as its binarisation trained them (official_fp_tail).",
)
def import_checkpoint_cmd(source: Path, model_name: str, out: Path, release_fp_tail: bool) -> None:
    """Convert a checkpoint of the official BNAS release (weights.pt or checkpoint.pth.tar) into a run folder that
    `bnas evaluate --run OUT` evaluates under this harness's protocol."""
    from harness.import_checkpoint import import_checkpoint

    click.echo(json.dumps(import_checkpoint(source, model_name, out, official_fp_tail=release_fp_tail), sort_keys=True))


@cli.command()
@click.option(
    "--run",
    "run_dir",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="A finished run folder (config.yaml + model.pt).",
)
@click.option("--data", type=click.Path(path_type=Path), required=True, help="Prepared dataset.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Write the metrics here as JSON.")
def evaluate(run_dir: Path, data: Path, out: Path | None) -> None:
    """Top-1/top-5 of a trained run on the dataset's evaluation split."""
    from harness.training import run_evaluate

    click.echo(json.dumps(run_evaluate(run_dir, data, out), sort_keys=True))


@cli.command()
@click.argument("model")
@click.option(
    "--dataset",
    type=click.Choice(["cifar10", "imagenet"]),
    default="cifar10",
    show_default=True,
    help="Input size and classes: CIFAR-10 (3x32x32, 10) or ImageNet (3x224x224, 1000).",
)
@click.option(
    "--policy",
    default=TrainConfig.cost_policy,
    show_default=True,
    help="Counting policy: bireal (the papers' OPs = FLOPs + BOPs/64), bireal_scales, all_conv_binary, "
    "binary_weights (binary-weight convs count as BOPs even on real inputs).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the table.")
@click.option("--per-layer/--totals", default=True, show_default=True, help="Include the per-layer rows.")
@click.option(
    "-k",
    "--model-kwarg",
    "model_kwargs",
    multiple=True,
    metavar="KEY=VALUE",
    help="A model argument (YAML value), e.g. -k official_binary_res_weights=true -k genotype=runs/s/genotype.json.",
)
@click.option(
    "--reference",
    type=click.Path(path_type=Path, dir_okay=False),
    default=Path("results/reference.yaml"),
    show_default=True,
    help="Papers' numbers: an ImageNet row of MODEL prints the paper's cost figure beside ours (skipped if absent).",
)
def profile(
    model: str,
    dataset: str,
    policy: str,
    as_json: bool,
    per_layer: bool,
    model_kwargs: tuple[str, ...],
    reference: Path,
) -> None:
    """Count params, memory, BOPs, FLOPs and OPs of MODEL from a real forward pass, and audit its binarisation."""
    from harness.config import parse_override
    from harness.costs import POLICIES, format_profile, profile_model
    from harness.models import create_model
    from harness.tables import paper_costs, read_reference

    if policy not in POLICIES:
        raise BnasError(f"unknown cost policy '{policy}': expected one of {', '.join(POLICIES)}")
    kwargs = dict(parse_override(k) for k in model_kwargs)
    classes, size = (10, 32) if dataset == "cifar10" else (1000, 224)
    p = profile_model(create_model(model, classes, **kwargs), (3, size, size), policy, name=model)
    papers = paper_costs(read_reference(reference), model) if dataset == "imagenet" and reference.is_file() else []
    if as_json:
        click.echo(json.dumps({**p.to_json(per_layer), "paper": papers}, indent=2))
        return
    click.echo(format_profile(p, per_layer))
    for row in papers:
        ratio = p.ops / (row["flops"] * 1e8)
        verdict = "the same" if abs(ratio - 1) < 0.02 else f"ours is {ratio:.2f}x the paper's"
        who = f"{row['source']}, {row['method']} {row['backbone']}"
        line = f"paper OPs ({who}): {row['flops']:.2f}e8; ours {p.ops / 1e8:.2f}e8 ({verdict})"
        click.echo(line + (f": {row['cost_note']}" if row.get("cost_note") else ""))


@cli.command()
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option(
    "--data",
    type=click.Path(path_type=Path),
    default=None,
    help="Prepared CIFAR-10 (real batches and the loader benchmark); without it, random batches.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("results"),
    show_default=True,
    help="bench.json (merged per device) and bench.md go here.",
)
@click.option("--quick", is_flag=True, help="Tiny sizes, one repeat: checks that everything runs (not a measurement).")
@click.option("--threads", type=int, default=0, help="OMP_NUM_THREADS for the benchmark processes (0: torch default).")
@click.option("--compile", "compile_", is_flag=True, help="CUDA: also time torch.compile'd search and BNAS-A training.")
def bench(device: str, data: Path | None, out: Path, quick: bool, threads: int, compile_: bool) -> None:
    """Search iteration (work-sharing vs per-op supernet), training, evaluation and loader throughput."""
    from harness.bench import run_bench

    click.echo(json.dumps(run_bench(out, device, data, quick, threads, compile_), indent=2, default=str))


@cli.command()
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("dvc_plots"),
    show_default=True,
    help="Folder for index.html.",
)
@click.option(
    "--template-only",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Only write the offline page template to this file (`make install` registers it with DVC).",
)
def plots(out: Path, template_only: Path | None) -> None:
    """`dvc plots show` with vega inlined, so the page renders with no network: training and search curves per
    epoch and each table's rows seed by seed (the data `bnas tables` writes to <tables>/plots/)."""
    import shutil
    import subprocess
    import sys
    import tempfile

    from harness.dvc_plots import write_offline_template

    if template_only is not None:
        click.echo(str(write_offline_template(template_only)))
        return
    dvc = shutil.which("dvc", path=str(Path(sys.executable).parent)) or shutil.which("dvc")
    if dvc is None:
        raise BnasError("dvc not found: `make install` installs it into .venv")
    with tempfile.TemporaryDirectory() as tmp:
        template = write_offline_template(Path(tmp) / "page.html")
        code = subprocess.call([dvc, "plots", "show", "--html-template", str(template), "-o", str(out)])
    if code != 0:
        raise SystemExit(code)


@cli.command("exp")
@click.option("-n", "--num", default=1, show_default=True, help="Commits back from HEAD whose experiments to show.")
@click.option("--width", default=120, show_default=True, help="Line width of the table.")
def exp_cmd(num: int, width: int) -> None:
    """`dvc exp show` as one row per run (experiment, profile, kind, run folder, seed, top-1, OPs): readable in a
    120-column terminal, where `dvc exp show` has one column per run and metric."""
    import dvc.api

    from harness.experiments import exp_rows, format_exp_rows

    click.echo(format_exp_rows(exp_rows(dvc.api.exp_show(num=num)), width), nl=False)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind (loopback by default).")
@click.option("--port", default=5000, show_default=True, help="Port.")
@click.option(
    "--workers", type=click.IntRange(min=1), default=None, help="Server worker processes (default: MLflow's)."
)
def ui(host: str, port: int, workers: int | None) -> None:
    """Start the MLflow UI on the harness's tracking store (MLFLOW_TRACKING_URI or ./mlflow.db) and print each
    experiment's runs-table URL. Stops the whole server on SIGTERM, SIGINT (Ctrl-C) or SIGHUP."""
    from harness.tracking import run_ui

    raise SystemExit(run_ui(host, port, workers=workers))


if __name__ == "__main__":  # `python -m harness.cli` (used under torchrun)
    cli()
