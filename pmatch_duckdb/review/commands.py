"""The ``pmatch review`` and ``pmatch calibrate`` commands (added to the CLI group in cli.py)."""

from __future__ import annotations

import ipaddress

import click

from ..errors import PmatchError


def _open(db: str, home: str | None, image_roots: tuple[str, ...]):  # noqa: ANN202
    from ..connection import connect

    return connect(db, home=home, image_roots=list(image_roots) or None)


def _check_queue_exists(database: str, queue: str) -> None:
    """Refuse to serve a queue that is not there (a typo or a hostile name) with a clear error."""
    import duckdb

    from .queue import has_queue_table

    try:
        con = duckdb.connect(database, read_only=True)
    except duckdb.Error:
        try:  # this process already holds it read-write (DuckDB refuses a second configuration)
            con = duckdb.connect(database)
        except duckdb.Error:  # held by another process right now: the page itself reports a missing queue
            return
    try:
        found = has_queue_table(con) and con.execute(
            "SELECT count(*) FROM pm_review_queue WHERE queue = ?", [queue]).fetchall()[0][0] > 0
    finally:
        con.close()
    if not found:
        raise click.ClickException(
            f"there is no review queue {queue!r} in {database}; queue a saved match result first: "
            f"pmatch review {database} --matches MATCHES --queue NAME")


@click.command("review")
@click.argument("database", type=click.Path(dir_okay=False, exists=True))
@click.option("--queue", default="default", show_default=True, help="Review queue to work through.")
@click.option("--matches", default=None,
              help="First (re)queue this saved match_products result (= SELECT * FROM pm_queue_review(...)).")
@click.option("--accept-sample", default=0.05, show_default=True,
              help="With --matches: share of auto-accepted pairs mixed in to measure auto-accept precision.")
@click.option("--certify", type=float, default=None, metavar="PRECISION",
              help="With --matches: first queue a random sample of the top pairs sized so that reviewing it can "
                   "certify this precision (e.g. 0.99) for pmatch calibrate.")
@click.option("--certify-above", type=float, default=None, metavar="SCORE",
              help="With --certify: sample the pairs scoring at least this (default: where a trained matcher's "
                   "calibrated scores expect precision 1 - (1 - PRECISION) / 5; zero-shot: the accept threshold).")
@click.option("--certify-size", type=int, default=None, metavar="N",
              help="With --certify: pairs to sample (default: enough to certify with one no-match among them).")
@click.option("--audit-rejects", type=click.IntRange(min=0), default=0, metavar="N",
              help="With --matches: also queue N auto-rejected pairs (a random sample, most from just under the review "
                   "threshold), so that pmatch calibrate can estimate how many matches are auto-rejected.")
@click.option("--one-match", is_flag=True, default=False,
              help="With --matches: each supplier offer has at most one match in the other table, so a match given "
                   "on the page answers the offer's other candidates no match (one undo takes it all back).")
