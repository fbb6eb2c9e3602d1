#!/usr/bin/env python3
"""Open Snakemake's HTML report in headless Chromium and check, from the rendered page, that the
tables and figures are there; take screenshots.

    python .ci/check_report.py results/report.html --expect table1 --expect fig1 ... --shots DIR

A copy of the report gets a probe script appended. Once the page's React app has rendered, the
probe opens every result category through the app itself (``app.showCategory``) and records the
result names the app lists, shows every figure as the app does (``app.setView``) and records the
decoded size of the ``<img>`` it renders, and decodes every embedded HTML table to count its
rows; it writes that as JSON into the page, which ``chromium --dump-dom`` returns. ``--shots``
adds screenshots of the landing page, the first table and the first figure, each through a
query string telling the probe which view to leave on screen.

Chromium runs with --headless --no-sandbox --disable-gpu --disable-background-networking
--disable-component-update --disable-sync --no-first-run and a fresh --user-data-dir per run.
Exit status 1 with one line per problem when something expected is missing.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]

PROBE = r"""
<script id="atomsift-probe-script">
(function () {
  const pause = (ms) => new Promise((r) => setTimeout(r, ms));
  const view = new URLSearchParams(window.location.search).get("view");
  async function probe() {
    const out = {listed: {}, images: {}, tables: {}, errors: []};
    const appDiv = document.getElementById("app");
    for (const cat of Object.keys(categories)) {
      app.setView({navbarMode: "menu"});  // as a click on the menu does: the list is built anew
      await pause(100);
      app.showCategory(cat);
      await pause(200);
      out.listed[cat] = appDiv.innerText;
    }
    const paths = Object.keys(results);
    for (const p of paths) {
      const entry = results[p];
      const name = p.split("/").pop();
      if (entry.mime_type === "image/png") {
        app.setView({content: "img", contentPath: entry.data_uri, resultPath: p});
        await pause(300);
        const img = appDiv.querySelector("img[src^='data:image/png']");
        out.images[name] = img ? [img.naturalWidth, img.naturalHeight] : null;
      } else if (entry.mime_type === "text/html") {
        try {
          const text = atob(entry.data_uri.split(",")[1]);
          out.tables[name] = {tables: (text.match(/<table/g) || []).length, rows: (text.match(/<tr>/g) || []).length};
        } catch (e) { out.errors.push(name + ": " + e); }
      }
    }
    const pre = document.createElement("pre");
    pre.id = "atomsift-probe";
    pre.textContent = JSON.stringify(out);
    pre.style.display = "none";
    document.body.appendChild(pre);
    if (view) {  // leave this result on screen, with its category's list beside it (for a screenshot)
      const p = paths.find((q) => q.endsWith("/" + view));
      const cat = Object.keys(categories).find((c) => Object.values(categories[c]).some((l) => l.includes(p)));
      if (p && cat) {
        app.setView({navbarMode: "menu"});
        await pause(100);
        app.showCategory(cat);
        await pause(200);
        app.setView({content: results[p].mime_type === "image/png" ? "img" : "html",
                     contentPath: results[p].data_uri, resultPath: p});
      }
    } else {
      app.setView({content: "rulegraph", navbarMode: "menu"});
    }
  }
  window.addEventListener("load", () => setTimeout(() => probe().catch((e) => {
    const pre = document.createElement("pre"); pre.id = "atomsift-probe";
    pre.textContent = JSON.stringify({fatal: String(e)}); document.body.appendChild(pre);
  }), 500));
})();
</script>
"""


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    sys.exit("check_report: no chromium on PATH (Debian: apt-get install chromium)")


def run_chromium(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        cmd = [chromium(), *FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=30000", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def probe_page(report: Path, work: Path) -> Path:
    html = report.read_text(encoding="utf-8")
    end = html.rfind("</body>")  # the page's own: embedded libraries hold the string too
    if end < 0:
        sys.exit(f"check_report: {report} has no </body> (not an HTML page)")
    page = work / "probe.html"
    page.write_text(html[:end] + PROBE + html[end:], encoding="utf-8")
    return page


def check(report: Path, expect: list[str], shots: Path | None) -> list[str]:
    problems = []
    with tempfile.TemporaryDirectory(prefix="check-report-") as tmp:
        page = probe_page(report, Path(tmp))
        res = run_chromium(["--dump-dom", page.as_uri()])
        m = re.search(r'<pre id="atomsift-probe"[^>]*>(.*?)</pre>', res.stdout, re.S)
        if res.returncode != 0 or not m:
            return [f"chromium rendered no probe result (rc {res.returncode}): {res.stderr.strip()[-500:]}"]
        import html as _html

        data = json.loads(_html.unescape(m.group(1)))
        if "fatal" in data:
            return [f"the probe failed in the page: {data['fatal']}"]
        listed = "\n".join(data["listed"].values())
        for cat in ("Tables", "Figures"):
            if cat not in data["listed"]:
                problems.append(f"no '{cat}' category in the rendered menu (has: {', '.join(data['listed'])})")
        for name in expect:
            if name not in listed:
                problems.append(f"'{name}' is not listed in any category of the rendered page")
        for name, size in data["images"].items():
            if not size or min(size) < 50:
                problems.append(f"figure {name} did not render (natural size {size})")
        for name, t in data["tables"].items():
            if t["tables"] < 1 or t["rows"] < 1:
                problems.append(f"{name} holds no table rows ({t})")
        figs = [n for n in expect if n.startswith("fig")]
        for f in figs:
            if f"{f}.png" not in data["images"]:
                problems.append(f"figure {f}.png is not an image of the report")
        tabs = [n for n in expect if n.startswith("table")]
        for t in tabs:
            if f"{t}.html" not in data["tables"]:
                problems.append(f"table {t} has no rendered HTML in the report")
        images = ", ".join(f"{k} {v[0]}x{v[1]}" for k, v in sorted(data["images"].items()) if v)
        tables = ", ".join(f"{k} {v['rows']} rows" for k, v in sorted(data["tables"].items()))
        print(f"check_report: {len(data['images'])} figures rendered ({images}), {len(data['tables'])} HTML results "
              f"with tables ({tables}); categories {', '.join(data['listed'])}")
        if shots is not None:
            shots.mkdir(parents=True, exist_ok=True)
            views = {"landing": None, "table": next((f"{t}.html" for t in tabs), None),
                     "figure": next((f"{f}.png" for f in figs), None)}
            for label, view in views.items():
                if label != "landing" and view is None:
                    continue
                out = shots / f"report-{label}.png"
                url = page.as_uri() + (f"?view={view}" if view else "")
                r = run_chromium([f"--screenshot={out}", "--window-size=1400,1000", "--hide-scrollbars", url])
                if r.returncode != 0 or not out.is_file():
                    problems.append(f"screenshot {out} failed (rc {r.returncode}): {r.stderr.strip()[-300:]}")
                else:
                    print(f"check_report: screenshot {out}")
    return problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("report", type=Path, help="the HTML file of snakemake --report")
    ap.add_argument("--expect", action="append", default=[], metavar="NAME",
                    help="a result the rendered page must list, as the report labels it (tableN: also rendered as "
                         "HTML; figN: also decoded as an image)")
    ap.add_argument("--shots", type=Path, help="directory for screenshots of the landing page, a table and a figure")
    args = ap.parse_args(argv)
    if not args.report.is_file():
        print(f"check_report: {args.report}: no such file", file=sys.stderr)
        return 1
    problems = check(args.report, args.expect, args.shots)
    for p in problems:
        print(f"check_report: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
