"""The names of a served or exported model's tensors: the ONNX graph, the Triton repository and
the service's Open Inference Protocol all use these, so a client works against each alike."""

INPUT = "images"  # UINT8 (N, size, size, 3)
PROBABILITIES, LOGITS = "probabilities", "logits"  # FP32 (N, classes): calibrated, raw
# runtime/trust.py: the entropy of softmax(logits) in nats, and whether it is over the model's
# threshold (all False for a model without a "none of these" rule)
OOD_SCORE, NONE_OF_THESE = "ood_score", "none_of_these"  # FP32 (N,), BOOL (N,)
OUTPUTS = (PROBABILITIES, LOGITS, OOD_SCORE, NONE_OF_THESE)
