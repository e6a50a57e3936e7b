"""`bnas search`: the BNAS architecture search on the recorded 25k/25k CIFAR-10 split (bnas.md §4).

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
`alphas_final.json` (the final alphas plus `epoch`), `alphas.json` (the final alphas), `alphas.png` (heatmap of the
final alphas), `genotype.txt` (the selected genotype), `metrics.json` (with `precision`: bf16 or fp32 supernet
forwards). The `bnas derive` stage reads alphas_best.json or alphas_final.json (`pipeline.retrain_cell`).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from harness.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from harness.config import Config, config_to_dict, flatten, save_config
from harness.data import CifarLoader, load_cifar10, stratified_subset
from harness.distributed import all_reduce_sum, setup_runtime, teardown_runtime
from harness.errors import DataError
from harness.io import atomic_path, atomic_write_json, atomic_write_text
from harness.training import _config_diff, _write_history, code_digest, peak_memory_mb

__all__ = ["run_search", "plot_alphas", "load_alphas", "derive_from_alphas", "alphas_dict"]

log = logging.getLogger(__name__)


def _split(x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    keep = idx[torch.from_numpy(stratified_subset(y[idx].numpy(), n, seed))]
    return x[keep], y[keep]


def plot_alphas(
    alphas_normal: torch.Tensor, alphas_reduce: torch.Tensor, primitives: tuple[str, ...], path: Path
) -> None:
    """Heatmap of softmax(alpha) per edge for both cell types, written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 5), constrained_layout=True)
    for ax, a, title in zip(axes, (alphas_normal, alphas_reduce), ("normal", "reduce"), strict=True):
        w = torch.softmax(a.detach().float().cpu(), -1).numpy()
        im = ax.imshow(w, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(primitives)), primitives, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(w.shape[0]))
        ax.set_ylabel("edge")
        ax.set_title(f"{title} cell: softmax(alpha)")
        fig.colorbar(im, ax=ax)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def alphas_dict(
    alphas_normal: torch.Tensor, alphas_reduce: torch.Tensor, primitives: tuple[str, ...]
) -> dict[str, Any]:
    """The alphas file format of `bnas derive`: 14 x len(primitives) nested lists, DARTS edge order, op columns."""
    return {
        "alphas_normal": alphas_normal.detach().cpu().tolist(),
        "alphas_reduce": alphas_reduce.detach().cpu().tolist(),
        "primitives": list(primitives),
    }


def load_alphas(path: str | Path) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """Read an alphas file: `alphas_normal` and `alphas_reduce`, each 14 rows (DARTS edge order) of 7 columns in the
    S_B op order (6 columns: a search without Zeroise). A `bnas search` epoch file (genotypes/epochNNN.json) works too.

    Raises:
        DataError: unreadable, missing keys, wrong shape or non-finite values.
    """
    from methods.bnas.genotypes import PRIMITIVES, SPACES

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
                f"DARTS space: 8 or 7), got {list(t.shape)}"
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
    return out[0], out[1], prims


def derive_from_alphas(
    path: str | Path, *, gamma: float = 1.0, gamma_compat_row: bool = False, no_zeroise: bool = False
) -> Any:
    """Re-derive a genotype from saved alphas (bnas.md §4); see :func:`methods.bnas.search.derive_genotype`."""
    from methods.bnas.search import derive_genotype

    if gamma <= 0:
        raise DataError(f"--gamma must be positive, got {gamma}")
    an, ar, prims = load_alphas(path)
    return derive_genotype(an, ar, prims, exclude_zeroise=no_zeroise, gamma=gamma, official_gamma_bug=gamma_compat_row)


def _genotype_dict(g: Any) -> dict[str, Any]:
    from methods.bnas.genotypes import genotype_to_json

    return json.loads(genotype_to_json(g))


