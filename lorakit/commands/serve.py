"""``lorakit serve``: an HTTP inference service for many experiments on one base model."""

from __future__ import annotations

from typing import Any

import click

from .browse import outputs_option


def _serve_options(func: Any) -> Any:
    options = [
        click.option(
            "--max-body-bytes",
            type=click.IntRange(min=1),
            default=1_000_000,
            show_default=True,
            help="Largest request body.",
        ),
        click.option(
            "--max-chars",
            type=click.IntRange(min=1),
            default=10_000,
            show_default=True,
            help="Most characters per text.",
        ),
        click.option(
            "--max-texts",
            type=click.IntRange(min=1),
            default=256,
            show_default=True,
            help="Most texts per request.",
        ),
        click.option(
            "--max-batch-rows",
            type=click.IntRange(min=1),
            default=64,
            show_default=True,
            help="Most rows per forward pass.",
        ),
        click.option(
            "--max-wait-ms",
            type=click.FloatRange(min=0),
            default=5.0,
            show_default=True,
            help="How long the batcher gathers concurrent requests.",
        ),
        click.option(
            "--token",
            envvar="LORAKIT_SERVE_TOKEN",
            default=None,
            help="Require 'Authorization: Bearer TOKEN' (env: LORAKIT_SERVE_TOKEN).",
        ),
        click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N."),
        click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True),
        click.option(
            "--host",
            default="127.0.0.1",
            show_default=True,
            help="Address to bind (0.0.0.0 exposes it to the network).",
        ),
    ]
    for option in options:
        func = option(func)
    return func


@click.command()
@click.argument("experiments", nargs=-1, metavar="[EXP ...]")
@click.option(
    "--active",
    "follow_active",
    is_flag=True,
    help="Serve the active experiment and follow `lorakit rollback`.",
)
@click.option(
    "--all", "load_all", is_flag=True, help="Load every completed experiment of the outputs folder."
)
@_serve_options
@outputs_option
def serve(
    experiments: tuple[str, ...], follow_active: bool, load_all: bool, outputs: str | None, **options: Any
) -> None:
    """Serve trained experiments over HTTP: POST /v1/predict, GET /v1/experiments, /healthz, /metrics.

    Experiments on the same base model share one copy of it; concurrent requests are batched. Without an
    "experiment" in a request, the active one answers (with --active, or the only one loaded)."""
    from ..errors import LorakitError

    try:
        import starlette  # noqa: F401
        import uvicorn
    except ImportError:
        raise LorakitError("lorakit serve needs the serve extra: pip install 'lorakit[serve]'") from None
    if not experiments and not follow_active and not load_all:
        raise click.UsageError("name experiments to serve, or pass --all or --active")
    server = _build_server(list(experiments), follow_active, load_all, outputs, options)
    from ..serving.app import create_app

    click.echo(
        f"serving {', '.join(sorted(server.pool.served)) or 'nothing yet'} on "
        f"http://{options['host']}:{options['port']} ({server.pool.device})",
        err=True,
    )
    uvicorn.run(create_app(server), host=options["host"], port=options["port"], log_level="warning")


def _build_server(
    ids: list[str], follow_active: bool, load_all: bool, outputs: str | None, options: dict
) -> Any:
    from ..errors import LorakitError
    from ..plugins import get_plugins
    from ..runs.index import ExperimentIndex
    from ..runs.layout import outputs_root
    from ..serving.app import Server, ServeSettings
    from ..serving.pool import LoadRefused, ModelPool

    root = outputs_root(outputs)
    index = ExperimentIndex(root)
    pool = ModelPool(root, get_plugins(), device=_device(options["device"]))
    if load_all:
        ids += [e for e in pool.completed() if e not in ids]
    active = index.active() if follow_active else None
    if active and active not in ids:
        ids.append(active)
    for exp_id in ids:
        try:
            pool.load(exp_id)
        except LoadRefused as exc:
            raise LorakitError(str(exc)) from None
    settings = ServeSettings(
        token=options["token"] or None,
        max_wait_ms=options["max_wait_ms"],
        max_batch_rows=options["max_batch_rows"],
        max_body_bytes=options["max_body_bytes"],
        max_texts=options["max_texts"],
        max_chars=options["max_chars"],
        follow_active=follow_active,
        load_all=load_all,
    )
    server = Server(pool, settings)
    server.active = active if follow_active else (ids[0] if len(ids) == 1 else None)
    return server


def _device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
