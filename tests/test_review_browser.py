"""The review page in a real browser: Debian's chromium driven by Selenium (keyboard only).

Needs ``chromium`` and ``chromium-driver`` (``make test`` installs them with apt). The test fails, rather
than skips, when they are missing — set PMATCH_SKIP_BROWSER_TESTS=1 to skip it on a machine without them.
The screenshot is written to test-artifacts/review-browser.png (not committed).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import duckdb
import pytest

import pmatch_duckdb as pm
from pmatch_duckdb.review import PairKey, record_verdict

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
HOSTILE = '<script>window.__pwned = 1</script><b>Evil</b> & "quotes" FG-3415'

pytestmark = pytest.mark.slow


def _browser_paths() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None)
    if not chromium or not driver:
        if os.environ.get("PMATCH_SKIP_BROWSER_TESTS") == "1":
            pytest.skip("chromium / chromium-driver not installed (PMATCH_SKIP_BROWSER_TESTS=1)")
        pytest.fail("the browser test needs Debian's chromium and chromium-driver: "
                    "apt-get update && apt-get install -y chromium chromium-driver (make test does this)")
    return chromium, driver


def _driver(chromium: str, driver: str, profile: Path):  # noqa: ANN202
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1366,768"):
        opts.add_argument(flag)
    return webdriver.Chrome(options=opts, service=Service(driver))


@pytest.fixture()
def hostile_shop(review_demo):  # noqa: ANN001, ANN201
    """The demo shop plus a supplier offer with an HTML title and an image path outside the roots, queued first."""
    con = pm.connect(review_demo.db, image_roots=[review_demo.images])
    good = con.execute("SELECT images[1] FROM catalog WHERE id = 'C0001'").fetchall()[0][0]
    con.execute("INSERT INTO supplier_feed (id, title, brand, images, price, currency) VALUES "
                "('S-HOSTILE', ?, 'Evil <i>Brand</i>', ['/etc/passwd', ?], 10.0, 'EUR')", [HOSTILE, good])
    boundary = (0.55 + 0.80) / 2
    con.execute("INSERT INTO matches BY NAME SELECT 'supplier_feed' AS source_table, 'S-HOSTILE' AS source_id, "
                "'catalog' AS target_table, 'C0001' AS target_id, 1 AS rank, ? AS score, 'review' AS decision",
                [boundary])
    con.execute("SELECT * FROM pm_queue_review('matches')").fetchall()
    first = con.execute("SELECT source_id FROM pm_review_queue WHERE position = 1").fetchall()[0][0]
    assert first == "S-HOSTILE"
    con.close()
    return review_demo


@contextlib.contextmanager
def _page(shop, queue: str = "default"):  # noqa: ANN001, ANN202
    """The review page of ``shop``'s queue ``queue`` served on a free loopback port: its base URL."""
    from werkzeug.serving import make_server

    from pmatch_duckdb.review.app import ReviewConfig, create_app

    srv = make_server("127.0.0.1", 0, create_app(ReviewConfig(shop.db, queue, (shop.images,), "tester")),
                      threaded=True)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_port}"
    finally:
        srv.shutdown()
        t.join(5)


@pytest.fixture()
def server(hostile_shop):  # noqa: ANN001, ANN201
    with _page(hostile_shop) as base:
        yield base, hostile_shop


