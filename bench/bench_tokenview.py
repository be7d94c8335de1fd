"""How long the token view takes to render a long completion, against a trivial baseline.

The baseline is the least any HTML view must do: `html.escape` every token and join
them. Both run in the same process on the same synthetic 1,000-token record list, so
the ratio is comparable across machines even when the milliseconds are not.

Run from the repository root (or run the file directly once `pip install -e .` is done):
    python3 -m bench.bench_tokenview [--tokens 1000] [--repeats 50]
"""

from __future__ import annotations

import argparse
import html
import random
import statistics
import time

from opd_lab.tokenview import render_side_by_side, render_tokens


def synthetic_tokens(count: int, seed: int = 0) -> list[dict]:
    """`count` records shaped like samples.jsonl tokens, with top-5 lists for both models."""
    rng = random.Random(seed)
    words = ["7", "+", " the", "\n", "5", "=", "\t", "12", "<tag>", " carry"]
    tokens = []
    for position in range(count):
        text = words[position % len(words)]
        student_logprob, teacher_logprob = -rng.expovariate(2.0), -rng.expovariate(1.0)
        tokens.append({"text": text, "student_logprob": student_logprob, "teacher_logprob": teacher_logprob,
                       "advantage": teacher_logprob - student_logprob, "reverse_kl": rng.expovariate(3.0),
                       "student_entropy": rng.random(),
                       "teacher_top": [[rng.choice(words), rng.random() / 5] for _ in range(5)],
                       "student_top": [[rng.choice(words), rng.random() / 5] for _ in range(5)]})
    return tokens


def median_seconds(function, repeats: int) -> float:
    function()  # warm up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    tokens = synthetic_tokens(args.tokens)

    baseline = median_seconds(lambda: "".join(html.escape(token["text"], quote=True) for token in tokens),
                              args.repeats)
    cases = {
        "render_tokens": lambda: render_tokens(tokens, prompt="347+285=", title="bench"),
        "render_tokens advantage": lambda: render_tokens(tokens, color_by="advantage"),
        "render_side_by_side": lambda: render_side_by_side(tokens, tokens, "left", "right"),
    }
    print(f"escape-join baseline {args.tokens} tokens: {baseline * 1e3:.3f} ms")
    for name, case in cases.items():
        seconds = median_seconds(case, args.repeats)
        size_kb = len(case().encode("utf-8")) / 1024
        print(f"{name} {args.tokens} tokens: {seconds * 1e3:.1f} ms "
              f"(x{seconds / baseline:.0f} vs escape-join baseline), {size_kb:.0f} KiB of HTML")


if __name__ == "__main__":
    main()
