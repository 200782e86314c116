"""`qaie serve`: a local web page to enhance a photo with one or two models and compare them."""

from __future__ import annotations

import argparse


def add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="a local web page: enhance a photo with one or two models, compare them")
    p.add_argument(
        "--model",
        action="append",
        help="FILE.tflite, .onnx or .pte, a checkpoint, or a shipped model's name; repeat for more "
        "(default: the model shipped in the package)",
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this computer only)"
    )
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free port)")
    p.add_argument(
        "--max-upload-mb", type=float, default=50.0, help="largest upload accepted (default 50 MB)"
    )
    p.add_argument("--threads", type=int, help="LiteRT interpreter threads (default: all cores)")
    p.set_defaults(handler=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    from qaie.web.server import ServeConfig, make_server

    config = ServeConfig(
        models=args.model or [],
        host=args.host,
        port=args.port,
        max_upload_mb=args.max_upload_mb,
        threads=args.threads,
    )
    server = make_server(config)  # loads each model once
    names = ", ".join(m.name for m in server.comparer.models)
    print(f"qaie serve: {names}\nopen {server.url}  (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("qaie serve: stopped")
    finally:
        server.server_close()
    return 0
