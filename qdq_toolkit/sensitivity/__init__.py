"""Which layers hurt: per-layer quantization sensitivity, automatic exclusion, Keras-vs-ONNX layer parity.

* ``analysis`` -- :func:`~qdq_toolkit.analyze_sensitivity`: the SQNR of every quantized layer with only its own QDQ
  on, ranked (:class:`~qdq_toolkit.SensitivityReport`);
* ``exclusion`` -- :func:`~qdq_toolkit.auto_exclude`: the fewest layers to leave in float within an accuracy budget;
* ``parity`` -- :func:`~qdq_toolkit.compare_layers`: per-layer parity of a Keras model and its ONNX export;
* ``__main__`` -- ``python -m qdq_toolkit.sensitivity``, the command line.

The public names are re-exported (lazily) by ``qdq_toolkit``; this package imports nothing on its own, so the
command line's ``--help`` starts without TensorFlow.
"""
