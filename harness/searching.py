"""`bnas search`: the BNAS architecture search on the recorded 25k/25k CIFAR-10 split (docs/bnas.md §4).

Selection: the epoch with the best accuracy on the (sub-sampled) validation split, evaluated after each epoch. Its
end-of-epoch genotype (the one evaluated) is the result; `search.official_genotype_offset` keeps the genotype at the
start of that epoch instead, as the release does. Validation images, both for the architecture batches and for that
evaluation: un-augmented by default, the training crop + flip with `search.official_val_augment` (the release). The
architecture batches are one shuffled pass per epoch, cycling; `search.official_val_resample` draws a fresh random
batch at every step instead (the release's `next(iter(valid_queue))`).

Run folder: `config.yaml`, `checkpoint.pt` (every epoch, atomic: supernet, both optimizers, RNG, history, the best
epoch with its alphas), `history.csv` (per epoch: losses, accuracies, mean alpha entropy, regulariser weight,
genotype), `genotypes/` (the derived genotype and the end-of-epoch alphas of every epoch), `genotype.json` (the
selected genotype and its epoch, the ImageNet-transfer genotype of the same alphas, and both derived from the final
alphas), `alphas_best.json` (the alphas behind the selected genotype, plus `epoch`, `selection`, `val_top1`),
`alphas_final.json` (the final alphas plus `epoch`), `alphas.json` (the final alphas), `genotype.txt` (the selected
genotype), `metrics.json` (with `precision`: bf16 or fp32 supernet forwards). The `bnas derive` stage reads
alphas_best.json or alphas_final.json (`pipeline.retrain_cell`). The alpha heatmaps over the search are a view: the
`figures` stage draws them (:func:`harness.figures.alpha_heatmaps`), and the MLflow run gets them as `alphas.png`.

The run's bookkeeping (config.yaml, checkpoint, history, resume, tags, MLflow status) is :class:`harness.run.
RunLifecycle`'s, shared with `bnas train`; the supernet's evaluation is :func:`harness.engine.evaluate`'s.
"""

from __future__ import annotations

import itertools
import json
import logging
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from harness.checkpoint import rng_state, set_rng_state
from harness.cifar10 import CifarLoader, load_cifar10
from harness.config import Config, SearchConfig
from harness.distributed import Runtime, convert_sync_batchnorm, setup_runtime, teardown_runtime
from harness.engine import evaluate
from harness.errors import DataError
from harness.io import atomic_write_json, atomic_write_text
from harness.run import RunLifecycle, make_tracker, peak_memory_mb, run_tags
from harness.splits import stratified_subset
from methods.bnas.genotypes import PRIMITIVES, SPACES, genotype_to_json
from methods.bnas.search import derive_genotype, diversity_weight
from methods.bnas.supernet import SuperNet
from methods.registry import create_searcher

__all__ = [
    "searcher_hyperparameters",
    "run_search",
    "load_alphas",
    "derive_from_alphas",
    "alphas_dict",
    "SEARCH_ARTIFACTS",
]

log = logging.getLogger(__name__)


