"""An offline-verified report in a real browser (headless Chromium): the page a regulator files
says which bundle it was recomputed from, under which log key, at which checkpoint, and names the
lab in its title; the verifier's own page says it was not re-verified, and a tampered bundle's
page says NOT VERIFIED.

The bundle comes from a real verifier (in-process, on loopback) holding a real node's signed
windows; ``pausewatch audit verify-bundle --html`` runs as a process; Chromium renders the page.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from tests.builders import TestNode
from tests.integration.test_audit_cli import pausewatch
from tests.integration.test_report_html_browser import CSP_META, Browser, start_browser
from tests.verifier_harness import running_verifier
from verifier.accounting.evaluation import format_time_ns

S = 10**9
MINUTE = 60 * S
PROBE = """
<pre id="probe"></pre>
<script>
addEventListener("load", () => {
  const stamp = document.getElementById("provenance-stamp");
  const r = stamp.getBoundingClientRect();
  const verdict = document.getElementById("verdict").getBoundingClientRect();
  document.getElementById("probe").textContent = JSON.stringify({
    title: document.title,
    h1: document.querySelector("h1").innerText,
    stamp: stamp.innerText,
    verified: stamp.dataset.verified,
    visible: r.width > 100 && r.height > 10 && r.bottom <= verdict.top + 1,
  });
});
</script>
"""


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Browser:
    return start_browser(tmp_path_factory)


def shown(browser: Browser, page: Path) -> dict[str, Any]:
    text = page.read_text(encoding="utf-8")
    assert CSP_META in text
    probe = page.with_name(page.stem + "-probe.html")
    probe.write_text(text.replace(CSP_META, "").replace("</body>", PROBE + "</body>"))
    result = browser.run("--dump-dom", probe.as_uri())
    found = re.search(r'<pre id="probe">(.*?)</pre>', result.stdout, re.DOTALL)
    assert found is not None and found.group(1), result.stderr[-800:]
    data: dict[str, Any] = json.loads(html.unescape(found.group(1)))
    return data


def test_the_offline_page_is_stamped_with_bundle_key_and_checkpoint_and_names_the_lab(
    browser: Browser, tmp_path: Path
) -> None:
    now = time.time_ns()
    t0 = now - now % MINUTE - 30 * MINUTE
    with running_verifier(tmp_path / "v", tls=True) as v:
        client = v.client()
        node = TestNode.from_seed(95, t0_ns=t0)
        client.enroll(node, created_at_ns=t0 - S)
        assert all(r.status == 1 for r in client.submit(node.chain(10)))
        time.sleep(1.5)  # a checkpoint interval
        period = ["--since", format_time_ns(t0), "--until", format_time_ns(t0 + 20 * MINUTE)]
        bundle = tmp_path / "lab-a.pwbundle"
        exported = pausewatch(
            "audit", "export", *v.cli_target(), "--lab", "lab-a", *period, "--out", str(bundle)
        )
        assert exported.returncode == 0, exported.stderr
        server_page = tmp_path / "server.html"
        served = pausewatch(
            "audit",
            "report",
            *v.cli_target(),
            "--lab",
            "lab-a",
            *period,
            "--html",
            str(server_page),
        )
        assert served.returncode in (0, 1), served.stderr
        log_key = json.loads(pausewatch("log", "checkpoint", *v.cli_target(), "--json").stdout)[
            "verifier_key"
        ]
    page = tmp_path / "offline.html"
    verified = pausewatch(
        "audit", "verify-bundle", str(bundle), "--log-key", log_key, "--html", str(page), "--json"
    )
    result = json.loads(verified.stdout)
    assert result["ok"], result
    sha = hashlib.sha256(bundle.read_bytes()).hexdigest()
    assert result["bundle_sha256"] == sha

    offline = shown(browser, page)
    assert offline["verified"] == "true" and offline["visible"]
    stamp = " ".join(offline["stamp"].split())
    assert f"verified from bundle sha256 {sha} under log key {log_key} at checkpoint" in stamp
    assert f"at checkpoint {result['checkpoint_tree_size']} (root " in stamp
    assert result["checkpoint_root_hash"] in stamp
    assert offline["title"].startswith("pausewatch compliance report: Lab A (lab-a), ")
    assert offline["h1"] == "Lab A (lab-a)"

    # The control: the verifier's own page names the lab too, and says it was not re-verified.
    own = shown(browser, server_page)
    assert own["verified"] == "server" and "not re-verified" in own["stamp"]
    assert own["title"].startswith("pausewatch compliance report: Lab A (lab-a), ")

    # A tampered bundle's page says NOT VERIFIED, never "verified from".
    data = bytearray(bundle.read_bytes())
    data[len(data) // 2] ^= 0x40
    tampered = tmp_path / "tampered.pwbundle"
    tampered.write_bytes(bytes(data))
    bad_page = tmp_path / "tampered.html"
    run = pausewatch(
        "audit", "verify-bundle", str(tampered), "--log-key", log_key, "--html", str(bad_page)
    )
    assert run.returncode == 3
    if bad_page.exists():  # written whenever a report could be recomputed at all
        bad = shown(browser, bad_page)
        assert bad["verified"] == "false" and "NOT VERIFIED" in bad["stamp"]
        assert "verified from" not in bad["stamp"]
