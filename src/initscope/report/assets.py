"""The report's stylesheet and script, inlined into every page so it opens from ``file://``
with nothing fetched.

The script is progressive enhancement: without it (an untrusted notebook) the charts keep
their native ``<title>`` tooltips and every panel shows. With it: a styled tooltip on
hover, series toggles (``.tog`` buttons, matched to chart elements by ``data-k`` within the
enclosing ``[data-toggles]`` block), sortable tables (``th[data-sort]``, numeric cells carry
``data-v``), run tabs, and a download button for the embedded JSON. Listeners are
delegated from ``document`` and installed once, so fragments may repeat the script.
"""
from __future__ import annotations

__all__ = ["CSS", "JS"]

CSS = """
.initscope{--fg:#1d2433;--muted:#5b6478;--line:#e2e6ee;--bg:#f6f7fb;--card:#fff;--accent:#2e86ab;
 color:var(--fg);font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
body.initscope{margin:0;background:var(--bg)}
.initscope main{max-width:1180px;margin:0 auto;padding:8px 24px 48px}
.initscope header.top{background:linear-gradient(120deg,#1d2433,#2e4a6b);color:#fff;padding:28px 24px 22px}
.initscope header.top>div{max-width:1180px;margin:0 auto}
.initscope header.top h1{margin:0 0 4px;font-size:26px;font-weight:650;letter-spacing:-.01em}
.initscope header.top p{margin:2px 0;color:#c9d3e3}
.initscope .summary{list-style:none;padding:0;margin:14px 0 0;display:grid;gap:6px}
.initscope .summary li{background:rgba(255,255,255,.09);border-left:3px solid #7fc8e8;padding:6px 10px;border-radius:4px;color:#fff}
.initscope nav.toc{margin:16px 0 0;display:flex;gap:14px;flex-wrap:wrap}
.initscope nav.toc a{color:#a9dcf2;text-decoration:none}
.initscope section.card{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:18px 22px;margin:20px 0;
 box-shadow:0 1px 2px rgba(20,30,50,.04)}
.initscope h2{margin:0 0 6px;font-size:20px}
.initscope h3{margin:18px 0 6px;font-size:16px}
.initscope p.lead{color:var(--muted);margin:0 0 10px;max-width:900px}
.initscope .formula{font-family:ui-monospace,Menlo,Consolas,monospace;background:#f0f4fa;border-radius:6px;padding:8px 12px;
 display:inline-block;margin:4px 0 10px}
.initscope .charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(440px,1fr));gap:14px}
.initscope figure.chart{margin:0;border:1px solid var(--line);border-radius:8px;padding:8px 8px 2px;background:#fff}
.initscope figure.chart figcaption{font-weight:600;font-size:13px;margin:0 0 2px 4px}
.initscope figure.chart .note{font-weight:400;color:var(--muted);margin-left:8px}
.initscope svg{width:100%;height:auto;display:block}
.initscope svg .grid{stroke:#edf0f5}.initscope svg .tk{stroke:#9aa3b5}
.initscope svg .frame{fill:none;stroke:#c5ccd9}
.initscope svg .tick{font-size:11px;fill:#5b6478}.initscope svg .lab{font-size:12px;fill:#3a4356}
.initscope svg .ln{fill:none;stroke-width:1.8;stroke-linejoin:round}
.initscope svg .band{opacity:.14;stroke:none}
.initscope svg .pt{cursor:pointer;stroke-width:1.2}.initscope svg .pt:hover{stroke:#111;stroke-width:2}
.initscope .hide{display:none}
.initscope .toggles{display:flex;gap:8px;flex-wrap:wrap;margin:6px 0 12px;align-items:center}
.initscope .toggles span.lbl{color:var(--muted);font-size:13px}
.initscope button{font:inherit;font-size:13px;border:1px solid var(--line);background:#fff;border-radius:16px;padding:3px 12px;cursor:pointer}
.initscope button.tog .sw{display:inline-block;width:10px;height:10px;border-radius:50%;margin-right:6px;vertical-align:-1px}
.initscope button.tog.off{opacity:.45;text-decoration:line-through}
.initscope .tabs{display:flex;gap:4px;border-bottom:1px solid var(--line);margin:16px 0 0}
.initscope .tabs button{border-radius:8px 8px 0 0;border-bottom:none;padding:6px 14px}
.initscope .tabs button.on{background:var(--accent);color:#fff;border-color:var(--accent)}
.initscope.js .panel:not(.on){display:none}
.initscope .panel{padding-top:6px}
.initscope table{border-collapse:collapse;width:100%;font-size:12.5px;margin:6px 0}
.initscope th,.initscope td{padding:4px 8px;border-bottom:1px solid var(--line);text-align:left;white-space:nowrap}
.initscope td.num,.initscope th.num{text-align:right;font-variant-numeric:tabular-nums}
.initscope td.wrap{white-space:normal;min-width:220px}
.initscope thead th{position:sticky;top:0;background:#f3f5f9;font-weight:600}
.initscope th[data-sort]{cursor:pointer;user-select:none}
.initscope th[data-sort]::after{content:" \\2195";color:#b3bac8}
.initscope th[aria-sort=ascending]::after{content:" \\25B2";color:var(--accent)}
.initscope th[aria-sort=descending]::after{content:" \\25BC";color:var(--accent)}
.initscope tbody tr:nth-child(even){background:#fafbfd}
.initscope tbody tr.sev-error{background:#fdecee}.initscope tbody tr.sev-warning{background:#fff6e5}
.initscope .scroll{max-height:520px;overflow:auto;border:1px solid var(--line);border-radius:8px}
.initscope .flag{display:inline-block;background:#eef1f6;border-radius:3px;padding:0 5px;margin-right:3px;font-size:11px}
.initscope .findings{list-style:none;padding:0;margin:8px 0}
.initscope .finding{border:1px solid var(--line);border-left-width:4px;border-radius:6px;padding:8px 12px;margin:8px 0}
.initscope .finding.error{border-left-color:#c62828}.initscope .finding.warning{border-left-color:#e09f3e}
.initscope .finding.info{border-left-color:#2e86ab}
.initscope .badge{display:inline-block;font-size:11px;font-weight:700;text-transform:uppercase;border-radius:3px;padding:1px 6px;
 margin-right:6px;color:#fff;background:#2e86ab}
.initscope .badge.error{background:#c62828}.initscope .badge.warning{background:#c77d12}
.initscope .finding .fix{margin:4px 0 0}.initscope .finding .fix b{color:#2f7a46}
.initscope .finding details{margin-top:4px;color:var(--muted)}
.initscope .ok{color:#2f7a46;font-weight:600}
.initscope code{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;background:#f0f2f6;border-radius:3px;padding:0 3px}
.initscope details>summary{cursor:pointer;font-weight:600;margin:10px 0 4px}
.initscope img.figure{max-width:100%;border:1px solid var(--line);border-radius:8px}
.initscope footer{color:var(--muted);font-size:12px;text-align:center;margin:24px 0}
#is-tip{position:fixed;pointer-events:none;z-index:10;background:#1d2433;color:#fff;font:12px/1.4 system-ui,sans-serif;
 padding:5px 9px;border-radius:5px;box-shadow:0 2px 8px rgba(0,0,0,.25);display:none;max-width:420px}
"""

