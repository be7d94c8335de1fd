"""Token views: a student's completion with every token coloured by the teacher's verdict.

One function turns the per-token records of `samples.jsonl` (or of
`opd_lab.feedback.score_completions`) into a self-contained HTML string: inline colours,
one scoped `<style>` block, no scripts and nothing fetched from the network. The same
string works in a notebook (`IPython.display.HTML(view)`), in the app (`gr.HTML(view)`)
and as a saved page (`save_html(view, "view.html")`).

Two colourings:

* ``color_by="reverse_kl"``: the exact full-vocabulary KL(student ‖ teacher) at each
  position, white (0, the models agree) to red (large). It says *where* the student's
  whole next-token distribution departs from the teacher's, whatever token was drawn.
* ``color_by="advantage"``: the OPD advantage ``log p_teacher - log p_student`` of the
  sampled token, red when negative (the teacher finds the token less likely than the
  student does: training pushes it down), white at 0, blue when positive (pushed up).
  Its average over the student's own samples is minus the reverse KL, which is why
  OPD can train on it with a policy-gradient loss.

Hovering a token opens a card (pure CSS, `:hover`) with both probabilities, the KL,
the advantage, and the teacher's (and student's, when logged) top-5 alternatives.
Spaces, newlines and tabs are drawn as ``·``, ``↵`` and ``→`` so a tokenizer's
whitespace handling is visible. All text coming from tokens is HTML-escaped; other
control characters and the invisible bidirectional controls (a right-to-left override
``\u202e`` would reverse every later token) are shown as escapes like ``\u202e``, and
each token is isolated (``unicode-bidi: isolate``), so text always reads in order.

Example:
    >>> tokens = [{"text": "7", "student_logprob": -0.1, "teacher_logprob": -0.01,
    ...            "reverse_kl": 0.05, "teacher_top": [["7", 0.99], ["8", 0.004]]}]
    >>> view = render_tokens(tokens, prompt="347+285=", title="step 10")
    >>> "<script" in view
    False
    >>> color_for(0.0, "reverse_kl", vmax=1.0), color_for(float("inf"), "reverse_kl", vmax=1.0)
    ('#ffffff', '#c81e1e')
"""

from __future__ import annotations

import functools
import html
import math
import os
import uuid
from pathlib import Path

COLOR_KINDS = ("reverse_kl", "advantage")

WHITE = (255, 255, 255)
RED = (200, 30, 30)  # high reverse KL; negative advantage
BLUE = (30, 90, 200)  # positive advantage
MISSING = (190, 190, 190)  # NaN: no teacher score at this position

# The automatic scale maximum: the 95th percentile of the finite magnitudes shown, so
# one outlier token does not wash out the rest, but never below this floor (nats), so
# a sample where student and teacher nearly agree is drawn nearly white instead of
# having its tiny differences stretched to full red.
VMAX_PERCENTILE = 0.95
VMAX_FLOOR = 0.1

TOP_K = 5

# The locked scale (nats), the same for every view, so one shade means one value on every
# step, run and sample: at 5 nats the teacher finds a token e^5 ≈ 150 times less likely
# than the student does (advantage) or the two next-token distributions are as far
# apart (reverse KL). Pass it as `vmax` to compare views.
LOCKED_VMAX = 5.0

# What each colouring answers, in two sentences a newcomer can read beside the view.
COLOR_EXPLANATIONS = {
    "advantage": ("Advantage (log p_teacher − log p_student of the written token): how much the teacher "
                  "dislikes *this* token. Red: the teacher finds it less likely than the student does, "
                  "so training pushes it down; blue: pushed up."),
    "reverse_kl": ("Reverse KL: how far the student's whole next-token distribution is from the teacher's at "
                   "this position, whatever token was drawn. A wrong token drawn by bad luck can be white, "
                   "and a right one red when the student was unsure of it."),
}


def _hex(rgb: tuple[float, float, float]) -> str:
    return "#" + "".join(f"{round(channel):02x}" for channel in rgb)


def _mix(low: tuple, high: tuple, fraction: float) -> tuple[float, float, float]:
    return tuple(a + (b - a) * fraction for a, b in zip(low, high))