def _split(x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    keep = idx[torch.from_numpy(stratified_subset(y[idx].numpy(), n, seed))]
    return x[keep], y[keep]


def alphas_dict(
    alphas_normal: torch.Tensor, alphas_reduce: torch.Tensor, primitives: tuple[str, ...], temperature: float = 1.0
) -> dict[str, Any]:
    """The alphas file format of `bnas derive`: 14 x len(primitives) nested lists, DARTS edge order, op columns; and
    the softmax temperature the supernet mixed with when it is not 1 (BATS's: the mixing weights are
    softmax(alpha / temperature))."""
    d: dict[str, Any] = {
        "alphas_normal": alphas_normal.detach().cpu().tolist(),
        "alphas_reduce": alphas_reduce.detach().cpu().tolist(),
        "primitives": list(primitives),
    }
    if temperature != 1.0:
        d["temperature"] = temperature
    return d


def load_alphas(path: str | Path) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """Read an alphas file: `alphas_normal` and `alphas_reduce`, each 14 rows (DARTS edge order) of 7 columns in the
    S_B op order (6 columns: a search without Zeroise; 8 or 7: the DARTS and BATS spaces, named by `primitives`). A
    `bnas search` epoch file (genotypes/epochNNN.json) works too. With a `temperature` T (a BATS search) the returned
    tensors are the mixing logits alpha / T, whose softmax the supernet used.

    Raises:
        DataError: unreadable, missing keys, wrong shape or non-finite values.
    """
    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: alphas file not found") from None
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable JSON alphas file ({e})") from None
    if not isinstance(d, dict) or not {"alphas_normal", "alphas_reduce"} <= d.keys():
        raise DataError(f"{path}: expected keys alphas_normal and alphas_reduce (14 x 7 nested lists)")
    out = []
    for key in ("alphas_normal", "alphas_reduce"):
        try:
            t = torch.tensor(d[key], dtype=torch.float64)
        except (TypeError, ValueError) as e:
            raise DataError(f"{path}: {key}: expected a 14 x 7 nested list of numbers ({e})") from None
        if t.dim() != 2 or t.shape[0] != 14 or t.shape[1] not in (6, 7, 8):
            raise DataError(
                f"{path}: {key}: expected 14 x K, K the ops of a search space (S_B: 7, or 6 without Zeroise; the "
                f"DARTS and BATS spaces: 8 or 7), got {list(t.shape)}"
            )
        if not torch.isfinite(t).all():
            raise DataError(f"{path}: {key}: non-finite values")
        out.append(t)
    if out[0].shape != out[1].shape:
        raise DataError(f"{path}: alphas_normal {list(out[0].shape)} and alphas_reduce {list(out[1].shape)} differ")
    # the op columns: the file's `primitives` when it names a search space's ops (all, or all but Zeroise), else S_B's
    spaces = [ops for space in SPACES.values() for ops in (space, tuple(p for p in space if p != "none"))]
    if "primitives" in d:
        prims = tuple(d["primitives"]) if isinstance(d["primitives"], list) else ()
        if prims not in spaces:
            raise DataError(
                f"{path}: primitives {d['primitives']} are not the ops of a search space ({sorted(SPACES)})"
            )
    else:
        prims = PRIMITIVES if out[0].shape[1] == 7 else tuple(p for p in PRIMITIVES if p != "none")
    if len(prims) != out[0].shape[1]:
        raise DataError(f"{path}: primitives {list(prims)} do not match the {out[0].shape[1]} columns")
    temperature = d.get("temperature", 1.0)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise DataError(f"{path}: temperature: expected a positive number, got {temperature!r}")
    if temperature != 1.0:
        out = [t / temperature for t in out]
    return out[0], out[1], prims


def derive_from_alphas(
    path: str | Path, *, gamma: float = 1.0, official_gamma_bug: bool = False, exclude_zeroise: bool = False
) -> Any:
    """Re-derive a genotype from saved alphas (docs/bnas.md §4); see :func:`methods.bnas.search.derive_genotype`."""
    if gamma <= 0:
        raise DataError(f"--gamma must be positive, got {gamma}")
    an, ar, prims = load_alphas(path)
    return derive_genotype(
        an, ar, prims, exclude_zeroise=exclude_zeroise, gamma=gamma, official_gamma_bug=official_gamma_bug
    )


def _genotype_dict(g: Any) -> dict[str, Any]:
    return json.loads(genotype_to_json(g))


class ResampledBatches:
    """Architecture batches as the release draws them (`search.official_val_resample`): every step a fresh random
    global batch of the validation images, without replacement within the batch and independent across steps.

    The draws of an epoch come from a generator seeded by (seed, epoch), so a run (and a resume, which restarts at an
    epoch boundary) sees the same batches. Every rank draws the same global batch and takes its shard
    (`rank::world_size`), as :class:`harness.cifar10.CifarLoader` does. With `augment`, each drawn image gets the
    training crop + flip, drawn from the same generator. Images and normalisation are those of `loader`.
    """

    def __init__(self, loader: CifarLoader, global_batch: int, *, augment: bool, seed: int) -> None:
        self.loader, self.augment, self.seed = loader, augment, seed
        n, w = len(loader.labels), loader.world_size
        self.global_batch = min(global_batch, n) // w * w

    def indices(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]]:
        """Per step: (this rank's sample indices, crop offsets (b, 2) or None, flip flags or None), endlessly."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch + 104_729)
        n, b = len(self.loader.labels), self.global_batch
        mine = slice(self.loader.rank, None, self.loader.world_size)
        while True:
            idx = torch.randperm(n, generator=g)[:b]
            if self.augment:
                off, flip = torch.randint(0, 9, (b, 2), generator=g), torch.rand(b, generator=g) < 0.5
                yield idx[mine], off[mine], flip[mine]
            else:
                yield idx[mine], None, None

    def batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Endless (images, labels) batches of this rank for `epoch`, normalised as the loader's."""
        for idx, off, flip in self.indices(epoch):
            yield self.loader.batch(idx, off, flip)


