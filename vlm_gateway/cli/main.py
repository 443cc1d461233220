"""`vlm-gateway`: serve, check-config, tiny-model, caption."""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, Any

import typer

from vlm_gateway.backends.kinds import settings_model
from vlm_gateway.cli.caption import DEFAULT_PROMPT
from vlm_gateway.config.loading import ConfigError, load_settings
from vlm_gateway.config.plan import describe_plan
from vlm_gateway.config.settings import GatewaySettings

cli = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML config file.", dir_okay=False)
]


def _print_version(requested: bool) -> None:
    if requested:
        # The installed package's metadata (vlm_gateway.__version__ reads the same; the CLI
        # layer may not import the package root).
        try:
            installed = version("vlm-gateway")
        except PackageNotFoundError:
            installed = "0+unknown"
        typer.echo(f"vlm-gateway {installed}")
        raise typer.Exit()


@cli.callback()
def _global_options(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    pass


def _load_or_exit(config: Path | None, **overrides: Any) -> GatewaySettings:
    try:
        return load_settings(settings_model(), config, overrides)
    except ConfigError as exc:
        typer.echo(f"Invalid configuration ({len(exc.reasons)} problem(s)):", err=True)
        for reason in exc.reasons:
            typer.echo(f"  - {reason}", err=True)
        raise typer.Exit(1) from None


@cli.command()
def serve(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="Bind address.")] = None,
    port: Annotated[int | None, typer.Option(help="Port.")] = None,
    log_level: Annotated[str | None, typer.Option(help="debug|info|warning|error")] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="With no models configured: the BLIP-2 to serve in-process as model 'blip2' "
            "(hub id or local directory; default Salesforce/blip2-opt-2.7b)."
        ),
    ] = None,
    workers: Annotated[
        str,
        typer.Option(
            help="Worker processes serving the port: a number or 'auto' (one per core). "
            "Above 1, a supervisor runs the models and workers share the rate limits "
            "(docs/operations.md, 'Several worker processes')."
        ),
    ] = "1",
) -> None:
    """Serve the OpenAI-compatible API for the configured models (none: BLIP-2 in-process)."""
    from vlm_gateway.cli.draining_server import serve_draining
    from vlm_gateway.server.app import create_app
    from vlm_gateway.server.http_protocol import head_deadline_protocol
    from vlm_gateway.server.logging_setup import configure_logging

    settings = _load_or_exit(config, host=host, port=port, log_level=log_level)
    default_models = not settings.models
    if default_models:
        settings = _default_blip2_or_exit(config, model, host=host, port=port, log_level=log_level)
    elif model is not None:
        typer.echo(
            "--model is for serving with no models configured; the config file already "
            "names its models.",
            err=True,
        )
        raise typer.Exit(2)
    configure_logging(settings)  # our format for uvicorn's lines too (docs/operations.md)
    worker_count = _workers_or_exit(workers)
    if worker_count > 1:
        overrides = {"host": host, "port": port, "log_level": log_level}
        _serve_with_workers(settings, config, worker_count, default_models, **overrides)
        return
    # SIGTERM drains: /ready 503, no new connections, open requests finish within
    # shutdown_grace, managed vLLM stopped last, exit 0 (cli/draining_server.py).
    serve_draining(
        create_app(settings),
        settings.shutdown_grace,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,  # configured above; uvicorn's own would replace our handler
        access_log=False,  # the request-id middleware writes the access line (settings.access_log)
        http=head_deadline_protocol(settings.header_timeout),  # slowloris: heads on a clock
    )


def _workers_or_exit(value: str) -> int:
    from vlm_gateway.cli.supervisor import parse_workers

    try:
        return parse_workers(value)
    except ValueError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None


def _serve_with_workers(
    settings: GatewaySettings,
    config: Path | None,
    workers: int,
    default_models: bool,
    **overrides: Any,
) -> None:
    """Several worker processes; each loads the same settings (same file, same flags)."""
    from vlm_gateway.cli.supervisor import serve_with_workers

    given: dict[str, Any] = {key: value for key, value in overrides.items() if value}
    if default_models:  # no models configured: the in-process BLIP-2 `--model` named
        given["models"] = [
            entry.model_dump(include={"name", "backend", "model"}) for entry in settings.models
        ]
    raise typer.Exit(serve_with_workers(settings, config, given, workers))


