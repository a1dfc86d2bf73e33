"""Exceptions raised by timmlens.

Every message says what was wrong, what was expected, and what to try. The classes
subclass the built-in exception a caller would naturally catch (``ValueError``,
``FileNotFoundError``, ...), so ``except ValueError`` keeps working.
"""

from __future__ import annotations


class TimmLensError(Exception):
    """Base class of every error timmlens raises on purpose."""


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


class GradientsDisabledError(TimmLensError, RuntimeError):
    """A gradient-based explanation was asked for where autograd is off (inference mode)."""


class UnsupportedModelError(TimmLensError, ValueError):
    """A method does not apply to this model family (e.g. attention rollout on a CNN)."""


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


class DeviceError(TimmLensError, ValueError):
    """A device that does not exist or is not available here (``cuda`` without a GPU)."""
