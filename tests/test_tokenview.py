"""The token view: colour scale, escaping of hostile token text, whitespace markers, files."""

from __future__ import annotations

import math
import re

import pytest
from synthetic_runs import HOSTILE_TEXTS, make_tokens

from opd_lab.tokenview import (BLUE, MISSING, RED, WHITE, _hex, color_for, default_vmax, render_side_by_side,
                               render_tokens, save_html)


def test_reverse_kl_scale_ends_and_clipping():
    assert color_for(0.0, "reverse_kl", vmax=1.0) == _hex(WHITE)
    assert color_for(-1e-7, "reverse_kl", vmax=1.0) == _hex(WHITE)  # rounding noise below 0
    assert color_for(1.0, "reverse_kl", vmax=1.0) == _hex(RED)
    assert color_for(1e9, "reverse_kl", vmax=1.0) == _hex(RED)
    assert color_for(math.inf, "reverse_kl", vmax=1.0) == _hex(RED)
    middle = color_for(0.5, "reverse_kl", vmax=1.0)
    assert middle not in (_hex(WHITE), _hex(RED))
    assert color_for(0.25, "reverse_kl", vmax=0.5) == middle  # the scale is relative to vmax


def test_advantage_scale_is_diverging():
    assert color_for(0.0, "advantage", vmax=2.0) == _hex(WHITE)
    assert color_for(-2.0, "advantage", vmax=2.0) == _hex(RED)
    assert color_for(-math.inf, "advantage", vmax=2.0) == _hex(RED)
    assert color_for(5.0, "advantage", vmax=2.0) == _hex(BLUE)
    assert color_for(math.inf, "advantage", vmax=2.0) == _hex(BLUE)


def test_missing_values_are_grey_and_bad_arguments_raise():
    assert color_for(math.nan, "reverse_kl", vmax=1.0) == _hex(MISSING)
    assert color_for(None, "advantage", vmax=1.0) == _hex(MISSING)
    with pytest.raises(ValueError, match="kind"):
        color_for(0.1, "forward_kl", vmax=1.0)
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="vmax"):
            color_for(0.1, "reverse_kl", vmax=bad)


def test_default_vmax_is_a_floored_percentile():
    tokens = [{"reverse_kl": value} for value in [0.01] * 99 + [100.0]]
    assert default_vmax([tokens]) == pytest.approx(0.1)  # the floor, not the outlier
    tokens = [{"reverse_kl": value / 10} for value in range(1, 101)]
    assert default_vmax([tokens]) == pytest.approx(9.6)
    assert default_vmax([[{"reverse_kl": math.nan}]]) == 1.0


def test_hostile_token_text_is_escaped():
    tokens = make_tokens(8, texts=list(HOSTILE_TEXTS))
    tokens[0]["teacher_top"][1][0] = "<img src=y onerror=alert(2)>"
    view = render_tokens(tokens, prompt="<script>prompt()</script>", title="<b>title</b>")
    lowered = view.lower()
    assert "<script" not in lowered
    assert "<img" not in lowered
    assert "<b>title" not in lowered
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in view
    assert "&quot;&gt;&lt;img" in view
    assert "&lt;img" in view and "onerror=alert(2)" in view  # shown as text in the hover card
    assert "a&amp;b" in view and "&#x27;quote&#x27;" in view


def test_whitespace_markers_and_line_breaks():
    view = render_tokens(make_tokens(8))  # texts include " the", "\n" and "\t"
    assert "·</span>the" in view
    assert "↵</span><br>" in view
    assert "→</span>" in view
    assert "\t" not in view


def test_every_token_gets_a_coloured_span_and_a_hidden_card():
    tokens = make_tokens(30, seed=3)
    view = render_tokens(tokens, color_by="advantage", vmax=2.0)
    prefix = re.search(r'class="(opdtv[0-9a-f]{8})"', view).group(1)
    spans = re.findall(r'<span class="tvt" style="background:(#[0-9a-f]{6})', view)
    assert spans == [color_for(token["advantage"], "advantage", 2.0) for token in tokens]
    assert view.count('<span class="tvc" style="display:none">') == 30
    assert f".{prefix} .tvt:hover>.tvc,.{prefix} .tvt.tvopen>.tvc{{display:block!important}}" in view  # hover, or a tap (the page script)
    assert "teacher top-5" in view and "student top-5" in view
    assert "≤ −2" in view and "≥ +2" in view  # the legend's range


def test_views_have_distinct_prefixes_and_no_external_resources():
    first, second = render_tokens(make_tokens(3)), render_tokens(make_tokens(3))
    prefixes = {re.search(r'class="(opdtv[0-9a-f]{8})"', view).group(1) for view in (first, second)}
    assert len(prefixes) == 2
    for view in (first, second):
        assert "http" not in view and "<script" not in view and "<link" not in view


def test_missing_teacher_fields_and_empty_tokens_do_not_crash():
    view = render_tokens([{"text": "", "student_logprob": -0.5}, {"text": "x", "reverse_kl": math.nan}])
    assert _hex(MISSING) in view and "∅" in view
    assert "(no tokens)" in render_tokens([])


def test_side_by_side_shares_one_scale(tmp_path):
    low = [{"text": "a", "reverse_kl": 0.05}]
    high = [{"text": "b", "reverse_kl": 2.0}]
    view = render_side_by_side(low, high, "step 10", "<step 20>", prompt="1+1=")
    assert "≥ 2" in view  # one legend, ranged over both columns
    assert "&lt;step 20&gt;" in view and "<script" not in view
    assert color_for(0.05, "reverse_kl", 2.0) in view and color_for(2.0, "reverse_kl", 2.0) in view
    path = save_html(view, tmp_path / "views" / "pair.html")
    document = path.read_text(encoding="utf-8")
    assert document.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in document
    assert view in document