def test_keyboard_labelling_in_chromium(server, tmp_path: Path) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    base, shop = server
    chromium, driver_path = _browser_paths()
    drv = _driver(chromium, driver_path, tmp_path / "profile")
    try:
        drv.get(base + "/")
        # a key press loads the next page: an element found on the old one can go stale while the wait reads it
        # (one CI run failed so); that is the page not yet there, so the wait polls again
        wait = WebDriverWait(drv, 30, ignored_exceptions=(StaleElementReferenceException,))

        def position() -> str:
            return drv.find_element(By.CSS_SELECTOR, ".pos").text

        def press(key: str, expect_change: bool = True) -> None:
            before = drv.current_url + position()
            drv.find_element(By.TAG_NAME, "body").send_keys(key)
            if expect_change:
                wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".pos") and d.current_url + position() != before)

        # the hostile title is text, not markup; no script ran; the image outside the roots is refused
        assert position() == "pair 1 of " + position().rsplit(" ", 1)[-1]
        title = drv.find_element(By.CSS_SELECTOR, ".offer.s .title")
        assert title.text.startswith('<script>window.__pwned = 1</script><b>Evil</b> & "quotes"')
        assert drv.execute_script("return window.__pwned === undefined")
        assert not drv.find_elements(By.CSS_SELECTOR, ".offer.s .title b")
        assert "image refused: outside allowed roots" in drv.find_element(By.CSS_SELECTOR, ".offer.s .gallery").text
        assert drv.find_element(By.CSS_SELECTOR, ".offer.s .shot img").get_property("naturalWidth") > 0
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(base + "/img/1/s/0")  # /etc/passwd, by position
        assert err.value.code == 403

        ARTIFACTS.mkdir(exist_ok=True)
        drv.save_screenshot(str(ARTIFACTS / "review-browser.png"))

        press("n")  # pair 1: no match
        assert "pair 2 of" in position()
        assert "No match" in drv.find_element(By.CSS_SELECTOR, ".flash").text
        press("m")  # pair 2: match
        press("u")  # pair 3: unsure
        assert "pair 4 of" in position()
        press("z")  # undo the unsure: back on pair 3
        assert "pair 3 of" in position()
        assert drv.find_element(By.CSS_SELECTOR, ".undone").is_displayed()
        press("m")  # pair 3: match this time
        assert "pair 4 of" in position()
        assert drv.find_element(By.CSS_SELECTOR, "progress.bar").get_attribute("value") == "3"
        drv.find_element(By.TAG_NAME, "body").send_keys("s")
        wait.until(lambda d: "Labels so far" in d.page_source)
        drv.save_screenshot(str(ARTIFACTS / "review-summary.png"))
    finally:
        drv.quit()

    # the database is not held open by the page: another process can write to it now
    subprocess.run([sys.executable, "-c", "import duckdb, sys; c = duckdb.connect(sys.argv[1]); "
                    "c.execute('CREATE TABLE touched AS SELECT 1 AS x'); c.close()", str(shop.db)], check=True,
                   timeout=60)
    con = duckdb.connect(str(shop.db), read_only=True)
    q = dict(((r[0]), r[1:]) for r in con.execute(
        "SELECT position, source_id, target_id FROM pm_review_queue WHERE queue = 'default'").fetchall())
    rows = con.execute("SELECT source_id, target_id, verdict, reviewer, queue FROM pm_labels ORDER BY label_id").fetchall()
    assert rows == [(*q[1], "no_match", "tester", "default"), (*q[2], "match", "tester", "default"),
                    (*q[3], "unsure", "tester", "default"), (*q[3], "retracted", "tester", "default"),
                    (*q[3], "match", "tester", "default")]
    assert sorted(con.execute("SELECT source_id, verdict FROM pm_labels_current").fetchall()) == sorted(
        [(q[1][0], "no_match"), (q[2][0], "match"), (q[3][0], "match")])
    con.close()


