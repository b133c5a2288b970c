"""The names of a served or exported model's tensors: the ONNX graph, the Triton repository and
the service's Open Inference Protocol all use these, so a client works against each alike."""

INPUT = "images"  # UINT8 (N, size, size, 3)
PROBABILITIES, LOGITS = "probabilities", "logits"  # FP32 (N, classes)
OUTPUTS = (PROBABILITIES, LOGITS)
