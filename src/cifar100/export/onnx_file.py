"""A classifier as one self-contained ONNX file: uint8 images in; calibrated probabilities,
logits, the out-of-distribution score and the "none of these" verdict out.

    export_onnx(model, 32, {"classes": json.dumps(names)}, Path("model.onnx"), test_images,
                temperature=1.4, rule=OodRule(threshold=1.9))
    quantize_onnx_int8(Path("model.onnx"), Path("model.int8.onnx"), calibration_images)

The graph holds everything between decoded pixels and the answer (NHWC -> NCHW, uint8 ->
float, scaling, upsampling) and after the logits (runtime/trust.py's score_logits, traced into
the graph: softmax(logits / temperature), the entropy of softmax(logits), the threshold baked
in), so a client sends the images it has and reads the answer. Each file
is run in ONNX Runtime before it is written: the export must match PyTorch, the int8 model
must load and answer in the float one's shape, and its top-1 is compared with the float
one's on the check images (its test accuracy: `cifar100 evaluate` of the file).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from google.protobuf.message import DecodeError
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from torch import nn

from cifar100.errors import ModelError
from cifar100.fileio import atomic_path
from cifar100.runtime.ood_rule import OodRule
from cifar100.runtime.tensor_names import INPUT, NONE_OF_THESE, OOD_SCORE, OUTPUTS
from cifar100.runtime.trust import score_logits
from cifar100.version import __version__  # not `import cifar100`: its API imports export

BATCH_AXIS = "batch"
# torchlib's own opset in torch 2.13 (its default, 20, adds a version-conversion pass). The
# file's IR version is 10, which ONNX Runtime reads from 1.18 on.
DEFAULT_OPSET = 18
# torch.export specialises a dimension whose example size is 1 to the constant 1.
EXAMPLE_BATCH = 2
CHECK_BATCH = 32  # images per ONNX Runtime / PyTorch call while checking
TOLERANCE = 1e-4  # max |probability or OOD score difference| between ONNX Runtime and PyTorch
PROTOBUF_LIMIT = 2**31  # one protobuf message; above it weights need external data files


class ImagesToScores(nn.Module):
    """uint8 (N, S, S, 3) pixels -> OUTPUTS: calibrated probabilities and logits, float32
    (N, C); the OOD score, float32 (N,); the verdict, bool (N,), all False without a rule."""

    def __init__(
        self, classifier: nn.Module, temperature: float | None = None, rule: OodRule | None = None
    ) -> None:
        super().__init__()
        self.classifier = classifier
        self.temperature, self.rule = temperature, rule  # constants in the graph

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits = self.classifier(images.permute(0, 3, 1, 2).float()).float()
        scores = score_logits(logits, self.temperature, self.rule)
        return scores.probabilities, logits, scores.ood_score, scores.none_of_these


def export_onnx(
    model: nn.Module,
    image_size: int,
    metadata: dict[str, str],
    out: Path,
    check_images: np.ndarray,
    *,
    temperature: float | None = None,
    rule: OodRule | None = None,
    opset: int = DEFAULT_OPSET,
) -> dict:
    """Export `model` (raw pixels (N, 3, H, W) -> logits) as `out`, checked before it is written.

    The file takes "images" uint8 (batch, image_size, image_size, 3) and gives OUTPUTS:
    "probabilities" (softmax(logits / temperature); None: 1) and "logits" float32 (batch, C),
    "ood_score" float32 (batch,) and "none_of_these" bool (batch,), the score over `rule`'s
    threshold (never, without a rule); `metadata` goes into its metadata_props. ONNX Runtime
    must match PyTorch (fp32, CPU) on `check_images` to within TOLERANCE, at batch 1 and
    larger, or ModelError is raised and nothing is written. The caller's model is left as it
    was.
    """
    _check_metadata(metadata)
    _check_images(check_images, image_size, "check images", at_least=2)
    # A float32 CPU copy in eval mode: the reference is then what ONNX Runtime computes on
    # the CPU (no TF32, no half precision), and the caller's model keeps its mode and device.
    classifier = copy.deepcopy(model).float().cpu()
    wrapper = ImagesToScores(classifier, temperature, rule).eval()
    weight_bytes = sum(t.numel() * t.element_size() for t in wrapper.state_dict().values())
    if weight_bytes >= PROTOBUF_LIMIT:
        raise ModelError(
            f"the model's weights take {weight_bytes / 2**30:.1f} GiB; a self-contained ONNX "
            "file holds under 2 GiB"
        )
    started = time.perf_counter()
    proto = _torch_export(wrapper, image_size, opset)
    export_seconds = time.perf_counter() - started
    _describe(proto, image_size, metadata, rule)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as e:
        raise ModelError(f"the exported ONNX graph is invalid: {_first_line(e)}") from e
    data = proto.SerializeToString()
    session = _session(data)
    diff, batch_sizes, verdicts_differ = _compare_with_torch(session, wrapper, check_images)
    if not diff < TOLERANCE:  # also catches NaN
        raise ModelError(
            f"ONNX Runtime differs from PyTorch by up to {diff:.3g} in a probability or OOD "
            f"score (allowed {TOLERANCE:g}) on {len(check_images)} images; {out} not written"
        )
    if verdicts_differ:
        raise ModelError(
            f"ONNX Runtime's 'none of these' verdict differs from PyTorch's on "
            f"{verdicts_differ} of {len(check_images)} images; {out} not written"
        )
    with atomic_path(out, "ONNX model", needed=len(data)) as tmp:
        tmp.write_bytes(data)
    return {
        "path": str(out),
        "bytes": len(data),
        # What the file declares: the exporter's version conversion can leave the graph as it was.
        "opset": next(o.version for o in proto.opset_import if o.domain == ""),
        "max_abs_diff": diff,
        "tolerance": TOLERANCE,
        "images_checked": len(check_images),
        "batch_sizes": batch_sizes,
        "export_seconds": round(export_seconds, 2),
    }


def _torch_export(wrapper: nn.Module, image_size: int, opset: int) -> onnx.ModelProto:
    example = torch.zeros(EXAMPLE_BATCH, image_size, image_size, 3, dtype=torch.uint8)
    batch = torch.export.Dim(BATCH_AXIS, min=1)
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                wrapper,
                (example,),
                input_names=[INPUT],
                output_names=list(OUTPUTS),
                # Keyed by forward()'s argument name; the Dim's name becomes the dim_param.
                dynamic_shapes={"images": {0: batch}},
                opset_version=opset,
                dynamo=True,
                verbose=False,
            )
    except torch.onnx.errors.OnnxExporterError as e:
        raise ModelError(f"cannot export the model to ONNX: {_first_line(e)}") from e
    proto = program.model_proto
    for value in [*proto.graph.input, *proto.graph.output]:
        if value.type.tensor_type.shape.dim[0].dim_param != BATCH_AXIS:
            raise ModelError(f"the exported graph's {value.name!r} has a fixed batch size")
    return proto


# The graph optimiser torch.onnx runs (onnxscript over onnx_ir) logs each step at INFO, some
# 75 lines of "Replaced initializer ..." for EfficientNet-Lite0: shown wherever INFO is (as
# `cifar100 serve` has it for its own lines) unless quietened here.
OPTIMISER_LOGGERS = ("onnxscript", "onnx_ir")


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    # torch 2.13's exporter logs a warning per torchvision op when torchvision is absent, and
    # its pytree code warns about a deprecation inside torch: noise, not the user's problem.
    # The optimiser's INFO lines stay, as everything does, when our loggers are at DEBUG
    # (`cifar100 serve --debug`).
    quiet = {"torch.onnx._internal.exporter._registration": logging.ERROR}
    if not logging.getLogger("cifar100").isEnabledFor(logging.DEBUG):
        quiet.update(dict.fromkeys(OPTIMISER_LOGGERS, logging.WARNING))
    loggers = {logging.getLogger(name): level for name, level in quiet.items()}
    before = {logger: logger.level for logger in loggers}
    for logger, level in loggers.items():
        logger.setLevel(max(level, logger.level))
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*LeafSpec", category=FutureWarning)
            yield
    finally:
        for logger, level in before.items():
            logger.setLevel(level)


def _describe(
    proto: onnx.ModelProto, image_size: int, metadata: dict[str, str], rule: OodRule | None
) -> None:
    """Names, doc strings and metadata, so the file explains itself to whoever opens it."""
    num_classes = proto.graph.output[0].type.tensor_type.shape.dim[1].dim_value
    proto.producer_name = "cifar100"
    proto.producer_version = f"{__version__} (torch {torch.__version__})"
    proto.graph.name = "cifar100_classifier"
    verdict = (
        f"ood_score > {rule.threshold:g} (the threshold that accepted {rule.acceptance:.0%} of "
        "the validation images)"
        if rule
        else "always false: the model has no 'none of these' rule (trained before it had one)"
    )
    proto.doc_string = (
        f"Image classifier over {num_classes} classes. Input {INPUT!r}: uint8 RGB pixels "
        f"0..255, (batch, {image_size}, {image_size}, 3), channels last; scaling and resizing "
        f"happen inside. Outputs {OUTPUTS[0]!r} (calibrated softmax) and {OUTPUTS[1]!r}: "
        f"float32 (batch, {num_classes}), columns in the order of the 'classes' metadata "
        f"entry; {OOD_SCORE!r}: float32 (batch,), the entropy of softmax(logits) in nats, "
        f"high for an image unlike the training images; {NONE_OF_THESE!r}: bool (batch,), "
        f"{verdict}."
    )
    docs = {
        INPUT: f"uint8 RGB pixels 0..255, (batch, {image_size}, {image_size}, 3)",
        OUTPUTS[0]: "calibrated probabilities softmax(logits / temperature), (batch, classes)",
        OUTPUTS[1]: "logits before the softmax, (batch, classes)",
        OOD_SCORE: "entropy of softmax(logits) in nats, (batch,): high = unlike training",
        NONE_OF_THESE: f"{verdict}, (batch,)",
    }
    for value in [*proto.graph.input, *proto.graph.output]:
        value.doc_string = docs[value.name]
    del proto.metadata_props[:]
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)


def _compare_with_torch(
    session: ort.InferenceSession, wrapper: ImagesToScores, images: np.ndarray
) -> tuple[float, list[int], int]:
    """Max |probability or score difference| over `images`, the batch sizes ONNX Runtime ran,
    and how many verdicts differ.

    The first image alone, then the rest in batches: batch 1 and a size other than the
    export's example show that the batch axis really is dynamic. The OOD scores count as
    probabilities do; the verdicts must agree wherever PyTorch's score is not within
    TOLERANCE of the threshold (there, either side is as right).
    """
    with torch.inference_mode():
        batches = [wrapper(torch.from_numpy(batch)) for batch in _batches(images)]
    expected = [np.concatenate([b[i].numpy() for b in batches]) for i in (0, 2, 3)]
    got, sizes = [], []
    for batch in [images[:1], *_batches(images[1:])]:
        outputs = session.run(list(OUTPUTS), {INPUT: batch})
        probabilities, logits, score, verdict = outputs
        if probabilities.shape != logits.shape or not len(batch) == len(score) == len(verdict):
            shapes = ", ".join(str(o.shape) for o in outputs)
            raise ModelError(f"ONNX Runtime gave {shapes} for a batch of {len(batch)}")
        got.append((probabilities, score, verdict))
        sizes.append(len(batch))
    probabilities, score, verdict = (np.concatenate(column) for column in zip(*got))
    diff = max(np.abs(probabilities - expected[0]).max(), np.abs(score - expected[1]).max())
    threshold = wrapper.rule.threshold if wrapper.rule else np.inf
    clear = np.abs(expected[1] - threshold) > TOLERANCE
    return float(diff), sizes, int((verdict != expected[2])[clear].sum())


def quantize_onnx_int8(
    fp32_path: Path,
    out: Path,
    calibration_images: np.ndarray,
    check_images: np.ndarray | None = None,
) -> dict:
    """Statically quantise an exported file to int8 (ONNX Runtime, QDQ), written as `out`.

    Activations are calibrated (min/max) on `calibration_images`, uint8 (N, S, S, 3) as the
    file takes them; weights are int8 per output channel. Inputs, outputs and metadata stay
    as they were, with "quantization" added. With `check_images`, the int8 graph's top-1 is
    compared with the fp32 graph's on them (its own measured agreement, in the result).
    """
    fp32 = _load(fp32_path)
    size = fp32.graph.input[0].type.tensor_type.shape.dim[1].dim_value
    _check_images(calibration_images, size, "calibration images", at_least=1)
    with tempfile.TemporaryDirectory(prefix="cifar100-int8-") as tmp:
        prepared, quantized = Path(tmp, "prepared.onnx"), Path(tmp, "int8.onnx")
        # Shape inference (and ORT's basic graph fusions), as onnxruntime recommends first.
        quant_pre_process(str(fp32_path), str(prepared))
        quantize_static(
            str(prepared),
            str(quantized),
            _CalibrationImages(calibration_images),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            # ONNX Runtime's advice for x86 CPUs with VNNI; the activations after ReLU/ReLU6
            # are mostly non-negative, so an asymmetric uint8 range wastes little.
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=_vector_nodes(_load(prepared)),
        )
        int8 = _load(quantized)
    del int8.metadata_props[:]
    for entry in fp32.metadata_props:
        int8.metadata_props.add(key=entry.key, value=entry.value)
    count = len(calibration_images)
    int8.metadata_props.add(key="quantization", value=f"int8 static, {count} calibration images")
    int8.metadata_props.add(
        key="quantization.scheme",
        value="onnxruntime quantize_static QDQ: uint8 activations (min/max), int8 per-channel "
        "weights; pooled features, head, logits, probabilities and OOD scores kept in float32",
    )
    int8.doc_string = f"{fp32.doc_string} Weights and activations quantised to int8."
    onnx.checker.check_model(int8, full_check=True)
    data = int8.SerializeToString()
    # It must load and answer in the fp32 file's shape before it takes the fp32 file's place.
    batch = calibration_images[:2]
    probabilities, logits, score, verdict = _session(data).run(list(OUTPUTS), {INPUT: batch})
    num_classes = fp32.graph.output[0].type.tensor_type.shape.dim[1].dim_value
    n = len(batch)
    if not probabilities.shape == logits.shape == (n, num_classes) or len(score) != n:
        raise ModelError(f"the int8 model gives {probabilities.shape}, not (N, {num_classes})")
    result = {"path": str(out), "bytes": len(data), "calibration_images": count}
    if check_images is not None:
        result |= _int8_agreement(fp32.SerializeToString(), data, check_images)
    with atomic_path(out, "int8 ONNX model", needed=len(data)) as tmp_out:
        tmp_out.write_bytes(data)
    return result


def _int8_agreement(fp32: bytes, int8: bytes, images: np.ndarray) -> dict:
    """How many of `images` the int8 graph gives another top-1 than the fp32 graph, and the
    largest difference of a probability: what quantisation changed, measured on this file."""
    sessions = _session(fp32), _session(int8)
    got = [
        np.concatenate([s.run([OUTPUTS[0]], {INPUT: b})[0] for b in _batches(images)])
        for s in sessions
    ]
    return {
        "int8_top1_differ": int((got[0].argmax(1) != got[1].argmax(1)).sum()),
        "int8_max_abs_diff": float(np.abs(got[0] - got[1]).max()),
        "int8_images_compared": len(images),
    }


class _CalibrationImages:
    """onnxruntime.quantization's CalibrationDataReader protocol over uint8 images."""

    def __init__(self, images: np.ndarray) -> None:
        self._batches = iter(_batches(images))

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT: batch}


