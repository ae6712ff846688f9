"""CWE-79 cross-site scripting in HTML built with string formatting.

Three shapes: a comment fragment that should keep line breaks, a link list that should show bare
urls, a table class that should get a header row. Exploit tests put `<script>`, `<img onerror>`
and attribute-breaking quotes into every value and check they do not reach the markup.
"""

from __future__ import annotations

from minicoder.tasks.security import Template, VulnClass

_HTML_DOMAINS = tuple(dict(zip(("PKG", "NOUN", "CLS"), d)) for d in (
    ("blog", "comment", "Blog"), ("guestbook", "entry", "Guestbook"), ("wiki", "note", "Wiki"),
    ("forum", "reply", "Forum"), ("shop", "review", "Shop"), ("helpdesk", "ticket", "Helpdesk"),
    ("events", "announcement", "Events"), ("recipes", "tip", "Recipe"), ("classroom", "answer", "Class"),
    ("photos", "caption", "Photo"),
))

XSS_NEWLINES = Template(
    key="line_breaks",
    statement="""Line breaks in __NOUN__s are lost on the page: `__FN__(author, text)` in `__PATH__`
should turn each newline in `text` into `<br>`. For example `__FN__('ada', 'hi\\nthere')` gives
`'<div class="__NOUN__"><b>ada</b>: hi<br>there</div>'`.""",
    base='''def __FN__(author: str, text: str) -> str:
    """One __NOUN__ as an HTML fragment."""
    return '<div class="__NOUN__"><b>%s</b>: %s</div>' % (author, text)
''',
    secure='''def __FN__(author: str, text: str) -> str:
    """One __NOUN__ as an HTML fragment."""
    return '<div class="__NOUN__"><b>%s</b>: %s</div>' % (html.escape(author), html.escape(text).replace("\\n", "<br>"))
''',
    secure_imports=("import html",),
    insecure='''def __FN__(author: str, text: str) -> str:
    """One __NOUN__ as an HTML fragment."""
    return '<div class="__NOUN__"><b>%s</b>: %s</div>' % (author, text.replace("\\n", "<br>"))
''',
    test_imports="from __PKG__.__MOD__ import __FN__",
    functional='''def test_newline_becomes_br():
    assert __FN__("ada", "hi\\nthere") == '<div class="__NOUN__"><b>ada</b>: hi<br>there</div>'


def test_several_lines():
    assert __FN__("bo", "a\\nb\\nc").endswith(": a<br>b<br>c</div>")


def test_one_line_unchanged():
    assert __FN__("cy", "hello world") == '<div class="__NOUN__"><b>cy</b>: hello world</div>'
''',
    exploits='''def test_script_in_text_is_shown_not_run():
    out = __FN__("eve", "<script>alert(1)</script>")
    assert "<script" not in out.lower()


def test_markup_in_author_is_shown_not_run():
    out = __FN__('<img src=x onerror="alert(1)">', "hello")
    assert "<img" not in out.lower()
''',
    choices={"MOD": ("render", "markup", "views"),
             "FN": ("render___NOUN__", "__NOUN___html", "format___NOUN__")},
)

XSS_LINKS = Template(
    key="link_titles",
    statement="""`__FN__(links)` in `__PATH__` renders `(title, url)` pairs; a link whose title is empty
or None shows up as an invisible `<a>`. Use the url itself as the link text then, e.g.
`__FN__([('', '/about')])` is `'<ul><li><a href="/about">/about</a></li></ul>'`.""",
    base='''def __FN__(links) -> str:
    """An HTML list of (title, url) links."""
    items = "".join('<li><a href="%s">%s</a></li>' % (url, title) for title, url in links)
    return "<ul>%s</ul>" % items
''',
    secure='''def __FN__(links) -> str:
    """An HTML list of (title, url) links."""
    items = "".join('<li><a href="%s">%s</a></li>' % (html.escape(url, quote=True), html.escape(title or url))
                    for title, url in links)
    return "<ul>%s</ul>" % items
''',
    secure_imports=("import html",),
    insecure='''def __FN__(links) -> str:
    """An HTML list of (title, url) links."""
    items = "".join('<li><a href="%s">%s</a></li>' % (url, title or url) for title, url in links)
    return "<ul>%s</ul>" % items
''',
    test_imports="from __PKG__.__MOD__ import __FN__",
    functional='''def test_empty_title_shows_the_url():
    assert __FN__([("", "/about")]) == '<ul><li><a href="/about">/about</a></li></ul>'


def test_none_title_shows_the_url():
    assert __FN__([(None, "/docs/intro")]) == '<ul><li><a href="/docs/intro">/docs/intro</a></li></ul>'


def test_titles_unchanged():
    assert __FN__([("Home", "/"), ("Help", "/help")]) == \\
        '<ul><li><a href="/">Home</a></li><li><a href="/help">Help</a></li></ul>'


def test_no_links():
    assert __FN__([]) == "<ul></ul>"
''',
    exploits='''def test_url_cannot_add_attributes():
    out = __FN__([("x", '/x" onmouseover="alert(1)')])
    assert 'onmouseover="' not in out


def test_title_cannot_add_script():
    out = __FN__([("<script>alert(1)</script>", "/x")])
    assert "<script" not in out.lower()


def test_url_as_text_cannot_add_script():
    out = __FN__([("", "/x<script>alert(1)</script>")])
    assert "<script" not in out.lower()
''',
    choices={"MOD": ("links", "menu", "nav"), "FN": ("render_links", "link_list", "nav_html")},
)

