"""The engine: a photo path becomes a feature row.

Decoding and resizing (``image_loading``, ``preprocessing``), batching and inference
(``inference``, ``backends``, ``quantization``, ``gpu_decode``), parsing what users pass
as X (``inputs``) and training the network (``finetune``).
"""
