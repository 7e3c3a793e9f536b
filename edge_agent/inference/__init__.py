"""On-device inference: TFLite models over windows of sensor readings.

::

    Pipeline tap (reading, seq) --O(1), no allocation--> window.Windower (fixed numpy ring)
        --(wake-up only if asleep)--> worker thread per model: due windows read in place from the ring,
        in runs: interpreter (set_tensor straight from the ring) x n, then per score: publish inference/<model>
                                                                   '--> events/<alarm> (cls alarm)

* :mod:`.runtime` is the only importer of a TFLite runtime (tflite-runtime or ai-edge-litert).
* :mod:`.metadata` validates a model's metadata file; :mod:`.model` loads a model with it and refuses any
  mismatch with the tensors or the config with a clear error; :mod:`.files` knows the files on disk.
* :mod:`.window` keeps the numpy ring buffers windows are read from.
* :mod:`.calibration` learns a model's threshold (and input scale) on the device during a warm-up.
* :mod:`.slot` holds one configured model's state; :mod:`.commands` registers the model commands.
* :mod:`.service` is the agent service (tap, workers, hot-swap with rollback, calibration).

Importing this package never imports a runtime; that happens when the first model is loaded.
"""