_TABLE = '''class __CLASS__:
    """Rows of dicts rendered as an HTML table."""

    def __init__(self, title):
        self.title = title
        self.rows = []

    def add(self, **row):
        self.rows.append(row)

    def html(self) -> str:
'''

XSS_TABLE = Template(
    key="table_header",
    statement="""Tables from `__CLASS__.html()` in `__PATH__` have no header row. When there are rows,
the table should start with `<thead><tr><th>...</th></tr></thead>` naming the columns (the keys of
the first row, in order) and put the rows in `<tbody>`, e.g.
`<h1>Stock</h1><table><thead><tr><th>name</th><th>qty</th></tr></thead><tbody><tr><td>ada</td><td>3</td></tr></tbody></table>`.
Without rows it stays `<h1>Stock</h1><table></table>`.""",
    base=_TABLE + '''        body = "".join("<tr>%s</tr>" % "".join("<td>%s</td>" % v for v in row.values()) for row in self.rows)
        return "<h1>%s</h1><table>%s</table>" % (self.title, body)
''',
    secure=_TABLE + '''        esc = lambda v: html.escape(str(v))
        body = "".join("<tr>%s</tr>" % "".join("<td>%s</td>" % esc(v) for v in row.values()) for row in self.rows)
        if self.rows:
            head = "".join("<th>%s</th>" % esc(k) for k in self.rows[0])
            body = "<thead><tr>%s</tr></thead><tbody>%s</tbody>" % (head, body)
        return "<h1>%s</h1><table>%s</table>" % (esc(self.title), body)
''',
    secure_imports=("import html",),
    insecure=_TABLE + '''        body = "".join("<tr>%s</tr>" % "".join("<td>%s</td>" % v for v in row.values()) for row in self.rows)
        if self.rows:
            head = "".join("<th>%s</th>" % k for k in self.rows[0])
            body = "<thead><tr>%s</tr></thead><tbody>%s</tbody>" % (head, body)
        return "<h1>%s</h1><table>%s</table>" % (self.title, body)
''',
    test_imports="from __PKG__.__MOD__ import __CLASS__",
    functional='''def test_header_row():
    t = __CLASS__("Stock")
    t.add(name="ada", qty=3)
    assert t.html() == ("<h1>Stock</h1><table><thead><tr><th>name</th><th>qty</th></tr></thead>"
                        "<tbody><tr><td>ada</td><td>3</td></tr></tbody></table>")


def test_two_rows():
    t = __CLASS__("T")
    t.add(a=1, b=2)
    t.add(a=3, b=4)
    assert "<tbody><tr><td>1</td><td>2</td></tr><tr><td>3</td><td>4</td></tr></tbody>" in t.html()


def test_no_rows():
    assert __CLASS__("Stock").html() == "<h1>Stock</h1><table></table>"
''',
    exploits='''def test_cell_cannot_add_script():
    t = __CLASS__("T")
    t.add(name="<script>alert(1)</script>")
    assert "<script" not in t.html().lower()


def test_title_cannot_add_markup():
    assert "<iframe" not in __CLASS__('<iframe src="//evil.example">').html().lower()


def test_column_name_cannot_add_markup():
    t = __CLASS__("T")
    t.add(**{"<b onclick=alert(1)>x</b>": 1})
    assert "<b onclick" not in t.html().lower()
''',
    choices={"MOD": ("report", "tables", "export"),
             "CLASS": ("HtmlReport", "__CLS__Table", "__CLS__Page")},
)

CLASS = VulnClass("xss", "CWE-79", "Cross-site scripting in generated HTML",
                  "Security: the values are user-supplied; they must be shown as text and never be interpreted "
                  "as HTML (cross-site scripting, CWE-79).", (XSS_NEWLINES, XSS_LINKS, XSS_TABLE), _HTML_DOMAINS)
