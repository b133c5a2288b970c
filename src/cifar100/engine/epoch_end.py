"""What happens between steps and after them: validation, the metrics log and checkpoints.

Rank 0 alone writes; the other ranks wait at a barrier. A mid-epoch checkpoint also holds
the position (step, the epoch's generator, every rank's RNG, the running sums), so a resumed
run takes exactly the steps an unbroken one would have.
"""

from __future__ import annotations

import dataclasses
import time
from datetime import datetime
from typing import Any

import torch

from cifar100.cpu_threads import refit_threads
from cifar100.engine import distributed
from cifar100.engine.position import ResumePosition
from cifar100.engine.run import Run
from cifar100.evaluate import save_predictions
from cifar100.metrics import accuracy, classification_metrics
from cifar100.runtime.checkpoint import Checkpoint, load_weights
from cifar100.runtime.evaluation import Evaluation
from cifar100.runtime.inference import evaluate_model, predict_logits
from cifar100.runtime.trust import fit_trust, ood_record


def checkpoint_of(run: Run, optimizer, phase: str, epochs_done: int) -> Checkpoint:
    """The run's resumable state after `epochs_done` whole epochs (plus any position)."""
    # when these weights were trained (RFC 3339, as a browser's Date parses it)
    saved_at = datetime.now().astimezone().isoformat(timespec="seconds")
    return Checkpoint(
        info=dataclasses.replace(run.info, config=run.cfg, saved_at=saved_at),
        model=run.model.state_dict(),
        optimizer=optimizer.state_dict(),
        phase=phase,
        epoch=epochs_done,
        best_val_top1=run.best,
        # Which epoch best.pt holds: a resume can tell a best.pt whose save failed (below).
        best_epoch=run.best_epoch,
        wall_s=run.wall_s(),
        ema=run.ema.state_dict() if run.ema is not None else None,
        threads=torch.get_num_threads() if run.device.type == "cpu" else None,
    )


def fits_threads(run: Run) -> bool:
    """Whether the run fits its CPU threads to the free cores as it goes: on a CPU, one
    process (DDP's workers keep the count torchrun gave them)."""
    return run.device.type == "cpu" and not run.dist.enabled


REFIT_EVERY_S = 30.0  # measuring takes a quarter of a second: not after every short epoch


def refit(run: Run) -> None:
    """Between epochs, at most every REFIT_EVERY_S: the thread count fitted again to the cores
    other work leaves free now (cpu_threads.refit_threads), said where it changed."""
    if not fits_threads(run) or time.perf_counter() - run.threads_fitted < REFIT_EVERY_S:
        return
    run.threads_fitted = time.perf_counter()
    changed = refit_threads()
    if changed:
        old, new = changed
        why = "other work left cores free" if new > old else "other work took cores"
        run.say(f"threads: {old} -> {new} from the next epoch ({why})")