def color_for(value: float | None, kind: str = "reverse_kl", vmax: float = 1.0) -> str:
    """The background colour (``#rrggbb``) of a token with this `value`.

    Args:
        value: reverse KL in nats (kind ``"reverse_kl"``) or the advantage
            ``log p_teacher - log p_student`` (kind ``"advantage"``).
        kind: ``"reverse_kl"``: linear white→red over ``[0, vmax]``; values below 0
            (rounding noise: a KL is never negative) are white, values at or above
            `vmax` (``inf`` included) are full red. ``"advantage"``: linear over
            ``[-vmax, vmax]``, full red at ``-vmax`` or below, white at 0, full blue at
            ``+vmax`` or above.
        vmax: the scale's maximum magnitude, positive and finite.

    Returns:
        The colour; grey for ``None`` or NaN (a position with no teacher score).

    Example:
        >>> color_for(0.5, "reverse_kl", vmax=1.0), color_for(-2.0, "advantage", vmax=1.0)
        ('#e48e8e', '#c81e1e')
    """
    if kind not in COLOR_KINDS:
        raise ValueError(f"kind must be one of {', '.join(COLOR_KINDS)} (got {kind!r})")
    if not (vmax > 0 and math.isfinite(vmax)):
        raise ValueError(f"vmax must be positive and finite (got {vmax!r})")
    if value is None or math.isnan(value):
        return _hex(MISSING)
    fraction = max(-1.0, min(1.0, value / vmax))  # inf / vmax is inf, clipped to 1
    if kind == "reverse_kl":
        return _hex(_mix(WHITE, RED, max(0.0, fraction)))
    return _hex(_mix(WHITE, BLUE, fraction) if fraction >= 0 else _mix(WHITE, RED, -fraction))


def _is_dark(background: str) -> bool:
    """Whether `background` (#rrggbb) needs white text (perceived brightness below ~55%)."""
    red, green, blue = (int(background[i:i + 2], 16) for i in (1, 3, 5))
    return 0.299 * red + 0.587 * green + 0.114 * blue < 140


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def token_value(token: dict, color_by: str) -> float:
    """The number a token is coloured by (NaN when its record lacks it)."""
    if color_by == "reverse_kl":
        return _number(token.get("reverse_kl"))
    if "advantage" in token:
        return _number(token["advantage"])
    return _number(token.get("teacher_logprob")) - _number(token.get("student_logprob"))


def completion_summary(tokens: list[dict]) -> dict[str, float]:
    """Totals of one completion's token records: its `tokens`, and the sum and mean of the
    reverse KL and of the advantage over the tokens that have a finite one (mean NaN if none).

    Example:
        >>> completion_summary([{"reverse_kl": 0.2, "advantage": -1.0}, {"reverse_kl": 0.4, "advantage": 0.5}])
        {'tokens': 2, 'reverse_kl_sum': 0.6000000000000001, 'reverse_kl_mean': 0.30000000000000004, 'advantage_sum': -0.5, 'advantage_mean': -0.25}
    """
    summary: dict[str, float] = {"tokens": len(tokens)}
    for kind in ("reverse_kl", "advantage"):
        values = [value for token in tokens if math.isfinite(value := token_value(token, kind))]
        summary[f"{kind}_sum"] = sum(values)
        summary[f"{kind}_mean"] = sum(values) / len(values) if values else math.nan
    return summary


def default_vmax(token_lists: list[list[dict]], color_by: str = "reverse_kl") -> float:
    """The automatic scale maximum over all tokens of `token_lists` (see VMAX_FLOOR)."""
    magnitudes = sorted(abs(value) for tokens in token_lists for token in tokens
                        if math.isfinite(value := token_value(token, color_by)))
    if not magnitudes:
        return 1.0
    percentile = magnitudes[min(len(magnitudes) - 1, int(VMAX_PERCENTILE * len(magnitudes)))]
    return max(VMAX_FLOOR, percentile)


# --- HTML pieces ----------------------------------------------------------------------
#
# Every rule is scoped under the view's own container class (`.P` below, replaced by a
# unique `opdtv` + 8 hex digits per view), so several views on one page never restyle
# each other. Inside it, class names are short (`tv` + a letter) because a 1,000-token
# view repeats them thousands of times.

