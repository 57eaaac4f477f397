"""A fake of the `tensorrt` Python package (the subset kompakt uses), for CI without a GPU.

Signatures and failure behaviour follow the TensorRT 10.x Python API documentation:
- Builder / NetworkDefinition / BuilderConfig / OptimizationProfile:
  https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/Builder.html
  https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/BuilderConfig.html
  https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/OptimizationProfile.html
- OnnxParser (`parse_from_file` -> bool, `num_errors`, `get_error(i).desc()`):
  https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/parsers/Onnx/pyOnnx.html
- Runtime / ICudaEngine / IExecutionContext (`set_input_shape` -> bool, `set_tensor_address` ->
  bool, `execute_async_v3(stream_handle)` -> bool, `device_memory_size_v2` from 10.1):
  https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/Engine.html
  https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/ExecutionContext.html
- Strong typing (no FP16/INT8 builder flags on a STRONGLY_TYPED network; DequantizeLinear takes
  INT8/FP8/INT4 inputs only): ../shared/trt/BUILDER_API.md and RESTRICTIONS.md.

What the fake does: the parser reads the ONNX file (refusing ops outside the ONNX parser's
support list and the Q/DQ forms TensorRT rejects); `build_serialized_network` returns None, with
an ERROR logged, on the conditions TensorRT refuses (a dynamic input without a profile, a
profile that contradicts a static dimension, precision flags on a strongly typed network); the
"plan" is a header plus the ONNX graph, and `execute_async_v3` computes the outputs with ONNX
Runtime on the CPU, reading and writing the fake CUDA memory of `fakes.cuda_runtime`. Results
are real; timings and memory figures are not GPU measurements.
"""

from __future__ import annotations

import enum
import json
import math
import threading
from pathlib import Path

import numpy as np
import onnx

from fakes import cuda_runtime

__version__ = "10.8.0.43"
MAGIC = b"KOMPAKT-FAKE-TRT\x00"


class Logger:
    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

    def __init__(self, min_severity: int = 2) -> None:
        self.min_severity = min_severity
        self.messages: list[tuple[int, str]] = []

    def log(self, severity: int, message: str) -> None:
        self.messages.append((severity, message))
        LOG.append((severity, message))


LOG: list[tuple[int, str]] = []  # every message any fake logger received (tests read it)


class NetworkDefinitionCreationFlag(enum.IntEnum):
    EXPLICIT_BATCH = 0
    STRONGLY_TYPED = 1


class BuilderFlag(enum.IntEnum):
    FP16 = 0
    INT8 = 1
    DEBUG = 2
    GPU_FALLBACK = 3
    REFIT = 5
    TF32 = 7
    BF16 = 17


class MemoryPoolType(enum.IntEnum):
    WORKSPACE = 0


class ProfilingVerbosity(enum.IntEnum):
    LAYER_NAMES_ONLY = 0
    NONE = 1
    DETAILED = 2


class LayerInformationFormat(enum.IntEnum):
    ONELINE = 0
    JSON = 1