class ResampledBatches:
    """Architecture batches as the release draws them (`search.official_val_resample`): every step a fresh random
    global batch of the validation images, without replacement within the batch and independent across steps.

    The draws of an epoch come from a generator seeded by (seed, epoch), so a run (and a resume, which restarts at an
    epoch boundary) sees the same batches. Every rank draws the same global batch and takes its shard
    (`rank::world_size`), as :class:`harness.data.CifarLoader` does. With `augment`, each drawn image gets the training
    crop + flip, drawn from the same generator. Images and normalisation are those of `loader`.
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


def _evaluate(searcher: Any, loader: CifarLoader, rt: Any) -> tuple[float, int, int]:
    """(cross-entropy sum, correct, images) of the supernet in eval mode over `loader`, summed over the ranks."""
    searcher.net.eval()
    correct = total = 0
    loss_sum = 0.0
    with torch.no_grad():
        for x, y in loader:
            logits = searcher.forward(x)
            loss_sum += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
            total += len(y)
    if rt.distributed:  # each rank evaluated its shard
        sums_t = all_reduce_sum(torch.tensor([loss_sum, correct, total], dtype=torch.float64, device=loader.device), rt)
        loss_sum, correct, total = sums_t[0].item(), int(sums_t[1].item()), int(sums_t[2].item())
    return loss_sum, correct, total


def run_search(
    cfg: Config, data: str | Path, out: str | Path, *, resume: bool = False, progress: bool = True, method: str = "bnas"
) -> dict[str, Any]:
    """Search with the BNAS objective; checkpoint every epoch; resume from `out/checkpoint.pt` when asked."""
    from methods.bnas.search import BnasSearcher, diversity_weight
    from methods.bnas.supernet import SuperNet

    sc = cfg.search
    out = Path(out)
    rt = setup_runtime(sc.device)
    if sc.batch_size % rt.world_size:
        raise DataError(f"search.batch_size {sc.batch_size} (global) is not divisible by the {rt.world_size} processes")
    main = rt.is_main
    try:
        if sc.threads > 0:
            torch.set_num_threads(sc.threads)
        ds = load_cifar10(data)
        tr_x, tr_y = _split(ds.train_x, ds.train_y, ds.search_train_idx, sc.train_subset, cfg.data.split_seed)
        va_x, va_y = _split(ds.train_x, ds.train_y, ds.search_val_idx, sc.train_subset, cfg.data.split_seed)
        dev = rt.device
        # Weight batches: training transforms. Validation images (architecture batches and the per-epoch selection
        # evaluation): un-augmented, or the training crop + flip with official_val_augment (the release). The
        # architecture batches are one shuffled pass per epoch, cycling, or a fresh random batch per step with
        # official_val_resample (the release). Each rank takes its shard of every global batch (same samples and
        # augmentations as one process).
        shard = {"device": dev, "rank": rt.rank, "world_size": rt.world_size}
        per_rank = sc.batch_size // rt.world_size
        val_aug = sc.official_val_augment
        train_loader = CifarLoader(tr_x, tr_y, per_rank, train=True, seed=sc.seed, **shard)
        val_loader = CifarLoader(va_x, va_y, per_rank, train=True, augment=val_aug, seed=sc.seed + 1, **shard)
        resampled = (
            ResampledBatches(val_loader, sc.batch_size, augment=val_aug, seed=sc.seed + 1)
            if sc.official_val_resample
            else None
        )
        # augmented selection evaluation: the training loader's crop + flip (its shuffle does not change the
        # accuracy; it drops a last batch of one image and, with N processes, up to N - 1 images)
        eval_loader = CifarLoader(
            va_x, va_y, max(per_rank, 256), train=val_aug, augment=val_aug, seed=sc.seed + 2, **shard
        )
        torch.manual_seed(sc.seed)
        net = SuperNet(
            sc.init_channels,
            sc.layers,
            num_classes=10,
            no_zeroise=sc.no_zeroise,
            skip=not sc.no_skip,
            space=sc.space,
            impl=sc.supernet,
            official_fp_tail=sc.official_fp_tail,
            binary_preprocess=sc.official_stale_filter,
            activation_checkpointing=sc.activation_checkpointing,
        ).to(dev)
        if rt.distributed:
            from harness.distributed import convert_sync_batchnorm

            if sc.sync_bn:  # BN statistics of the global batch: the single-process math
                net = convert_sync_batchnorm(net, dev)
            for t in (*net.parameters(), *net.buffers()):  # every rank starts from rank 0's weights and alphas
                torch.distributed.broadcast(t.data, 0)
        if sc.compile:
            net.compile()
        searcher = BnasSearcher(
            net,
            epochs=sc.epochs,
            lr=sc.lr,
            lr_min=sc.lr_min,
            momentum=sc.momentum,
            weight_decay=sc.weight_decay,
            arch_lr=sc.arch_lr,
            arch_betas=(sc.arch_beta1, sc.arch_beta2),
            arch_weight_decay=sc.arch_weight_decay,
            lam=sc.lam,
            tau=sc.tau,
            official_entropy_bug=sc.official_entropy_bug,
            official_lr_offset=sc.official_lr_offset,
            amp_dtype=torch.bfloat16 if (sc.amp and dev.type == "cuda") else None,  # = searcher.amp_dtype
            cuda_graph=sc.cuda_graph and not sc.compile,  # the two together are untested: compile wins
        )
        if sc.cuda_graph and dev.type == "cuda" and not sc.compile and not searcher.cuda_graph:
            log.warning("search.cuda_graph: runs with one process only; %d processes run eagerly", rt.world_size)
        precision = "bf16" if searcher.amp_dtype is not None else "fp32"  # of the supernet forwards
        cfg_dict, digest = config_to_dict(cfg), code_digest()
        ckpt = out / "checkpoint.pt"
        best: dict[str, Any] = {"val_top1": -1.0, "epoch": -1, "genotype": None, "alphas": None, "alphas_epoch": -1}
        start, history, run_id = 0, [], None
        epoch_files: list[dict[str, Any]] = []  # genotypes/epochNNN.json of every epoch (small), kept in the checkpoint
        if resume and ckpt.exists():
            state = load_checkpoint(ckpt, map_location=dev)
            diff = _config_diff(state.get("config", {}), cfg_dict)
            if state.get("code_digest") != digest:
                diff.append("code")
            if diff:
                log.warning(
                    "%s was made with a different config (%s); keeping it as checkpoint.stale.pt",
                    ckpt,
                    "; ".join(diff[:5]),
                )
                if rt.distributed:
                    torch.distributed.barrier()
                if main:
                    os.replace(ckpt, out / "checkpoint.stale.pt")
            else:
                searcher.load_state_dict(state["model"])
                set_rng_state(state["rng"])
                start, history, best = int(state["epoch"]), list(state["history"]), dict(state["best"])
                epoch_files = list(state.get("epoch_files", []))
                run_id = state.get("mlflow_run_id")
                log.info("resuming search from %s at epoch %d", ckpt, start)
        if main:
            out.mkdir(parents=True, exist_ok=True)
            save_config(cfg, out / "config.yaml")
        tracker: Any = None
        if cfg.tracking.enabled and main:
            from harness.tracking import Tracker, git_info

            tracker = Tracker()
            git = git_info()
            run_id = tracker.start(
                experiment=f"{cfg.tracking.experiment_prefix}-cifar10",
                run_name=f"{method}-s{sc.seed}-search",
                tags={
                    "bnas.method": method,
                    "bnas.dataset": "cifar10",
                    "bnas.seed": sc.seed,
                    "bnas.profile": cfg.profile,
                    "bnas.stage": "search",
                    "bnas.dvc_stage": os.environ.get("DVC_STAGE", ""),
                    "bnas.git_commit": git["commit"],
                    "bnas.git_dirty": git["dirty"],
                    "bnas.data_fingerprint": ds.meta.get("fingerprint", ""),
                    "bnas.torch": torch.__version__,
                    "bnas.device": str(dev),
                    "bnas.world_size": rt.world_size,
                    "bnas.precision": precision,
                },
                params=flatten(cfg_dict),
                run_id=run_id,
            )
        status = "FAILED"
        try:
            for epoch in range(start, sc.epochs):
                t0 = time.perf_counter()
                searcher.new_epoch(epoch)
                g_start = searcher.genotype(exclude_zeroise=sc.no_zeroise)
                a_start = alphas_dict(net.alphas_normal, net.alphas_reduce, net.primitives)
                train_loader.set_epoch(epoch)
                val_loader.set_epoch(epoch)
                eval_loader.set_epoch(epoch)
                acc: torch.Tensor | None = None  # the epoch's metric sums, kept on the device (no wait per step)
                n = 0
                if resampled is not None:
                    val_iter: Iterator[tuple[torch.Tensor, torch.Tensor]] = resampled.batches(epoch)
                else:
                    val_iter = itertools.cycle(val_loader) if len(val_loader) else iter(())
                it = zip(train_loader, val_iter, strict=False)  # the val iterator cycles (or never ends)
                if progress and main:
                    from tqdm import tqdm

                    it = tqdm(it, total=len(train_loader), desc=f"search {epoch}", leave=False, dynamic_ncols=True)
                for tb, vb in it:
                    m = searcher.step_metrics(tb, vb).double()
                    acc = m if acc is None else acc + m
                    n += 1
                sums = dict(zip(searcher.metric_names, acc.tolist(), strict=True)) if acc is not None else {}
                row: dict[str, Any] = {"epoch": epoch + 1, **{k: v / max(n, 1) for k, v in sums.items()}}
                loss_sum, correct, total = _evaluate(searcher, eval_loader, rt)
                g_end = searcher.genotype(exclude_zeroise=sc.no_zeroise)
                a_end = alphas_dict(net.alphas_normal, net.alphas_reduce, net.primitives)
                row.update(
                    {
                        "val/loss": loss_sum / max(total, 1),
                        "val/top1": 100.0 * correct / max(total, 1),
                        "alpha_entropy": searcher.entropy(),
                        "reg_weight": diversity_weight(epoch, sc.lam, sc.tau),
                        "lr": searcher.w_opt.param_groups[0]["lr"],
                        "perf/epoch_s": time.perf_counter() - t0,
                        "genotype": json.dumps(_genotype_dict(g_end)),
                    }
                )
                if row["val/top1"] > best["val_top1"]:  # the selection: the alphas behind it are what is retrained
                    offset = sc.official_genotype_offset
                    best = {
                        "val_top1": row["val/top1"],
                        "epoch": epoch + 1,
                        "genotype": _genotype_dict(g_start if offset else g_end),
                        "alphas": a_start if offset else a_end,
                        "alphas_epoch": epoch if offset else epoch + 1,  # the epoch they were taken after; 0 = initial
                    }
                history.append(row)
                gdir = out / "genotypes"
                if not main:
                    continue
                epoch_files.append({"epoch": epoch + 1, "genotype": _genotype_dict(g_end), **a_end})
                atomic_write_json(gdir / f"epoch{epoch + 1:03d}.json", epoch_files[-1])
                save_checkpoint(
                    {
                        "model": searcher.state_dict(),
                        "rng": rng_state(),
                        "epoch": epoch + 1,
                        "history": history,
                        "epoch_files": epoch_files,
                        "best": best,
                        "config": cfg_dict,
                        "code_digest": digest,
                        "mlflow_run_id": run_id,
                    },
                    ckpt,
                )
                _write_history(out / "history.csv", history)
                if tracker is not None:
                    tracker.log_metrics({k: v for k, v in row.items() if isinstance(v, float)}, step=epoch + 1)
                    tracker.log_artifact(gdir / f"epoch{epoch + 1:03d}.json", "genotypes")
                log.info(
                    "search epoch %d/%d val/top1 %.2f entropy %.4f",
                    epoch + 1,
                    sc.epochs,
                    row["val/top1"],
                    row["alpha_entropy"],
                )
            if not history:
                raise DataError(f"{out}: search.epochs = {sc.epochs}: nothing to search")
            if main:  # a resume of a finished search (its outputs removed, e.g. by DVC) writes them all again
                for f in epoch_files:
                    path = out / "genotypes" / f"epoch{f['epoch']:03d}.json"
                    if not path.is_file():
                        atomic_write_json(path, f)
                _write_history(out / "history.csv", history)
            if rt.distributed:
                torch.distributed.barrier()
                if not main:
                    status = "FINISHED"
                    return {"rank": rt.rank}
            from methods.bnas.search import derive_genotype

            def imagenet(an: torch.Tensor, ar: torch.Tensor) -> dict[str, Any]:
                g = derive_genotype(
                    an,
                    ar,
                    net.primitives,
                    net.steps,
                    exclude_zeroise=sc.no_zeroise,
                    gamma=sc.gamma,
                    official_gamma_bug=sc.official_gamma_bug,
                )
                return _genotype_dict(g)

            selection = "start-of-epoch (release)" if sc.official_genotype_offset else "end-of-epoch"
            final = alphas_dict(net.alphas_normal, net.alphas_reduce, net.primitives)
            chosen = best["alphas"]
            result = {
                "genotype": best["genotype"],
                "epoch": best["epoch"],
                "val_top1": best["val_top1"],
                "selection": selection,
                "genotype_final": _genotype_dict(searcher.genotype(exclude_zeroise=sc.no_zeroise)),
                # the ImageNet-transfer genotype of the selected alphas (the release: of the same epoch)
                "genotype_imagenet": imagenet(
                    torch.tensor(chosen["alphas_normal"]), torch.tensor(chosen["alphas_reduce"])
                ),
                "genotype_imagenet_final": imagenet(net.alphas_normal, net.alphas_reduce),
                "gamma": sc.gamma,
            }
            atomic_write_json(out / "genotype.json", result)
            atomic_write_json(
                out / "alphas_best.json",
                {
                    **chosen,
                    "epoch": best["epoch"],
                    "selection": selection,
                    "val_top1": best["val_top1"],
                    "alphas_epoch": best["alphas_epoch"],
                },
            )
            atomic_write_json(out / "alphas_final.json", {**final, "epoch": history[-1]["epoch"], "selection": "final"})
            atomic_write_json(out / "alphas.json", final)
            plot_alphas(net.alphas_normal, net.alphas_reduce, net.primitives, out / "alphas.png")
            last = history[-1]
            metrics = {
                "search/val_top1": last["val/top1"],
                "search/best_val_top1": best["val_top1"],
                "search/best_epoch": best["epoch"],
                "search/alpha_entropy": last["alpha_entropy"],
                "perf/search_s": sum(r["perf/epoch_s"] for r in history),
                "perf/peak_mem_mb": peak_memory_mb(dev),
                "world_size": rt.world_size,
                "precision": precision,
            }
            atomic_write_json(out / "metrics.json", metrics)
            atomic_write_text(out / "genotype.txt", json.dumps(best["genotype"]) + "\n")
            if tracker is not None:
                tracker.log_metrics({k: v for k, v in metrics.items() if not isinstance(v, str)}, step=sc.epochs)
                for name in (
                    "genotype.json",
                    "alphas_best.json",
                    "alphas_final.json",
                    "alphas.json",
                    "alphas.png",
                    "config.yaml",
                    "history.csv",
                    "metrics.json",
                ):
                    tracker.log_artifact(out / name)
            status = "FINISHED"
            return metrics
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            if tracker is not None:
                tracker.end(status)
    finally:
        teardown_runtime(rt)