@dataclass
class _SearchData:
    """The search's batches: weight batches (training transforms) from the search-train half; architecture batches
    (one shuffled pass per epoch, cycling, or `resampled` per step) and the per-epoch selection evaluation from the
    search-validation half."""

    train: CifarLoader
    arch: CifarLoader
    resampled: ResampledBatches | None
    selection: CifarLoader
    fingerprint: str

    def set_epoch(self, epoch: int) -> None:
        for loader in (self.train, self.arch, self.selection):
            loader.set_epoch(epoch)

    def arch_batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.resampled is not None:
            return self.resampled.batches(epoch)
        return itertools.cycle(self.arch) if len(self.arch) else iter(())


def _search_data(cfg: Config, data: str | Path, rt: Runtime) -> _SearchData:
    """The search's loaders on the recorded split. Validation images (architecture batches and the selection
    evaluation) are un-augmented, or get the training crop + flip with `official_val_augment` (the release); each
    rank takes its shard of every global batch (the same samples and augmentations as one process)."""
    sc = cfg.search
    ds = load_cifar10(data)
    tr_x, tr_y = _split(ds.train_x, ds.train_y, ds.search_train_idx, sc.train_subset, cfg.data.split_seed)
    va_x, va_y = _split(ds.train_x, ds.train_y, ds.search_val_idx, sc.train_subset, cfg.data.split_seed)
    shard: dict[str, Any] = {"device": rt.device, "rank": rt.rank, "world_size": rt.world_size}
    per_rank = sc.batch_size // rt.world_size
    aug = sc.official_val_augment
    train = CifarLoader(tr_x, tr_y, per_rank, train=True, seed=sc.seed, **shard)
    arch = CifarLoader(va_x, va_y, per_rank, train=True, augment=aug, seed=sc.seed + 1, **shard)
    resampled = (
        ResampledBatches(arch, sc.batch_size, augment=aug, seed=sc.seed + 1) if sc.official_val_resample else None
    )
    # augmented selection evaluation: the training loader's crop + flip (its shuffle does not change the accuracy; it
    # drops a last batch of one image and, with N processes, up to N - 1 images)
    selection = CifarLoader(va_x, va_y, max(per_rank, 256), train=aug, augment=aug, seed=sc.seed + 2, **shard)
    return _SearchData(train, arch, resampled, selection, ds.meta.get("fingerprint", "unknown"))


def _supernet(sc: Any, rt: Runtime) -> Any:
    """The supernet of `sc`'s space on the run's device; with several processes every rank starts from rank 0's
    weights and alphas (and, with `sync_bn`, normalises with the global batch's statistics)."""
    torch.manual_seed(sc.seed)
    net: Any = SuperNet(
        sc.init_channels,
        sc.layers,
        num_classes=10,
        exclude_zeroise=sc.exclude_zeroise,
        skip=sc.skip,
        space=sc.space,
        temperature=sc.temperature,
        impl=sc.supernet,
        official_fp_tail=sc.official_fp_tail,
        official_binary_preprocess=sc.official_binary_preprocess,
        activation_checkpointing=sc.activation_checkpointing,
    ).to(rt.device)
    if rt.distributed:
        if sc.sync_bn:
            net = convert_sync_batchnorm(net, rt.device)
        for t in (*net.parameters(), *net.buffers()):
            torch.distributed.broadcast(t.data, 0)
    if sc.compile:
        net.compile()
    return net


