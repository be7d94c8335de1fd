"""opd-lab's OPD step against Hugging Face TRL's GKDTrainer, alternating in one process.

Both sides train the same student against the same teacher, on-policy, with the exact
reverse KL over the vocabulary: opd-lab `method=opd, estimator=full` and GKD with
`lmbda=1` (every step samples from the student), `beta=1` (reverse KL), temperature 1.
Same batch, `max_new_tokens`, learning rate, clipping, fp32, thread count.
TRL gets its best CPU settings: gradient checkpointing OFF (TRL's default turns it on,
which also makes it generate without a KV cache, about 3x slower on the lab), the
Trainer's fused AdamW, no logging or saving to disk.

Each TRL step is a real `trainer.train()` loop iteration: training runs in a thread that a
callback holds at the end of every step until the main thread lets it take the next one,
so the timed span covers batch fetch and collation, generation, forward/backward,
clipping and the optimizer. The script asserts that every TRL step sampled once.

The same run measures the machine's dense fp32 matmul FLOP/s (2048x2048, this thread
count) and reports each opd-lab phase (`perf/time_*`) against it (MFU), with FLOPs
counted as in `opd_lab.flops` (2N per token sampled or scored, 6N per trained token).

Needs the benchmark extra: `pip install -e ".[bench]"`. Run (after `opd-lab lab build`):

    OMP_NUM_THREADS=1 python -m bench.vs_trl --pair lab      # or smollm2 (LoRA), smollm2-full

The last line is the ratio: TRL's median seconds per step / opd-lab's.

Before it, two **ceilings**: how fast an opd-lab step could possibly be on this machine,
doing the same passes (fp32, same batch and lengths). TRL's median over each is the
largest ratio any engine could reach against TRL here.

- *peak*: every FLOP at the measured 2048x2048 matmul peak, and sampling also no faster
  than reading the student's weights once per decode pass at the measured copy
  bandwidth (a decode pass at batch B does 2N*B FLOPs but streams all 4N bytes).
- *linear layers*: only the models' `nn.Linear` matmuls, timed here at the very shapes
  of the measured step (hooks record each forward's rows: the prefill, every decode
  pass with its live rows, the teacher's scoring, the student's training forward),
  counting a trained pass 3 times (forward, input gradient, weight gradient; 2 for a
  LoRA student's frozen base). Attention, norms, softmax, the loss and the optimizer
  are left out, so a real step is slower still.

`--memory` measures instead the peak resident memory (RSS) of one step of each side.
`ru_maxrss` is process-wide and never goes down, and here both sides would share one
process, so each side runs in a fresh subprocess that loads only its own pair. After
the models are loaded and one warm-up step is done, the process resets its peak RSS
(Linux `/proc/self/clear_refs`, value 5), takes one step and reads the peak back
(`VmHWM` in `/proc/self/status`). Reported per side: the RSS after loading (models,
libraries), the peak during the measured step, and their difference (what the step
itself needs on top of the loaded models; memory the allocator kept from the warm-up
step counts in the peak, as it would in training).

    OMP_NUM_THREADS=1 python -m bench.vs_trl --pair smollm2 --memory
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import torch

from opd_lab.config import RunConfig
from opd_lab.flops import count_parameters
from opd_lab.models import load_pair
from opd_lab.prompt_source import PromptSource
from opd_lab.tasks import get_task
from opd_lab.run_folder import PHASES
from opd_lab.trainer import Trainer

# One template that renders the bare prompt, for tokenizers without one (the lab's):
# opd-lab feeds such models the prompt as it is, and GKD's collator needs a template.
BARE_TEMPLATE = "{% for message in messages %}{{ message['content'] }}{% endfor %}"


@dataclass
class Pair:
    teacher: str
    student: str
    batch_size: int
    max_new_tokens: int
    finetune: str = "full"


PAIRS = {
    "lab": Pair("lab", "lab", batch_size=32, max_new_tokens=0),
    "smollm2": Pair("smollm2", "smollm2", batch_size=4, max_new_tokens=64, finetune="lora"),
    "smollm2-full": Pair("smollm2", "smollm2", batch_size=4, max_new_tokens=64, finetune="full"),
}


@dataclass
class Timings:
    seconds: list[float] = field(default_factory=list)
    completion_tokens: list[int] = field(default_factory=list)
    phases: list[dict] = field(default_factory=list)
    flops: list[dict] = field(default_factory=list)


def matmul_flops_per_s(size: int = 2048, repeats: int = 5) -> float:
    """The best of `repeats` dense fp32 `size x size` matmuls, in FLOP/s."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best


