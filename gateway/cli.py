"""`vlm-gateway`: serve, check-config."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from gateway.config_file import ConfigError, load_settings
from gateway.plan import describe_plan
from gateway.settings import GatewaySettings

cli = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)

ConfigOption = Annotated[
    Optional[Path], typer.Option("--config", "-c", help="YAML config file.", dir_okay=False)
]


def _load_or_exit(config: Path | None, **overrides) -> GatewaySettings:
    try:
        return load_settings(config, overrides)
    except ConfigError as exc:
        typer.echo(f"Invalid configuration ({len(exc.reasons)} problem(s)):", err=True)
        for reason in exc.reasons:
            typer.echo(f"  - {reason}", err=True)
        raise typer.Exit(1)


@cli.command()
def serve(
    config: ConfigOption = None,
    host: Annotated[Optional[str], typer.Option(help="Bind address.")] = None,
    port: Annotated[Optional[int], typer.Option(help="Port.")] = None,
    log_level: Annotated[Optional[str], typer.Option(help="debug|info|warning|error")] = None,
) -> None:
    """Serve the OpenAI-compatible API for the configured models."""
    import uvicorn

    from gateway.app import create_app

    settings = _load_or_exit(config, host=host, port=port, log_level=log_level)
    if not settings.models:
        typer.echo("No models configured: pass --config FILE (see README.md).", err=True)
        raise typer.Exit(1)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # httpx logs every upstream request at INFO: noise on a hot path, and slow.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=settings.access_log,
        timeout_graceful_shutdown=settings.shutdown_grace,
    )


@cli.command("check-config")
def check_config(config: Annotated[Path, typer.Argument(help="YAML config file.")]) -> None:
    """Validate a config file and print the resolved plan; exit 1 with the reasons if invalid."""
    settings = _load_or_exit(config)
    for line in describe_plan(settings):
        typer.echo(line)


def main() -> None:
    cli(prog_name="vlm-gateway")


if __name__ == "__main__":
    sys.exit(main())
