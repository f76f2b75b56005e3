"""The status page's HTML, server-rendered: the overview, search results and short notices, plus
the one style sheet and the small script that reloads the overview (both served as files, so the
Content-Security-Policy allows no inline style or script).

Every name shown is escaped; forms name a failed file by its opaque key. Without JavaScript the
overview reloads itself (a `<meta refresh>` inside `<noscript>`); with it, the reload waits while
someone types a search or has a folder open.
"""

from __future__ import annotations

import time
from html import escape

from ingestd.names import valid_text
from ingestd.web.view import NO_FOLDER, STATES, Folder, Item, TargetState, View

STYLE = """
body{font:16px/1.45 system-ui,sans-serif;margin:0 auto;max-width:70rem;padding:.5rem 1rem;
color:#1b1b1b;background:#fff}
h1{font-size:1.4rem;margin:.4rem 0}h2{font-size:1.15rem;margin:1.2rem 0 .4rem}
.bad{background:#fde8e8;border-left:4px solid #b91c1c;padding:.4rem .6rem}
.ok{background:#e8f6ec;border-left:4px solid #15803d;padding:.4rem .6rem}
.muted{color:#555;font-size:.9rem}
.scroll{overflow-x:auto}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:.35rem .5rem;border-bottom:1px solid #ddd;vertical-align:top}
td.n,th.n{text-align:right}
.name{overflow-wrap:anywhere}
form.inline{display:inline;margin:0}
button{font:inherit;padding:.35rem .9rem;border-radius:.3rem;border:1px solid #1d4ed8;
background:#1d4ed8;color:#fff;cursor:pointer}
input[type=search]{font:inherit;padding:.35rem;width:min(22rem,100%);box-sizing:border-box}
.state-up{color:#15803d}.state-paused{color:#b45309}.state-misconfigured{color:#b91c1c}
details{margin:.3rem 0}summary{cursor:pointer}
ul.files{margin:.2rem 0 .6rem;padding-left:1.2rem}
@media (max-width:40rem){body{font-size:15px;padding:.4rem}th,td{padding:.3rem}
table.wide th:nth-child(n+6),table.wide td:nth-child(n+6){display:none}
table.cards tr:first-child{display:none}
table.cards tr{display:block;border-bottom:1px solid #ddd;padding:.3rem 0}
table.cards td{display:block;border:0;padding:.1rem .3rem}}
"""

# Reload the overview every data-refresh seconds, but not under someone's hands.
SCRIPT = """
(function(){
  var every = Number(document.documentElement.getAttribute("data-refresh")) * 1000;
  if (!every) { return; }
  setInterval(function(){
    var busy = document.querySelector("details[open]");
    var typed = document.querySelector("input[name=q]");
    var focused = document.activeElement && document.activeElement.tagName === "INPUT";
    if (!busy && !focused && !(typed && typed.value)) { location.reload(); }
  }, every);
})();
"""

LABELS = {
    "waiting": "waiting",
    "in_progress": "in progress",
    "done_today": "done today",
    "failed": "failed",
}


def overview(view: View, csrf: str, refresh: float) -> str:
    parts = [
        _health(view),
        _summary(view),
        _search_form(""),
        _targets(view.targets),
        _failed(view, csrf),
        _folders(view.folders),
    ]
    return _document("Document intake", "".join(parts), refresh)


def results(view: View, query: str, found: list[Item], csrf: str) -> str:
    rows = "".join(
        f"<tr><td>{_folder(i.folder)}</td><td class=name>{_text(i.name)}</td>"
        f"<td>{LABELS[i.state]}</td><td>{_when(i.when)}</td>"
        f"<td>{_text(i.reason or '')}</td><td>{_retry(i, csrf) if i.key else ''}</td></tr>"
        for i in found
    )
    table = (
        "<div class=scroll><table class=cards><tr><th>Patient folder</th><th>File</th>"
        f"<th>State</th><th>When</th><th>Reason</th><th></th></tr>{rows}</table></div>"
        if found
        else "<p>No file with that name in the inbox, in progress, done today or failed.</p>"
    )
    body = (
        f"{_search_form(query)}<h2>{len(found)} file(s) found</h2>{table}"
        '<p><a href="/">Back to the overview</a></p>'
    )
    return _document("Search", body, 0)


def notice(title: str, text: str) -> str:
    return _document(title, f"<p>{_text(text)}</p><p><a href='/'>Back to the overview</a></p>", 0)


def _document(title: str, body: str, refresh: float) -> str:
    script = (
        '<script src="/refresh.js" defer></script>'
        f'<noscript><meta http-equiv="refresh" content="{refresh:.0f}"></noscript>'
        if refresh
        else ""
    )
    return (
        f'<!doctype html><html lang="en" data-refresh="{refresh:.0f}"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta name="referrer" content="no-referrer"><title>{_text(title)} · ingestd</title>'
        f'<link rel="stylesheet" href="/style.css">{script}</head>'
        f"<body><h1>{_text(title)}</h1>{body}"
        f"<p class=muted>As of {time.strftime('%H:%M:%S')}.</p></body></html>"
    )


