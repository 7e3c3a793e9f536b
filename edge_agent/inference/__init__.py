"""On-device inference: TFLite models over windows of sensor readings.

::

    Pipeline tap (reading, seq) --O(1), no allocation--> window.Windower (fixed float32 ring)
        --(wake-up only if asleep)--> worker thread per model: due windows read in place from the ring,
        in runs: model (window copied straight from the ring) x n, then per score: publish inference/<model>
                                                                   '--> events/<alarm> (cls alarm)

* :mod:`.runtime` picks and loads the TFLite runtime: the LiteRT C API through ctypes (:mod:`.litert_c`, no
  numpy), else a Python wrapper (tflite-runtime or ai-edge-litert, with numpy); nothing else loads one.
* :mod:`.numeric` holds the plain-Python numbers: float32 window buffers, standardising, scores, statistics.
* :mod:`.metadata` validates a model's metadata file; :mod:`.model` loads a model with it and refuses any
  mismatch with the tensors or the config with a clear error; :mod:`.files` knows the files on disk.
* :mod:`.window` keeps the ring buffers (``array('f')``) windows are read from.
* :mod:`.calibration` learns a model's threshold (and input scale) on the device during a warm-up.
* :mod:`.slot` holds one configured model's state; :mod:`.commands` registers the model commands.
* :mod:`.service` is the agent service (tap, workers, hot-swap with rollback, calibration).

Importing this package never imports a runtime; that happens when the first model is loaded.
"""