def _default_blip2_or_exit(
    config: Path | None, model: str | None, **overrides: Any
) -> GatewaySettings:
    """No models configured: serve BLIP-2 in-process, if its weights can be had."""
    from vlm_gateway.backends.blip2.weights import (
        DEFAULT_BLIP2,
        how_to_get_weights,
        missing_weights_reason,
    )

    model = model or DEFAULT_BLIP2
    reason = missing_weights_reason(model)
    if reason:
        typer.echo(f"Cannot serve BLIP-2 ({model}): {reason}.", err=True)
        for line in how_to_get_weights(model):
            typer.echo(line, err=True)
        raise typer.Exit(1)
    entry = {"name": "blip2", "backend": "blip2", "model": model}
    return _load_or_exit(config, **overrides, models=[entry])


_JOYCAPTION = "LLaVA (JoyCaption's chat template)"
# What `vllm serve` needs beyond the model directory (docs/vllm-cpu.md).
_TINY_VLLM_FLAGS = {
    "LLaVA": "",
    "Qwen2-VL": """ --limit-mm-per-prompt '{"image": 2, "video": 1}'""",
    "Qwen2-Audio": """ --limit-mm-per-prompt '{"audio": 1}' --max-model-len 1024""",
}


@cli.command("tiny-model")
def tiny_model(
    directory: Annotated[
        Path, typer.Argument(help="Where to write it (new or empty).", file_okay=False)
    ],
    llava: Annotated[
        bool, typer.Option("--llava", help="Write the tiny LLaVA (CLIP + Llama) instead of BLIP-2.")
    ] = False,
    qwen2vl: Annotated[
        bool, typer.Option("--qwen2vl", help="Write a tiny Qwen2-VL (images and video).")
    ] = False,
    audio: Annotated[bool, typer.Option("--audio", help="Write a tiny Qwen2-Audio.")] = False,
    joycaption: Annotated[
        bool, typer.Option("--joycaption", help="Write the tiny LLaVA with JoyCaption's template.")
    ] = False,
    idefics3: Annotated[
        bool, typer.Option("--idefics3", help="Write a tiny Idefics3 (the SmolVLM family).")
    ] = False,
) -> None:
    """Write a tiny random BLIP-2 (or LLaVA, Qwen2-VL, Qwen2-Audio, JoyCaption-style LLaVA,
    Idefics3) for a smoke test with no download.

    It loads in transformers (the first four in vLLM too). Random weights: the words it writes
    are noise."""
    flags = {"LLaVA": llava, "Qwen2-VL": qwen2vl, "Qwen2-Audio": audio}
    flags |= {_JOYCAPTION: joycaption, "Idefics3": idefics3}
    chosen = [kind for kind, on in flags.items() if on]
    if len(chosen) > 1:
        typer.echo("Choose one of --llava, --qwen2vl, --audio, --joycaption, --idefics3.", err=True)
        raise typer.Exit(1)
    builders = _tiny_builders()
    from vlm_gateway.cli.tiny_models import MARKER  # importable: _tiny_builders checked

    if directory.exists() and any(directory.iterdir()) and not (directory / MARKER).exists():
        typer.echo(f"{directory} exists and is not empty: name a new or empty directory.", err=True)
        raise typer.Exit(1)
    kind = chosen[0] if chosen else "BLIP-2"
    builders[kind](directory)
    typer.echo(f"Wrote a tiny random {kind} to {directory} (random weights: the words are noise).")
    if kind == "BLIP-2":
        typer.echo(f"Serve it: vlm-gateway serve --model {directory}")
    elif kind not in _TINY_VLLM_FLAGS:
        typer.echo(
            f"Load it: AutoModelForImageTextToText / AutoProcessor.from_pretrained({directory})"
        )
    else:
        typer.echo(f"Serve it with vLLM: vllm serve {directory}{_TINY_VLLM_FLAGS[kind]}")


def _tiny_builders() -> dict[str, Callable[[Path], Path]]:
    """The tiny-model builders by kind; exits with a hint where the blip2 extra is missing."""
    try:
        from vlm_gateway.cli import tiny_hf_models as hf
        from vlm_gateway.cli import tiny_media_models as media
        from vlm_gateway.cli import tiny_models as tiny
    except ImportError as exc:
        typer.echo(
            f"The blip2 extra is needed ({exc.name} is missing): pip install 'vlm-gateway[blip2]'",
            err=True,
        )
        raise typer.Exit(1) from None
    return {
        "BLIP-2": tiny.build_tiny_blip2,
        "LLaVA": tiny.build_tiny_llava,
        "Qwen2-VL": media.build_tiny_qwen2vl,
        "Qwen2-Audio": media.build_tiny_audio,
        _JOYCAPTION: hf.build_tiny_joycaption,
        "Idefics3": hf.build_tiny_idefics3,
    }


