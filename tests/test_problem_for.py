"""`Task.problem_for`: a prompt's true answer, for tools that judge answers to free prompts (the red pen)."""

from __future__ import annotations

import json

from opd_lab.tasks import get_task


def test_generated_tasks_know_the_answer_of_any_well_formed_prompt():
    addition = get_task("addition")
    assert addition.problem_for("347+285=").answer == "632"
    assert addition.problem_for("7+5=").answer == "12"  # fewer digits than the task's: still a sum
    for prompt in ("347+285", "1234+5=", "a+b=", "3+4+5=", "hello", "", "٣+٤="):
        assert addition.problem_for(prompt) is None, prompt
    careless = get_task("addition-careless")  # its references slip, its verifier does not
    assert careless.problem_for("950+970=").answer == "1920"
    sorting = get_task("sorting")
    problem = sorting.eval_problems(1)[0]
    assert sorting.problem_for(problem.prompt).answer == problem.answer
    assert sorting.problem_for("sort:=") is None and sorting.problem_for(problem.prompt[:-1]) is None


def test_listed_tasks_answer_only_their_own_prompts(tmp_path):
    company = get_task("company-qa")
    question = company.eval_split[0]
    assert company.problem_for(question.prompt) == question
    assert company.problem_for("Who founded the moon?") is None
    path = tmp_path / "qa.jsonl"
    rows = [{"prompt": f"q{i}", "answer": str(i)} for i in range(20)] + [{"prompt": "open", "answer": None}]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    task = get_task(str(path))
    assert task.problem_for("q7").answer == "7"
    assert task.problem_for("open") is None  # no answer and no checks: nothing to verify against
