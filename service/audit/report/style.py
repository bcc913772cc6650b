"""The report's look: its stylesheet and the small HTML pieces every section uses.

Kept apart from :mod:`service.audit.report.html` so that sections in their own modules (the trend,
the omissions) can use them without importing the page that imports them.
"""

from __future__ import annotations

from ..formats import esc

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;
color:#1d232a;background:#fafbfc}
header{background:#1f3b57;color:#fff;padding:18px 28px}header h1{margin:0 0 4px;font-size:22px}
header p{margin:0;opacity:.85}nav{padding:8px 28px;background:#e9eef3;position:sticky;top:0;z-index:2}
nav a{margin-right:14px;color:#1f3b57;text-decoration:none;font-weight:600}main{padding:0 28px 40px;max-width:1280px}
section{margin:28px 0;padding:16px 20px;background:#fff;border:1px solid #dde3ea;border-radius:8px}
h2{margin-top:0;color:#1f3b57}table{border-collapse:collapse;margin:8px 0}
td,th{border:1px solid #dde3ea;padding:4px 8px;text-align:left;vertical-align:top}th{background:#f2f5f8}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.note{color:#4a5663;font-size:13px;background:#f6f8fa;border-left:3px solid #9fb3c8;padding:6px 10px;margin:8px 0}
.warn{border-left-color:#d08700;background:#fff8e6}.big{font-size:20px;font-weight:700}
.badge{display:inline-block;padding:0 6px;border-radius:4px;font-size:12px;font-weight:600}
.b-red{background:#fde2e1;color:#a3120b}.b-amber{background:#fff1cc;color:#7a5200}
.b-green{background:#e1f5e6;color:#1a6b32}.b-grey{background:#eceff2;color:#4a5663}
.nngrid{display:flex;flex-wrap:wrap;gap:10px}
.nn{display:grid;grid-template-columns:30px repeat(3,132px);gap:4px 8px;align-items:start;padding:6px;
border:1px solid #dde3ea;border-radius:6px}
.nn figure,.pair figure,.gal figure{margin:0}
.nn img,.pair img,.gal img{display:block;border:1px solid #cfd7df;background:#eee}
figcaption{font-size:12px;color:#37414b;overflow-wrap:anywhere}.rank{font-weight:700;color:#6b7885;padding-top:4px}
.lbl{font-weight:700;color:#6b7885}.pairs{display:flex;flex-wrap:wrap;gap:14px}
.pair{display:flex;gap:4px;padding:6px;border:1px solid #dde3ea;border-radius:6px}
.pair .cap{font-size:12px;width:150px}.gal{display:flex;flex-wrap:wrap;gap:6px;align-items:flex-start}
img.plot{max-width:100%;height:auto;border:0}details{margin:10px 0}
summary{cursor:pointer;font-weight:600;color:#1f3b57}code{background:#f2f5f8;padding:1px 4px;border-radius:3px}
pre{background:#f2f5f8;padding:8px;overflow-x:auto;white-space:pre-wrap}
"""


def img_tag(uri: str | None, alt: str, size: int | None = None, cls: str = "thumb") -> str:
    if not uri:
        return f'<div class="badge b-grey">{esc(alt)}: no image</div>'
    wh = f' width="{size}" height="{size}" style="object-fit:contain"' if size else ""
    return f'<img class="{cls}" src="{uri}" alt="{esc(alt)}"{wh}>'


def badge_reject(r: bool | None) -> str:
    if r is None:
        return '<span class="badge b-grey">not tested</span>'
    return '<span class="badge b-red">reject H0</span>' if r else '<span class="badge b-green">no evidence</span>'