def searcher_hyperparameters(sc: SearchConfig) -> dict[str, Any]:
    """The BNAS searcher's hyperparameters from the `search` config (their defaults live there only: docs/bnas.md
    §4): the optimisers of the weights and the alphas, the diversity regulariser and the release's switches of the
    objective and the schedule."""
    return {
        "epochs": sc.epochs,
        "lr": sc.lr,
        "lr_min": sc.lr_min,
        "momentum": sc.momentum,
        "weight_decay": sc.weight_decay,
        "arch_lr": sc.arch_lr,
        "arch_betas": (sc.arch_beta1, sc.arch_beta2),
        "arch_weight_decay": sc.arch_weight_decay,
        "lam": sc.lam,
        "tau": sc.tau,
        "official_entropy_bug": sc.official_entropy_bug,
        "official_lr_offset": sc.official_lr_offset,
        "real_weight_epochs": round(sc.real_weight_fraction * sc.epochs),
    }


def _searcher(sc: SearchConfig, net: Any, rt: Runtime) -> Any:
    """The BNAS searcher (bi-level optimisation, diversity regulariser) over `net` with `sc`'s hyperparameters, from
    the searcher registry of `methods/`."""
    searcher = create_searcher(
        "bnas",
        supernet=net,
        **searcher_hyperparameters(sc),
        amp_dtype=torch.bfloat16 if (sc.amp and rt.device.type == "cuda") else None,
        cuda_graph=sc.cuda_graph and not sc.compile,  # the two together are untested: compile wins
    )
    if sc.cuda_graph and rt.device.type == "cuda" and not sc.compile and not searcher.cuda_graph:
        log.warning("search.cuda_graph: runs with one process only; %d processes run eagerly", rt.world_size)
    return searcher


@dataclass
class _EpochResult:
    row: dict[str, Any]
    genotype_start: dict[str, Any]
    alphas_start: dict[str, Any]
    genotype_end: dict[str, Any]
    alphas_end: dict[str, Any]


def _search_epoch(searcher: Any, d: _SearchData, sc: Any, epoch: int, rt: Runtime, progress: bool) -> _EpochResult:
    """One search epoch: the iterations (metric sums stay on the device), then the eval-mode selection accuracy of
    the supernet, the alpha entropy, the regulariser weight, and the genotypes and alphas before and after it."""
    net = searcher.net
    t0 = time.perf_counter()
    searcher.new_epoch(epoch)
    g_start = _genotype_dict(searcher.genotype(exclude_zeroise=sc.exclude_zeroise))
    a_start = alphas_dict(net.alphas_normal, net.alphas_reduce, net.primitives, net.temperature)
    d.set_epoch(epoch)
    it: Any = zip(d.train, d.arch_batches(epoch), strict=False)  # the architecture batches never run out
    if progress and rt.is_main:
        it = tqdm(it, total=len(d.train), desc=f"search {epoch}", leave=False, dynamic_ncols=True)
    acc: torch.Tensor | None = None
    n = 0
    for tb, vb in it:
        m = searcher.step_metrics(tb, vb).double()
        acc = m if acc is None else acc + m
        n += 1
    sums = dict(zip(searcher.metric_names, acc.tolist(), strict=True)) if acc is not None else {}
    row: dict[str, Any] = {"epoch": epoch + 1, **{k: v / max(n, 1) for k, v in sums.items()}}
    net.eval()
    ev = evaluate(searcher.forward, d.selection, rt)
    g_end = _genotype_dict(searcher.genotype(exclude_zeroise=sc.exclude_zeroise))
    row.update(
        {
            "val/loss": ev["val/loss"],
            "val/top1": ev["val/top1"],
            "alpha_entropy": searcher.entropy(),
            "reg_weight": diversity_weight(epoch, sc.lam, sc.tau),
            "lr": searcher.w_opt.param_groups[0]["lr"],
            "perf/epoch_s": time.perf_counter() - t0,
            "genotype": json.dumps(g_end),
        }
    )
    a_end = alphas_dict(net.alphas_normal, net.alphas_reduce, net.primitives, net.temperature)
    return _EpochResult(row, g_start, a_start, g_end, a_end)


def _select(best: dict[str, Any], r: _EpochResult, offset: bool) -> dict[str, Any]:
    """The selection: the epoch with the best selection accuracy so far, with the genotype and alphas behind it (at
    the end of that epoch, or at its start with `official_genotype_offset`, the release)."""
    if r.row["val/top1"] <= best["val_top1"]:
        return best
    epoch = r.row["epoch"]
    return {
        "val_top1": r.row["val/top1"],
        "epoch": epoch,
        "genotype": r.genotype_start if offset else r.genotype_end,
        "alphas": r.alphas_start if offset else r.alphas_end,
        "alphas_epoch": epoch - 1 if offset else epoch,  # the epoch they were taken after; 0 = initial
    }


