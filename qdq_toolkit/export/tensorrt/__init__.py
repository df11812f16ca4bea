"""Build TensorRT INT8 engines from QDQ ONNX files, and run them.

One job per module: :mod:`.stack` finds TensorRT, the CUDA bindings and a GPU; :mod:`.build` builds engines;
:mod:`.cuda` holds device memory; :mod:`.runner` runs engines; :mod:`.callbacks` adapts TensorRT's logger and
progress interfaces; :mod:`.errors` holds the errors. Import everything from here.

TensorRT rules this module follows (checked against NVIDIA's TensorRT documentation, the Python binding sources
``python/src/infer/pyCore.cpp`` / ``python/src/parsers/pyOnnx.cpp`` and ``samples/python/common_runtime.py`` of the
NVIDIA/TensorRT repository; the call sites below say where TensorRT 10 and 11 differ):

* **Explicit quantization only.** INT8 comes from the QuantizeLinear/DequantizeLinear pairs of the ONNX graph
  (symmetric int8, zero point 0, per-channel only for weights). No calibrator is ever attached.
* **Explicit batch.** Since TensorRT 10.0 every network is "explicit batch": the ``EXPLICIT_BATCH`` creation flag
  is deprecated and ignored in 10.x and gone from the 11.x Python API, so networks are created with flags ``0``.
* **TensorRT 10.x (weakly typed).** ``BuilderFlag.INT8`` is set so the Q/DQ layers run in INT8, and
  ``BuilderFlag.FP16`` too when ``fp16=True``; everything else runs in FP32. Those flags were deprecated in 10.12.
* **TensorRT 11.x (strongly typed).** 11.0 removed ``BuilderFlag.INT8``/``FP16`` and the calibrator APIs; every
  network is strongly typed (``create_network(0)`` already is; ``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` is
  kept but ignored). Precision therefore comes from the ONNX file alone: Q/DQ nodes for INT8, tensor types for
  FP16. ``fp16=True`` sets no flag there: the float parts run in FP16 when the ONNX file was exported with
  ``fp16=True`` (``--fp16``, which the export CLI passes to both steps), and in FP32 otherwise.
* **One optimization profile** covers the dynamic batch dimension of every input: min = smallest of
  ``batch_sizes``, opt = the middle of the sorted distinct sizes (the upper middle one for an even count, so
  ``(1, 8, 32)`` → 8 and ``(1, 32)`` → 32), max = largest. Only the batch dimension may be dynamic.
* **Execution** uses the name-based API of TensorRT 10 and 11: ``set_input_shape``, ``get_tensor_shape``,
  ``set_tensor_address`` and ``execute_async_v3`` on a CUDA stream. Device memory and copies go through cuda-python
  (``cuda.bindings.runtime`` from cuda-python 12.6 on, the only path in 13.x; ``cuda.cudart`` before) — what
  NVIDIA's own samples use — or through PyCUDA when cuda-python is not installed.
* **Lazy imports.** Importing this module never imports tensorrt, cuda-python or PyCUDA. They are imported when an
  engine is built or loaded; without them, or without an NVIDIA GPU and driver, those calls raise
  :class:`TensorRTUnavailableError` and :func:`tensorrt_status` reports why without raising.
"""

from qdq_toolkit.export.tensorrt.build import build_engine, profile_batch_range
from qdq_toolkit.export.tensorrt.callbacks import ProgressCallback
from qdq_toolkit.export.tensorrt.errors import TensorRTError, TensorRTUnavailableError
from qdq_toolkit.export.tensorrt.runner import TensorRTRunner, TensorSpec, load_engine, run_engine
from qdq_toolkit.export.tensorrt.stack import INSTALL_COMMAND, tensorrt_status

__all__ = [
    "INSTALL_COMMAND",
    "ProgressCallback",
    "TensorRTError",
    "TensorRTRunner",
    "TensorRTUnavailableError",
    "TensorSpec",
    "build_engine",
    "load_engine",
    "profile_batch_range",
    "run_engine",
    "tensorrt_status",
]
