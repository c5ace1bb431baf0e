"""Which passages are encoded for long items (common.passages): at build and at Upsert."""

from __future__ import annotations

import pytest

from common.catalog import Item, split_sentences
from common.passages import PassageOptions, passage_texts


def _item(i: str, title: str, body: str) -> Item:
    return Item(id=i, text={"title": title, "body": body})


def test_sentences() -> None:
    assert split_sentences("One thing. Two (2) things! 3 things? yes.  ") == [
        "One thing.",
        "Two (2) things!",
        "3 things? yes.",
    ]
    assert split_sentences("no boundary here e.g. this") == ["no boundary here e.g. this"]
    assert split_sentences("   ") == []


def test_windows_of_long_items_prefixed_with_their_title() -> None:
    body = " ".join(f"Sentence {n} ends here." for n in range(1, 8))  # 7 sentences
    catalog = [
        _item("short", "Short", "Only one. And two. And three."),  # 3 sentences: its own vector covers it
        _item("long", "Long title", body),
        _item("empty", "", ""),
    ]
    texts, owner = passage_texts(catalog, ["title", "body"], PassageOptions(sentences=3, stride=2))
    assert owner.tolist() == [1, 1, 1]
    assert texts == [
        "Long title. Sentence 1 ends here. Sentence 2 ends here. Sentence 3 ends here.",
        "Long title. Sentence 3 ends here. Sentence 4 ends here. Sentence 5 ends here.",
        "Long title. Sentence 5 ends here. Sentence 6 ends here. Sentence 7 ends here.",
    ]
    # every sentence is in some window, the last window ends at the last sentence
    texts, owner = passage_texts(catalog, ["body"], PassageOptions(sentences=2, stride=2))
    assert owner.tolist() == [0, 0, 1, 1, 1, 1]  # now 3 sentences are more than a window
    assert texts[:2] == ["Only one. And two.", "And three."]
    assert texts[2] == "Sentence 1 ends here. Sentence 2 ends here." and texts[-1] == "Sentence 7 ends here."


def test_options() -> None:
    assert PassageOptions.parse("3:2") == PassageOptions(3, 2)
    assert PassageOptions.parse(" None ") is None
    for bad in ("3", "a:b", "3:2:1"):
        with pytest.raises(ValueError, match="SENTENCES:STRIDE"):
            PassageOptions.parse(bad)
    with pytest.raises(ValueError, match="at least one sentence"):
        PassageOptions(0, 1)
    with pytest.raises(ValueError, match=r"stride must be 1\.\.3"):
        PassageOptions(3, 4)


def test_the_longest_field_is_cut_whatever_the_field_order() -> None:
    body = "First point. Second point. Third point."
    item = Item(id="x", text={"body": body, "title": "Title"})
    for fields in (["title", "body"], ["body", "title"]):
        texts, _ = passage_texts([item], fields, PassageOptions(sentences=2, stride=2))
        assert texts == ["Title. First point. Second point.", "Title. Third point."]
