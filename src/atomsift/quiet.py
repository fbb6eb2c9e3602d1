"""Job logs without third-party chatter.

Every job of the DAG writes its stdout and stderr to ``results/logs/``; what belongs there is
our one summary line (and any real problem). Lightning adds, for every training job, an
accelerator survey ("GPU available: ..."), advertisements ("💡 Tip: ... litlogger ..."),
"`Trainer.fit` stopped", a note on which weights-only default it took when it *saves* a
checkpoint (every load of ours goes through :mod:`atomsift.safeload`), ``PossibleUserWarning``s about
our deliberate choices (few batches per logging interval, workers), a warning that the run
directory is not empty (it holds our run records), and deprecation warnings that torch raises
inside Lightning (``LeafSpec``). :func:`quiet_third_party` drops exactly these; warnings raised
from our own code, and Lightning's warnings and errors, still show.
"""

from __future__ import annotations

import logging
import warnings

# modules whose deprecation warnings are about their own internals (the user can do nothing)
_THIRD_PARTY = r"(torch|lightning|lightning_fabric|pytorch_lightning|lightning_utilities|torchmetrics|torch_geometric)(\.|$)"
_MESSAGES = (
    r"Checkpoint directory .* exists and is not empty",  # the run directory holds run.json / inputs.json
)


def quiet_third_party() -> None:
    """Install the filters (call once, before Lightning runs; idempotent)."""
    for category in (DeprecationWarning, FutureWarning, PendingDeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=_THIRD_PARTY)
    for message in _MESSAGES:
        warnings.filterwarnings("ignore", message=message)
    import lightning.pytorch  # noqa: F401 - sets its logger to INFO on import: before the level below
    from lightning.fabric.utilities.warnings import PossibleUserWarning

    warnings.filterwarnings("ignore", category=PossibleUserWarning)
    # Lightning's info lines go through these loggers: warnings and errors still pass
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