JS = r"""
(function () {
  var roots = document.querySelectorAll('.initscope');
  for (var i = 0; i < roots.length; i++) roots[i].classList.add('js');
  var titles = document.querySelectorAll('.initscope .pt > title');
  for (var j = 0; j < titles.length; j++) {
    titles[j].parentNode.setAttribute('data-tip', titles[j].textContent);
    titles[j].parentNode.removeChild(titles[j]);
  }
  if (window.__initscope) return;
  window.__initscope = true;
  var tip = document.createElement('div');
  tip.id = 'is-tip';
  document.body.appendChild(tip);
  function num(cell) {
    var v = cell.getAttribute('data-v');
    if (v === null) return null;
    var x = parseFloat(v);
    return isNaN(x) ? null : x;
  }
  function sortBy(th) {
    var table = th.closest('table'), body = table.tBodies[0], col = th.cellIndex;
    var asc = th.getAttribute('aria-sort') !== 'ascending';
    var heads = table.tHead.rows[0].cells;
    for (var k = 0; k < heads.length; k++) heads[k].removeAttribute('aria-sort');
    th.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
    var rows = Array.prototype.slice.call(body.rows);
    var numeric = th.getAttribute('data-sort') === 'num';
    rows.sort(function (a, b) {
      var x = a.cells[col], y = b.cells[col], r;
      if (numeric) {
        var p = num(x), q = num(y);
        if (p === null && q === null) r = 0; else if (p === null) return 1; else if (q === null) return -1;
        else r = p - q;
      } else r = x.textContent.localeCompare(y.textContent, undefined, {numeric: true});
      return asc ? r : -r;
    });
    for (var m = 0; m < rows.length; m++) body.appendChild(rows[m]);
  }
  function toggle(btn) {
    var off = btn.classList.toggle('off');
    btn.setAttribute('aria-pressed', off ? 'false' : 'true');
    var scope = btn.closest('[data-toggles]') || document, key = btn.getAttribute('data-k');
    var els = scope.querySelectorAll('[data-k]');
    for (var n = 0; n < els.length; n++) {
      if (els[n] !== btn && els[n].getAttribute('data-k') === key) els[n].classList.toggle('hide', off);
    }
  }
  function tab(btn) {
    var bar = btn.parentNode, box = bar.parentNode, id = btn.getAttribute('data-tab');
    var btns = bar.querySelectorAll('button');
    for (var a = 0; a < btns.length; a++) btns[a].classList.toggle('on', btns[a] === btn);
    var panels = box.querySelectorAll(':scope > .panel');
    for (var b = 0; b < panels.length; b++) panels[b].classList.toggle('on', panels[b].id === id);
  }
  function download() {
    var data = document.getElementById('initscope-data');
    if (!data) return;
    var url = URL.createObjectURL(new Blob([data.textContent], {type: 'application/json'}));
    var a = document.createElement('a');
    a.href = url; a.download = 'initscope-data.json';
    document.body.appendChild(a); a.click(); a.remove();
    setTimeout(function () { URL.revokeObjectURL(url); }, 1000);
  }
  document.addEventListener('click', function (e) {
    var t = e.target.closest ? e.target : e.target.parentNode;
    var el = t.closest('.initscope th[data-sort]');
    if (el) return sortBy(el);
    el = t.closest('.initscope button.tog');
    if (el) return toggle(el);
    el = t.closest('.initscope .tabs button');
    if (el) return tab(el);
    if (t.closest('#is-download')) download();
  });
  document.addEventListener('mouseover', function (e) {
    var p = e.target.closest && e.target.closest('.initscope .pt');
    if (!p) { tip.style.display = 'none'; return; }
    tip.textContent = p.getAttribute('data-tip') || '';
    tip.style.display = 'block';
  });
  document.addEventListener('mousemove', function (e) {
    if (tip.style.display !== 'block') return;
    var x = e.clientX + 14, y = e.clientY + 14;
    if (x + tip.offsetWidth > window.innerWidth - 8) x = e.clientX - tip.offsetWidth - 14;
    if (y + tip.offsetHeight > window.innerHeight - 8) y = e.clientY - tip.offsetHeight - 14;
    tip.style.left = x + 'px'; tip.style.top = y + 'px';
  });
})();
"""