def end_epoch(
    run: Run, epoch: int, phase: str, stats: dict, optimizer, started: float, val_logits=None
) -> None:
    """Validate (on `val_logits` where given), log and checkpoint (rank 0) with the
    temperature and "none of these" rule fitted on validation; the other ranks wait."""
    t = run.cfg.train
    if run.dist.is_main:
        if val_logits is None:
            val_logits = predict_logits(run.model, run.val_set.images, run.device,
                                        t.eval_batch_size, t.amp)  # fmt: skip
        val = accuracy(val_logits, run.val_set.labels)
        temperature, rule = fit_trust(val_logits, run.val_set.labels, t.ood_acceptance)
        run.info.temperature, run.info.ood = temperature, rule and rule.to_json()
        record = {
            "epoch": epoch + 1,
            "phase": phase,
            **stats,
            # the images each epoch draws from: with the config, the per-step lr schedule
            "train_images": len(run.train_set),
            "val_loss": val["loss"],
            "val_top1": val["top1"],
            **({"val_top5": val["top5"]} if "top5" in val else {}),  # > 5 classes only
            "epoch_s": round(time.perf_counter() - started, 2),
            "wall_s": round(run.wall_s(), 2),  # since the run began, all sessions
        }
        if run.ema is not None:
            ema = evaluate_model(run.ema.module, run.val_set, run.device, t.eval_batch_size, t.amp)
            record.update(val_loss_ema=ema["loss"], val_top1_ema=ema["top1"])
        if fits_threads(run):
            record["threads"] = torch.get_num_threads()  # those this epoch ran with
        run.log.append(record)
        # Accuracies in percent, as evaluate, compare and the report print them.
        top5 = f" top-5 {val['top5']:.2%}" if "top5" in val else ""
        run.say(
            f"epoch {epoch + 1}/{t.epochs} [{phase}] loss {stats['train_loss']:.4f} "
            f"top-1 {stats['train_top1']:.2%} | val loss {val['loss']:.4f} "
            f"top-1 {val['top1']:.2%}{top5} | {record['epoch_s']:.1f} s "
            f"{stats['images_per_s']:.0f} img/s"
        )
        improved = val["top1"] > run.best
        run.best = max(run.best, val["top1"])
        run.best_epoch = epoch + 1 if improved else run.best_epoch
        refit(run)  # before the checkpoint, which records the count the run goes on with
        ckpt = checkpoint_of(run, optimizer, phase, epoch + 1)
        ckpt.val_top1 = val["top1"]
        ckpt.save(run.files.last, *([run.files.best] if improved else []))
        if run.callbacks is not None:
            run.callbacks.on_epoch(run, record)
    run.epochs_done, run.saved_at = epoch + 1, f"the end of epoch {epoch + 1}"
    # Every rank decides early stopping alike from rank 0's best (a collective: a barrier too).
    run.best, run.best_epoch = distributed.broadcast_object((run.best, run.best_epoch), run.dist)
    distributed.barrier(run.dist)


def patience_spent(run: Run) -> bool:
    """train.early_stopping: True when validation top-1 has not improved for that many epochs
    (and epochs remain); then run.early_stop records when and why, and the run says so.

    Checked before each epoch, so a stopped run resumed stays stopped (and is tested again)."""
    t = run.cfg.train
    done, best = run.epochs_done, run.best_epoch
    if not t.early_stopping or not best or done >= t.epochs or done - best < t.early_stopping:
        return False
    reason = (
        f"validation top-1 did not improve for {done - best} epochs (train.early_stopping="
        f"{t.early_stopping}); the best was {run.best:.2%} at epoch {best}"
    )
    run.early_stop = {
        "after_epoch": done,
        "of_epochs": t.epochs,
        "best_epoch": best,
        "best_val_top1": run.best,
        "patience": t.early_stopping,
        "reason": reason,
    }
    run.say(f"stopped early after epoch {done} of {t.epochs}: {reason}")
    return True


def use_final_weights(run: Run) -> None:
    """Before the final test (rank 0, which tests): the weights train.final names, recorded
    in run.final. best: best.pt's (the best validation epoch's, with their temperature and
    "none of these" rule) where they differ from the last; last: the model as it ends. Early
    stopping always tests the best. Without a validation split the last are used: choosing
    among epochs by the test split would overstate the test."""
    if run.final is not None or not run.dist.is_main:
        return
    t, stop, done = run.cfg.train, run.early_stop, run.epochs_done
    run.final = {"weights": "last", "epoch": done, "of_epochs": done, "setting": t.final}
    if stop is not None:
        stop["tested"] = "last"  # until the best are loaded below
    if stop is None and t.final == "last":
        return
    if run.cfg.data.val_fraction <= 0:
        run.final["note"] = "no validation split (data.val_fraction=0), so the last weights"
        return
    best = run.files.best
    if not best.is_file():  # its save failed: restore_best said so on resume
        run.say(f"note: {best} is missing, so the last weights (epoch {done}) are tested")
        run.final["note"] = "best.pt is missing, so the last weights"
        return
    run.final.update(weights="best", epoch=run.best_epoch, best_val_top1=run.best)
    if stop is not None:
        stop["tested"] = "best"
    if run.best_epoch == done:
        return  # the last epoch is the best: the model already holds its weights
    ckpt = Checkpoint.load(best)
    load_weights(run.model, ckpt.model, best)
    run.info.temperature, run.info.ood = ckpt.info.temperature, ckpt.info.ood  # fitted for them
    if run.ema is not None and ckpt.ema:
        run.ema.load_state_dict(ckpt.ema)
    run.say(
        f"testing the best validated weights, epoch {run.best_epoch} of {done} "
        f"(val top-1 {run.best:.2%}; --final last tests the last)"
    )


