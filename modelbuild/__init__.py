"""Offline Whisper models: packaged CTranslate2 weights -> Hugging Face checkpoint -> int8 ONNX.

Entry points: ``edgecap models prepare`` and :func:`modelbuild.prepare.prepare`; torch and
transformers are imported only by the steps that need them.
"""
