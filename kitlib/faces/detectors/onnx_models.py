"""One ONNX graph run two ways: onnxruntime (CPU, or its CUDA provider) or a torch module converted by
onnx2torch (the way to batch it on a GPU without onnxruntime-gpu). CenterFace and the ArcFace
embedder both load through here."""
from __future__ import annotations

from typing import Any

import torch

RUNTIMES = ("auto", "onnxruntime", "torch")


def load_onnx(model: Any, *, device: torch.device, runtime: str = "auto") -> tuple[str, Any, str]:
    """``(runtime, net, provider)`` for ``model`` (an ``onnx.ModelProto`` or its serialised bytes) on ``device``.

    ``runtime``: ``onnxruntime``, ``torch`` or ``auto`` (onnxruntime on the CPU or where it has CUDA, else
    torch). ``net`` is an ``onnxruntime.InferenceSession`` or an ``nn.Module`` in eval mode; ``provider``
    names where it runs (``CPUExecutionProvider``, ``torch:cuda:0``, ...)."""
    import onnxruntime

    if runtime not in RUNTIMES:
        raise ValueError(f"ONNX runtime must be one of {RUNTIMES}, got {runtime!r}")
    ort_cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    if runtime == "auto":
        runtime = "torch" if device.type == "cuda" and not ort_cuda else "onnxruntime"
    if runtime == "torch":
        import onnx
        from onnx2torch import convert

        proto = onnx.load_from_string(model) if isinstance(model, bytes) else model
        return "torch", convert(proto).to(device).eval(), f"torch:{device}"
    providers: list[Any] = ["CPUExecutionProvider"]
    if device.type == "cuda" and ort_cuda:
        providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # graphs that list their initialisers as inputs: harmless warnings
    data = model if isinstance(model, bytes) else model.SerializeToString()
    session = onnxruntime.InferenceSession(data, options, providers=providers)
    return "onnxruntime", session, session.get_providers()[0]
