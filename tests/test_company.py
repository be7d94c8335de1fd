"""The fictional company's corpus: deterministic, every held-out fact learnable from the training data."""

import json

import pytest

from opd_lab.company import MAX_FACTS, answer_appears, make_corpus, write_corpus


def test_same_seed_same_corpus_other_seed_other_corpus():
    assert make_corpus(seed=0) == make_corpus(seed=0)
    assert make_corpus(seed=1) != make_corpus(seed=0)
    assert [f.answer for f in make_corpus(seed=1).facts] != [f.answer for f in make_corpus(seed=0).facts]


def test_shape_of_the_corpus():
    corpus = make_corpus(seed=3, facts=40)
    assert len(corpus.facts) == 40
    assert len({f.kind for f in corpus.facts}) == 7  # every kind of fact is represented
    assert len(corpus.held_out_questions) == 40 and len(corpus.training_questions) == 120
    assert len({q.question for q in corpus.questions}) == 160  # no phrasing repeats
    assert all(len(f.answer.split()) <= 3 for f in corpus.facts)  # short answers
    assert all(d.text.startswith("Quillmark Instruments, internal memo") for d in corpus.documents)
    assert all(2 <= len(d.facts) <= 4 for d in corpus.documents)


@pytest.mark.parametrize("seed", [0, 7])
def test_each_held_out_fact_is_in_a_memo_and_a_training_question(seed):
    corpus = make_corpus(seed=seed)
    for held_out in corpus.held_out_questions:
        fact = corpus.facts[held_out.fact]
        memos = [d for d in corpus.documents if fact.statement in d.text]
        assert len(memos) == 2 and answer_appears(memos[0].text, held_out.answer)
        training = [q for q in corpus.training_questions if q.fact == held_out.fact]
        assert len(training) == 3 and all(q.answer == held_out.answer for q in training)
        assert held_out.question not in {q.question for q in training}


def test_answers_are_unambiguous():
    corpus = make_corpus(seed=0, facts=MAX_FACTS)
    questions = [q.question for q in corpus.questions]
    assert len(set(questions)) == len(questions)  # one answer per question, even with every fact drawn
    with pytest.raises(ValueError, match="facts must be between 1 and"):
        make_corpus(facts=MAX_FACTS + 1)


def test_answer_appears_matches_whole_words_any_case_and_spacing():
    assert answer_appears("It launches on 3  march\n2027.", "3 March 2027")
    assert not answer_appears("It launches on 13 March 2027.", "3 March 2027")
    assert not answer_appears("anything", "")


def test_write_corpus(tmp_path):
    documents, qa = write_corpus(tmp_path / "company", seed=2, facts=10)
    memo_rows = [json.loads(line) for line in documents.read_text().splitlines()]
    qa_rows = [json.loads(line) for line in qa.read_text().splitlines()]
    corpus = make_corpus(seed=2, facts=10)
    assert [row["text"] for row in memo_rows] == [d.text for d in corpus.documents]
    assert len(qa_rows) == 40 and sum(row["split"] == "held_out" for row in qa_rows) == 10