def _health(view: View) -> str:
    if view.healthy:
        return "<p class=ok>ingestd is running and watching the inbox.</p>"
    return f"<p class=bad>Attention: {_text(view.problem or 'ingestd reports a problem')}.</p>"


def _summary(view: View) -> str:
    counts = " · ".join(f"{view.total(state)} {LABELS[state]}" for state in STATES)
    oldest = view.oldest_waiting
    waited = f"oldest waiting file: {age(time.time() - oldest)}" if oldest else "nothing waiting"
    return f"<p>{counts}<br>{waited}</p>"


def _search_form(query: str) -> str:
    return (
        '<form method="post" action="/search" role="search"><label>Find a file by name '
        f'<input type="search" name="q" value="{_text(query)}" maxlength="200"></label> '
        "<button type=submit>Search</button></form>"
    )


def _targets(targets: list[TargetState]) -> str:
    rows = "".join(
        f"<tr><td>{_text(t.name)}</td><td class=state-{t.state}>{t.state}</td>"
        f"<td>{_text(t.why)}</td></tr>"
        for t in targets
    )
    return (
        "<h2>EHR connections</h2><div class=scroll><table><tr><th>Target</th><th>State</th>"
        f"<th>Why</th></tr>{rows}</table></div>"
    )


def _failed(view: View, csrf: str) -> str:
    failed = sorted(
        (i for f in view.folders for i in f.items["failed"]), key=lambda i: -(i.when or 0)
    )
    if not failed:
        return "<h2>Failed files</h2><p>None.</p>"
    rows = "".join(
        f"<tr><td>{_folder(i.folder)}</td><td class=name>{_text(i.name)}</td>"
        f"<td>{_when(i.when)}</td><td>{_text(i.reason or '')}{_http(i)}</td>"
        f"<td>{_retry(i, csrf)}</td></tr>"
        for i in failed
    )
    more = (
        f"<p class=muted>{view.failed_not_listed} older failed file(s) not listed.</p>"
        if view.failed_not_listed
        else ""
    )
    return (
        f"<h2>Failed files ({len(failed)})</h2><div class=scroll><table class=cards><tr>"
        "<th>Patient folder</th><th>File</th><th>Failed</th><th>Reason and what to do</th><th></th>"
        f"</tr>{rows}</table></div>{more}"
    )


def _folders(folders: list[Folder]) -> str:
    if not folders:
        return "<h2>Patient folders</h2><p>Nothing in the inbox, in progress or done today.</p>"
    header = "".join(f"<th class=n>{LABELS[s]}</th>" for s in STATES)
    rows = "".join(
        f"<tr><td>{_folder(f.name)}</td>"
        + "".join(f"<td class=n>{f.count(s)}</td>" for s in STATES)
        + f"<td>{age(time.time() - f.oldest_waiting) if f.oldest_waiting else ''}</td></tr>"
        for f in folders
    )
    details = "".join(_folder_files(f) for f in folders)
    return (
        f"<h2>Patient folders</h2><div class=scroll><table class=wide><tr><th>Folder</th>{header}"
        f"<th>Oldest waiting</th></tr>{rows}</table></div>{details}"
    )


def _folder_files(folder: Folder) -> str:
    lists = "".join(
        f"<p>{LABELS[state]}:</p><ul class=files>"
        + "".join(f"<li class=name>{_text(i.name)}</li>" for i in folder.items[state][:100])
        + "</ul>"
        for state in STATES
        if folder.items[state]
    )
    return f"<details><summary>{_folder(folder.name)}</summary>{lists}</details>"


def _retry(item: Item, csrf: str) -> str:
    return (
        '<form class=inline method="post" action="/retry">'
        f'<input type="hidden" name="csrf" value="{csrf}">'
        f'<input type="hidden" name="file" value="{item.key}">'
        "<button type=submit>Retry</button></form>"
    )


def _http(item: Item) -> str:
    status = item.http_status
    if not isinstance(status, int) or isinstance(status, bool):
        return ""  # only a number goes into the page
    return f" <span class=muted>(HTTP {int(status)})</span>"


def _folder(name: str) -> str:
    return _text(name) if name != NO_FOLDER else "<i>(no patient folder)</i>"


def _text(text: str) -> str:
    return escape(valid_text(text), quote=True)


def _when(when: float | None) -> str:
    if when is None:
        return ""
    same_day = time.strftime("%Y-%m-%d", time.localtime(when)) == time.strftime("%Y-%m-%d")
    return time.strftime("%H:%M" if same_day else "%Y-%m-%d %H:%M", time.localtime(when))


def age(seconds: float) -> str:
    """A wait as people say it: `45 s`, `12 min`, `3.5 h` (the page and `ingestd status`)."""
    if seconds < 120:
        return f"{max(seconds, 0):.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
