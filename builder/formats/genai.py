"""The onnxruntime-genai folder: model.onnx, model.onnx.data, genai_config.json."""

from __future__ import annotations

import json
from pathlib import Path

from builder.kit.genai_config import CONFIG_NAME, make_genai_config
from builder.kit.tokenizer_files import tokenizer_eos


class GenaiFolder:
    name = "genai"
    model_file = "model.onnx"
    data_file = "model.onnx.data"
    config_file = CONFIG_NAME

    def __init__(self, arch):
        self.arch = arch

    def finish_model(self, model, staging: Path) -> None:
        """Nothing to change: genai reads the graph as written."""

    def data_files(self, staging: Path) -> list[str]:
        return [self.data_file]

    def write_configs(self, staging: Path, generation: dict | None) -> list[str]:
        arch = self.arch
        directory = arch.checkpoint.directory
        genai = make_genai_config(
            arch.plan, arch.config, generation, str(directory / "generation_config.json"), tokenizer_eos(directory)
        )
        (staging / self.config_file).write_text(json.dumps(genai, indent=4) + "\n")
        return [self.config_file]

    def describe(self) -> dict:
        return {"name": self.name, "model": self.model_file, "data": [self.data_file]}