def _vector_nodes(proto: onnx.ModelProto) -> list[str]:
    """The nodes whose outputs are all (batch, n) or (batch,): global pool, head, logits,
    probabilities, the OOD score and its verdict.

    They are a tiny share of the arithmetic, and int8 logits (256 levels) would tie classes
    whose scores are close, so they stay in float. Needs the shapes of quant_pre_process.
    """
    values = [*proto.graph.value_info, *proto.graph.input, *proto.graph.output]
    rank = {v.name: len(v.type.tensor_type.shape.dim) for v in values}
    return [
        n.name
        for n in proto.graph.node
        if n.output and all(rank.get(o) in (1, 2) for o in n.output)
    ]


def _batches(images: np.ndarray) -> list[np.ndarray]:
    return [images[i : i + CHECK_BATCH] for i in range(0, len(images), CHECK_BATCH)]


def _session(data: bytes) -> ort.InferenceSession:
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def _load(path: Path) -> onnx.ModelProto:
    try:
        return onnx.load(path)
    except (OSError, DecodeError) as e:
        raise ModelError(f"cannot read ONNX model {path}: {_first_line(e)}") from e


def _check_metadata(metadata: dict[str, str]) -> None:
    # A number or a dict would be stored as its Python repr: the reader expects text it wrote.
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"ONNX metadata must map str to str; got {key!r}: {value!r}")


def _check_images(images: np.ndarray, size: int, what: str, at_least: int) -> None:
    shape = getattr(images, "shape", None)
    if getattr(images, "dtype", None) != np.uint8 or shape is None or shape[1:] != (size, size, 3):
        raise ModelError(
            f"{what}: need uint8 (N, {size}, {size}, 3) images, got "
            f"{getattr(images, 'dtype', type(images).__name__)} {shape}"
        )
    if len(images) < at_least:
        raise ModelError(f"{what}: need at least {at_least}, got {len(images)}")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
