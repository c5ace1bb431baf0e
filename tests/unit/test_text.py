from __future__ import annotations

from common.index.text import Analyzer, analyze, segment_cjk


def test_chinese_is_segmented_into_words() -> None:
    assert "上海" in analyze("中国上海", Analyzer.NAME)
    assert "上海" in analyze("上海市", Analyzer.NAME)
    assert analyze("上海", Analyzer.NAME) == ["上海"]


def test_english_analyzer_stems_and_drops_stop_words() -> None:
    assert analyze("The Running Dogs", Analyzer.ENGLISH) == ["run", "dog"]


def test_name_analyzer_folds_accents_but_does_not_stem() -> None:
    assert analyze("Zürich Running", Analyzer.NAME) == ["zurich", "running"]


def test_query_syntax_is_just_text() -> None:
    # Characters that mean something to a query parser are separators here.
    assert analyze('title:foo* AND "bar" OR -baz~2 [a TO z]', Analyzer.NAME) == [
        "title",
        "foo",
        "and",
        "bar",
        "or",
        "baz",
        "2",
        "a",
        "to",
        "z",
    ]


def test_mixed_scripts_keep_latin_words() -> None:
    out = segment_cjk("Shanghai上海Tower")
    assert "Shanghai" in out and "上海" in out and "Tower" in out


def test_very_long_tokens_are_dropped() -> None:
    assert analyze("a" * 500 + " ok", Analyzer.NAME) == ["ok"]
