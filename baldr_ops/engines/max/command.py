"""The `max serve` command line, built in one place so `launch` and `compile` ask MAX for the
same graphs (a compile cache only helps if the options that shape compilation match)."""

from __future__ import annotations

import sys
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

ENTRY_MODULE = "baldr_ops.engines.max.entry"


class EngineOptions(BaseModel):
    """Options that shape what MAX compiles and how it serves."""

    model_config = ConfigDict(extra="forbid")

    model_path: Path
    served_name: str
    devices: str = "cpu"
    quantization_encoding: str | None = None
    max_length: int | None = Field(default=None, gt=0)
    max_batch_size: int | None = Field(default=None, gt=0)
    device_memory_utilization: float | None = Field(default=None, gt=0, le=1)
    sample_on_host: bool = False
    # Server-level sampling defaults (requests that omit them get these).
    default_temperature: float | None = None
    default_top_k: int | None = None
    device_graph_capture: bool | None = None
    extra_args: list[str] = Field(default_factory=list)

    def compile_identity(self) -> dict:
        """The options that change the compiled graphs (what a precompiled bundle must match)."""
        return {
            "devices": self.devices,
            "quantization_encoding": self.quantization_encoding,
            "max_length": self.max_length,
            "max_batch_size": self.max_batch_size,
            "sample_on_host": self.sample_on_host,
            "device_graph_capture": self.device_graph_capture,
        }


class ServeBinding(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)


def engine_args(options: EngineOptions) -> list[str]:
    """Arguments shared by every MAX sub-command that loads and compiles the model."""
    args = ["--model-path", str(options.model_path), "--devices", options.devices]
    if options.quantization_encoding:
        args += ["--quantization-encoding", options.quantization_encoding]
    if options.max_length:
        args += ["--max-length", str(options.max_length)]
    if options.max_batch_size:
        args += ["--max-batch-size", str(options.max_batch_size)]
    if options.device_memory_utilization:
        args += ["--device-memory-utilization", str(options.device_memory_utilization)]
    if options.sample_on_host:
        args.append("--sample-on-host")
    if options.device_graph_capture is not None:
        args.append("--device-graph-capture" if options.device_graph_capture else "--no-device-graph-capture")
    if options.default_temperature is not None:
        args += ["--temperature", str(options.default_temperature)]
    if options.default_top_k is not None:
        args += ["--top-k", str(options.default_top_k)]
    return args + list(options.extra_args)


def serve_command(options: EngineOptions, binding: ServeBinding, python: str | None = None) -> list[str]:
    """`max serve` through our entry point, which applies the patches first and then runs MAX's CLI."""
    return [python or sys.executable, "-m", ENTRY_MODULE, "serve", *engine_args(options),
            "--served-model-name", options.served_name,
            "--host", binding.host, "--port", str(binding.port)]


def warm_cache_command(options: EngineOptions, python: str | None = None) -> list[str]:
    """`max warm-cache` (compile only, used by `baldr-ops compile`) with exactly the engine arguments
    `serve_command` passes, so the graphs it compiles are the ones launch will ask for."""
    return [python or sys.executable, "-m", ENTRY_MODULE, "warm-cache", *engine_args(options)]
