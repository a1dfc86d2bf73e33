"""Kept so that ``from timmlens.adapters.trace import forward_trace`` goes on working.

The forward trace is a model fact and lives with the others in
`timmlens.models.introspect`.
"""

from ..models.introspect import ForwardTrace, ModuleCall, forward_trace, traced_num_classes

__all__ = ["ForwardTrace", "ModuleCall", "forward_trace", "traced_num_classes"]