def copy_bytes_per_s(megabytes: int = 256, repeats: int = 5) -> float:
    """The best of `repeats` copies of a `megabytes` fp32 tensor, in bytes moved (read + write) per second."""
    source = torch.randn(megabytes * 2**20 // 4)
    target = torch.empty_like(source)
    target.copy_(source)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        target.copy_(source)
        best = min(best, time.perf_counter() - started)
    return 2 * source.numel() * 4 / best


class LinearFloor:
    """The time of a model's `nn.Linear` matmuls alone, at the shapes its forward passes used."""

    def __init__(self, model: torch.nn.Module, repeats: int = 3):
        self.shapes = [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, torch.nn.Linear)]
        self.repeats = repeats
        self._seconds: dict[int, float] = {}

    def seconds(self, rows: int) -> float:
        """One pass of `rows` rows through every linear layer (best of `repeats`; memoized)."""
        if rows not in self._seconds:
            total = 0.0
            for in_features, out_features in self.shapes:
                x, weight = torch.randn(rows, in_features), torch.randn(out_features, in_features)
                x @ weight.T
                best = float("inf")
                for _ in range(self.repeats):
                    started = time.perf_counter()
                    x @ weight.T
                    best = min(best, time.perf_counter() - started)
                total += best
            self._seconds[rows] = total
        return self._seconds[rows]


def record_rows(model: torch.nn.Module, into: list) -> None:
    """Append `(rows, with_grad)` for each forward of `model`: rows = batch x positions."""
    def hook(_module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None:
            into.append((ids.numel(), torch.is_grad_enabled()))
    model.register_forward_pre_hook(hook, with_kwargs=True)


class StepGate:
    """A `TrainerCallback` that holds `trainer.train()` (in its thread) after every step."""

    def __init__(self):
        from transformers import TrainerCallback

        gate = self

        class Callback(TrainerCallback):
            def on_train_begin(self, *args, **kwargs):
                gate.go.acquire()

            def on_step_end(self, *args, **kwargs):
                gate.done.release()
                gate.go.acquire()

        self.go, self.done = threading.Semaphore(0), threading.Semaphore(0)
        self.callback = Callback()

    def step(self) -> float:
        started = time.perf_counter()
        self.go.release()
        self.done.acquire()
        return time.perf_counter() - started


def build_gkd(pair: Pair, config: RunConfig, problems, max_new_tokens: int, output_dir: str, threads: int):
    """A GKDTrainer on its own copy of the pair, its `train()` running in a held thread."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    teacher, student, tokenizer = load_pair(pair.teacher, pair.student, task=config.task)
    tokenizer = copy.deepcopy(tokenizer)
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = BARE_TEMPLATE
    for model in (teacher, student):  # a GGUF-loaded model is already fp32 but marked as quantized
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer, model.is_quantized = None, False
    rows = [{"messages": [{"role": "user", "content": p.prompt}, {"role": "assistant", "content": p.answer}]}
            for p in problems]
    args = GKDConfig(
        output_dir=output_dir, lmbda=1.0, beta=1.0, temperature=1.0, max_new_tokens=max_new_tokens,
        per_device_train_batch_size=config.batch_size, gradient_accumulation_steps=1,
        gradient_checkpointing=False, bf16=False, fp16=False, use_cpu=True,
        learning_rate=config.learning_rate, weight_decay=0.0, max_grad_norm=config.max_grad_norm,
        lr_scheduler_type="constant", warmup_steps=0, max_steps=len(problems) // config.batch_size,
        logging_steps=1, save_strategy="no", report_to="none", dataloader_num_workers=0,
        disable_tqdm=True, seed=config.seed)
    peft_config = (LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, target_modules="all-linear",
                              task_type="CAUSAL_LM") if pair.finetune == "lora" else None)
    trainer = GKDTrainer(model=student, teacher_model=teacher, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=tokenizer, peft_config=peft_config)
    gate = StepGate()
    trainer.add_callback(gate.callback)
    sampled = {"calls": 0, "completion_tokens": 0, "tokens": 0, "seconds": 0.0}
    original = trainer.generate_on_policy_outputs

    def counted(model, inputs, generation_config):
        started = time.perf_counter()
        input_ids, attention_mask, labels = original(model, inputs, generation_config)
        sampled["seconds"] += time.perf_counter() - started
        sampled["calls"] += 1
        sampled["completion_tokens"] += int((labels != -100).sum())
        sampled["tokens"] += int(attention_mask.sum())
        return input_ids, attention_mask, labels

    trainer.generate_on_policy_outputs = counted

    def run():
        torch.set_num_threads(threads)
        trainer.train()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return trainer, gate, sampled, count_parameters(student), count_parameters(teacher)


def summary(name: str, timings: Timings, batch_size: int) -> dict:
    median = statistics.median(timings.seconds)
    tokens = statistics.median(timings.completion_tokens)
    return {"name": name, "median": median, "min": min(timings.seconds), "sequences_per_s": batch_size / median,
            "tokens_per_s": tokens / median, "tokens_per_step": tokens}


def _proc_status_kib(field_name: str) -> int:
    """A `/proc/self/status` field in KiB (`VmRSS`, `VmHWM`)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field_name} (peak memory needs Linux)")


