"""The ``pmatch review`` and ``pmatch calibrate`` commands (added to the CLI group in cli.py)."""

from __future__ import annotations

import ipaddress

import click

from ..errors import PmatchError


def _open(db: str, home: str | None, image_roots: tuple[str, ...]):  # noqa: ANN202
    from ..connection import connect

    return connect(db, home=home, image_roots=list(image_roots) or None)


@click.command("review")
@click.argument("database", type=click.Path(dir_okay=False, exists=True))
@click.option("--queue", default="default", show_default=True, help="Review queue to work through.")
@click.option("--matches", default=None,
              help="First (re)queue this saved match_products result (= SELECT * FROM pm_queue_review(...)).")
@click.option("--accept-sample", default=0.05, show_default=True,
              help="With --matches: share of auto-accepted pairs mixed in to measure auto-accept precision.")
@click.option("--port", default=8765, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to bind; anything but loopback exposes the page (and your data) to the network.")
@click.option("--reviewer", default=None, help="Name recorded with each verdict (default: your login name).")
@click.option("--image-root", "image_roots", multiple=True,
              help="Folder the offers' images lie under (repeatable; default: cwd). Nothing outside is served.")
@click.option("--home", default=None, help="pmatch home (default $PMATCH_HOME).")
def review_cmd(database: str, queue: str, matches: str | None, accept_sample: float, port: int, host: str,
               reviewer: str | None, image_roots: tuple[str, ...], home: str | None) -> None:
    """Label queued candidate pairs in the browser: one pair per screen, keys M / N / U, Z to undo.

    \b
    Example:
      pmatch review shop.duckdb --matches matches --image-root data/
      # then open http://127.0.0.1:8765/ ; verdicts land in the pm_labels table
    """
    try:
        from .app import serve
    except ImportError as e:
        raise click.ClickException(f"the review page needs the review extra ({e}): "
                                   "pip install 'pmatch-duckdb[review]'") from None
    if matches:
        from .queue import queue_review

        try:
            con = _open(database, home, image_roots)
            try:
                st = queue_review(con, matches, queue, accept_sample=accept_sample)
            finally:
                con.close()
        except PmatchError as e:
            raise click.ClickException(str(e)) from None
        click.echo(f"queued {st.queued} pairs in queue {queue!r}: {st.boundary} near the decision boundary, "
                   f"{st.accept_samples} sampled auto-accepts, {st.rechecks} rechecks "
                   f"({st.skipped_labelled} already labelled, not asked again)")
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        click.echo(f"warning: binding {host}: anyone who can reach this machine can see and label your offers",
                   err=True)
    click.echo(f"review page: http://{host}:{port}/  (Ctrl+C to stop; the database is not held open between pages)")
    serve(database, queue=queue, image_roots=list(image_roots) or None, host=host, port=port, reviewer=reviewer)
