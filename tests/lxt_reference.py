"""LXT's own ViT path as a reference, run in a subprocess: ``python lxt_reference.py IN OUT``.

``lxt.efficient.monkey_patch(torchvision.models.vision_transformer)`` patches
``nn.GELU``, ``nn.LayerNorm`` and ``nn.MultiheadAttention`` class-wide for the whole
process (and ``lxt.efficient`` imports ``transformers``), so it never runs in the test
process. IN is a ``torch.save``d dict: ``state`` (a torchvision ``VisionTransformer``'s
state dict), ``config`` (its constructor arguments), ``inputs`` ``(B, 3, H, W)`` and
``targets`` ``(B,)``; OUT receives LXT's input relevance ``x * grad`` ``(B, 3, H, W)``
and the logits.
"""

from __future__ import annotations

import sys

import torch


def main(source: str, destination: str) -> None:
    from lxt.efficient import monkey_patch
    from torchvision.models import vision_transformer

    monkey_patch(vision_transformer)  # LXT's default map for it: cp_LRP
    data = torch.load(source)
    model = vision_transformer.VisionTransformer(**data["config"]).eval()
    model.load_state_dict(data["state"])
    x = data["inputs"].clone().requires_grad_(True)
    logits = model(x)
    score = logits.gather(1, data["targets"].view(-1, 1)).sum()
    score.backward()
    torch.save({"relevance": (x * x.grad).detach(), "logits": logits.detach()}, destination)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
