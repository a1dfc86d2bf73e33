"""Exceptions raised by timmlens.

Every message says what was wrong, what was expected, and what to try. The classes
subclass the built-in exception a caller would naturally catch (``ValueError``,
``FileNotFoundError``, ...), so ``except ValueError`` keeps working.
"""

from __future__ import annotations


class TimmLensError(Exception):
    """Base class of every error timmlens raises on purpose.

    Args:
        args: the message (written for Python callers: ``num_classes=5``).
        cli: the same message for the ``timmlens`` command, its hints written as command
            lines (``--num-classes 5``); the command prints it instead of the message.
    """

    def __init__(self, *args: object, cli: str | None = None) -> None:
        super().__init__(*args)
        self.cli = cli


class ModelLoadError(TimmLensError, ValueError):
    """A model spec could not be turned into a model (unknown name, bad weights, ...)."""


class WeightsMismatchError(ModelLoadError):
    """A checkpoint does not fit the architecture it was loaded into."""


class HubUnavailableError(ModelLoadError, ConnectionError):
    """A ``hf-hub:`` model is neither cached locally nor downloadable right now."""


class ImageInputError(TimmLensError, ValueError):
    """An image input cannot be turned into a model batch."""


class LayerResolutionError(TimmLensError, ValueError):
    """A target layer name or module cannot be used for the requested method."""


class ChannelIndexError(TimmLensError, ValueError):
    """A channel (or a position on its grid) that the layer's output does not have."""


class GradientsDisabledError(TimmLensError, RuntimeError):
    """A gradient-based explanation was asked for where autograd is off (inference mode)."""


class UnsupportedModelError(TimmLensError, ValueError):
    """A method does not apply to this model family (e.g. attention rollout on a CNN)."""


class TargetError(TimmLensError, ValueError):
    """A ``target_class`` that cannot be explained: a class out of range, a list of the
    wrong length, or a callable target returning something other than one finite score
    per image (connected to the logits where the method takes gradients)."""


class LabelNameError(TimmLensError, ValueError):
    """A folder or dataset label that names no class of the model, or several."""


class RunMismatchError(TimmLensError, ValueError):
    """An evaluation output folder holds rows of another run (model, options or images)."""


class RowsFileError(TimmLensError, ValueError):
    """An evaluation rows file with a damaged line (other than a last line cut by a kill)."""


class OutputPathError(TimmLensError, ValueError):
    """An output path that cannot be written: a file where a folder is expected, a path
    under a file, or a folder this process may not write in."""


class DistributedRunError(TimmLensError, RuntimeError):
    """Another rank of a ``torchrun`` job failed; this rank stops with that rank's message."""


class ExplanationFileError(TimmLensError, ValueError):
    """A file given to ``load_explanation`` that is not a saved timmlens explanation."""


class MetricInputError(TimmLensError, ValueError):
    """A metric setting or input it cannot use (percentiles out of range, NaN heatmaps, ...)."""


class DeviceError(TimmLensError, ValueError):
    """A device that is not a torch device name, or is not available on this machine."""


class ConceptInputError(TimmLensError, ValueError):
    """A concept analysis that cannot run on its input: a number of concepts out of range
    (below 1, above the layer's channels) or activations with NaN/inf values."""


class ConceptLabelError(TimmLensError, ValueError):
    """Concept vectors that the model's head cannot label: no classifier, a classifier
    that is not one linear layer after pooling, or concepts of another width."""


class OptionalDependencyError(TimmLensError, ImportError):
    """A feature needs an optional package that is not installed; the message names the
    extra to install (``pip install "timmlens[concepts]"``)."""
