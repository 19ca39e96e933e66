"""Loaded models: cards (the contract), runtimes (onnxruntime / TorchScript), inference and
numerics. training/ may import it."""
