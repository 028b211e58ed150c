"""The explorer in a real headless Chromium against a running three-node coalition.

One coalition (conversions both ways, a captured cross-brand redemption, an agreed
statement, witnesses cosigning) serves skyair's explorer; the page is driven like a user
would: keys typed in, blocks with their witness status, a block's entries, an entry's
inclusion proof verified by verify.js in the browser and rejected once tampered, a
member's balance and history, the conversions chart and the netting.

Set ``COALITION_SCREENSHOTS=DIR`` (e.g. ``docs/img``) to save a PNG of each view.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

if os.environ.get("CI", "").lower() != "true":  # in CI a missing selenium fails the run
    pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[dev]')")

from coalition_site import (
    AUDITOR_KEY,
    MEMBER_ID,
    MEMBER_KEY,
    A,
    B,
    C,
    Site,
    running_site,
)
from pages import enter_keys, error_text, find, go, screenshot, text_of, wait
from selenium.webdriver.common.by import By

from support.coalition import ledger_entries

SHOTS = (
    Path(os.environ["COALITION_SCREENSHOTS"]) if os.environ.get("COALITION_SCREENSHOTS") else None
)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with running_site(tmp_path_factory.mktemp("coalition")) as running:
        yield running


@pytest.fixture
def page(browser: Any, site: Site) -> Any:
    """The explorer open with the auditor's and alice's keys typed in."""
    browser.get(site.explorer_url)
    enter_keys(browser, AUDITOR_KEY, MEMBER_ID, MEMBER_KEY)
    return browser


def test_without_a_key_the_page_says_so(browser: Any, site: Site) -> None:
    browser.get(site.explorer_url)
    assert "Enter an API key" in text_of(browser, "#error", "API key")
    enter_keys(browser, "not-a-key")
    assert "401" in text_of(browser, "#error", "unknown API key")
    # Keys live in sessionStorage only, never in localStorage or cookies.
    assert browser.execute_script("return sessionStorage.getItem('coalition.ledgerKey')") == (
        "not-a-key"
    )
    assert browser.execute_script("return localStorage.length") == 0
    assert browser.get_cookies() == []


def test_blocks_show_witness_status_and_entries(page: Any, site: Site) -> None:
    latest = site.coalition[A].service.ledger.latest_header()
    assert latest is not None
    height = latest.header.height
    row = find(page, f"#blocks-table tr[data-height='{height}']")
    status = text_of(page, f"#blocks-table tr[data-height='{height}'] .witness-status", "/ 1")
    assert "witnessed" in status and (B in status or C in status), status
    assert len(page.find_elements(By.CSS_SELECTOR, "#blocks-table tbody tr")) == height + 1
    # The page's witness statuses came in one request, not one per block.
    fetched = page.execute_script(
        "return performance.getEntriesByType('resource').map((e) => e.name)"
    )
    assert len([u for u in fetched if "witnesses" in u]) == 1, fetched
    assert any("/v1/blocks/witnesses?start=0&limit=20" in u for u in fetched), fetched
    screenshot(page, SHOTS, "blocks")

    row.find_element(By.TAG_NAME, "a").click()
    assert "valid" in text_of(page, "#header-signature", "valid")
    assert find(page, "#header-hash").text == latest.header.hash()
    entries = page.find_elements(By.CSS_SELECTOR, "#entries-table tbody tr")
    assert len(entries) == latest.header.entry_count
    assert error_text(page) == ""
    screenshot(page, SHOTS, "block")


def _convert_out_id(site: Site) -> str:
    out = next(e for e in ledger_entries(site.coalition[A].service, "convert-out"))
    return str(out["id"])


def test_entry_proof_is_verified_in_the_browser_and_tampering_is_rejected(
    page: Any, site: Site
) -> None:
    go(page, f"#/entry/{_convert_out_id(site)}")
    result = text_of(page, "#proof-result", "Proof verified")
    assert "REJECTED" not in result
    checks = page.find_elements(By.CSS_SELECTOR, "#checks li")
    assert [c.get_attribute("data-check") for c in checks] == [
        "shape",
        "binding",
        "leaf",
        "inclusion",
        "header",
        "signature",
    ]
    assert all(c.get_attribute("class") == "ok" for c in checks)
    assert "Consistent with the newest signed header" in text_of(page, "#latest-link", "✓")
    screenshot(page, SHOTS, "entry")

    for button, reason in (
        ("tamper-amount", "computed root does not match"),
        ("tamper-path", "computed root does not match"),
        ("tamper-signature", "signature does not verify"),
    ):
        page.find_element(By.ID, button).click()
        rejected = text_of(page, "#proof-result", "REJECTED")
        assert reason in rejected, rejected
        if button == "tamper-signature":
            screenshot(page, SHOTS, "entry-tampered")
    page.find_element(By.ID, "reset-proof").click()
    text_of(page, "#proof-result", "Proof verified")


def test_member_balance_and_history(page: Any, site: Site) -> None:
    go(page, "#/member")
    balance = site.coalition[A].service.points.balance(MEMBER_ID)
    assert find(page, "#balance-spendable").text == str(balance.spendable)
    history = site.coalition[A].service.points.history(MEMBER_ID, 50)
    rows = page.find_elements(By.CSS_SELECTOR, "#history-table tbody tr")
    assert [r.get_attribute("data-entry") for r in rows] == [v.entry["id"] for v in history]
    assert "convert-out" in find(page, "#history-table").text
    screenshot(page, SHOTS, "member")
    # A member key reads only its own account.
    enter_keys(page, AUDITOR_KEY, "bob", MEMBER_KEY)
    assert "403" in text_of(page, "#error", "only act on its own account")


def test_conversions_chart_draws_each_flow(page: Any, site: Site) -> None:
    go(page, "#/flows?bucket_s=86400")
    find(page, "#flows-chart")
    paths = page.find_elements(By.CSS_SELECTOR, "#flows-chart path.flow-path")
    drawn = {
        (p.get_attribute("data-kind"), p.get_attribute("data-from"), p.get_attribute("data-to"))
        for p in paths
    }
    assert drawn == {
        ("conversion", A, B),
        ("conversion", A, C),
        ("conversion", B, A),
        ("redemption", A, B),
    }
    bars = page.find_elements(By.CSS_SELECTOR, "#flows-chart rect.flow-bar")
    assert len(bars) == 4
    assert "skyair → staybright" in find(page, "#flows-table").text
    assert page.find_elements(By.CSS_SELECTOR, "#flows-older") == []  # one page holds it all
    screenshot(page, SHOTS, "flows")


def test_settlement_statements_and_netting(page: Any, site: Site) -> None:
    go(page, "#/settlement")
    statements = find(page, "#statements-table").text
    assert f"{A} ↔ {B}" in statements
    assert "Positions sum to 0" in text_of(page, "#positions-sum", "sum to")
    positions = {
        row.get_attribute("data-program"): int(row.find_elements(By.TAG_NAME, "td")[1].text)
        for row in page.find_elements(By.CSS_SELECTOR, "#positions-table tbody tr")
    }
    netting = site.settlement[A].coalition_netting(site.statement_start, site.statement_end)
    assert positions == dict(netting.netting.positions)
    assert any(v != 0 for v in positions.values())
    payments = find(page, "#payments").text
    for payment in netting.netting.payments:
        assert f"{payment.payer} pays {payment.payee} {payment.amount}" in payments
    screenshot(page, SHOTS, "settlement")
    wait(page).until(lambda _: error_text(page) == "")


def _get(site: Site, path: str, key: str | None = AUDITOR_KEY) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(site.base_url + path)  # noqa: S310 (a local test server)
    if key is not None:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:  # noqa: S310
            return reply.status, dict(reply.headers), reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_page_files_are_served_without_a_key_under_a_strict_policy(site: Site) -> None:
    for name, media in (
        ("", "text/html"),
        ("app.js", "text/javascript"),
        ("verify.js", "text/javascript"),
        ("style.css", "text/css"),
    ):
        status, headers, body = _get(site, f"/explorer/{name}", key=None)
        assert status == 200 and headers["content-type"].startswith(media) and body
        assert "script-src 'self'" in headers["content-security-policy"]
        assert headers["x-content-type-options"] == "nosniff"
    assert _get(site, "/explorer/flows.py", key=None)[0] == 404
    assert _get(site, "/explorer/..%2Fflows.py", key=None)[0] == 404
    assert _get(site, "/v1/explorer/flows", key=None)[0] == 401
    assert _get(site, "/v1/explorer/flows", key=MEMBER_KEY)[0] == 403


def test_flows_sum_this_chain_per_direction(site: Site) -> None:
    status, _, body = _get(site, "/v1/explorer/flows?bucket_s=86400")
    assert status == 200
    flows = {(f["kind"], f["from"], f["to"]): f for f in json.loads(body)["flows"]}
    assert set(flows) == {
        ("conversion", A, B),
        ("conversion", A, C),
        ("conversion", B, A),
        ("redemption", A, B),
    }
    to_b = flows[("conversion", A, B)]
    # 1000 and 400 points at 1 % fee (10 and 4), rate 3/2, one minor unit per net point.
    assert (to_b["count"], to_b["points_out"], to_b["points_in"]) == (2, 1400, 1485 + 594)
    assert to_b["value_minor"] == 990 + 396
    to_c = flows[("conversion", A, C)]
    assert (to_c["count"], to_c["refunded"], to_c["points_out"]) == (2, 0, 800)
    assert flows[("redemption", A, B)]["value_minor"] == 300
    assert _get(site, "/v1/explorer/flows?bucket_s=1")[0] == 422
