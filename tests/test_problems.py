"""farm.problems: values echoed short, problems and lists of problems capped."""

from __future__ import annotations

from farm.problems import MAX_PROBLEM_CHARS, MAX_PROBLEMS, capped, names, quoted, show


def test_a_short_value_is_its_repr_and_a_long_one_its_start_and_size():
    assert [show("ab"), show(7), show(1.5), show(None), show([1, 2]), show({"a": 1})] == [
        "'ab'", "7", "1.5", "None", "[1, 2]", "{'a': 1}"
    ]  # fmt: skip
    assert show("x" * 2_097_152) == "'" + "x" * 60 + "…' (a string of 2,097,152 characters)"
    assert show(10**4999) == "a number of 5,000 digits"
    assert show(int("9" * 60)) == "9" * 60
    shots = [{"id": "s0", "action_description": "a"}] * 100_000
    assert show(shots).endswith("… (a list of 100,000 items)") and len(show(shots)) < 100
    assert show(list(range(5))) == "[0, 1, 2, ...] (a list of 5 items)"
    assert show("ab", sized=True) == "'ab' (a string of 2 characters)"
    assert show(b"y" * 100) == "b'" + "y" * 60 + "'… (100 bytes)"


def test_names_and_path_keys_are_cut():
    assert names(["a", "b"]) == "'a', 'b'"
    assert names([f"k{i}" for i in range(15)]).endswith("'k9' and 5 more")
    assert quoted("a.png") == "'a.png'"
    assert quoted("n" * 1000) == "'" + "n" * 60 + "…'"


def test_a_list_keeps_50_problems_each_cut_and_says_how_many_more():
    long = ["$.x: " + "y" * 10_000] * 10_000
    out = capped(long)
    assert len(out) == MAX_PROBLEMS + 1 and out[-1] == "… and 9,950 more problems"
    assert all(len(p) == MAX_PROBLEM_CHARS and p.endswith("…") for p in out[:-1])
    assert capped(["a", "b"]) == ["a", "b"]
    assert capped(["a"] * 51) == ["a"] * 50 + ["… and 1 more problem"]
    # capped again (a scene's problems inside a submission's): the count adds up
    assert capped(["b", "c", *out])[-1] == "… and 9,952 more problems"
