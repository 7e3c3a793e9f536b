"""On-device inference: TFLite models over windows of sensor readings.

::

    Pipeline tap (reading, seq) --O(1)--> window.Windower (numpy ring) --full window--> bounded deque
        --> worker thread per model: preprocess -> interpreter -> score -> publish inference/<model>
                                                                      '--> events/<alarm> (cls alarm)

* :mod:`.runtime` is the only importer of a TFLite runtime (tflite-runtime or ai-edge-litert).
* :mod:`.model` loads a model with its metadata file and refuses any mismatch with a clear error.
* :mod:`.window` cuts windows from numpy ring buffers.
* :mod:`.service` is the agent service (tap, workers, hot-swap with rollback).

Importing this package never imports a runtime; that happens when the first model is loaded.
"""