class TensorIOMode(enum.IntEnum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class DataType(enum.IntEnum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    FP8 = 6
    BF16 = 7
    INT64 = 8
    INT4 = 9


float32, float16, int8, int32, int64 = (
    DataType.FLOAT,
    DataType.HALF,
    DataType.INT8,
    DataType.INT32,
    DataType.INT64,
)
_NUMPY = {
    DataType.FLOAT: np.float32,
    DataType.HALF: np.float16,
    DataType.INT8: np.int8,
    DataType.INT32: np.int32,
    DataType.INT64: np.int64,
    DataType.BOOL: np.bool_,
    DataType.UINT8: np.uint8,
}
_FROM_ONNX = {
    onnx.TensorProto.FLOAT: DataType.FLOAT,
    onnx.TensorProto.FLOAT16: DataType.HALF,
    onnx.TensorProto.INT8: DataType.INT8,
    onnx.TensorProto.INT32: DataType.INT32,
    onnx.TensorProto.INT64: DataType.INT64,
    onnx.TensorProto.BOOL: DataType.BOOL,
    onnx.TensorProto.UINT8: DataType.UINT8,
}


def nptype(dtype: DataType) -> type:
    """The numpy type of a TensorRT DataType (tensorrt.nptype)."""
    if dtype not in _NUMPY:
        raise TypeError(
            f"Could not resolve TensorRT datatype to an equivalent numpy datatype. {dtype}"
        )
    return _NUMPY[dtype]


class Dims(tuple):
    """A shape; -1 marks a dimension not known yet."""


class ITensor:
    def __init__(self, name: str, shape: tuple, dtype: DataType) -> None:
        self.name, self.shape, self.dtype = name, Dims(shape), dtype


class INetworkDefinition:
    def __init__(self, flags: int) -> None:
        self.flags = flags
        self.model: onnx.ModelProto | None = None
        self._inputs: list[ITensor] = []
        self._outputs: list[ITensor] = []

    def get_flag(self, flag: NetworkDefinitionCreationFlag) -> bool:
        return bool(self.flags & (1 << int(flag)))

    @property
    def num_inputs(self) -> int:
        return len(self._inputs)

    @property
    def num_outputs(self) -> int:
        return len(self._outputs)

    @property
    def num_layers(self) -> int:
        return len(self.model.graph.node) if self.model else 0

    def get_input(self, index: int) -> ITensor:
        return self._inputs[index]

    def get_output(self, index: int) -> ITensor:
        return self._outputs[index]


class ParserError:
    def __init__(self, description: str, node: int = -1) -> None:
        self._desc, self._node = description, node

    def desc(self) -> str:
        return self._desc

    def node(self) -> int:
        return self._node

    def __str__(self) -> str:
        return f"In node {self._node}: {self._desc}"


def _supported_ops() -> frozenset[str]:
    path = Path(__file__).parents[2] / "src" / "kompakt" / "export" / "trt_supported_ops.txt"
    lines = path.read_text().splitlines()
    return frozenset(line.strip() for line in lines if line.strip() and not line.startswith("#"))


def _dims(value: onnx.ValueInfoProto) -> tuple:
    return tuple(
        d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim
    )


class OnnxParser:
    _DQ_INPUTS = (onnx.TensorProto.INT8, onnx.TensorProto.FLOAT8E4M3FN, onnx.TensorProto.INT4)

    def __init__(self, network: INetworkDefinition, logger: Logger) -> None:
        self.network, self.logger = network, logger
        self._errors: list[ParserError] = []

    @property
    def num_errors(self) -> int:
        return len(self._errors)

    def get_error(self, index: int) -> ParserError:
        return self._errors[index]

    def clear_errors(self) -> None:
        self._errors.clear()

    def parse_from_file(self, model: str) -> bool:
        try:
            proto = onnx.load(model)
        except Exception as error:  # the real parser reports, never raises
            self._errors.append(ParserError(f"failed to read {model}: {error}"))
            return False
        return self._parse(proto)

    def parse(self, model: bytes, path: str | None = None) -> bool:
        try:
            proto = onnx.ModelProto.FromString(bytes(model))
        except Exception as error:
            self._errors.append(ParserError(f"failed to parse the model bytes: {error}"))
            return False
        return self._parse(proto)

    def _parse(self, proto: onnx.ModelProto) -> bool:
        ops = _supported_ops()
        types = {t.name: t.data_type for t in proto.graph.initializer}
        for index, node in enumerate(proto.graph.node):
            if node.domain not in ("", "ai.onnx") or node.op_type not in ops:
                self._errors.append(
                    ParserError(f"No importer registered for op: {node.op_type}", index)
                )
            if node.op_type == "DequantizeLinear" and types.get(node.input[0]) not in (
                None,
                *self._DQ_INPUTS,
            ):
                self._errors.append(
                    ParserError(
                        "DequantizeLinear: input must be INT8, FP8 or INT4, got ONNX type "
                        f"{types[node.input[0]]} ({node.input[0]})",
                        index,
                    )
                )
        if self._errors:
            return False
        initializers = set(types)
        self.network.model = proto
        self.network._inputs = [
            ITensor(v.name, _dims(v), _FROM_ONNX[v.type.tensor_type.elem_type])
            for v in proto.graph.input
            if v.name not in initializers
        ]
        self.network._outputs = [
            ITensor(v.name, _dims(v), _FROM_ONNX[v.type.tensor_type.elem_type])
            for v in proto.graph.output
        ]
        return True


class IOptimizationProfile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple[tuple, tuple, tuple]] = {}
        self.valid = True

    def set_shape(self, input: str, min: tuple, opt: tuple, max: tuple) -> None:
        low, mid, high = (tuple(int(d) for d in s) for s in (min, opt, max))
        if not (len(low) == len(mid) == len(high)) or any(
            not 0 <= a <= b <= c for a, b, c in zip(low, mid, high, strict=True)
        ):
            LOG.append((Logger.ERROR, f"set_shape({input}): needs 0 <= min <= opt <= max"))
            self.valid = False
            return
        self.shapes[input] = (low, mid, high)

    def get_shape(self, input: str) -> list[tuple]:
        return list(self.shapes.get(input, ()))


class ITimingCache:
    def __init__(self, entries: dict[str, str], device: str, version: str) -> None:
        self.entries, self.device, self.version = entries, device, version
        self.hits = self.misses = 0

    def serialize(self) -> IHostMemory:
        blob = {"device": self.device, "version": self.version, "entries": self.entries}
        return IHostMemory(b"TIMING" + json.dumps(blob).encode())

    def combine(self, other: ITimingCache, ignore_mismatch: bool) -> bool:
        self.entries.update(other.entries)
        return True


def _device_name() -> str:
    props = cuda_runtime.STATE.devices[cuda_runtime.STATE.current]
    return props.name.rstrip(b"\x00").decode()


class IBuilderConfig:
    def __init__(self) -> None:
        self.pools: dict[MemoryPoolType, int] = {}
        self.builder_optimization_level = 3
        self.profiling_verbosity = ProfilingVerbosity.LAYER_NAMES_ONLY
        self.flags = 1 << int(BuilderFlag.TF32)  # TF32 is on by default
        self.profiles: list[IOptimizationProfile] = []
        self.timing_cache: ITimingCache | None = None

    def set_memory_pool_limit(self, pool: MemoryPoolType, pool_size: int) -> None:
        self.pools[pool] = int(pool_size)

    def get_memory_pool_limit(self, pool: MemoryPoolType) -> int:
        return self.pools.get(pool, 2**40)

    def set_flag(self, flag: BuilderFlag) -> None:
        self.flags |= 1 << int(flag)

    def clear_flag(self, flag: BuilderFlag) -> None:
        self.flags &= ~(1 << int(flag))

    def get_flag(self, flag: BuilderFlag) -> bool:
        return bool(self.flags & (1 << int(flag)))

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        if not profile.valid or not profile.shapes:
            return -1
        self.profiles.append(profile)
        return len(self.profiles) - 1

    @property
    def num_optimization_profiles(self) -> int:
        return len(self.profiles)

    def create_timing_cache(self, serialized_timing_cache: bytes) -> ITimingCache | None:
        blob = bytes(serialized_timing_cache)
        if not blob:
            return ITimingCache({}, _device_name(), __version__)
        if not blob.startswith(b"TIMING"):
            LOG.append((Logger.ERROR, "create_timing_cache: the blob is not a timing cache"))
            return None
        data = json.loads(blob[6:])
        return ITimingCache(dict(data["entries"]), data["device"], data["version"])

    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
        if cache is None:
            return False
        mismatch = (cache.device, cache.version) != (_device_name(), __version__)
        if mismatch and not ignore_mismatch:
            LOG.append((Logger.ERROR, "set_timing_cache: the cache was made on another device"))
            return False
        self.timing_cache = cache
        return True

    def get_timing_cache(self) -> ITimingCache | None:
        return self.timing_cache


class IHostMemory(bytes):
    @property
    def nbytes(self) -> int:
        return len(self)


class Builder:
    def __init__(self, logger: Logger) -> None:
        self.logger = logger
        self.platform_has_fast_fp16 = True

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        return INetworkDefinition(flags)

    def create_builder_config(self) -> IBuilderConfig:
        return IBuilderConfig()

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile()

    def _refuse(self, message: str) -> None:
        self.logger.log(Logger.ERROR, message)

    def build_serialized_network(
        self, network: INetworkDefinition, config: IBuilderConfig
    ) -> IHostMemory | None:
        if network.model is None or not network.num_inputs:
            return self._refuse("the network has no inputs (was it parsed?)")
        strongly_typed = network.get_flag(NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        for flag in (BuilderFlag.FP16, BuilderFlag.INT8, BuilderFlag.BF16):
            if strongly_typed and config.get_flag(flag):
                return self._refuse(
                    f"BuilderFlag.{flag.name} is not allowed on a strongly typed network"
                )
        profiles = []
        for profile in config.profiles or [IOptimizationProfile()]:
            shapes = {}
            for tensor in network._inputs:
                static = all(d >= 0 for d in tensor.shape)
                if tensor.name not in profile.shapes:
                    if not static:
                        return self._refuse(f"input {tensor.name} is dynamic but has no profile")
                    shapes[tensor.name] = [list(tensor.shape)] * 3
                    continue
                low, opt, high = profile.shapes[tensor.name]
                for shape in (low, opt, high):
                    if len(shape) != len(tensor.shape) or any(
                        want >= 0 and want != got
                        for want, got in zip(tensor.shape, shape, strict=True)
                    ):
                        return self._refuse(
                            f"profile shape {shape} of {tensor.name} contradicts the network "
                            f"dimensions {tuple(tensor.shape)}"
                        )
                shapes[tensor.name] = [list(low), list(opt), list(high)]
            profiles.append(shapes)
        if config.timing_cache is not None:
            for node in network.model.graph.node:
                key = f"{node.op_type}:{node.name}"
                if key in config.timing_cache.entries:
                    config.timing_cache.hits += 1
                else:
                    config.timing_cache.misses += 1
                    config.timing_cache.entries[key] = "tactic-0"
        header = {
            "version": __version__,
            "device": _device_name(),
            "strongly_typed": strongly_typed,
            "flags": config.flags,
            "profiles": profiles,
            "inputs": [[t.name, list(t.shape), int(t.dtype)] for t in network._inputs],
            "outputs": [[t.name, list(t.shape), int(t.dtype)] for t in network._outputs],
            "output_dims": {
                v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
                for v in network.model.graph.output
            },
            "input_dims": {
                v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
                for v in network.model.graph.input
            },
        }
        head = json.dumps(header).encode()
        blob = MAGIC + len(head).to_bytes(8, "little") + head + network.model.SerializeToString()
        return IHostMemory(blob)


class Runtime:
    def __init__(self, logger: Logger) -> None:
        self.logger = logger

    def deserialize_cuda_engine(self, serialized_engine: bytes) -> ICudaEngine | None:
        blob = bytes(serialized_engine)
        if not blob.startswith(MAGIC):
            self.logger.log(Logger.ERROR, "deserialize_cuda_engine: not a serialized engine")
            return None
        size = int.from_bytes(blob[len(MAGIC) : len(MAGIC) + 8], "little")
        start = len(MAGIC) + 8
        header = json.loads(blob[start : start + size])
        if header["version"] != __version__:
            self.logger.log(
                Logger.ERROR,
                f"The engine plan file is not compatible with this version of TensorRT, "
                f"expecting {__version__} got {header['version']}",
            )
            return None
        # an engine lives on the device current (in this thread) when it is deserialised
        return ICudaEngine(header, blob[start + size :], cuda_runtime.STATE.current)


class IEngineInspector:
    def __init__(self, engine: ICudaEngine) -> None:
        self.engine = engine

    def get_engine_information(self, format: LayerInformationFormat) -> str:
        layers = [{"Name": n.name, "LayerType": n.op_type} for n in self.engine.model.graph.node]
        return json.dumps({"Layers": layers, "Bindings": [t[0] for t in self.engine.io]})


class ICudaEngine:
    def __init__(self, header: dict, model_bytes: bytes, device: int = 0) -> None:
        self.device = device
        self.header = header
        self.model_bytes = model_bytes
        self.model = onnx.ModelProto.FromString(model_bytes)
        self.io = [(*t, TensorIOMode.INPUT) for t in header["inputs"]] + [
            (*t, TensorIOMode.OUTPUT) for t in header["outputs"]
        ]
        self._session = None
        self._lock = threading.Lock()

    @property
    def num_io_tensors(self) -> int:
        return len(self.io)

    @property
    def num_layers(self) -> int:
        return len(self.model.graph.node)

    @property
    def num_optimization_profiles(self) -> int:
        return len(self.header["profiles"])

    def _entry(self, name: str) -> tuple:
        for entry in self.io:
            if entry[0] == name:
                return entry
        raise KeyError(name)

    def get_tensor_name(self, index: int) -> str:
        return self.io[index][0]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        try:
            return self._entry(name)[3]
        except KeyError:
            return TensorIOMode.NONE

    def get_tensor_dtype(self, name: str) -> DataType:
        return DataType(self._entry(name)[2])

    def get_tensor_shape(self, name: str) -> Dims:
        return Dims(self._entry(name)[1])

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[Dims]:
        return [Dims(s) for s in self.header["profiles"][profile_index][name]]

    @property
    def device_memory_size_v2(self) -> int:
        if tuple(int(p) for p in __version__.split(".")[:2]) < (10, 1):
            raise AttributeError(
                "'tensorrt.ICudaEngine' object has no attribute 'device_memory_size_v2'"
            )
        # activations at the largest profile: every graph value, float32, at the max batch
        high = max(s[2][0] for p in self.header["profiles"] for s in p.values())
        values = len(self.model.graph.node) + len(self.io)
        return int(values * high * 4096)

    def create_execution_context(self) -> IExecutionContext | None:
        """With the default static allocation strategy a context takes device_memory_size_v2
        bytes of the engine's device (freed when the context object goes away); made from a
        thread whose current device is another, it fails like the real one does."""
        if cuda_runtime.STATE.current != self.device:
            LOG.append(
                (Logger.ERROR, "create_execution_context: the current device is not the engine's")
            )
            return None
        error, pointer = cuda_runtime.cudaMalloc(self.device_memory_size_v2)
        if int(error):
            LOG.append((Logger.ERROR, "create_execution_context: out of device memory"))
            return None
        return IExecutionContext(self, pointer)

    def create_engine_inspector(self) -> IEngineInspector:
        return IEngineInspector(self)

    def serialize(self) -> IHostMemory:
        head = json.dumps(self.header).encode()
        return IHostMemory(MAGIC + len(head).to_bytes(8, "little") + head + self.model_bytes)

    def session(self):
        import onnxruntime as ort

        with self._lock:
            if self._session is None:
                options = ort.SessionOptions()
                options.intra_op_num_threads = 1
                options.log_severity_level = 3
                self._session = ort.InferenceSession(
                    self.model_bytes, options, providers=["CPUExecutionProvider"]
                )
        return self._session


class IExecutionContext:
    def __init__(self, engine: ICudaEngine, activations: int = 0) -> None:
        self.activations = activations
        self.engine = engine
        self.shapes: dict[str, tuple] = {}
        self.addresses: dict[str, int] = {}
        self.profile = 0

    def set_optimization_profile_async(self, profile_index: int, stream_handle: int) -> bool:
        if not 0 <= profile_index < self.engine.num_optimization_profiles:
            return False
        self.profile = profile_index
        self.shapes.clear()
        return True

    def set_input_shape(self, name: str, shape: tuple) -> bool:
        if self.engine.get_tensor_mode(name) != TensorIOMode.INPUT:
            LOG.append((Logger.ERROR, f"set_input_shape: {name} is not an input"))
            return False
        low, _, high = self.engine.header["profiles"][self.profile][name]
        shape = tuple(int(d) for d in shape)
        if len(shape) != len(low) or any(
            not a <= d <= b for a, d, b in zip(low, shape, high, strict=True)
        ):
            LOG.append(
                (Logger.ERROR, f"set_input_shape: {shape} is outside the profile [{low}, {high}]")
            )
            return False
        self.shapes[name] = shape
        return True

    def _symbols(self) -> dict[str, int]:
        symbols = {}
        for name, dims in self.engine.header["input_dims"].items():
            if name in self.shapes:
                for dim, size in zip(dims, self.shapes[name], strict=True):
                    if isinstance(dim, str) and dim:
                        symbols[dim] = size
        return symbols

    def get_tensor_shape(self, name: str) -> Dims:
        if self.engine.get_tensor_mode(name) == TensorIOMode.INPUT:
            return Dims(self.shapes.get(name, self.engine.get_tensor_shape(name)))
        symbols = self._symbols()
        dims = self.engine.header["output_dims"][name]
        return Dims(symbols.get(d, -1) if isinstance(d, str) else d for d in dims)

    def set_tensor_address(self, name: str, memory: int) -> bool:
        if self.engine.get_tensor_mode(name) == TensorIOMode.NONE:
            LOG.append((Logger.ERROR, f"set_tensor_address: no tensor named {name}"))
            return False
        self.addresses[name] = int(memory)
        return True

    def get_tensor_address(self, name: str) -> int:
        return self.addresses.get(name, 0)

    def __del__(self) -> None:
        if self.activations:
            cuda_runtime.cudaFree(self.activations)
            self.activations = 0

    def execute_async_v3(self, stream_handle: int) -> bool:
        engine = self.engine
        device = engine.device
        if cuda_runtime.STATE.current != device or cuda_runtime.stream_device(
            stream_handle
        ) not in (
            None,
            device,
        ):
            LOG.append(
                (Logger.ERROR, "execute_async_v3: stream or current device is not the engine's")
            )
            return False
        if any(
            cuda_runtime.STATE.device_of(a) not in (None, device) for a in self.addresses.values()
        ):
            LOG.append((Logger.ERROR, "execute_async_v3: a tensor address is on another device"))
            return False
        feeds = {}
        for name, _, dtype, mode in engine.io:
            if name not in self.addresses:
                LOG.append((Logger.ERROR, f"execute_async_v3: no address for {name}"))
                return False
            if mode == TensorIOMode.INPUT:
                if name not in self.shapes:
                    LOG.append((Logger.ERROR, f"execute_async_v3: input shape of {name} not set"))
                    return False
                shape = self.shapes[name]
                item = np.dtype(nptype(DataType(dtype)))
                raw = cuda_runtime.device_bytes(
                    self.addresses[name], math.prod(shape) * item.itemsize
                )
                if raw is None:
                    LOG.append((Logger.ERROR, f"execute_async_v3: bad device address for {name}"))
                    return False
                feeds[name] = raw.view(item).reshape(shape).copy()
        outputs = engine.session().run(None, feeds)
        for (name, _, dtype, _mode), value in zip(
            [e for e in engine.io if e[3] == TensorIOMode.OUTPUT], outputs, strict=True
        ):
            value = np.ascontiguousarray(value, dtype=nptype(DataType(dtype)))
            raw = cuda_runtime.device_bytes(self.addresses[name], value.nbytes)
            if raw is None:
                LOG.append((Logger.ERROR, f"execute_async_v3: output buffer of {name} too small"))
                return False
            raw[:] = value.view(np.uint8).ravel()
        return True
