"""``pmatch review``: a local web page to label queued pairs, one pair per screen, keyboard first.

Flask with Jinja templates (autoescaping on: a title holding ``<script>`` shows as text), bound to
127.0.0.1 by default. Every request opens the DuckDB file, does its work and closes it, so ``dbt
build`` or another process can use the database between requests (a request that finds the file
locked gets a "busy, retrying" page). Images are served only by queue position and image number,
never by a path from the browser, and only from inside the configured image roots.
"""

from __future__ import annotations

import contextlib
import getpass
import hmac
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
from flask import Flask, Response, abort, redirect, render_template, request, send_file, url_for
from PIL import Image

from ..encoders.image_io import ImagePolicy
from ..errors import PmatchError
from ..settings import DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_IMAGE_PIXELS
from .answers import Answer, answer_entry, pick_candidate, reject_listed, undo_last
from .audit import queue_audit
from .certify import queue_certify_status, reviews_needed
from .labels import (
    REASON_NAMES,
    PairKey,
    ensure_labels,
    has_column,
    has_labels,
    offer_verdicts,
    verdict_before,
)
from .pairview import image_path, other_candidates, pair_view
from .queue import entry_at, has_queue_table, next_entry, progress
from .stats import accept_precision, label_summary

KEYS = {"match": "M", "no_match": "N", "unsure": "U"}
LABEL = {"match": "Match", "no_match": "No match", "unsure": "Unsure"}
_CSP = ("default-src 'none'; img-src 'self'; style-src 'self'; script-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'")


class DatabaseBusy(Exception):
    """Another process holds the DuckDB file's write lock right now."""


@dataclass
class ReviewConfig:
    """What the page works on."""

    database: Path
    queue: str
    image_roots: tuple[Path, ...]
    reviewer: str
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS

    @property
    def policy(self) -> ImagePolicy:
        return ImagePolicy(tuple(Path(r).resolve() for r in self.image_roots), self.max_image_pixels,
                           self.max_image_bytes)