CaptionEngine = Annotated[
    str,
    typer.Option(
        help="Without --url: 'offline' runs a `backend: vllm` model in vLLM's offline "
        "engine (fastest; local files only), 'gateway' runs the gateway in-process, "
        "'auto' takes offline where it can."
    ),
]
CaptionTemperature = Annotated[
    float, typer.Option(min=0, help="Sampling temperature; 0 is greedy (repeatable).")
]
CaptionPaths = Annotated[
    list[Path],
    typer.Argument(
        help="Folders (recursive), image, video or audio files, or list files of paths/URLs "
        "(one a line)."
    ),
]
CaptionMedia = Annotated[
    str,
    typer.Option(
        help="The kinds a folder walk takes: image, video, audio, comma-separated (files "
        "named outright are taken whatever their kind). Told apart by extension, else content."
    ),
]
CaptionModel = Annotated[
    str,
    typer.Option(
        help="Model name to use. With no --url and no models configured: the BLIP-2 to run "
        "in-process (hub id or local directory)."
    ),
]
CaptionUrl = Annotated[
    str | None,
    typer.Option(
        help="A running gateway (or any OpenAI-compatible server). Default: run the gateway "
        "in this process from --config."
    ),
]


@cli.command()
def caption(
    paths: CaptionPaths,
    model: CaptionModel,
    out: Annotated[
        Path, typer.Option(help="JSONL output; re-running with it resumes.", dir_okay=False)
    ],
    prompt: Annotated[
        str, typer.Option(help="Text sent with each image ('' for none).")
    ] = DEFAULT_PROMPT,
    url: CaptionUrl = None,
    config: ConfigOption = None,
    concurrency: Annotated[int, typer.Option(min=1, help="Requests in flight.")] = 32,
    max_tokens: Annotated[int, typer.Option(min=1, help="Longest caption, in tokens.")] = 64,
    api_key: Annotated[
        str | None,
        typer.Option(envvar="VLMGW_API_KEY", help="Bearer key, if the gateway requires one."),
    ] = None,
    ready_timeout: Annotated[
        float, typer.Option(help="In-process: seconds to wait for the model to load.")
    ] = 900.0,
    engine: CaptionEngine = "auto",
    temperature: CaptionTemperature = 0.0,
    media: CaptionMedia = "image",
) -> None:
    """Caption images (and videos, audio files: --media) into --out, one JSON line each:
    {image, caption, model, error}. Progress (images/s, ETA, errors) goes to stderr: a bar
    on a terminal, else a line every few seconds. An unreadable file is an error line."""
    import asyncio

    from vlm_gateway.cli.caption import CaptionError, CaptionJob, run_caption
    from vlm_gateway.cli.caption_files import CaptionFilesError, collect_or_explain

    settings, model = _caption_settings_or_exit(url, config, model, engine)
    try:
        found = collect_or_explain(paths, media, lambda line: typer.echo(line, err=True))
        job = CaptionJob(
            found.sources,
            model,
            out,
            prompt,
            concurrency,
            max_tokens,
            api_key,
            temperature,
            engine,
            found.media,
        )
        summary = asyncio.run(run_caption(job, url, settings, ready_timeout))
    except (CaptionError, CaptionFilesError) as exc:
        typer.echo(f"caption: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(
        f"{summary.captioned} captioned, {summary.errors} errors, {summary.skipped} "
        f"already done (of {summary.total}) in {summary.seconds:.2f} s -> {out}",
        err=True,
    )


def _caption_settings_or_exit(
    url: str | None, config: Path | None, model: str, engine: str
) -> tuple[GatewaySettings | None, str]:
    """The settings a caption run without --url builds its gateway from, and the model name
    (`blip2` when --model named weights for the default in-process BLIP-2)."""
    from vlm_gateway.cli.caption_offline import ENGINES

    if engine not in ENGINES:
        typer.echo(f"caption: --engine must be one of {', '.join(ENGINES)}", err=True)
        raise typer.Exit(2)
    if url is not None:
        return None, model
    settings = _load_or_exit(config)
    if not settings.models:
        return _default_blip2_or_exit(config, model), "blip2"
    return settings, model


@cli.command("check-config")
def check_config(config: Annotated[Path, typer.Argument(help="YAML config file.")]) -> None:
    """Validate a config file and print the resolved plan; exit 1 with the reasons if invalid."""
    settings = _load_or_exit(config)
    for line in describe_plan(settings):
        typer.echo(line)


def main() -> None:
    cli(prog_name="vlm-gateway")


if __name__ == "__main__":
    main()
