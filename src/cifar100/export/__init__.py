"""Taking a trained model out: `export_model` writes it as ONNX (optionally int8), safetensors,
a Keras .keras file or a Triton model repository; each export carries the model's ModelInfo,
and `cifar100.load` reads the ONNX and safetensors ones back."""