_CSS = """
.P{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:13px;line-height:1.9;
color:#111;background:#fff;padding:8px 10px;border:1px solid #ddd;border-radius:6px;text-align:left}
.P .tvh{font-family:system-ui,sans-serif;font-weight:600;font-size:14px;margin-bottom:4px}
.P .tvs{font-family:system-ui,sans-serif;font-size:12px;color:#555;margin-bottom:2px}
.P .tvp{white-space:pre-wrap;background:#f1f3f5;color:#374151;padding:2px 6px;border-radius:4px;margin:4px 0}
.P .tvl{display:flex;flex-wrap:wrap;align-items:center;gap:6px;font-family:system-ui,sans-serif;font-size:12px;color:#333;margin:4px 0}
.P .tvg{display:inline-block;width:160px;height:10px;border:1px solid #bbb;border-radius:2px}
.P .tvx{display:inline-block;width:10px;height:10px;border:1px solid #bbb}
.P .tvb{overflow-wrap:anywhere}
.P .tvt{position:relative;padding:2px 0;border-radius:2px;cursor:default;unicode-bidi:isolate}
.P .tvh,.P .tvp,.P .tvc>span{unicode-bidi:isolate}
.P .tvt:hover{outline:1px solid #111}
.P .tvt:hover>.tvc,.P .tvt.tvopen>.tvc{display:block!important}
.P .tvw{opacity:.55}
.P .tvc{position:absolute;left:0;top:1.7em;z-index:1000;width:22em;background:#fff;color:#111;border:1px solid #999;
border-radius:6px;box-shadow:0 3px 10px rgba(0,0,0,.25);padding:6px 8px;font-size:12px;line-height:1.5;white-space:normal;overflow-wrap:anywhere}
.P .tvc b{font-weight:600}
.P .tvk{color:#666;font-style:normal}
.P .tvc>span{display:inline-block;width:9em;margin-right:8px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap;
vertical-align:bottom;background:linear-gradient(90deg,#d5dce6 var(--p),transparent var(--p))}
.P .tvc>span.tvm{font-weight:700}
.P .tvcols{display:grid;grid-template-columns:minmax(0,1fr) minmax(0,1fr);gap:12px}
.P .tvcol{min-width:0}
"""


def _style(prefix: str) -> str:
    return "<style>" + _CSS.replace(".P", f".{prefix}").replace("\n", "") + "</style>"


_MARKERS = {" ": "·", "\t": "→", "\r": "␍", "\n": "↵"}
# Invisible characters that reorder the text around them: marks, embeddings, overrides, isolates.
_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _escape_controls(text: str, in_body: bool) -> str:
    """Control characters (other than the whitespace markers') and bidi controls as `\\uXXXX`."""
    if text.isprintable() and not _BIDI_CONTROLS.intersection(text):
        return text
    parts = []
    for character in text:
        if character in _MARKERS or (character.isprintable() and character not in _BIDI_CONTROLS):
            parts.append(character)
        else:
            code = f"\\u{ord(character):04x}"
            parts.append(f'<span class="tvw">{code}</span>' if in_body else code)
    return "".join(parts)


def marked(text: str) -> str:
    """Plain text (not HTML) with whitespace drawn as the view draws it: "a b" -> "a·b"."""
    for character, marker in _MARKERS.items():
        text = text.replace(character, marker)
    return text or "∅"


def _plain(text: str) -> str:
    """Text outside the tokens (a heading, the prompt): escaped, controls made visible."""
    return _escape_controls(html.escape(text, quote=True), in_body=False)


@functools.lru_cache(maxsize=8192)  # token texts repeat a lot; caching saves ~15% of a render
def _visible(text: str, in_body: bool) -> str:
    """`text` HTML-escaped with whitespace drawn as markers.

    In the token body the markers are dimmed and a newline also breaks the line; in a
    hover card they are plain characters.
    """
    if text == "":
        return '<span class="tvw">∅</span>' if in_body else "∅"
    escaped = html.escape(text, quote=True)
    for character, marker in _MARKERS.items():
        if character in escaped:
            if in_body:
                marker = f'<span class="tvw">{marker}</span>' + ("<br>" if character == "\n" else "")
            escaped = escaped.replace(character, marker)
    return _escape_controls(escaped, in_body)  # after the markers: their HTML has no controls


def _probability(logprob: float) -> str:
    if not math.isfinite(logprob):
        return "—" if math.isnan(logprob) else "0"
    probability = math.exp(logprob)
    return f"{probability:.3f}" if probability >= 1e-3 else f"{probability:.1e}"


def _fixed(value: float, signed: bool = False) -> str:
    return "—" if math.isnan(value) else (f"{value:+.3f}" if signed else f"{value:.3f}")


def _share(probability: float) -> str:
    """A probability as a percentage a reader can say aloud: 99.9%, 0.1%, 3.2e-06%."""
    percent = 100 * probability
    return f"{percent:.1f}%" if percent >= 0.1 else f"{percent:.1e}%"


