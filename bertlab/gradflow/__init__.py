"""Gradient-flow instruments: how much of the loss reaches each layer, and from which class.

A :class:`GradFlowRecorder` is a training callback (see docs/architecture.md, "Training callbacks").
At chosen steps it writes tidy rows ``step, layer, component, statistic, value``:

* per parameter group (:func:`param_group`: embeddings, each encoder layer's attention and FFN, the
  head): the gradient's L2 norm ``‖g‖``, its RMS ``‖g‖/sqrt(n)``, the weight norm ``‖θ‖`` and the
  update-to-weight ratio ``‖θ_after − θ_before‖ / ‖θ_before‖`` across the optimizer step;
* the per-class decomposition of the gradient (:func:`per_class_gradients`): for each class ``k``
  the gradient ``g_k`` of the loss restricted to class-``k`` tokens, with its norm, its cosine to the
  total gradient ``g`` and its share ``<g_k, g> / ‖g‖²`` (the shares of a layer add up to 1);
* loss-landscape signals: the running variance of the batch loss within an epoch and the ratio of
  the first encoder layer's gradient norm to the last one's;
* logit statistics per class (mean / variance of the true-class logit and of ``p_t``, and the mean
  focal factor ``(1 − p_t)^γ``).

Nothing is hooked into the model: the recorder only reads ``p.grad`` and parameters in the callback
methods, so a run without it (or with it disabled) is bit-identical to a run with it, and the
per-class pass uses ``torch.autograd.grad`` (which never touches ``p.grad``).

The package: ``instruments`` (parameter groups, per-class gradients, the recorder), ``tables`` (the
rows on disk and their summaries), ``figures`` and ``cli``. ``bertlab gradflow --config FILE.toml``
trains with the recorder on and draws the figures; the plot functions read the CSV, so every figure
can be redrawn from the data. See docs/gradient-flow.md.
"""
from __future__ import annotations

from bertlab.gradflow.figures import (LEGEND_POINTS, STATISTIC_LABELS, statistic_label, plot_grad_norms,
                                      plot_class_share, plot_logit_stats, plot_compare, write_figures)
from bertlab.gradflow.instruments import (param_group, encoder_layers, token_classes,
                                          per_class_gradients, ALL_STATS, GradFlowConfig, GradFlowRecorder)
from bertlab.gradflow.tables import (COLUMNS, STATE_FILE, write_rows, read_rows, layer_means, layer_sort_key,
                                     class_share_table, markdown_summary)