@contextlib.contextmanager
def _db(cfg: ReviewConfig) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open the database for one request and close it again (no lock held between requests)."""
    try:
        con = duckdb.connect(str(cfg.database))
    except duckdb.IOException as e:
        raise DatabaseBusy(str(e)) from None
    try:
        yield con
    finally:
        con.close()


LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "::1"]


def create_app(cfg: ReviewConfig, trusted_hosts: list[str] | None = LOOPBACK_HOSTS) -> Flask:
    """The review web app for ``cfg`` (use ``app.run`` or a WSGI server; tests use it directly).

    ``trusted_hosts``: Host header names the page answers to (default loopback only: a web page whose
    DNS name is rebound to 127.0.0.1 gets a 400, not your offers); None answers any name."""
    app = Flask(__name__)
    app.config["PMATCH_REVIEW"] = cfg
    app.config["TRUSTED_HOSTS"] = trusted_hosts
    token = secrets.token_urlsafe(24)  # a form token: other sites cannot post verdicts into this page

    @app.after_request
    def _headers(resp: Response) -> Response:
        resp.headers["Content-Security-Policy"] = _CSP
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Referrer-Policy"] = "no-referrer"
        if resp.mimetype == "text/html":
            resp.headers["Cache-Control"] = "no-store"
        return resp

    @app.errorhandler(DatabaseBusy)
    def _busy(e: DatabaseBusy):  # noqa: ANN202
        return render_template("busy.html", cfg=cfg, error=str(e)), 503

    @app.errorhandler(PmatchError)
    def _pmatch_error(e: PmatchError):  # noqa: ANN202
        return render_template("error.html", cfg=cfg, error=str(e)), 400

    def _common(con: duckdb.DuckDBPyConnection) -> dict:
        done, total = progress(con, cfg.queue)
        return {"cfg": cfg, "done": done, "total": total, "token": token,
                "pct": (100.0 * done / total) if total else 100.0}

    def _check_queue(con: duckdb.DuckDBPyConnection) -> None:
        if not has_queue_table(con) or not con.execute(
                "SELECT count(*) FROM pm_review_queue WHERE queue = ?", [cfg.queue]).fetchall()[0][0]:
            raise PmatchError(f"there is no review queue {cfg.queue!r} in {cfg.database}. Queue a saved match result "
                              f"first: SELECT * FROM pm_queue_review('matches', queue := '{cfg.queue}'), or "
                              f"pmatch review {cfg.database} --matches matches")
        ensure_labels(con)

    def _render_pair(con: duckdb.DuckDBPyConnection, entry: dict, undone: bool = False) -> str:
        left, right, two = pair_view(con, entry, cfg.policy)
        ratio = entry.get("price_ratio")
        earlier = None
        if entry["reason"] == "recheck":  # what was answered before, which the model now turned against
            earlier = verdict_before(con, PairKey(entry["source_table"], entry["source_id"], entry["target_table"],
                                                  entry["target_id"]), entry["labels_before"])
        said = (offer_verdicts(con, entry["source_table"], entry["target_table"], entry["source_id"])
                if has_labels(con) else {})
        # one match per offer: the offer's matches already given on other products
        matched = sorted(k.target_id for k, v in said.items() if v == "match" and k.target_id != entry["target_id"]
                         ) if entry.get("one_match") else []
        return render_template("pair.html", entry=entry, left=left, right=right, keys=KEYS, labels=LABEL,
                               ratio=ratio, undone=undone, last=request.args.get("saved"), earlier=earlier,
                               context=other_candidates(con, entry, cfg.policy, said), matched=matched, two=two,
                               **_common(con))

    @app.get("/")
    def index():  # noqa: ANN202
        with _db(cfg) as con:
            _check_queue(con)
            entry = next_entry(con, cfg.queue)
            if entry is None:
                return redirect(url_for("summary", finished=1, saved=request.args.get("saved")))
            return _render_pair(con, entry)

    @app.get("/pair/<int:position>")
    def pair(position: int):  # noqa: ANN202
        with _db(cfg) as con:
            _check_queue(con)
            entry = entry_at(con, cfg.queue, position)
            if entry is None:
                abort(404)
            return _render_pair(con, entry, undone=request.args.get("undone") == "1")

    def _check_token() -> None:
        if not hmac.compare_digest(request.form.get("token", ""), token):
            abort(403, "stale or foreign form: reload the page")

    def _form_entry(con: duckdb.DuckDBPyConnection) -> dict:
        """The queue entry the posted form answers."""
        try:
            position = int(request.form.get("position", ""))
        except ValueError:
            abort(400, "position must be a number")
        entry = entry_at(con, cfg.queue, position)
        if entry is None:
            abort(404)
        return entry

    def _answer(record: Callable[[duckdb.DuckDBPyConnection, dict, str | None], Answer]) -> Response:
        """One answer to the posted form's queue entry (``record(con, entry, note)``), then the next pair."""
        _check_token()
        note = (request.form.get("note") or "").strip() or None
        with _db(cfg) as con:
            _check_queue(con)
            done = record(con, _form_entry(con), note)
        return redirect(url_for("index", saved=done.said(LABEL)))

    @app.post("/label")
    def label():  # noqa: ANN202
        _check_token()  # before saying anything about the form
        verdict = request.form.get("verdict", "")
        if verdict not in KEYS:
            abort(400, f"unknown verdict {verdict!r}")
        return _answer(lambda con, entry, note: answer_entry(con, entry, verdict, queue=cfg.queue,
                                                             reviewer=cfg.reviewer, note=note))

    @app.post("/pick")
    def pick():  # noqa: ANN202
        candidate = request.form.get("candidate", "")
        return _answer(lambda con, entry, note: pick_candidate(con, entry, candidate, queue=cfg.queue,
                                                               reviewer=cfg.reviewer, note=note))

    @app.post("/none")
    def none_of_these():  # noqa: ANN202
        return _answer(lambda con, entry, note: reject_listed(con, entry, queue=cfg.queue, reviewer=cfg.reviewer,
                                                              note=note))

    @app.post("/undo")
    def undo():  # noqa: ANN202
        _check_token()
        with _db(cfg) as con:
            _check_queue(con)
            position = undo_last(con, cfg.queue, cfg.reviewer)
        if position is None:
            return redirect(url_for("index", saved="Nothing to undo"))
        return redirect(url_for("pair", position=position, undone=1))

    @app.get("/summary")
    def summary():  # noqa: ANN202
        with _db(cfg) as con:
            _check_queue(con)
            prec = accept_precision(con)
            cert = queue_certify_status(con, cfg.queue)
            audit = queue_audit(con, cfg.queue) if has_labels(con) else None
            rows = label_summary(con)
            recent = con.execute(
                "SELECT label_id, source_table, source_id, target_table, target_id, verdict, reviewer, "
                "strftime(labelled_at, '%Y-%m-%d %H:%M:%S'), round(score, 3), decision, reason, note FROM pm_labels "
                "ORDER BY label_id DESC LIMIT 15").fetchall()
            goal = cert.target if cert is not None and cert.target is not None else 0.99
            result = ", any_value(matches)" if has_column(con, "pm_review_queue", "matches") else ", NULL"
            one_table, result = con.execute(
                f"SELECT coalesce(bool_or(source_table = target_table), false){result} FROM pm_review_queue "
                "WHERE queue = ?", [cfg.queue]).fetchall()[0]
            return render_template("summary.html", prec=prec, cert=cert, goal=goal, audit=audit,
                                   needed=(reviews_needed(goal, 0), reviews_needed(goal, 1)), rows=rows, recent=recent,
                                   finished=request.args.get("finished") == "1", last=request.args.get("saved"),
                                   reasons=REASON_NAMES, one_table=one_table, result=result or "RESULT",
                                   **_common(con))

    @app.get("/img/<int:position>/<side>/<int:n>")
    def image(position: int, side: str, n: int):  # noqa: ANN202
        """The n-th image of the supplier offer (``s``), the catalog product (``t``) or the k-th listed other
        candidate (``c1`` … ``c4``) of the queue entry at ``position``."""
        with _db(cfg) as con:
            entry = entry_at(con, cfg.queue, position)
            path = image_path(con, entry, side, n) if entry else None
        if path is None:
            abort(404)
        real, reason = cfg.policy.resolve(path)
        if real is None:
            abort(403 if reason == "outside allowed roots" or reason == "url fetching disabled" else 404, reason)
        if real.stat().st_size > cfg.max_image_bytes:
            abort(413)
        try:
            with Image.open(real) as im:
                mime = Image.MIME.get(im.format or "")
        except (OSError, ValueError):
            mime = None
        if not mime or not mime.startswith("image/"):
            abort(415, "not an image")
        return send_file(real, mimetype=mime, max_age=3600)

    return app


def serve(database: str | Path, queue: str = "default", image_roots: list[str | Path] | None = None,
          host: str = "127.0.0.1", port: int = 8765, reviewer: str | None = None) -> None:
    """Run the review page until interrupted."""
    import os

    roots = tuple(Path(r).resolve() for r in (image_roots or [os.getcwd()]))
    cfg = ReviewConfig(Path(database).resolve(), queue, roots, reviewer or getpass.getuser())
    import ipaddress

    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    app = create_app(cfg, trusted_hosts=LOOPBACK_HOSTS if loopback else None)
    app.run(host=host, port=port, threaded=True, debug=False, use_reloader=False)
