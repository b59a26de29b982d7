"""Callbacks: the training loop's hooks, as one small explicit protocol.

Subclass :class:`Callback` and override the hooks you need; every hook the loop calls is listed
here, with when it runs (steps count from 1)::

    on_batch(step, model, batch, logits, loss)   after each micro-batch's forward and loss, before
                                                 backward (logits is None for naive BTL, which
                                                 runs one forward per copy); loss is normalised
    after_backward(step, model)                  gradients of the whole step are in .grad (summed
                                                 over processes), before clipping
    after_optimizer_step(step, model, optimizer) the parameters have moved
    on_log(step, row)                            a log.jsonl line was written: loss, lr, grad_norm,
                                                 tokens_per_s (every [train] log_every steps)
    on_epoch_end(epoch, record)                  the epoch's history record (losses, dev scores)
    on_checkpoint(step)                          checkpoint.pt now holds the state after ``step``: a
                                                 resumed run goes on from step + 1 (a callback that
                                                 writes files should write them here, so nothing
                                                 recorded before a checkpoint is lost on a crash)
    on_train_end(metrics)                        what metrics.json holds

The gradient-flow recorder (``bertlab.gradflow.GradFlowRecorder``) is one.
"""
from __future__ import annotations

HOOKS = ("on_batch", "after_backward", "after_optimizer_step", "on_log", "on_epoch_end", "on_checkpoint",
         "on_train_end")


class Callback:
    """No-op hooks; override the ones you need."""

    def on_batch(self, step: int, model, batch: dict, logits, loss) -> None:
        pass

    def after_backward(self, step: int, model) -> None:
        pass

    def after_optimizer_step(self, step: int, model, optimizer) -> None:
        pass

    def on_log(self, step: int, row: dict) -> None:
        pass

    def on_epoch_end(self, epoch: int, record: dict) -> None:
        pass

    def on_checkpoint(self, step: int) -> None:
        pass

    def on_train_end(self, metrics: dict) -> None:
        pass


class CallbackList(Callback):
    """The loop's callbacks, called in order. Objects that do not subclass :class:`Callback` are
    accepted if every hook they define is one of ``HOOKS`` (a misspelt hook would never run, so
    it is an error here, not silence)."""

    def __init__(self, callbacks=()):
        self.callbacks = list(callbacks)
        for cb in self.callbacks:
            if isinstance(cb, Callback):
                continue
            hooks = [name for name in dir(cb) if name.startswith(("on_", "after_")) and callable(getattr(cb, name))]
            unknown = sorted(set(hooks) - set(HOOKS))
            if unknown:
                raise TypeError(f"callback {type(cb).__name__}: {unknown} are not training hooks; "
                                f"expected some of {list(HOOKS)} (see bertlab.callbacks)")

    def _call(self, hook: str, *args) -> None:
        for cb in self.callbacks:
            fn = getattr(cb, hook, None)
            if fn is not None:
                fn(*args)

    def on_batch(self, step, model, batch, logits, loss) -> None:
        self._call("on_batch", step, model, batch, logits, loss)

    def after_backward(self, step, model) -> None:
        self._call("after_backward", step, model)

    def after_optimizer_step(self, step, model, optimizer) -> None:
        self._call("after_optimizer_step", step, model, optimizer)

    def on_log(self, step, row) -> None:
        self._call("on_log", step, row)

    def on_epoch_end(self, epoch, record) -> None:
        self._call("on_epoch_end", epoch, record)

    def on_checkpoint(self, step) -> None:
        self._call("on_checkpoint", step)

    def on_train_end(self, metrics) -> None:
        self._call("on_train_end", metrics)


class TensorBoardLogger(Callback):
    """``[train] tensorboard = true``: the log lines and each epoch's losses and dev scores as
    TensorBoard scalars in ``log_dir`` (``torch.utils.tensorboard.SummaryWriter``), for users who
    watch runs the way Trainer and Lightning show them. Needs the ``tensorboard`` package."""

    def __init__(self, log_dir, purge_step: int | None = None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ImportError("[train] tensorboard = true needs the tensorboard package: "
                              "pip install 'bertlab[tensorboard]'") from None
        # a resumed run purges what was logged after its checkpoint, as log.jsonl is truncated
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    def on_log(self, step, row) -> None:
        for key in ("loss", "lr", "grad_norm", "tokens_per_s"):
            if row.get(key) is not None:
                self.writer.add_scalar(f"train/{key}", row[key], step)

    def on_epoch_end(self, epoch, record) -> None:
        step = record["step"]
        for key in ("train_loss", "dev_loss"):
            if record.get(key) is not None:
                self.writer.add_scalar(f"epoch/{key}", record[key], step)
        for decode, scores in (record.get("dev") or {}).items():
            for metric, value in scores.items():
                if value is not None:
                    self.writer.add_scalar(f"dev_{decode}/{metric}", value, step)
        self.writer.flush()

    def on_train_end(self, metrics) -> None:
        self.writer.close()