def test_the_offers_other_candidates_in_chromium(review_demo, tmp_path: Path) -> None:
    """A pair the result ranks below another candidate of the same offer says so, and lists the offer's other
    candidates (titles, scores, a verdict already given on one), within the window's height; Shift+2 picks the
    second as the offer's match, Z undoes both verdicts, and X says none of them is."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    con = pm.connect(review_demo.db, image_roots=[review_demo.images])
    con.execute("SELECT * FROM pm_queue_review('matches')").fetchall()
    pos, sid, tid, alt = con.execute(
        "SELECT position, source_id, target_id, alternatives FROM pm_review_queue WHERE queue = 'default' "
        "AND (alternatives ->> 'rank')::INT > 1 AND json_array_length(alternatives -> 'others') >= 2 "
        "ORDER BY position LIMIT 1").fetchall()[0]
    alt = json.loads(alt)
    record_verdict(con, PairKey.of("supplier_feed", sid, "catalog", alt["others"][0]["id"]), "match")
    con.close()
    chromium, driver_path = _browser_paths()
    drv = _driver(chromium, driver_path, tmp_path / "profile")
    try:
        with _page(review_demo) as base:
            drv.get(f"{base}/pair/{pos}")
            chip = drv.find_element(By.CSS_SELECTOR, ".pairbar .rank.notfirst")
            assert chip.text == f"candidate {alt['rank']} of {alt['of']}: the result ranks another first"
            items = drv.find_elements(By.CSS_SELECTOR, ".offer.t .others li")
            assert len(items) == len(alt["others"]) and all(i.is_displayed() for i in items)
            # each listed candidate's first image, loaded (it zooms like the pair's own: below)
            thumbs = drv.find_elements(By.CSS_SELECTOR, ".offer.t .others li button.thumb img")
            assert len(thumbs) == len(alt["others"])  # the demo's products all have images
            WebDriverWait(drv, 20).until(lambda d: d.execute_script(
                "return [...document.querySelectorAll('.others li button.thumb img')].every("
                "i => i.complete && i.naturalWidth > 0)"))
            ARTIFACTS.mkdir(exist_ok=True)
            drv.save_screenshot(str(ARTIFACTS / "review-candidates.png"))
            # in view without scrolling, inside the catalog side's box
            assert drv.execute_script(
                "const box = document.querySelector('.offer.t').getBoundingClientRect();"
                "return [...document.querySelectorAll('.offer.t .others li')].every("
                "li => li.getBoundingClientRect().bottom <= Math.min(box.bottom, window.innerHeight))")
            assert items[0].find_element(By.CSS_SELECTOR, ".verdict.match").text == "Match"
            assert f"{alt['others'][0]['score']:.3f}" in items[0].text
            # the page still fits the window: the catalog side scrolls inside itself if it must
            assert drv.execute_script("return document.documentElement.scrollHeight <= window.innerHeight + 1")
            # each listed candidate can be picked as the offer's match (Shift+N)
            picks = drv.find_elements(By.CSS_SELECTOR, ".offer.t .others li button.pick")
            assert [b.text for b in picks] == [f"the match ⇧{i + 1}" for i in range(len(alt["others"][:4]))]
            drv.find_elements(By.CSS_SELECTOR, ".offer.t .others li button.thumb")[1].click()
            zoom = drv.find_element(By.ID, "zoom")
            assert zoom.is_displayed() and zoom.find_element(By.TAG_NAME, "img").get_attribute("src").endswith(
                f"/img/{pos}/c2/0")
            drv.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
            assert not zoom.is_displayed()
            ActionChains(drv).key_down(Keys.SHIFT).send_keys("2").key_up(Keys.SHIFT).perform()
            wait = WebDriverWait(drv, 30, ignored_exceptions=(StaleElementReferenceException,))
            wait.until(lambda d: "/pair/" not in d.current_url and d.find_elements(By.CSS_SELECTOR, ".pos"))
            con = duckdb.connect(str(review_demo.db))
            got = con.execute("SELECT target_id, verdict, with_label IS NOT NULL FROM pm_labels_current "
                              "WHERE source_id = ? ORDER BY label_id DESC LIMIT 2", [sid]).fetchall()
            con.close()
            assert got == [(alt["others"][1]["id"], "match", True), (tid, "no_match", False)]
            drv.find_element(By.TAG_NAME, "body").send_keys("z")  # undo: both verdicts, back to the pair
            wait.until(lambda d: d.current_url.endswith(f"/pair/{pos}?undone=1"))
            con = duckdb.connect(str(review_demo.db))
            assert not con.execute("SELECT count(*) FROM pm_labels_current WHERE source_id = ? AND target_id IN "
                                   "(?, ?)", [sid, tid, alt["others"][1]["id"]]).fetchall()[0][0]
            con.close()
            # X: none of these — the pair and every listed candidate without a verdict (the first has one)
            drv.find_element(By.TAG_NAME, "body").send_keys("x")
            wait.until(lambda d: "/pair/" not in d.current_url and d.find_elements(By.CSS_SELECTOR, ".pos"))
            con = duckdb.connect(str(review_demo.db))
            said = dict(con.execute("SELECT target_id, verdict FROM pm_labels_current WHERE source_id = ?",
                                    [sid]).fetchall())
            con.close()
            assert said == {tid: "no_match", alt["others"][0]["id"]: "match",
                            **{o["id"]: "no_match" for o in alt["others"][1:]}}
    finally:
        drv.quit()


def test_a_recheck_shows_the_earlier_verdict_in_chromium(review_demo, tmp_path: Path) -> None:
    """A pair the model turned against since its verdict comes first, showing that verdict (as text)."""
    from pmatch_duckdb.review import PairKey, record_verdict

    con = pm.connect(review_demo.db, image_roots=[review_demo.images])
    st, si, tt, ti, score = con.execute("SELECT source_table, source_id, target_table, target_id, score FROM matches "
                                        "WHERE decision = 'review' ORDER BY score LIMIT 1").fetchall()[0]
    record_verdict(con, PairKey.of(st, si, tt, ti), "match", reviewer="<b>bob</b>", matcher="zero-shot",
                   score=score + 0.35, decision="accept", scored_by="zero-shot")
    con.execute("SELECT * FROM pm_queue_review('matches')").fetchall()
    con.close()
    chromium, driver_path = _browser_paths()
    with _page(review_demo) as base:
        _check_recheck_page(base, score, _driver(chromium, driver_path, tmp_path / "profile"))


def _check_recheck_page(base: str, score: float, drv) -> None:  # noqa: ANN001
    from selenium.webdriver.common.by import By

    try:
        drv.get(base + "/")
        assert drv.find_element(By.CSS_SELECTOR, ".reason.recheck").is_displayed()
        earlier = drv.find_element(By.CSS_SELECTOR, ".earlier")
        assert earlier.is_displayed()
        assert earlier.text.startswith("before: Match by <b>bob</b>, ") and f"shown {score + 0.35:.3f} (accept)" in \
            earlier.text, earlier.text
        assert drv.find_element(By.CSS_SELECTOR, ".decision").text == "model: review"
        ARTIFACTS.mkdir(exist_ok=True)
        drv.save_screenshot(str(ARTIFACTS / "review-recheck.png"))
    finally:
        drv.quit()


def test_a_certification_sample_and_its_progress_in_chromium(review_demo, tmp_path: Path) -> None:
    """A queue with a certification sample: its pairs come first, labelled as such; the summary shows how far the
    sample has got, with its lower bound drawn like the auto-accept interval."""
    con = pm.connect(review_demo.db, image_roots=[review_demo.images])
    n = con.execute("SELECT certify_samples FROM pm_queue_review('matches', queue := 'cert', certify := 0.9, "
                    "accept_sample := 1.0)").fetchall()[0][0]
    con.close()
    assert n >= 3
    chromium, driver_path = _browser_paths()
    with _page(review_demo, "cert") as base:
        _check_certify_pages(base, _driver(chromium, driver_path, tmp_path / "profile"))


def _check_certify_pages(base: str, drv) -> None:  # noqa: ANN001
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        drv.get(base + "/")
        wait = WebDriverWait(drv, 30, ignored_exceptions=(StaleElementReferenceException,))
        for key, nxt in (("m", "pair 2 of"), ("n", "pair 3 of")):
            assert drv.find_element(By.CSS_SELECTOR, ".reason.certify_sample").text.startswith("certification sample")
            drv.find_element(By.TAG_NAME, "body").send_keys(key)
            wait.until(lambda d, nxt=nxt: d.find_elements(By.CSS_SELECTOR, ".pos")
                       and nxt in d.find_element(By.CSS_SELECTOR, ".pos").text)
        drv.find_element(By.TAG_NAME, "body").send_keys("s")
        wait.until(lambda d: "Labels so far" in d.page_source)
        card = drv.find_element(By.CSS_SELECTOR, ".certify")
        assert card.text.startswith("Certification sample\n2 of ") and "1 match, 1 no match" in card.text, card.text
        assert "Precision above 0.8000: 50.0%" in card.text and "90% needs 25 matches here without a no-match, or 42 with one (the target" in card.text
        # the sample's bar is drawn too (the script sets every interval bar on the page)
        left = drv.find_element(By.CSS_SELECTOR, ".certify .ci-range").value_of_css_property("left")
        assert left not in ("", "auto", "0px"), left
        ARTIFACTS.mkdir(exist_ok=True)
        drv.save_screenshot(str(ARTIFACTS / "review-certify.png"))
    finally:
        drv.quit()


def test_a_reject_audit_on_the_page_in_chromium(review_demo, tmp_path: Path) -> None:
    """A queue with a reject audit: an audited pair is labelled as a check of an auto-rejected pair, and the summary
    shows the audit per score stratum and, once every stratum has an answer, its estimate."""
    from selenium.webdriver.common.by import By

    from pmatch_duckdb.review.labels import PairKey, record_verdict

    con = pm.connect(review_demo.db, image_roots=[review_demo.images])
    n = con.execute("SELECT reject_samples FROM pm_queue_review('matches', queue := 'audit', audit_rejects := 10)"
                    ).fetchall()[0][0]
    rows = con.execute("SELECT position, source_table, source_id, target_table, target_id, score, stratum, "
                       "stratum_pairs FROM pm_review_queue WHERE queue = 'audit' AND reason = 'reject_sample' "
                       "ORDER BY stratum, position").fetchall()
    assert n == len(rows) == 10
    # the first pair of stratum 1 answered "match", the rest of the audit "no_match"
    for i, (_, st, si, tt, ti, score, _, _) in enumerate(rows):
        record_verdict(con, PairKey(st, si, tt, ti), "match" if i == 0 else "no_match", score=score,
                       decision="reject", reason="reject_sample", queue="audit", matcher="zero-shot")
    con.close()
    s1 = [r for r in rows if r[6] == 1]
    estimate = s1[0][7] / len(s1)  # the one match stands for its stratum's pairs over the answered ones
    chromium, driver_path = _browser_paths()
    drv = _driver(chromium, driver_path, tmp_path / "profile")
    with _page(review_demo, "audit") as base:
        try:
            drv.get(f"{base}/pair/{rows[0][0]}")
            assert drv.find_element(By.CSS_SELECTOR, ".reason.reject_sample").text == \
                "random check of an auto-rejected pair"
            drv.get(base + "/summary")
            card = drv.find_element(By.CSS_SELECTOR, ".audit")
            assert card.text.startswith("Reject audit\n10 of 10 random auto-rejected pairs answered"), card.text
            assert f"About {estimate:.0f} match" in card.text and "among the auto-rejected pairs" in card.text, card.text
            assert len(card.find_elements(By.CSS_SELECTOR, "tr")) == 1 + len({r[6] for r in rows})
            # the labels say why each pair was queued in words; the stored reason is the cell's title
            cell = drv.find_element(By.XPATH, "//h2[text()='Labels so far']/following-sibling::table//td[1]")
            assert (cell.text, cell.get_attribute("title")) == ("check of auto-rejects", "reject_sample")
            ARTIFACTS.mkdir(exist_ok=True)
            drv.save_screenshot(str(ARTIFACTS / "review-audit.png"))
        finally:
            drv.quit()
