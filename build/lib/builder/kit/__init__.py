"""The kit: what knows ONNX and ONNX Runtime but no model family.

Graph writing, checkpoint reading, options, targets and layout rules, the
build plan, and the reusable layer blocks that families put together. Nothing
here imports the app (builder.cli, pipeline, batch, ...) or architectures/.
"""