def _write_results(out: Path, searcher: Any, best: dict[str, Any], last_epoch: int, sc: Any) -> None:
    """genotype.json (the selected genotype, the one of the final alphas and the ImageNet-transfer genotypes of
    both), alphas_best.json, alphas_final.json, alphas.json and genotype.txt."""
    net = searcher.net

    def imagenet(an: torch.Tensor, ar: torch.Tensor) -> dict[str, Any]:
        g = derive_genotype(
            an,
            ar,
            net.primitives,
            net.steps,
            exclude_zeroise=sc.exclude_zeroise,
            gamma=sc.gamma,
            official_gamma_bug=sc.official_gamma_bug,
        )
        return _genotype_dict(g)

    selection = "start-of-epoch (release)" if sc.official_genotype_offset else "end-of-epoch"
    final = alphas_dict(net.alphas_normal, net.alphas_reduce, net.primitives, net.temperature)
    chosen = best["alphas"]
    result = {
        "genotype": best["genotype"],
        "epoch": best["epoch"],
        "val_top1": best["val_top1"],
        "selection": selection,
        "genotype_final": _genotype_dict(searcher.genotype(exclude_zeroise=sc.exclude_zeroise)),
        # the ImageNet-transfer genotype of the selected alphas (the release: of the same epoch)
        "genotype_imagenet": imagenet(torch.tensor(chosen["alphas_normal"]), torch.tensor(chosen["alphas_reduce"])),
        "genotype_imagenet_final": imagenet(net.alphas_normal, net.alphas_reduce),
        "gamma": sc.gamma,
    }
    atomic_write_json(out / "genotype.json", result)
    best_file = {**chosen, "epoch": best["epoch"], "selection": selection, "val_top1": best["val_top1"]}
    atomic_write_json(out / "alphas_best.json", {**best_file, "alphas_epoch": best["alphas_epoch"]})
    atomic_write_json(out / "alphas_final.json", {**final, "epoch": last_epoch, "selection": "final"})
    atomic_write_json(out / "alphas.json", final)
    atomic_write_text(out / "genotype.txt", json.dumps(best["genotype"]) + "\n")


def _log_alpha_figure(run: RunLifecycle) -> None:
    """The alpha heatmaps over the search (:func:`harness.figures.alpha_figure`) as the MLflow artifact alphas.png
    (a view, drawn into a temporary folder: the `figures` stage draws the committed one)."""
    if not run.is_main or run.run_id is None:
        return
    from harness.figures import alpha_heatmaps

    with tempfile.TemporaryDirectory() as tmp:
        png = alpha_heatmaps(run.out, Path(tmp) / "alphas.png")
        if png is not None:
            run.tracker.log_artifact(png)


SEARCH_ARTIFACTS = (
    "genotype.json",
    "alphas_best.json",
    "alphas_final.json",
    "alphas.json",
    "config.yaml",
    "history.csv",
    "metrics.json",
)


def _search_lifecycle(cfg: Config, out: Path, rt: Runtime, method: str, fingerprint: str, precision: str) -> Any:
    """The search's run folder and MLflow run (`<method>-s<seed>-search` in the dataset's experiment)."""
    sc = cfg.search
    tags = run_tags(
        cfg, rt, method=method, stage="search", seed=sc.seed, dataset="cifar10", fingerprint=fingerprint,
        precision=precision,
    )  # fmt: skip
    experiment, name = f"{cfg.tracking.experiment_prefix}-cifar10", f"{method}-s{sc.seed}-search"
    return RunLifecycle(cfg, out, rt, experiment=experiment, run_name=name, tags=tags, tracker=make_tracker(cfg, rt))