@click.option("--port", default=8765, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to bind; anything but loopback exposes the page (and your data) to the network.")
@click.option("--reviewer", default=None, help="Name recorded with each verdict (default: your login name).")
@click.option("--image-root", "image_roots", multiple=True,
              help="Folder the offers' images lie under (repeatable; default: cwd). Nothing outside is served.")
@click.option("--home", default=None, help="pmatch home (default $PMATCH_HOME).")
def review_cmd(database: str, queue: str, matches: str | None, accept_sample: float, certify: float | None,
               certify_above: float | None, certify_size: int | None, audit_rejects: int, one_match: bool, port: int,
               host: str,
               reviewer: str | None, image_roots: tuple[str, ...], home: str | None) -> None:
    """Label queued candidate pairs in the browser: one pair per screen, keys M / N / U, X (none of the listed
    candidates either), Shift+1..4 (that listed candidate is the match), Z to undo.
    Verdicts land in the pm_labels table of DATABASE; the page binds 127.0.0.1:8765 by default."""
    try:
        from .app import serve
    except ImportError as e:
        raise click.ClickException(f"the review page needs the review extra ({e}): "
                                   "pip install 'pmatch-duckdb[review]'") from None
    if not matches and (certify is not None or certify_above is not None or certify_size is not None
                        or audit_rejects or one_match):
        raise click.ClickException("--certify, --certify-above, --certify-size, --audit-rejects and --one-match "
                                   "queue a match result: give --matches too")
    if matches:
        from .queue import queue_review

        try:
            con = _open(database, home, image_roots)
            try:
                st = queue_review(con, matches, queue, accept_sample=accept_sample, certify=certify,
                                  certify_above=certify_above, certify_size=certify_size,
                                  audit_rejects=audit_rejects, one_match=one_match)
            finally:
                con.close()
        except PmatchError as e:
            raise click.ClickException(str(e)) from None
        click.echo(f"queued {st.queued} pairs in queue {queue!r}: {st.boundary} near the decision boundary, "
                   f"{st.accept_samples} sampled auto-accepts, "
                   f"{f'{st.reject_samples} sampled auto-rejects, ' if audit_rejects else ''}{st.rechecks} rechecks "
                   f"({st.skipped_labelled} already labelled, not asked again)"
                   + ("; one match per supplier offer: a match answers the offer's other candidates no match, and "
                      f"{st.accept_conflicts} offers auto-accepted for two products are queued first"
                      if one_match else ""))
        if st.one_match_conflicts:
            eg = "; ".join(f"{sid} -> {', '.join(t[:3])}{', ...' if len(t) > 3 else ''}"
                           for sid, t in st.conflict_examples)
            click.echo(f"warning: --one-match, yet {st.one_match_conflicts} supplier offers already link to two or "
                       f"more catalog products by your verdicts, e.g. {eg}. If an "
                       "offer can be several products, queue without --one-match: a match given on the page would "
                       "answer its other candidates no_match", err=True)
        if certify is not None:
            click.echo(_certify_line(st.certify_samples, certify_size, st.certify_above, certify)
                       if st.certify_above is not None else f"certification sample: {matches!r} holds no pairs to draw")
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        click.echo(f"warning: binding {host}: anyone who can reach this machine can see and label your offers",
                   err=True)
    _check_queue_exists(database, queue)
    click.echo(f"review page: http://{host}:{port}/  (Ctrl+C to stop; the database is not held open between pages)")
    serve(database, queue=queue, image_roots=list(image_roots) or None, host=host, port=port, reviewer=reviewer)


_HELD = " (held at the lowest queued band pair nobody has answered yet: answer the rest of the queue to let it rise)"


def _loss_line(loss: float | None, source: str | None, kept: str | None, budget: float,
               upper: float | None = None) -> str:
    """What the review threshold auto-rejects, in one line."""
    if kept:
        return f"the review threshold stays: {kept}"
    if loss is None:
        return "matches auto-rejected below it: not known"
    bound = "" if upper is None else f", 95 % upper bound {upper:.1%}"
    return f"matches auto-rejected below it: about {loss:.1%} of all matches{bound} (max {budget:.1%}; from {source})"


def _certify_line(drawn: int, asked: int | None, above: float, target: float) -> str:
    """What a queued certification sample can do, in one line (``asked``: --certify-size, None for the default)."""
    from .certify import reviews_needed

    n0, n1 = reviews_needed(target, 0), reviews_needed(target, 1)
    line = (f"certification sample: {drawn} random pairs scoring >= {above:.4f}, first in the queue. Precision >= "
            f"{target} is certified (95% lower bound) once {n0} of them are matches without a no-match, or {n1} with "
            "one; then run pmatch calibrate.")
    if drawn < n0 and drawn < (asked or n1):
        line += (f" Only {drawn} unlabelled pairs score that high here: with earlier reviews above it calibrate may "
                 "still certify, else lower --certify-above or match more offers.")
    elif drawn < n0:
        line += f" {drawn} alone cannot reach it: with earlier reviews above it calibrate may still certify."
    return line


@click.command("calibrate")
@click.argument("database", type=click.Path(dir_okay=False, exists=True))
@click.option("--target", default="catalog", show_default=True, help="The target offer table matches are made against.")
@click.option("--target-precision", type=float, default=None,
              help="Auto-accept only above the lowest score whose reviewed precision has a 95% lower bound >= this "
                   "(default: the target a queued certification sample was drawn for, else 0.99).")
@click.option("--max-recall-loss", default=0.02, show_default=True,
              help="Share of all matches allowed below the review threshold (auto-rejected): what the threshold in "
                   "force already rejects counts (measured by a reject audit, see pmatch review --audit-rejects).")
@click.option("--matches", default=None, help="A saved match_products result: report its review band before/after.")
@click.option("--dry-run", is_flag=True, help="Report the thresholds without writing them.")
@click.option("--matcher", default=None, help="Trained matcher name (its active version; default 'default').")
@click.option("--image-root", "image_roots", multiple=True, help="Allowed image folder (repeatable).")
@click.option("--home", default=None, help="pmatch home (default $PMATCH_HOME).")
def calibrate_cmd(database: str, target: str, target_precision: float | None, max_recall_loss: float,
                  matches: str | None,
                  dry_run: bool, matcher: str | None, image_roots: tuple[str, ...], home: str | None) -> None:
    """Re-pick the accept / review thresholds from the pairs people reviewed (pm_labels)."""
    import json

    import duckdb

    from ..api import context_of
    from ..connection import connect
    from ..sqlident import check_index_name, index_name_for, quote_qualified
    from .calibrate import calibrate, new_thresholds, review_band_counts

    try:  # names first: a hostile table name is refused before the database is opened
        quote_qualified(target)
        check_index_name(index_name_for(target))
        if matches:
            quote_qualified(matches)
    except PmatchError as e:
        raise click.ClickException(str(e)) from None
    try:
        extra = {"matcher": matcher} if matcher else {}
        con = connect(database, home=home, image_roots=list(image_roots) or None, **extra)
        if matches:  # before calibrating: a misspelt --matches must not leave the thresholds applied and then fail
            from ..offers import OfferTableError, table_columns

            try:
                table_columns(con, matches)
            except OfferTableError:
                raise PmatchError(f"--matches: no table or view {matches!r} in {database} (save a match_products "
                                  "result first)") from None
        cal = calibrate(con, target, target_precision, max_recall_loss, apply=not dry_run)
        target_precision = cal.target_precision
        band = review_band_counts(con, context_of(con), matches, cal) if matches else None
        con.close()
    except (PmatchError, duckdb.Error) as e:
        raise click.ClickException(str(e)) from None
    same = [m for m in cal.same_scores or [] if m != cal.matcher]
    click.echo(f"{cal.reviewed} reviewed pairs ({cal.matches} matches) scored by {cal.matcher}"
               + (f" (or by {', '.join(same)}: the same scores, other thresholds)" if same else "")
               + (f"; {cal.ignored_other_model} verdicts on another model's scores left out" if cal.ignored_other_model
                  else ""))
    old_acc = f"{cal.old_accept:.4f}" if cal.old_accept is not None else "none"
    if cal.accept is None and new_thresholds(cal.as_dict()) is not None:  # a review threshold the audit lowered
        click.echo(f"no accept threshold certifies precision >= {target_precision} (95% Wilson lower bound) on these "
                   f"reviews: accept stays {old_acc}")
        click.echo(f"review >= {cal.review:.4f} (was {cal.old_review:.4f}): lowered, the reject audit found more "
                   "matches auto-rejected than --max-recall-loss allows")
        click.echo("  " + _loss_line(cal.recall_loss, cal.recall_loss_from, cal.review_kept, max_recall_loss,
                                      cal.recall_loss_upper))
    elif cal.accept is None:
        click.echo(f"no threshold certifies precision >= {target_precision} (95% Wilson lower bound) on these reviews: "
                   "thresholds unchanged. Review more pairs or lower --target-precision.")
    else:
        click.echo(f"accept >= {cal.accept:.4f} (was {old_acc}): precision {cal.accept_precision:.3f} on "
                   f"{cal.accept_reviewed} reviewed pairs above it, 95% lower bound {cal.accept_lower_bound:.3f}")
        click.echo(f"review >= {cal.review:.4f} (was {cal.old_review:.4f})" + (_HELD if cal.review_held else ""))
        click.echo("  " + _loss_line(cal.recall_loss, cal.recall_loss_from, cal.review_kept, max_recall_loss,
                                      cal.recall_loss_upper))
    if cal.pair is not None:  # the matcher's pair scorer: its stacked model, from the reviewed pairs it re-read
        pa = cal.pair
        was = f"{pa['old_accept']:.4f}" if pa["old_accept"] is not None else "none"
        click.echo("pair scorer (the reviewed pairs scored again: the thresholds above from stage 1 alone, these from "
                   "the stacked model)")
        if cal.scores_as_shown:
            click.echo(f"  {cal.scores_as_shown} reviewed pairs could not be scored again (a table or offer gone): "
                       "their scores as shown, each for the model that scored it")
        click.echo(f"  accept >= {pa['accept']:.4f} (was {was}): precision {pa['accept_precision']:.3f} on "
                   f"{pa['accept_reviewed']} reviewed pairs above it, 95% lower bound {pa['accept_lower_bound']:.3f}"
                   if pa["accept"] is not None else f"  accept: none certified (was {was}; kept)")
        click.echo(f"  review >= {pa['review']:.4f} (was {pa['old_review']:.4f})" + (_HELD if pa["review_held"] else ""))
        click.echo("    " + _loss_line(pa["recall_loss"], pa["recall_loss_from"], pa["review_kept"], max_recall_loss,
                                        pa["recall_loss_upper"]))
    if cal.reject_audit is not None:
        from .audit import RejectAudit, Stratum
        from .audit import describe as describe_audit

        ra = cal.reject_audit
        click.echo(describe_audit(RejectAudit(ra["queue"], [Stratum(**st) for st in ra["strata"]],
                                              ra["review_threshold"])))
        if cal.reject_audit_stale:
            click.echo(f"  not used: {cal.reject_audit_stale}")
    if cal.certify is not None:
        from .certify import CertifyStatus, describe

        click.echo(describe(CertifyStatus(**cal.certify), target_precision))
    if band is not None:
        click.echo(f"review band of {matches}: {band[0]} pairs before, {band[1]} with the new thresholds")
    if cal.applied:
        click.echo(f"written to {cal.applied}")
    elif cal.unchanged:
        click.echo(f"nothing written: these are the thresholds {cal.matcher} has in force already")
    else:
        click.echo("nothing written" + (" (dry run)" if dry_run else ""))
    click.echo(json.dumps(cal.as_dict(), default=float))
