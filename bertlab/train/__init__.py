"""Training: one config in, a trained model, its learning curves and scores out (docs/training.md).

    bertlab.train.loop      ``train`` and the loop, top to bottom
    bertlab.train.setup     resume or start over; data, model, objective, optimizer, schedule
    bertlab.train.scoring   the end of an epoch (dev scores, best model per decode) and of training
    bertlab.train.state     checkpoint.pt (exact resume), log.jsonl, the step losses
    bertlab.train.runtime   processes (torchrun), device, precision, progress bars
    bertlab.train.cli       ``bertlab train``

The loss of a step is ``bertlab.losses.objective.step_loss``. This package exports what a user
calls: ``train`` and the two exceptions it raises besides ``ConfigError``
(``from bertlab.train import train``).
"""
from bertlab.train.loop import TrainingInterrupted, train
from bertlab.train.state import NonFiniteLossError

__all__ = ["NonFiniteLossError", "TrainingInterrupted", "train"]