@dataclass
class _Progress:
    """What a search carries from epoch to epoch besides the supernet: the selection and every epoch's file."""

    best: dict[str, Any]
    epoch_files: list[dict[str, Any]]  # genotypes/epochNNN.json of every epoch (small), kept in the checkpoint

    @classmethod
    def resume(cls, searcher: Any, state: dict[str, Any] | None) -> tuple[_Progress, int]:
        """The progress of a resumable checkpoint (loading its supernet, optimisers and RNG), else a fresh one; and
        the epoch to start at."""
        if state is None:
            fresh = {"val_top1": -1.0, "epoch": -1, "genotype": None, "alphas": None, "alphas_epoch": -1}
            return cls(fresh, []), 0
        searcher.load_state_dict(state["model"])
        set_rng_state(state["rng"])
        return cls(dict(state["best"]), list(state.get("epoch_files", []))), int(state["epoch"])

    def end_epoch(self, run: Any, searcher: Any, r: _EpochResult, sc: SearchConfig) -> None:
        """Select, write the epoch's genotype file, checkpoint, log."""
        epoch, out = r.row["epoch"], run.out
        self.best = _select(self.best, r, sc.official_genotype_offset)
        path = out / "genotypes" / f"epoch{epoch:03d}.json"
        if run.is_main:
            self.epoch_files.append({"epoch": epoch, "genotype": r.genotype_end, **r.alphas_end})
            atomic_write_json(path, self.epoch_files[-1])
        checkpoint = {"model": searcher.state_dict(), "rng": rng_state(), "epoch_files": self.epoch_files}
        run.end_epoch(r.row, {**checkpoint, "best": self.best})
        if run.is_main:
            run.tracker.log_artifact(path, "genotypes")
            log.info("search epoch %d/%d val/top1 %.2f entropy %.4f", epoch, sc.epochs, r.row["val/top1"],
                     r.row["alpha_entropy"])  # fmt: skip

    def rewrite_epoch_files(self, out: Path) -> None:
        """The epoch files again where missing (a resume of a finished search whose outputs DVC removed)."""
        for f in self.epoch_files:
            if not (out / "genotypes" / f"epoch{f['epoch']:03d}.json").is_file():
                atomic_write_json(out / "genotypes" / f"epoch{f['epoch']:03d}.json", f)


def _search_metrics(history: list[dict[str, Any]], best: dict[str, Any], rt: Runtime, precision: str) -> dict[str, Any]:
    last = history[-1]
    return {
        "search/val_top1": last["val/top1"],
        "search/best_val_top1": best["val_top1"],
        "search/best_epoch": best["epoch"],
        "search/alpha_entropy": last["alpha_entropy"],
        "perf/search_s": sum(r["perf/epoch_s"] for r in history),
        "perf/peak_mem_mb": peak_memory_mb(rt.device),
        "world_size": rt.world_size,
        "precision": precision,
    }


def run_search(
    cfg: Config, data: str | Path, out: str | Path, *, resume: bool = False, progress: bool = True, method: str = "bnas"
) -> dict[str, Any]:
    """Search with the BNAS objective (paper §3); checkpoint every epoch; resume from `out/checkpoint.pt` if asked."""
    sc, out = cfg.search, Path(out)
    rt = setup_runtime(sc.device)
    try:
        if sc.batch_size % rt.world_size:
            raise DataError(f"search.batch_size {sc.batch_size} (global) is not divisible by the {rt.world_size} "
                            "processes")  # fmt: skip
        if sc.threads > 0:
            torch.set_num_threads(sc.threads)
        d = _search_data(cfg, data, rt)
        searcher = _searcher(sc, _supernet(sc, rt), rt)
        precision = "bf16" if searcher.amp_dtype is not None else "fp32"  # of the supernet forwards
        run = _search_lifecycle(cfg, out, rt, method, d.fingerprint, precision)
        carried, start = _Progress.resume(searcher, run.resumable_state(resume, map_location=rt.device))
        run.start()
        with run:
            for epoch in range(start, sc.epochs):
                carried.end_epoch(run, searcher, _search_epoch(searcher, d, sc, epoch, rt, progress), sc)
            if not run.history:
                raise DataError(f"{out}: search.epochs = {sc.epochs}: nothing to search")
            if rt.is_main:
                carried.rewrite_epoch_files(out)
            run.write_history()
            if rt.distributed:
                torch.distributed.barrier()
                if not rt.is_main:
                    return {"rank": rt.rank}
            _write_results(out, searcher, carried.best, run.history[-1]["epoch"], sc)
            metrics = _search_metrics(run.history, carried.best, rt, precision)
            run.finish(metrics, SEARCH_ARTIFACTS)
            _log_alpha_figure(run)
            return metrics
    finally:
        teardown_runtime(rt)