def teacher_sentence(token: dict) -> str:
    """One plain sentence: the teacher's first choice against the written token.

    Example:
        >>> teacher_sentence({"text": "7", "teacher_logprob": -6.9, "teacher_top": [["6", 0.999]]})
        'the teacher would write 6 (99.9%) instead of 7 (0.1%)'
    """
    top = token.get("teacher_top")
    if not top:
        return ""
    written, (best, best_probability) = str(token.get("text", "")), top[0]
    if str(best) == written:
        return f"the teacher would write {_visible(written, in_body=False)} too ({_share(_number(best_probability))})"
    written_probability = math.exp(_number(token.get("teacher_logprob")))
    return (f"the teacher would write {_visible(str(best), in_body=False)} ({_share(_number(best_probability))}) "
            f"instead of {_visible(written, in_body=False)}"
            + (f" ({_share(written_probability)})" if math.isfinite(written_probability) else ""))


def _alternatives(heading: str, top: list, sampled: str) -> str:
    """Top-k rows: the alternative's text over a bar as long as its probability, then the probability."""
    rows = [f"<b>{heading}</b><br>"]
    for entry in top[:TOP_K]:
        text, probability = str(entry[0]), _number(entry[1])
        percent = round(100 * min(1.0, max(0.0, probability))) if math.isfinite(probability) else 0
        sampled_class = ' class="tvm"' if text == sampled else ""
        rows.append(f'<span{sampled_class} style="--p:{percent}%">{_visible(text, in_body=False)}</span>'
                    f"{_fixed(probability)}<br>")
    return "".join(rows)


def _card(token: dict, position: int) -> str:
    text = str(token.get("text", ""))
    sentence = teacher_sentence(token)
    parts = [
        (f'<b class="tvv">{sentence[0].upper() + sentence[1:]}.</b><br>' if sentence else "") +
        f'<i class="tvk">token {position}</i> <b>{_visible(text, in_body=False)}</b><br>'
        f'<i class="tvk">student p</i> {_probability(_number(token.get("student_logprob")))} '
        f'<i class="tvk">teacher p</i> {_probability(_number(token.get("teacher_logprob")))}<br>'
        f'<i class="tvk">reverse KL</i> {_fixed(token_value(token, "reverse_kl"))} '
        f'<i class="tvk">advantage</i> {_fixed(token_value(token, "advantage"), signed=True)}<br>'
    ]
    if "student_entropy" in token:
        parts.append(f'<i class="tvk">student entropy</i> {_fixed(_number(token["student_entropy"]))}<br>')
    if token.get("teacher_top"):
        parts.append(_alternatives("teacher top-5", token["teacher_top"], text))
    if token.get("student_top"):
        parts.append(_alternatives("student top-5", token["student_top"], text))
    # Hidden inline as well as by the stylesheet, so a host that strips <style> (an
    # untrusted notebook, a mail client) shows the coloured text without the cards.
    return f'<span class="tvc" style="display:none">{"".join(parts)}</span>'


def _token_spans(tokens: list[dict], color_by: str, vmax: float) -> str:
    if not tokens:
        return '<span class="tvk">(no tokens)</span>'
    spans = []
    for position, token in enumerate(tokens):
        background = color_for(token_value(token, color_by), color_by, vmax)
        text_color = ";color:#fff" if _is_dark(background) else ""
        spans.append(f'<span class="tvt" style="background:{background}{text_color}" data-i="{position}">'
                     f'{_visible(str(token.get("text", "")), in_body=True)}'
                     f'{_card(token, position)}</span><wbr>')  # <wbr>: lines may wrap between tokens
    return "".join(spans)


def _summary(tokens: list[dict]) -> str:
    totals = completion_summary(tokens)
    parts = [f"{totals['tokens']} tokens"]
    if math.isfinite(totals["reverse_kl_mean"]):
        parts.append(f"mean reverse KL {totals['reverse_kl_mean']:.3f} nats (sum {totals['reverse_kl_sum']:.2f})")
    if math.isfinite(totals["advantage_mean"]):
        parts.append(f"mean advantage {totals['advantage_mean']:+.3f}")
    return '<div class="tvs">' + " · ".join(parts) + "</div>"


