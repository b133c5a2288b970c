"""What using a trained model needs, training or not: its records (ModelInfo, checkpoints, run
directories), the device and autocast, the one batched inference loop, TrainedModel and load().

Below both engine/ (training) and export/; it never imports either.
"""
