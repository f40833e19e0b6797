"""Inference behind torchrun.py's -predict, -export and -test of saved networks: the predict facade and its jobs
(files, folders, videos), face tracking, result pictures, torch and onnxruntime backends, ONNX export.

Submodules: predict, predict_job, tracking, pictures, backends, export. Inference imports the training side
(engine.loading, engine.evaluate, engine.errors); nothing under engine/ imports inference. Importing does no work.
"""
