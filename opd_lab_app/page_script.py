"""The app's one page script: what pure HTML cannot do, run once when the page loads.

* A tap on a token opens its card (phones have no hover; a second tap closes it).
* Hover cards stay inside the viewport: a token view's card (`opd_lab.tokenview`) is
  placed below its token, or above it near the bottom of the window, and shifted left
  near the right edge (the view itself stays script-free, for notebooks and saved pages).
* The red pen: clicking a token of the Playground's view (or of Inspect's) puts its
  position in that tab's "token to correct" box.
* The page's style sheet (`PAGE_CSS`): on a phone the runs table keeps the columns
  a glance needs (run, state, step, accuracy) and hides the others, which the run's
  summary under the table repeats; token views and their legends, side by side on a
  wide screen, are stacked, each the full width.
* The open tab and the selected run are kept in the URL (`?tab=runs&run=...`), so a
  reload, or the page reloading itself after an app restart, comes back to them
  (this script opens the tab; `opd_lab_app.main` selects the run on load).
"""

import json

NARROW_PX = 640  # phones, and narrow windows
# Runs table columns (opd_lab_app.runs_tab.TABLE_HEADERS, 0-based) hidden on narrow screens: method, task, ETA, message, owner.
HIDDEN_WHEN_NARROW = (1, 2, 5, 7, 8)
# The widths of the columns left (run, state, step, accuracy), in % of the table.
NARROW_WIDTHS = {0: 31, 3: 23, 4: 26, 6: 20}


def _narrow_table_css(table_id: str) -> str:
    hidden = ", ".join(f"#{table_id} [data-col='{col}'], #{table_id} th:nth-child({col + 1})"
                       for col in HIDDEN_WHEN_NARROW)
    widths = "\n".join(f"  #{table_id} [data-col='{col}'], #{table_id} th:nth-child({col + 1}) "
                        f"{{ width: {share}% !important; min-width: 0 !important; max-width: none !important; "
                        f"flex: 0 0 {share}% !important; }}" for col, share in NARROW_WIDTHS.items())
    return (f"@media (max-width: {NARROW_PX}px) {{\n"
            f"  {hidden} {{ display: none !important; }}\n"
            f"  #{table_id} table, #{table_id} tr, #{table_id} .virtual-body, #{table_id} .virtual-row "
            f"{{ width: 100% !important; min-width: 0 !important; }}\n"
            f"  #{table_id} table {{ table-layout: fixed; }}\n"
            f"  #{table_id} th, #{table_id} [role=gridcell] {{ font-size: 12px; }}\n"
            f"  #{table_id} th > *, #{table_id} .cell-wrap {{ padding-left: 3px !important; padding-right: 3px !important; }}\n"
            f"{widths}\n"
            f"  #{table_id} [data-col='0'] span {{ word-break: break-all; }}\n}}")


# Side by side on a wide screen, one under the other (each the full width) on a narrow one.
STACKED_WHEN_NARROW = ("token-view", "inspect-legend", "playground-view", "playground-legend", "playground-model",
                       "playground-color")

# Compare's table on a phone: the run id (the label says the run) goes, and the table scrolls
# sideways instead of squeezing every cost column out of sight behind the run names.
COMPARE_NARROW_CSS = (f"@media (max-width: {NARROW_PX}px) {{\n"
                      "  #compare-table [data-col='1'], #compare-table th:nth-child(2) { display: none !important; }\n"
                      "  #compare-table .table-wrap, #compare-table .table-container { overflow-x: auto !important; }\n"
                      "  #compare-table table { table-layout: auto !important; min-width: 720px; }\n"
                      "  #compare-table [data-col='0'], #compare-table th:nth-child(1) { max-width: 30vw; }\n"
                      "  #compare-table th, #compare-table [role=gridcell] { font-size: 12px; }\n}")

PAGE_CSS = (_narrow_table_css("runs-table") + "\n" + COMPARE_NARROW_CSS
            + f"\n@media (max-width: {NARROW_PX}px) {{ "
            + ", ".join(f"#{element}" for element in STACKED_WHEN_NARROW)
            + " { min-width: 100% !important; } }")

PAGE_SCRIPT = r"""
() => {
  if (window.opdLabScript) return;
  window.opdLabScript = true;
  const style = document.createElement("style");
  style.id = "opd-lab-style";
  style.textContent = PAGE_CSS;
  document.head.appendChild(style);
  const margin = 8;
  const wanted = new URL(window.location.href).searchParams.get("tab");
  // Tab clicks are written to the URL only once the tab it named is open again
  // (Gradio reports its first tab as selected while the page builds).
  const ready = () => { window.opdLabReady = true; };
  if (wanted) {
    let tries = 0;
    const open = () => {
      const button = document.querySelector(`[role=tab][data-tab-id="${CSS.escape(wanted)}"]`);
      if (button) { button.click(); setTimeout(ready, 300); }
      else if (++tries < 50) setTimeout(open, 100); else ready();
    };
    open();
  } else ready();
  const place = (token) => {
    const card = token ? token.querySelector(":scope > .tvc") : null;
    if (!card) return;
    card.style.position = "fixed";
    card.style.maxWidth = (window.innerWidth - 2 * margin) + "px";
    const box = token.getBoundingClientRect();
    const size = card.getBoundingClientRect();
    let top = box.bottom + 4;
    if (top + size.height > window.innerHeight - margin) top = box.top - size.height - 4;
    top = Math.max(margin, Math.min(top, window.innerHeight - size.height - margin));
    const left = Math.max(margin, Math.min(box.left, window.innerWidth - size.width - margin));
    card.style.top = top + "px";
    card.style.left = left + "px";
  };
  document.addEventListener("mouseover", (event) => place(event.target.closest ? event.target.closest(".tvt") : null));
  // A tap (phones have no hover) opens the token's card, and closes the one open before.
  document.addEventListener("click", (event) => {
    const token = event.target.closest ? event.target.closest(".tvt") : null;
    document.querySelectorAll(".tvt.tvopen").forEach((open) => { if (open !== token) open.classList.remove("tvopen"); });
    if (!token) return;
    token.classList.toggle("tvopen");
    place(token);
  });
  document.addEventListener("click", (event) => {
    const token = event.target.closest ? event.target.closest(".tvt[data-i]") : null;
    const view = token ? token.closest("#playground-view, #token-view") : null;
    if (!view) return;
    const box = document.querySelector(view.id === "token-view" ? "#inspect-pen-position input" : "#pen-position input");
    if (!token || !box) return;
    const setter = Object.getOwnPropertyDescriptor(HTMLInputElement.prototype, "value").set;
    setter.call(box, token.dataset.i);
    box.dispatchEvent(new Event("input", {bubbles: true}));
    box.dispatchEvent(new Event("change", {bubbles: true}));
    box.dispatchEvent(new KeyboardEvent("keydown", {key: "Enter", bubbles: true}));
    box.dispatchEvent(new Event("blur", {bubbles: true}));
  });
}
""".replace("PAGE_CSS", json.dumps(PAGE_CSS))


def remember(key: str, value: str | None = None) -> str:
    """A script for an event: store `value` (default: the event's first input) in the URL's `key` parameter."""
    argument, chosen = ("", repr(value)) if value is not None else ("value", "value")
    return (f"({argument}) => {{ if (!window.opdLabReady) return {argument or 'null'}; "
            f"const url = new URL(window.location.href); "
            f"if ({chosen}) url.searchParams.set('{key}', {chosen}); else url.searchParams.delete('{key}'); "
            f"window.history.replaceState(null, '', url); return {argument or 'null'}; }}")
