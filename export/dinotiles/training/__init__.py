"""dinotiles.training: weights, ONNX export, codebook builds, fine-tuning, evaluation (the only layer with torch)."""