def restore_best(run: Run, ckpt: Checkpoint) -> None:
    """On resume, write best.pt again when its save failed (a full disk stops the run right
    after last.pt was written, so last.pt holds those very weights), or say that it is lost.

    best.pt is written just after last.pt, so one older than last.pt while last.pt says its
    epoch is the best missed that save."""
    best, last = run.files.best, run.files.last
    epoch = ckpt.recorded_best_epoch()
    if not epoch:
        return
    if epoch == ckpt.epoch and not ckpt.position:
        if best.is_file() and best.stat().st_mtime >= last.stat().st_mtime:
            return
        # "missing or older": a copy of a run (cp -r) may also leave it older; same weights.
        what = "was older than last.pt" if best.is_file() else "was missing (its save failed?)"
        ckpt.save(best)
        run.say(f"{best} {what}: written again from last.pt, which holds the best epoch ({epoch})")
    elif not best.is_file():
        run.say(
            f"note: {best} is missing and last.pt holds epoch {ckpt.epoch}, not the best "
            f"one ({epoch}): those weights cannot be brought back; --checkpoint last evaluates "
            "or exports the last ones"
        )


def save_position(
    run: Run,
    optimizer,
    phase: str,
    epoch: int,
    step: int,
    steps: int,
    generator: torch.Generator,
    sums: torch.Tensor,
    elapsed: float,
) -> None:
    """Checkpoint the run `step` steps into `epoch` (every rank calls this; rank 0 writes).

    `sums` is this rank's (loss sum, correct, images seen); rank 0 keeps all ranks' total.
    """
    rng = distributed.gather_object(torch.get_rng_state(), run.dist)  # dropout, per rank
    cuda_rng = None
    if run.device.type == "cuda":
        cuda_rng = distributed.gather_object(torch.cuda.get_rng_state(run.device), run.dist)
    total = distributed.all_reduce_sum(sums.detach().clone(), run.dist).cpu()
    if run.dist.is_main:
        ckpt = checkpoint_of(run, optimizer, phase, epoch)
        position = ResumePosition(step, generator.get_state(), rng, cuda_rng, total, elapsed)
        ckpt.position = position.to_dict()
        ckpt.save(run.files.last)
    run.saved_at = f"epoch {epoch + 1}, step {step} of {steps}"
    distributed.barrier(run.dist)


def final_test(run: Run, logits: torch.Tensor | None = None) -> dict[str, Any]:
    """Test metrics of the final weights, written to evaluation.json, with the logits (computed
    unless given) in predictions.npz, as `cifar100 evaluate RUN` writes them, so the report
    is whole right after training (rank 0)."""
    t, test_set = run.cfg.train, run.splits.test
    fine_to_coarse, coarse = run.info.fine_to_coarse, run.info.coarse_classes
    test = None
    if run.dist.is_main:
        if logits is None:
            logits = predict_logits(run.model, test_set.images, run.device, t.eval_batch_size,
                                    t.amp)  # fmt: skip
        test = classification_metrics(logits, test_set.labels, test_set.classes,
                                      fine_to_coarse, coarse, run.info.temperature)  # fmt: skip
        test["ood"] = ood_record(run.info.ood_rule, logits)
        if run.ema is not None:
            ema = evaluate_model(run.ema.module, test_set, run.device, t.eval_batch_size, t.amp)
            test["ema"] = {k: ema[k] for k in ("loss", "top1", "top5") if k in ema}
        predictions = run.files.predictions
        save_predictions(predictions, logits, test_set, fine_to_coarse, coarse)
        final = run.final or {"weights": "last", "epoch": run.epochs_done}
        best = final["weights"] == "best"
        Evaluation.of(
            checkpoint=str(run.files.best if best else run.files.last),
            epoch=final["epoch"],  # whole epochs in the tested weights
            final=final,  # which weights train.final chose, and why where it could not
            dataset=run.splits.name,
            train_wall_s=round(run.wall_s(), 2),
            **test,
            predictions=str(predictions),
            early_stopping=run.early_stop,  # when and why train.early_stopping ended the run
        ).write(run.files.evaluation)
    return distributed.broadcast_object(test or {}, run.dist)