def _reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def memory_side(side: str, pair: Pair, config: RunConfig, threads: int) -> dict:
    """Peak RSS of one training step of one side (`opd-lab` or `TRL GKD`), in this process."""
    work = Path(tempfile.mkdtemp(prefix="opd-vs-trl-memory-"))
    max_new_tokens = config.resolved_max_new_tokens(get_task(config.task).max_new_tokens)
    if side == "opd-lab":
        trainer = Trainer(config, work / "opd")
        step = trainer.step
    else:
        problems = PromptSource(get_task(config.task), config.prompt_pool, config.seed + 7).next_batch(
            config.batch_size * 4)
        _, gate, _, _, _ = build_gkd(pair, config, problems, max_new_tokens, str(work / "gkd"), threads)
        step = gate.step
    loaded_kib = _proc_status_kib("VmRSS")
    step()  # warm-up
    _reset_peak_rss()
    step()
    peak_kib = _proc_status_kib("VmHWM")
    return {"side": side, "loaded_mib": loaded_kib / 1024, "peak_mib": peak_kib / 1024,
            "step_mib": (peak_kib - loaded_kib) / 1024}


def measure_memory(args) -> None:
    """Run `memory_side` for each side in its own fresh subprocess and print the table."""
    import json
    import subprocess
    import sys

    rows = []
    for side in ("opd-lab", "TRL GKD"):
        command = [sys.executable, "-m", "bench.vs_trl", "--pair", args.pair, "--threads", str(args.threads),
                   "--batch-size", str(args.batch_size), "--memory-side", side]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(output.strip().splitlines()[-1]))
    print(f"peak resident memory of one {args.pair} OPD step (each side in its own process; MiB):")
    print(f"{'':10s} {'after loading':>14s} {'step peak':>10s} {'step - loaded':>14s}")
    for row in rows:
        print(f"{row['side']:10s} {row['loaded_mib']:14.0f} {row['peak_mib']:10.0f} {row['step_mib']:14.0f}")
    print(f"peak ratio TRL / opd-lab: {rows[1]['peak_mib'] / rows[0]['peak_mib']:.2f}x; "
          f"step growth TRL / opd-lab: {rows[1]['step_mib'] / max(rows[0]['step_mib'], 1e-9):.2f}x")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pair", choices=sorted(PAIRS), default="lab")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=0, help="0: the pair's default")
    parser.add_argument("--memory", action="store_true", help="peak resident memory of a step instead of speed")
    parser.add_argument("--memory-side", choices=["opd-lab", "TRL GKD"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory:
        measure_memory(args)
        return
    import transformers
    import trl

    pair = PAIRS[args.pair]
    batch_size = args.batch_size or pair.batch_size
    # sample_every/eval_every beyond the run: the timed steps are plain training steps.
    config = RunConfig(method="opd", estimator="full", divergence="reverse_kl", teacher=pair.teacher,
                       student=pair.student, finetune=pair.finetune, batch_size=batch_size,
                       max_new_tokens=pair.max_new_tokens, learning_rate=3e-5, max_grad_norm=1.0,
                       steps=10_000, sample_every=10_000, eval_every=10_000, temperature=1.0)
    if args.memory_side:
        import json

        print(json.dumps(memory_side(args.memory_side, pair, config, args.threads)))
        return
    work = Path(tempfile.mkdtemp(prefix="opd-vs-trl-"))
    opd = Trainer(config, work / "opd")
    steps = args.warmup + args.rounds
    problems = PromptSource(get_task(config.task), config.prompt_pool, config.seed + 7).next_batch(
        batch_size * (steps + 2))
    gkd, gate, sampled, gkd_student_params, gkd_teacher_params = build_gkd(
        pair, config, problems, opd.max_new_tokens, str(work / "gkd"), args.threads)

    peak_before = matmul_flops_per_s()
    bandwidth = copy_bytes_per_s()
    # The student's forward passes without gradients are its sampling's prefill and decode passes.
    student_rows, teacher_rows = [], []
    record_rows(opd.student, student_rows)
    record_rows(opd.teacher, teacher_rows)
    passes_per_step, floors = [], []
    student_floor, teacher_floor = LinearFloor(opd.student), LinearFloor(opd.teacher)
    trained_pass = 2 if pair.finetune == "lora" else 3
    results = {"opd-lab": Timings(), "TRL GKD": Timings()}
    for round_index in range(steps):
        keep = round_index >= args.warmup
        flops_before, tokens_seen_before = opd.flops.as_metrics(), opd.tokens_seen
        student_rows.clear()
        teacher_rows.clear()
        started = time.perf_counter()
        step = opd.step()
        elapsed = time.perf_counter() - started
        if keep:
            passes_per_step.append(sum(not grad for _, grad in student_rows))
            floors.append((student_rows[:], teacher_rows[:]))
            timings = results["opd-lab"]
            timings.seconds.append(elapsed)
            timings.completion_tokens.append(opd.tokens_seen - tokens_seen_before)
            timings.flops.append({key: step.metrics[key] - flops_before[key] for key in flops_before})
            timings.phases.append({phase: step.metrics[f"perf/time_{phase}"] for phase in PHASES})
        calls, tokens_before, real_before = sampled["calls"], sampled["completion_tokens"], sampled["tokens"]
        sampling_before = sampled["seconds"]
        elapsed = gate.step()
        if sampled["calls"] != calls + 1:
            raise AssertionError(f"a GKD step made {sampled['calls'] - calls} on-policy generations, not 1")
        if keep:
            timings = results["TRL GKD"]
            timings.seconds.append(elapsed)
            timings.completion_tokens.append(sampled["completion_tokens"] - tokens_before)
            real = sampled["tokens"] - real_before
            timings.phases.append({"sampling": sampled["seconds"] - sampling_before})
            timings.flops.append({"perf/flops_sampling": 2 * gkd_student_params * real})
            timings.flops[-1]["perf/flops"] = (2 * gkd_student_params * real + 2 * gkd_teacher_params * real
                                               + 6 * gkd_student_params * real)
    peak = max(peak_before, matmul_flops_per_s())

    print(f"machine: {os.cpu_count()} CPUs visible, torch threads {torch.get_num_threads()}, "
          f"matmul peak {peak / 1e9:.1f} GFLOP/s (fp32 2048x2048, before {peak_before / 1e9:.1f})")
    print(f"versions: torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}")
    print(f"pair {args.pair}: teacher {pair.teacher} ({opd.teacher_params:,} params), student {pair.student} "
          f"({opd.student_params:,} params, {pair.finetune} fine-tuning), batch {batch_size}, "
          f"max_new_tokens {opd.max_new_tokens}, {args.warmup} warm-up + {args.rounds} rounds, alternating")
    print("settings: opd-lab method=opd estimator=full reverse_kl, fused AdamW lr 3e-5, clip 1.0, fp32; "
          "TRL GKDTrainer lmbda=1 beta=1 T=1, gradient_checkpointing=False, fused AdamW, clip 1.0, fp32")
    print(f"{'':10s} {'s/step median':>13s} {'min':>7s} {'seq/s':>7s} {'tok/s':>8s} {'tok/step':>8s} {'MFU':>6s}")
    rows = {}
    for name, timings in results.items():
        row = rows[name] = summary(name, timings, batch_size)
        mfu = statistics.median(f["perf/flops"] for f in timings.flops) / row["median"] / peak
        print(f"{name:10s} {row['median']:13.4f} {row['min']:7.4f} {row['sequences_per_s']:7.1f} "
              f"{row['tokens_per_s']:8.0f} {row['tokens_per_step']:8.0f} {mfu:6.1%}")
    timings = results["opd-lab"]
    phase_flops = {"sampling": "perf/flops_sampling", "teacher": "perf/flops_teacher",
                   "student": "perf/flops_training", "optimizer": None}
    print("opd-lab phases (median s/step, share of the step, MFU):")
    for phase in PHASES:
        seconds = statistics.median(row[phase] for row in timings.phases)
        key = phase_flops[phase]
        mfu = (f"{statistics.median(f[key] for f in timings.flops) / seconds / peak:.1%}"
               if key and seconds > 0 else "-")
        print(f"  {phase:10s} {seconds:.4f} s  {seconds / rows['opd-lab']['median']:6.1%}  MFU {mfu}")
    trl_sampling = statistics.median(row["sampling"] for row in results["TRL GKD"].phases)
    trl_sampling_flops = statistics.median(f["perf/flops_sampling"] for f in results["TRL GKD"].flops)
    print(f"TRL GKD sampling (generate_on_policy_outputs): {trl_sampling:.4f} s  "
          f"{trl_sampling / rows['TRL GKD']['median']:6.1%}  MFU {trl_sampling_flops / trl_sampling / peak:.1%}")
    flops = {key: statistics.median(f[key] for f in timings.flops)
             for key in ("perf/flops_sampling", "perf/flops_teacher", "perf/flops_training")}
    weight_bytes = sum(p.numel() * p.element_size() for p in opd.student.parameters())
    passes = statistics.median(passes_per_step)
    sampling_bound = max(flops["perf/flops_sampling"] / peak, passes * weight_bytes / bandwidth)
    bound = sampling_bound + (flops["perf/flops_teacher"] + flops["perf/flops_training"]) / peak
    print(f"ceiling (peak): copy bandwidth {bandwidth / 1e9:.1f} GB/s; the fastest possible opd-lab step here is "
          f"{bound:.4f} s (sampling >= {sampling_bound:.4f} s: {passes:.0f} passes x "
          f"{weight_bytes / 2**20:.1f} MiB of weights, or its FLOPs at peak; teacher and student FLOPs at peak); "
          f"largest possible ratio TRL/opd-lab: {rows['TRL GKD']['median'] / bound:.2f}x")
    floor_parts = []
    for student_passes, teacher_passes in floors:
        sampling = sum(student_floor.seconds(n) for n, grad in student_passes if not grad)
        training = trained_pass * sum(student_floor.seconds(n) for n, grad in student_passes if grad)
        teacher = sum(teacher_floor.seconds(n) for n, _ in teacher_passes)
        floor_parts.append((sampling, teacher, training))
    sampling, teacher, training = (statistics.median(part[i] for part in floor_parts) for i in range(3))
    floor = sampling + teacher + training
    print(f"ceiling (linear layers at the step's shapes): {floor:.4f} s per step (sampling {sampling:.4f}, "
          f"teacher {teacher:.4f}, student {training:.4f}); largest possible ratio TRL/opd-lab: "
          f"{rows['TRL GKD']['median'] / floor:.2f}x")
    ratios = [g / o for g, o in zip(results["TRL GKD"].seconds, results["opd-lab"].seconds)]
    print(f"paired per-round ratio TRL/opd-lab: median {statistics.median(ratios):.2f} "
          f"[{min(ratios):.2f}-{max(ratios):.2f}]")
    print(f"ratio (TRL median s/step / opd-lab median s/step): "
          f"{rows['TRL GKD']['median'] / rows['opd-lab']['median']:.2f}x")


if __name__ == "__main__":
    main()