def _legend(color_by: str, vmax: float) -> str:
    scale = " (locked scale)" if vmax == LOCKED_VMAX else " (this view's scale)"
    if color_by == "reverse_kl":
        gradient = f"linear-gradient(to right,{_hex(WHITE)},{_hex(RED)})"
        labels = ("0", f"≥ {vmax:.3g}")
        caption = "reverse KL(student ‖ teacher) at each position, nats"
    else:
        gradient = f"linear-gradient(to right,{_hex(RED)},{_hex(WHITE)},{_hex(BLUE)})"
        labels = (f"≤ −{vmax:.3g}", f"≥ +{vmax:.3g}")
        caption = ("advantage log p<sub>teacher</sub> − log p<sub>student</sub> "
                   "(red: pushed down, white: 0, blue: pushed up)")
    return (f'<div class="tvl"><span>{labels[0]}</span><span class="tvg" style="background:{gradient}"></span>'
            f'<span>{labels[1]}</span><span>{caption}{scale}</span>'
            f'<span><span class="tvx" style="background:{_hex(MISSING)}"></span> no score</span>'
            f'<span class="tvk">hover a token for details</span></div>')


def _check(color_by: str, vmax: float | None) -> None:
    if color_by not in COLOR_KINDS:
        raise ValueError(f"color_by must be one of {', '.join(COLOR_KINDS)} (got {color_by!r})")
    if vmax is not None and not (vmax > 0 and math.isfinite(vmax)):
        raise ValueError(f"vmax must be positive and finite (got {vmax!r})")


def _view(header_title: str | None, prompt: str | None, color_by: str, vmax: float, content: str) -> str:
    prefix = f"opdtv{uuid.uuid4().hex[:8]}"
    parts = [_style(prefix), f'<div class="{prefix}">']
    if header_title:
        parts.append(f'<div class="tvh">{_plain(header_title)}</div>')
    parts.append(_legend(color_by, vmax))
    if prompt:
        parts.append(f'<div class="tvp">{_plain(prompt)}</div>')
    parts += [content, "</div>"]
    return "".join(parts)


def render_tokens(tokens: list[dict], prompt: str | None = None, color_by: str = "reverse_kl",
                  title: str | None = None, vmax: float | None = None) -> str:
    """One completion as coloured tokens with hover cards.

    Args:
        tokens: per-token records as in samples.jsonl ``tokens`` (keys ``text``,
            ``student_logprob``, ``teacher_logprob``, ``reverse_kl``, ``teacher_top``;
            optional ``advantage``, ``student_top``, ``student_entropy``).
        prompt: shown above the completion (plain text, not coloured).
        color_by: ``"reverse_kl"`` or ``"advantage"`` (see the module docstring).
        title: a heading (escaped).
        vmax: the colour scale's maximum; default `default_vmax` of these tokens. Pass
            the same value to several views to make their colours comparable.

    Returns:
        An HTML fragment (a scoped ``<style>`` and a ``<div>``), no scripts; about
        0.7 KB per token with both models' top-5 lists.
    """
    _check(color_by, vmax)
    vmax = vmax if vmax is not None else default_vmax([tokens], color_by)
    body = _summary(tokens) + f'<div class="tvb">{_token_spans(tokens, color_by, vmax)}</div>'
    return _view(title, prompt, color_by, vmax, body)


def render_side_by_side(left_tokens: list[dict], right_tokens: list[dict], left_title: str = "before",
                        right_title: str = "after", prompt: str | None = None,
                        color_by: str = "reverse_kl", title: str | None = None,
                        vmax: float | None = None) -> str:
    """Two completions of one prompt in two columns on one shared colour scale.

    For before/after training (the same prompt at two steps) or the student's answer
    against another model's. The default `vmax` is computed over both columns together.

    Example:
        >>> view = render_side_by_side(early_tokens, late_tokens, "step 10", "step 150",
        ...                            prompt="347+285=")  # doctest: +SKIP
    """
    _check(color_by, vmax)
    vmax = vmax if vmax is not None else default_vmax([left_tokens, right_tokens], color_by)
    columns = "".join(f'<div class="tvcol"><div class="tvh">{_plain(column_title)}</div>'
                      f'{_summary(tokens)}<div class="tvb">{_token_spans(tokens, color_by, vmax)}</div></div>'
                      for column_title, tokens in ((left_title, left_tokens), (right_title, right_tokens)))
    return _view(title, prompt, color_by, vmax, f'<div class="tvcols">{columns}</div>')


def save_html(view: str, path: str | os.PathLike, title: str = "opd-lab token view") -> Path:
    """Write `view` (a fragment from this module) as a standalone HTML document."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    document = ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
                f'<title>{html.escape(title, quote=True)}</title></head>'
                f'<body style="margin:16px;background:#fff">\n{view}\n</body></html>\n')
    path.write_text(document, encoding="utf-8")
    return path
