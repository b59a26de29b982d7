"""bertlab: plain-PyTorch token classification for studying class imbalance in clinical NER.

The pipeline, one module a step:
    datasets -> tokenization -> sampling (ATL/BTL) -> models -> losses -> train
    -> metrics / knn / stats -> experiment / report;  gradflow instruments training.
"""
__version__ = "0.1.0"


def load_pretrained(*args, **kwargs):
    """See :func:`bertlab.checkpoint.load_pretrained`."""
    from bertlab.checkpoint import load_pretrained as _load
    return _load(*args, **kwargs)


def save_pretrained(*args, **kwargs):
    """See :func:`bertlab.checkpoint.save_pretrained`."""
    from bertlab.checkpoint import save_pretrained as _save
    return _save(*args, **kwargs)
