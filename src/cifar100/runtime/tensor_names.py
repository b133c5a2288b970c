"""The names of a served or exported model's tensors: the ONNX graph, the Triton repository and
the service's Open Inference Protocol all use these, so a client works against each alike."""

INPUT = "images"  # UINT8 (N, size, size, 3)
PROBABILITIES, LOGITS = "probabilities", "logits"  # FP32 (N, classes)
OUTPUTS = (PROBABILITIES, LOGITS)
# Per image, where the model carries a "none of these" rule (runtime/trust.py)
OOD_SCORE, NONE_OF_THESE = "ood_score", "none_of_these"  # FP32 (N,), BOOL (N,)
