"""An OpenAI-compatible HTTP server with continuous batching (FastAPI + uvicorn: ``pip install '.[serve]'``).

Endpoints: ``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions`` (both with
``"stream": true`` as server-sent events), ``POST /chat {"question": ...}`` -> ``{"answer": ...}``, ``GET /health``,
``GET /metrics`` and the OpenAPI schema at ``/openapi.json`` (browsable at ``/docs``). Up to ``--max_batch_size``
requests are decoded together; new ones join the running batch at the next step (docs/inference.md). Chat messages
are rendered through ``--template``, as in training::

    python inference/server.py --load_model_path model.bin --config_path models/llama/7b_config.json \\
        --spm_model_path tokenizer.model --template alpaca --port 8000 --max_batch_size 8
"""

from __future__ import annotations

import argparse
import importlib.util
import socket
import sys

from tencentpretrain.cli import run_cli
from tencentpretrain.errors import InputError
from tencentpretrain.generation.options import add_model_args, load_engine, sampling_from_args


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser)
    parser.set_defaults(template="auto", seq_length=2048)
    group = parser.add_argument_group("server")
    group.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: all interfaces)")
    group.add_argument("--port", type=int, default=8000, help="port to listen on (0: any free port)")
    group.add_argument("--model_name", default="tencentpretrain", help="model id reported by the API")
    group.add_argument("--max_batch_size", type=int, default=8,
                       help="requests decoded together (continuous batching; 1: one at a time)")
    group.add_argument("--prefill_chunk", type=int, default=64,
                       help="most prompt tokens read per step, so new prompts delay running requests only a little")
    group.add_argument("--verbose", action="store_true", help="log every request")
    return parser


def check_args(args: argparse.Namespace) -> None:
    """Refuse values no server can run with, naming the flag."""
    for flag in ("max_batch_size", "prefill_chunk", "threads", "max_new_tokens"):
        if getattr(args, flag) < 1:
            raise InputError(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    if args.max_new_tokens >= args.seq_length:
        raise InputError(f"--max_new_tokens {args.max_new_tokens} leaves no room for a prompt in --seq_length "
                         f"{args.seq_length}")
    missing = [name for name in ("fastapi", "uvicorn", "pydantic") if importlib.util.find_spec(name) is None]
    if missing:
        raise InputError(f"the server needs {', '.join(missing)}: pip install '.[serve]'")


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``, or an InputError naming the flags."""
    try:
        return socket.create_server((host, port))
    except OSError as err:
        raise InputError(f"--host {host} --port {port}: cannot listen there ({err.strerror or err})") from None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    sampling = sampling_from_args(parser, args)
    check_args(args)
    engine, tokenizer = load_engine(args, batch_size=args.max_batch_size)  # bad files: an InputError (run_cli)

    import uvicorn

    from tencentpretrain.serving.app import Service, create_app

    service = Service(engine, tokenizer, args.model_name, args.template, args.seq_length, args.max_new_tokens,
                      sampling, tuple(args.stop), args.max_batch_size, args.prefill_chunk)
    listener = bind(args.host, args.port)
    host, port = listener.getsockname()[:2]
    print(f"serving {args.model_name} on http://{host}:{port} (batches of up to {args.max_batch_size}, "
          f"{args.threads} threads, {engine.backend.description}, "
          f"{engine.model.weight_pages})", flush=True)  # (load_engine prepared the model)
    config = uvicorn.Config(create_app(service), log_level="info" if args.verbose else "warning",
                            access_log=args.verbose, timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[listener])
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
